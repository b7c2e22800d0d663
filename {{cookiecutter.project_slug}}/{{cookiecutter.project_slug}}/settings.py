"""Configuration: the only module that reads the environment.

Values come from the process environment first, then from the file named by ENV_FILE
(default: .env beside the package). Every value is typed and checked here, at import;
a bad or missing value stops start-up with one message naming every bad key, never a value.
"""

import os
import sys
from pathlib import Path

from dotenv import load_dotenv
from environs import Env, EnvValidationError
from marshmallow import ValidationError
from marshmallow.validate import Length, OneOf, Range
{%- if cookiecutter.use_sentry %}
from sentry_sdk.utils import BadDsn, Dsn
{%- endif %}


class ImproperlyConfigured(Exception):
    """A setting is missing or invalid; the message names the keys."""


BASE_DIR = Path(__file__).resolve().parent.parent
ENV_FILE = BASE_DIR / os.environ.get("ENV_FILE", ".env")
# Real environment variables win over the file (systemd, CI, tests).
load_dotenv(ENV_FILE, override=False)
env = Env(eager=False)


def _url_scheme(*schemes):
    def validate(value):
        if value.split("://", 1)[0] not in schemes:
            raise ValidationError(f"Expected a URL starting with {' or '.join(schemes)}://")

    return validate


def _static_url(value):
    if not value.endswith("/") or not value.startswith(("/", "https://", "http://")):
        raise ValidationError("Expected a path or an http(s):// URL ending with /, like /static/")
{%- if cookiecutter.use_sentry %}


def _sentry_dsn(value):
    try:
        Dsn(value) if value else None
    except BadDsn:
        raise ValidationError("Expected a DSN like https://<key>@<host>/<project>") from None
{%- endif %}


APP_ENV = env.str("APP_ENV", "development", validate=OneOf(["development", "test", "staging", "production"]))
DEBUG = env.bool("DEBUG", False)
SECRET_KEY = env.str("SECRET_KEY", validate=Length(min=32))
LOG_LEVEL = env.log_level("LOG_LEVEL", "INFO")
# Port of the local nginx that `make serve` starts.
HTTP_PORT = env.int("HTTP_PORT", {{ cookiecutter.http_port }}, validate=Range(min=1, max=65535))
ALLOWED_HOSTS = env.list(
    "ALLOWED_HOSTS",
    ["{{ cookiecutter.domain_name }}", "localhost", "127.0.0.1"],
    validate=Length(min=1),
)

# Every path the service writes under; the uWSGI ini exports the same STATE_DIR.
STATE_DIR = BASE_DIR / env.path("STATE_DIR", "var")
RUN_DIR = STATE_DIR / "run"
LOG_DIR = STATE_DIR / "log"
DATA_DIR = STATE_DIR / "data"
STATIC_ROOT = STATE_DIR / "static"
MEDIA_ROOT = STATE_DIR / "media"
TMP_DIR = STATE_DIR / "tmp"
# The one list of the state directories: the app, Celery and jobs create them through
# make_state_dirs(), bin/serve and bin/deploy through `python -m <package>.settings --make-dirs`.
STATE_DIRS = (RUN_DIR, LOG_DIR, DATA_DIR, STATIC_ROOT, MEDIA_ROOT, TMP_DIR)
DEPLOY_ROOT = BASE_DIR / env.path("DEPLOY_ROOT", STATE_DIR / "deploy")
# Where pages load the hashed static files from: /static/ on this site (nginx serves STATIC_ROOT),
# or a CDN (https://cdn.example.com/static/) whose origin is the load balancers, where every
# deploy puts the release's hashed files before any host switches.
STATIC_URL = env.str("STATIC_URL", "/static/", validate=_static_url)
# `make doctor` fails when the state directory or the deploy root has less free disk than this.
DISK_FREE_MIN_MB = env.int("DISK_FREE_MIN_MB", 500, validate=Range(min=0))
# Written per host by `make provision HOSTS=` (deploy/ansible/templates/env.j2), never by hand:
# how many web hosts serve this service, and whether this one runs the uWSGI cron jobs (the primary
# only: each host running them would run every job once per host). uWSGI reads RUN_CRON itself.
WEB_HOSTS = env.int("WEB_HOSTS", 1, validate=Range(min=1))
RUN_CRON = env.str("RUN_CRON", "true", validate=OneOf(["true", "false"])) == "true"

# postgresql:// runs on psycopg 3 (db.py); SQLite is the default, a file under DATA_DIR.
DATABASE_URL = env.str(
    "DATABASE_URL",
    f"sqlite:///{DATA_DIR}/app.sqlite3",
    validate=_url_scheme("sqlite", "postgresql", "postgresql+psycopg"),
)
# memory:// keeps a cache in each worker process; redis://… one shared by every worker and host.
CACHE_URL = env.str("CACHE_URL", "memory://", validate=_url_scheme("memory", "redis", "rediss"))
# Prefix of this service's keys in a shared Redis: services (or staging and production) on one
# Redis each need their own. (Not *_KEY_*: observability.py would take it for a secret.)
CACHE_PREFIX = env.str("CACHE_PREFIX", "{{ cookiecutter.project_slug }}:", validate=Length(min=1))
{%- if cookiecutter.use_celery %}
CELERY_BROKER_URL = env.str(
    "CELERY_BROKER_URL",
    f"sqla+sqlite:///{DATA_DIR}/celery-broker.sqlite3",
    validate=_url_scheme("sqla+sqlite", "redis", "rediss", "amqp", "amqps"),
)
CELERY_RESULT_BACKEND = env.str(
    "CELERY_RESULT_BACKEND",
    f"db+sqlite:///{DATA_DIR}/celery-results.sqlite3",
    validate=_url_scheme("db+sqlite", "db+postgresql", "redis", "rediss", "rpc"),
)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", 25, validate=Range(min=1, max=3600))
CELERY_CONCURRENCY = env.int("CELERY_CONCURRENCY", 2, validate=Range(min=1, max=256))
{%- endif %}
{%- if cookiecutter.use_sentry %}
SENTRY_DSN = env.str("SENTRY_DSN", "", validate=_sentry_dsn)
SENTRY_TRACES_SAMPLE_RATE = env.float("SENTRY_TRACES_SAMPLE_RATE", 0.0, validate=Range(min=0, max=1))
SENTRY_PROFILES_SAMPLE_RATE = env.float("SENTRY_PROFILES_SAMPLE_RATE", 0.0, validate=Range(min=0, max=1))
{%- endif %}

# The deployed revision: RELEASE, else the REVISION file a deploy writes, else "dev".
_revision_file = BASE_DIR / "REVISION"
RELEASE = env.str("RELEASE", _revision_file.read_text().strip() if _revision_file.exists() else "dev")


def make_state_dirs() -> None:
    """Create the directories the service writes to (idempotent; the app, Celery and jobs call it)."""
    for path in STATE_DIRS:
        path.mkdir(parents=True, exist_ok=True)


# One host's own state: a file under its STATE_DIR or each worker's memory. With several web hosts
# every host would see different notes, tasks or cache entries, so settings refuse them there.
HOST_LOCAL = {
    "DATABASE_URL": ("sqlite", "postgresql://"),
    "CACHE_URL": ("memory", "redis://"),
{%- if cookiecutter.use_celery %}
    "CELERY_BROKER_URL": ("sqla+sqlite", "redis:// or amqp://"),
    "CELERY_RESULT_BACKEND": ("db+sqlite", "redis:// or db+postgresql://"),
{%- endif %}
}


def _shared_state_problems():
    """{KEY: message} for host-local state when WEB_HOSTS > 1."""
    if (WEB_HOSTS or 1) == 1:
        return {}
    return {
        key: f"{scheme}:// keeps its state on one host; WEB_HOSTS={WEB_HOSTS} must share one ({shared})"
        for key, (scheme, shared) in HOST_LOCAL.items()
        if str(globals()[key]).split("://", 1)[0] == scheme
    }


try:
    env.seal()
    problems = {}
except EnvValidationError as error:
    problems = {key: " ".join(messages) for key, messages in error.error_messages.items()}
problems |= _shared_state_problems()
if problems:
    details = "; ".join(f"{key}: {message}" for key, message in problems.items())
    message = f"invalid settings (environment and {ENV_FILE}): {details}"
    if __name__ == "__main__":
        sys.exit(f"error: {message}")
    raise ImproperlyConfigured(message) from None

if __name__ == "__main__" and sys.argv[1:] == ["--make-dirs"]:
    # `python -m <package>.settings --make-dirs`: bin/serve and bin/deploy create STATE_DIRS.
    make_state_dirs()
elif __name__ == "__main__":
    # `python -m <package>.settings KEY...` checks the settings and prints values for shell scripts;
    # secrets are never printed (they would end up in terminals, CI logs and shell history).
    secrets = [key for key in sys.argv[1:] if key.endswith(("_KEY", "_URL", "_DSN", "_PASSWORD", "_TOKEN"))]
    if secrets:
        sys.exit(f"error: {secrets[0]}: a secret, never printed; code reads it from settings")
    values = [globals()[key] for key in sys.argv[1:]]
    print(*(",".join(map(str, value)) if isinstance(value, list | tuple) else value for value in values))
