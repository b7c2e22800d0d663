"""bin/migrate's safety, on the real PostgreSQL and on SQLite: breaking migrations wait for the
switch, a failed migration changes nothing, a busy table is given up on (naming who holds it)
without queuing queries for longer than lock_timeout, and two migrators run each migration once."""

import json
import os
import signal
import sqlite3
import subprocess
import time
import uuid
from contextlib import closing

import pytest

from testkit.bake import bake
from testkit.env import require_server

pytestmark = pytest.mark.venv

SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
FIRST = "af6f780d13df"
ADMIN = """
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as connection:
    for statement in sys.argv[2:]:
        rows = connection.execute(statement)
        if rows.description:
            print(json.dumps([list(row) for row in rows]))
"""
# Holds an ACCESS SHARE lock on notes (a long report, an idle transaction) until killed.
HOLDER = """
import sys, time, psycopg
connection = psycopg.connect(sys.argv[1])
connection.execute("SELECT count(*) FROM notes").fetchall()
print("holding", flush=True)
time.sleep(120)
"""
# Reads notes every 50 ms for the given seconds; prints each query's latency.
READER = """
import json, sys, time, psycopg
latencies, end = [], time.monotonic() + float(sys.argv[2])
with psycopg.connect(sys.argv[1], autocommit=True) as connection:
    while time.monotonic() < end:
        start = time.monotonic()
        connection.execute("SELECT count(*) FROM notes").fetchall()
        latencies.append(time.monotonic() - start)
        time.sleep(0.05)
print(json.dumps(latencies))
"""


def revision(name, down, body, marked=False, doc=True):
    """A migration file's text: docstring (unless doc is false), ids, upgrade() with body's lines."""
    lines = "\n".join(f"    {line}" for line in body)
    mark = (
        "\n\n# Runs after the switch: the release still serving reads this column.\nAFTER_SWITCH = True"
        if marked
        else ""
    )
    return (
        (f'"""{name}."""\n\n' if doc else "") + "import sqlalchemy as sa\nfrom alembic import op\n\n"
        f'revision = "{name}"\ndown_revision = "{down}"\nbranch_labels = None\ndepends_on = None{mark}\n\n\n'
        f"def upgrade() -> None:\n{lines}\n\n\ndef downgrade() -> None:\n    pass\n"
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory, wheelhouse):
    return bake(tmp_path_factory.mktemp("migrate"))


@pytest.fixture
def migrations(project):
    """Write migrations into the baked service for one test; removed after it."""
    written = []

    def write(name, down, *body, marked=False, doc=True):
        path = project / "migrations" / "versions" / f"20990101_{name}.py"
        path.write_text(revision(name, down, body, marked, doc))
        written.append(path)

    yield write
    for path in written:
        path.unlink()


def sql(project, url, *statements):
    result = subprocess.run(
        [project / ".venv/bin/python", "-c", "import json\n" + ADMIN, url, *statements],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture
def postgres(project):
    """A database of this test's own on the machine's PostgreSQL, dropped after it; its URL."""
    require_server("PostgreSQL", 5432, "apt-get install postgresql (trust auth for postgres on 127.0.0.1)")
    name = f"migrate_{uuid.uuid4().hex[:12]}"
    sql(project, SERVER, f"CREATE DATABASE {name}")
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    sql(project, SERVER, f"DROP DATABASE {name} WITH (FORCE)")


def migrate(project, url, *args, timeout=120):
    return subprocess.run(
        [project / "bin" / "migrate", *args],
        cwd=project,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def columns(project, url):
    rows = sql(project, url, "SELECT column_name FROM information_schema.columns WHERE table_name = 'notes'")
    return sorted(name for (name,) in rows[0])


def version(project, url):
    return sql(project, url, "SELECT version_num FROM alembic_version")[0][0][0]


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_a_breaking_migration_is_refused_before_the_switch_in_one_line_and_nothing_runs(
    project, postgres, migrations
):
    """A pending migration that drops a column the serving release reads is refused by
    `--before-switch` with one line naming the revision and the operation; the migrations before it
    in the same run do not run either, and the schema stays as it was."""
    assert migrate(project, postgres).returncode == 0
    migrations("aaaa00000001", FIRST, 'op.add_column("notes", sa.Column("tag", sa.Text()))')
    migrations("aaaa00000002", "aaaa00000001", 'op.drop_column("notes", "text")')
    refused = migrate(project, postgres, "--before-switch")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    (line,) = error_lines(refused)
    assert "aaaa00000002" in line and "drops a column" in line and "AFTER_SWITCH" in line
    assert columns(project, postgres) == ["created_at", "id", "text"]
    assert version(project, postgres) == FIRST


def test_a_breaking_migration_marked_after_switch_runs_only_in_the_after_switch_phase(
    project, postgres, migrations
):
    """Marked AFTER_SWITCH, the same drop waits: `--before-switch` runs the additive migration before
    it and stops there; `--after-switch` runs the drop."""
    assert migrate(project, postgres).returncode == 0
    migrations("bbbb00000001", FIRST, 'op.add_column("notes", sa.Column("body", sa.Text()))')
    migrations("bbbb00000002", "bbbb00000001", 'op.drop_column("notes", "text")', marked=True)
    before = migrate(project, postgres, "--before-switch")
    assert before.returncode == 0, before.stdout + before.stderr
    assert columns(project, postgres) == ["body", "created_at", "id", "text"]
    assert version(project, postgres) == "bbbb00000001"
    after = migrate(project, postgres, "--after-switch")
    assert after.returncode == 0, after.stdout + after.stderr
    assert columns(project, postgres) == ["body", "created_at", "id"]
    assert version(project, postgres) == "bbbb00000002"


def test_a_migration_failing_in_its_second_statement_leaves_the_schema_unchanged(
    project, postgres, migrations
):
    """All pending migrations are one transaction: the first statement's column is rolled back with
    the failing second one, the version stays, and the error is one line with the statement."""
    assert migrate(project, postgres).returncode == 0
    migrations(
        "cccc00000001",
        FIRST,
        'op.add_column("notes", sa.Column("tag", sa.Text()))',
        'op.execute("UPDATE notes SET no_such_column = 1")',
    )
    failed = migrate(project, postgres, "--before-switch")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    (line,) = error_lines(failed)
    assert "schema unchanged" in line and "no_such_column" in line
    assert "Traceback" not in failed.stderr
    assert columns(project, postgres) == ["created_at", "id", "text"]
    assert version(project, postgres) == FIRST


def test_a_busy_table_makes_the_migration_give_up_naming_the_blocker_and_queues_no_query_past_lock_timeout(
    project, postgres, migrations
):
    """A long transaction holds the table: each attempt waits lock_timeout (2 s) for its lock, gives
    up, and the last one names the table and the blocking session; the queries the service makes
    meanwhile (readers queued behind the waiting ALTER) wait no longer than lock_timeout."""
    assert migrate(project, postgres).returncode == 0
    migrations("dddd00000001", FIRST, 'op.add_column("notes", sa.Column("tag", sa.Text()))')
    venv_python = project / ".venv/bin/python"
    holder = subprocess.Popen(
        [venv_python, "-c", HOLDER, postgres], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        reader = subprocess.Popen(
            [venv_python, "-c", READER, postgres, "14"],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            started = time.monotonic()
            given_up = migrate(project, postgres, "--before-switch", timeout=180)
            took = time.monotonic() - started
            latencies = sorted(json.loads(reader.communicate(timeout=60)[0]))
        finally:
            if reader.poll() is None:
                os.killpg(reader.pid, signal.SIGKILL)
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    assert given_up.returncode == 1, given_up.stdout + given_up.stderr
    (line,) = error_lines(given_up)
    assert "no lock within 2 s in 4 attempts" in line and "schema unchanged" in line
    assert "table notes held by pid" in line and "SELECT count(*) FROM notes" in line
    assert given_up.stdout.count("==> upgrade to dddd00000001 (attempt") == 4
    assert took > 4 * 2 + 1 + 2 + 4  # four waits of lock_timeout and the back-off between them
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    assert len(latencies) > 50 and max(latencies) < 2.5, f"p99 {p99:.2f} s, max {max(latencies):.2f} s"
    assert columns(project, postgres) == ["created_at", "id", "text"]


def test_two_migrators_started_at_once_run_each_migration_exactly_once(project, postgres, migrations):
    """Two deploys reaching the database together: the advisory lock lets one migrate while the other
    waits, then finds nothing left; the migration's own insert happened once."""
    assert migrate(project, postgres).returncode == 0
    migrations(
        "eeee00000001",
        FIRST,
        "op.execute(\"INSERT INTO notes (text) VALUES ('migrated')\")",
        'op.execute("SELECT pg_sleep(2)")',
    )
    command = [project / "bin" / "migrate", "--before-switch"]
    env = {**os.environ, "DATABASE_URL": postgres}
    both = [
        subprocess.Popen(
            command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=120) for process in both]
    assert [process.returncode for process in both] == [0, 0], outputs
    assert sum("==> upgrade to eeee00000001" in stdout for stdout, _ in outputs) == 1, outputs
    rows = sql(project, postgres, "SELECT count(*) FROM notes WHERE text = 'migrated'")
    assert rows[0] == [[1]]


def test_sqlite_refuses_the_same_breaking_migration_before_the_switch(project, tmp_path, migrations):
    """On SQLite the check is the same (squawk reads the SQL PostgreSQL would run): the drop is
    refused in one line, and the database keeps its column."""
    url = f"sqlite:///{tmp_path / 'app.sqlite3'}"
    assert migrate(project, url).returncode == 0
    migrations("ffff00000001", FIRST, 'op.drop_column("notes", "text")')
    refused = migrate(project, url, "--before-switch")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    (line,) = error_lines(refused)
    assert "ffff00000001" in line and "drops a column" in line
    assert "migrator_lock" in refused.stdout and ".migrate.lock" in refused.stdout
    with closing(sqlite3.connect(tmp_path / "app.sqlite3")) as connection:
        names = [row[1] for row in connection.execute("PRAGMA table_info(notes)")]
    assert "text" in names


def test_a_revision_without_a_docstring_runs_before_and_after_the_switch(project, postgres, migrations):
    """Alembic writes a docstring into each revision, people often don't: a revision without one is as
    valid as any, and both phases run it, naming it by its file, with no traceback."""
    assert migrate(project, postgres).returncode == 0
    migrations("abab00000001", FIRST, 'op.add_column("notes", sa.Column("tag", sa.Text()))', doc=False)
    migrations("abab00000002", "abab00000001", 'op.drop_column("notes", "tag")', marked=True, doc=False)
    before = migrate(project, postgres, "--before-switch")
    assert before.returncode == 0, before.stdout + before.stderr
    assert "abab00000001 20990101_abab00000001.py" in before.stdout
    after = migrate(project, postgres, "--after-switch")
    assert after.returncode == 0, after.stdout + after.stderr
    assert "Traceback" not in before.stderr + after.stderr
    assert version(project, postgres) == "abab00000002"


@pytest.mark.parametrize(
    "broken_squawk",
    [
        pytest.param("exit 2", id="exits_2_printing_nothing"),
        pytest.param("echo 'error: unexpected argument' >&2; exit 0", id="exits_0_printing_no_list"),
        pytest.param("echo '[]'; exit 3", id="exits_3_printing_an_empty_list"),
    ],
)
def test_a_linter_that_did_not_run_refuses_the_migrations_before_the_switch(
    project, postgres, migrations, tmp_path, broken_squawk
):
    """The gate fails closed: with a squawk that did not check the SQL (as squawk exits 2 and prints
    nothing on a flag it no longer knows), a DROP TABLE revision is refused in one line saying squawk
    did not run, and nothing runs before the switch."""
    assert migrate(project, postgres).returncode == 0
    migrations("acac00000001", FIRST, 'op.drop_table("notes")')
    fake = tmp_path / "squawk"
    fake.write_text(f"#!/bin/sh\ncat > /dev/null\n{broken_squawk}\n")
    fake.chmod(0o755)
    refused = subprocess.run(
        [project / "bin" / "migrate", "--before-switch"],
        cwd=project,
        env={**os.environ, "DATABASE_URL": postgres, "SQUAWK": str(fake)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode == 1, refused.stdout + refused.stderr
    (line,) = error_lines(refused)
    assert "squawk did not check acac00000001" in line, line
    assert "Traceback" not in refused.stderr
    assert version(project, postgres) == FIRST
    assert columns(project, postgres) == ["created_at", "id", "text"]
