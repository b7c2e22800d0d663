"""Logging and error tracking, set up once per process by `init()`; nothing happens at import."""

import logging.config
{%- if cookiecutter.use_sentry %}

import sentry_sdk
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.scrubber import DEFAULT_DENYLIST, EventScrubber
{%- endif %}

from . import settings
{%- if cookiecutter.use_sentry %}

# The default denylist catches "password" but not these (PITFALLS §14); recursive covers nested data.
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
{%- endif %}

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


def init_sentry():
    """Report errors and logged errors to Sentry; warnings become breadcrumbs."""
    # DSN, environment and release are passed explicitly: the SDK would otherwise read SENTRY_* itself.
    sentry_sdk.init(
        dsn=settings.SENTRY_DSN,
        environment=settings.APP_ENV,
        release=settings.RELEASE,
        # No PII is the default. Not `send_default_pii` (deprecated in 2.75) and not `data_collection`
        # (given, it switches the event scrubber below off).
        traces_sample_rate=settings.SENTRY_TRACES_SAMPLE_RATE,
        event_scrubber=EventScrubber(recursive=True, denylist=DEFAULT_DENYLIST + EXTRA_DENYLIST),
        integrations=[LoggingIntegration(level=logging.WARNING, event_level=logging.ERROR)],
    )
{%- endif %}
