"""Logging and error tracking, set up once per process by `init()`; nothing happens at import."""

{% if cookiecutter.use_sentry -%}
import json
{% endif -%}
import logging.config
{%- if cookiecutter.use_sentry %}
import re
from urllib.parse import unquote, urlsplit

import sentry_sdk
from sentry_sdk.integrations.flask import FlaskIntegration
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.scrubber import DEFAULT_DENYLIST, EventScrubber
{%- endif %}

from . import settings

_initialized = False


def init():
    """Configure logging to stderr (uWSGI, Celery and cron keep it) and Sentry when SENTRY_DSN is set."""
    global _initialized
    if _initialized:
        return
    _initialized = True
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
            "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
            "root": {"level": settings.LOG_LEVEL, "handlers": ["stderr"]},
        }
    )
{%- if cookiecutter.use_sentry %}
    if settings.SENTRY_DSN:
        init_sentry()


# Keys whose values the SDK's scrubber blanks: its default list has "password" but not these.
EXTRA_DENYLIST = [
    "secret_key",
    "database_url",
    "broker_url",
    "result_backend",
    "celery_broker_url",
    "celery_result_backend",
    "sentry_dsn",
    "dsn",
    "api_token",
    "access_token",
    "private_key",
]
# Settings whose whole value is a secret: SECRET_KEY, SENTRY_DSN, any *_PASSWORD, *_TOKEN, *_KEY.
SECRET_SETTING = re.compile(r"(^|_)(SECRET|PASSWORD|PASSWD|TOKEN|KEY|DSN)(_|$)")
# Shorter values would match ordinary words; the key-based scrubber still blanks them under known keys.
MIN_SECRET_LENGTH = 6
FILTERED = "[Filtered]"


def secret_values(config=settings) -> list[str]:
    """The secret values among the settings, in every form they take in an event, longest first.

    Whole values of secret settings, and the password of every setting that is a URL with one
    (DATABASE_URL, CELERY_BROKER_URL...), also percent-decoded, repr()- and JSON-escaped.
    """
    found = set()
    for name, value in vars(config).items():
        if not name.isupper() or not isinstance(value, str):
            continue
        try:
            url = urlsplit(value)
            password, username = url.password, url.username
        except ValueError:
            password = username = None
        if SECRET_SETTING.search(name):
            found.add(value)
        if password:
            found.update((value, password, unquote(password)))
        if name.endswith("DSN") and username:
            # The DSN's key is public by Sentry's design (every envelope names it), but not ours to log.
            found.add(username)
    forms = {form for value in found for form in (value, repr(value)[1:-1], json.dumps(value)[1:-1])}
    return sorted((form for form in forms if len(form) >= MIN_SECRET_LENGTH), key=len, reverse=True)


def value_scrubber(secrets: list[str]):
    """A before_send hook that replaces every occurrence of a secret value, under any key, anywhere."""
    pattern = re.compile("|".join(map(re.escape, secrets))) if secrets else None

    def scrub(data):
        if isinstance(data, str):
            return pattern.sub(FILTERED, data)
        if isinstance(data, dict):
            return {scrub(key): scrub(value) for key, value in data.items()}
        if isinstance(data, list | tuple):
            return [scrub(item) for item in data]
        return data

    # Errors, check-ins (which must not be dropped), transactions and breadcrumbs alike. Should it
    # ever raise, the SDK drops the event: nothing leaves unscrubbed.
    return lambda event, hint: scrub(event) if pattern else event


def init_sentry():
    """Report errors, logged errors, Celery failures and cron check-ins; warnings become breadcrumbs."""
    scrub = value_scrubber(secret_values())
    sentry_sdk.init(
        # Passed explicitly: the SDK would otherwise read SENTRY_* from the environment itself.
        dsn=settings.SENTRY_DSN,
        environment=settings.APP_ENV,
        release=settings.RELEASE,
        # No PII is the default. Not `send_default_pii` (deprecated in 2.75) and not `data_collection`
        # (given, it switches the event scrubber off).
        event_scrubber=EventScrubber(recursive=True, denylist=DEFAULT_DENYLIST + EXTRA_DENYLIST),
        # The key-based scrubber misses secrets under innocent names (`token = settings.X` in a frame,
        # a URL in a log message): the values themselves are replaced in whatever leaves the process.
        before_send=scrub,
        before_send_transaction=scrub,
        before_breadcrumb=scrub,
        # 0 means off: no transactions at all, rather than unsampled ones.
        traces_sample_rate=settings.SENTRY_TRACES_SAMPLE_RATE or None,
        # Continuous profiling while a sampled request or task runs (transaction-based profiling is
        # deprecated); the rate is the share of processes (web workers, Celery) that profile.
        profile_session_sample_rate=settings.SENTRY_PROFILES_SAMPLE_RATE or None,
        profile_lifecycle="trace",
        # Celery's integration is enabled by the SDK wherever celery is installed.
        integrations=[
            FlaskIntegration(),
            LoggingIntegration(level=logging.WARNING, event_level=logging.ERROR),
        ],
    )
{%- endif %}
