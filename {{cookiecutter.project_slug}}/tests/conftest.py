"""Every test runs on a throwaway state directory with known settings, never the developer's .env.

Tests against servers take them from TEST_DATABASE_URL (a PostgreSQL server URL, e.g.
postgresql://postgres@127.0.0.1:5432/postgres: each test creates and drops a database of its own
there) and TEST_REDIS_URL (e.g. redis://127.0.0.1:6379/0); without them those tests are skipped.
"""

import os
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import make_url

# Everything settings.py (or a library: Celery, Sentry) would read from the developer's shell.
SCRUBBED_PREFIXES = ("APP_", "CACHE_", "CELERY_", "SENTRY_")
SCRUBBED = "DEBUG SECRET_KEY LOG_LEVEL HTTP_PORT ALLOWED_HOSTS STATE_DIR DEPLOY_ROOT DATABASE_URL RELEASE"
TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL")

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

from {{ cookiecutter.project_slug }} import assets, cache, db, settings  # noqa: E402
from {{ cookiecutter.project_slug }}.app import create_app  # noqa: E402


def migrate(url):
    """`alembic upgrade head` on url, in process, through migrations/env.py as bin/migrate runs it."""
    saved, settings.DATABASE_URL = settings.DATABASE_URL, url
    try:
        command.upgrade(Config(toml_file=Path(settings.BASE_DIR) / "pyproject.toml"), "head")
    finally:
        settings.DATABASE_URL = saved


@pytest.fixture(scope="session")
def app():
    assets.build()
    migrate(settings.DATABASE_URL)
    yield create_app()
    db.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def postgres_url():
    """A new, empty PostgreSQL database on TEST_DATABASE_URL's server, dropped after the test."""
    if not TEST_DATABASE_URL:
        pytest.skip("set TEST_DATABASE_URL=postgresql://user@host:5432/postgres to run PostgreSQL tests")
    server = make_url(TEST_DATABASE_URL)
    name = f"{{ cookiecutter.project_slug }}_test_{uuid.uuid4().hex[:12]}"
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        db.dispose()
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def redis_url():
    if not TEST_REDIS_URL:
        pytest.skip("set TEST_REDIS_URL=redis://host:6379/<db> to run the Redis cache tests")
    return TEST_REDIS_URL


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, app, monkeypatch, tmp_path):
    """DATABASE_URL pointed at a fresh database upgraded to the newest migration: SQLite, then PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/app.sqlite3"
    else:
        url = request.getfixturevalue("postgres_url")
    migrate(url)
    monkeypatch.setattr(settings, "DATABASE_URL", url)
    # Nothing cached from another test's database.
    with app.app_context():
        cache.cache.clear()
    yield url
    db.dispose()
