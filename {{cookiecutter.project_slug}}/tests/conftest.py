"""Every test runs on a throwaway state directory with known settings, never the developer's .env."""

import os
import tempfile

import pytest

# Everything settings.py (or a library: Celery, Sentry) would read from the developer's shell.
SCRUBBED_PREFIXES = ("APP_", "CELERY_", "SENTRY_")
SCRUBBED = "DEBUG SECRET_KEY LOG_LEVEL HTTP_PORT ALLOWED_HOSTS STATE_DIR DEPLOY_ROOT DATABASE_URL RELEASE"

# Set before the package is imported: settings.py reads the environment once, at import.
for key in list(os.environ):
    if key.startswith(SCRUBBED_PREFIXES) or key in SCRUBBED.split():
        del os.environ[key]
os.environ.update(
    ENV_FILE="/dev/null",
    APP_ENV="test",
    SECRET_KEY="test-secret-key-that-is-long-enough-0123456789",
    STATE_DIR=tempfile.mkdtemp(prefix="{{ cookiecutter.project_slug }}-test-"),
)

from {{ cookiecutter.project_slug }} import assets  # noqa: E402
from {{ cookiecutter.project_slug }}.app import create_app  # noqa: E402


@pytest.fixture(scope="session")
def app():
    assets.build()
    return create_app()


@pytest.fixture
def client(app):
    return app.test_client()
