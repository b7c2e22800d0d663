"""The baked service's database commands: `make migrate` on fresh SQLite and PostgreSQL databases, and
`make lint` guarding that the migrations match the models (`make migration` writes the missing one)."""

import sqlite3
import subprocess
import uuid

import pytest

from testkit.bake import bake
from testkit.env import require, require_server
from testkit.serve import make

pytestmark = pytest.mark.venv

SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
# Run with the service's venv: psycopg is there, not in the template's tools.
ADMIN = """
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as connection:
    connection.execute(sys.argv[2])
"""
TABLES = """
import sys, psycopg
with psycopg.connect(sys.argv[1]) as connection:
    rows = connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    print(" ".join(sorted(name for (name,) in rows)))
"""
# A change to the models that no migration has yet.
NEW_MODEL = """

class Tag(Base):
    __tablename__ = "tags"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory, wheelhouse):
    require("make")
    return bake(tmp_path_factory.mktemp("database"))


def python(project, *args):
    return subprocess.run(
        [project / ".venv/bin/python", "-c", *args], capture_output=True, text=True, timeout=60, check=True
    ).stdout


def test_make_migrate_brings_a_fresh_sqlite_database_to_the_newest_migration(project, tmp_path):
    """On a laptop: no server, `make migrate` creates the SQLite file with the models' tables; a second
    run has nothing to do."""
    database = tmp_path / "fresh.sqlite3"
    for _ in range(2):
        result = make(project, "migrate", DATABASE_URL=f"sqlite:///{database}")
        assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.count("Running upgrade") == 0, result.stderr
    with sqlite3.connect(database) as connection:
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        (version,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    connection.close()
    assert {"notes", "alembic_version"} <= tables
    assert version == "af6f780d13df"


def test_make_migrate_brings_a_fresh_postgresql_database_to_the_newest_migration(project):
    """On a server: the same bake, only DATABASE_URL=postgresql://… changed, migrates PostgreSQL."""
    require_server("PostgreSQL", 5432, "apt-get install postgresql (trust auth for postgres on 127.0.0.1)")
    name = f"shipshape_test_{uuid.uuid4().hex[:12]}"
    url = SERVER.rsplit("/", 1)[0] + f"/{name}"
    python(project, ADMIN, SERVER, f'CREATE DATABASE "{name}"')
    try:
        result = make(project, "migrate", DATABASE_URL=url)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Running upgrade  -> af6f780d13df" in result.stderr
        assert python(project, TABLES, url).split() == ["alembic_version", "notes"]
    finally:
        python(project, ADMIN, SERVER, f'DROP DATABASE "{name}" WITH (FORCE)')


def test_make_lint_fails_while_a_model_has_no_migration_and_passes_after_make_migration(tmp_path, wheelhouse):
    """`alembic check` in `make lint` catches a model change without its migration; `make migration`
    writes that migration (formatted, so lint passes) and `make migrate` applies it."""
    require("make")
    project = bake(tmp_path)
    models = project / "my_service" / "models.py"
    models.write_text(models.read_text() + NEW_MODEL)
    lint = make(project, "lint")
    assert lint.returncode != 0
    assert "New upgrade operations detected" in lint.stdout + lint.stderr, lint.stdout + lint.stderr
    assert "add_table" in lint.stdout + lint.stderr

    result = make(project, "migration", "MSG=add tags")
    assert result.returncode == 0, result.stdout + result.stderr
    [new] = [path for path in (project / "migrations/versions").glob("*.py") if "add_tags" in path.name]
    assert 'op.create_table(\n        "tags"' in new.read_text()
    assert 'down_revision: str | Sequence[str] | None = "af6f780d13df"' in new.read_text()

    lint = make(project, "lint")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    database = tmp_path / "app.sqlite3"
    result = make(project, "migrate", DATABASE_URL=f"sqlite:///{database}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Running upgrade af6f780d13df -> " in result.stderr
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT count(*) FROM tags").fetchone() == (0,)
    connection.close()
