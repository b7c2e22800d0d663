"""End to end on every Python the template offers besides the tools' own (which test_serve.py runs):
`make serve` under python_version=3.12 on the laptop defaults (SQLite, in-process cache), and under
3.13 on servers' settings (PostgreSQL, Redis cache); a page writes, a page reads, a task runs,
`make stop` ends it."""

import json
import subprocess
import uuid

import pytest

from testkit.bake import env_with_python
from testkit.env import require_server
from testkit.http import get, post_json
from testkit.serve import bake_for_serving, send_task, serving

pytestmark = [pytest.mark.e2e, pytest.mark.venv]

SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
POSTGRES_HINT = "apt-get install postgresql (trust auth for postgres on 127.0.0.1)"
REDIS_HINT = "start it with `redis-server --daemonize yes --bind 127.0.0.1`"
ADMIN = """
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as connection:
    connection.execute(sys.argv[2])
"""


def admin(project, sql):
    """Run one statement on the PostgreSQL server with the service's psycopg."""
    command = [project / ".venv/bin/python", "-c", ADMIN, SERVER, sql]
    subprocess.run(command, check=True, capture_output=True, timeout=60)


@pytest.mark.parametrize(
    ("version", "servers"),
    [("3.12", False), ("3.13", True)],
    ids=["python=3.12-sqlite-memory", "python=3.13-postgresql-redis"],
)
def test_make_serve_writes_reads_and_runs_a_task_on_each_python(tmp_path, wheelhouse, version, servers):
    if servers:
        require_server("PostgreSQL", 5432, POSTGRES_HINT)
        require_server("redis", 6379, REDIS_HINT)
    env = env_with_python(version, tmp_path / "bin")
    project, port = bake_for_serving(tmp_path, env=env, python_version=version)
    name = f"shipshape_test_{uuid.uuid4().hex[:12]}"
    if servers:
        admin(project, f'CREATE DATABASE "{name}"')
        with open(project / ".env", "a") as env_file:
            env_file.write(
                f"DATABASE_URL={SERVER.rsplit('/', 1)[0]}/{name}\n"
                f"CACHE_URL=redis://127.0.0.1:6379/0\nCACHE_PREFIX={name}:\n"
            )
    url = f"http://127.0.0.1:{port}"
    try:
        with serving(project, check_stop=True):
            status, _, body = get(url + "/health")
            assert status == 200, body
            health = json.loads(body)
            assert (health["database"], health["broker"]) == ("ok", "ok")
            assert health["cache"] == ("ok" if servers else "in-process")
            if servers:
                # A worker caches the empty list in Redis; the write below must clear it for every worker.
                assert json.loads(get(url + "/notes")[2]) == {"notes": []}
            assert post_json(url + "/notes", {"text": f"hello from {version}"})[0] == 201
            notes = json.loads(get(url + "/notes")[2])["notes"]
            assert [note["text"] for note in notes] == [f"hello from {version}"]
            result = send_task(project, "print(add.delay(20, 22).get(timeout=60, interval=0.1))")
            assert result.stdout.strip() == "42", result.stderr[-2000:]
        uwsgi_python = subprocess.run(
            [project / ".venv/bin/python", "-c", "import sys; print(sys.version)"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert uwsgi_python.stdout.startswith(f"{version}.")
    finally:
        if servers:
            admin(project, f'DROP DATABASE "{name}" WITH (FORCE)')
