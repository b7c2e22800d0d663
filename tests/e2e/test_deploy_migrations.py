"""End to end on the real PostgreSQL: deploys whose migrations change the schema while the old and
the new release serve side by side, under load through nginx (GET and POST), without a failed request."""

import json
import os
import subprocess
import uuid

import pytest

from testkit.bake import commit, sh
from testkit.env import require_server
from testkit.http import get, health, releases_served
from testkit.load import Load
from testkit.serve import bake_for_serving, deployed, diagnostics

pytestmark = [pytest.mark.e2e, pytest.mark.venv]
SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
TAG = '(request.get_json(silent=True) or {}).get("tag")'
TRAFFIC = (("GET", "/notes"), ("POST", "/notes", {"text": "under load", "tag": "load"}), ("GET", "/"))
COLUMNS = """
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as connection:
    if len(sys.argv) > 2:
        connection.execute(sys.argv[2])
    else:
        query = "SELECT column_name FROM information_schema.columns WHERE table_name = 'notes'"
        rows = connection.execute(query)
        print(" ".join(sorted(name for (name,) in rows)))
"""


def psql(project, url, statement=None):
    command = [project / ".venv/bin/python", "-c", COLUMNS, url, *([statement] if statement else [])]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout.split()


@pytest.fixture(scope="module")
def service(tmp_path_factory, wheelhouse):
    """A baked service on a PostgreSQL database of its own, in git, deployed into var/deploy."""
    require_server("PostgreSQL", 5432, "apt-get install postgresql (trust auth for postgres on 127.0.0.1)")
    project, port = bake_for_serving(tmp_path_factory.mktemp("migrations"))
    name = f"deploy_{uuid.uuid4().hex[:12]}"
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    psql(project, SERVER, f"CREATE DATABASE {name}")
    with open(project / ".env", "a") as env:
        env.write(f"DATABASE_URL={url}\n")
    try:
        with deployed(project) as (_, root):
            yield {
                "project": project,
                "port": port,
                "web": f"http://127.0.0.1:{port}",
                "root": root,
                "url": url,
            }
    finally:
        psql(project, SERVER, f"DROP DATABASE {name} WITH (FORCE)")


def edit(path, old, new):
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def make_migration(project, message):
    """`make migration MSG=...` as a developer runs it; the path of the revision it wrote."""
    before = set((project / "migrations" / "versions").glob("*.py"))
    sh(project, "make", "migration", f"MSG={message}")
    (written,) = set((project / "migrations" / "versions").glob("*.py")) - before
    return written


def no_failures(load, root):
    assert load.ok > 100
    failed = f"{len(load.failures)} of {load.ok} failed: {load.failures[:10]}"
    assert not load.failures, f"{failed}\n{diagnostics(root)}"


def test_a_deploy_whose_migration_adds_a_column_the_new_code_writes_and_reads_fails_no_request(service):
    """Expand: the migration adds notes.tag before the switch, the old release keeps inserting
    without it, the new one writes and reads it; under GET and POST load, not one request fails."""
    project, port, root, url = service["project"], service["port"], service["root"], service["url"]
    package = project / "my_service"
    edit(
        package / "models.py",
        "    created_at:",
        "    tag: Mapped[str | None] = mapped_column(String(50))\n    created_at:",
    )
    edit(package / "views.py", "note = Note(text=text)", f"note = Note(text=text, tag={TAG})")
    edit(
        package / "views.py",
        '"text": note.text, "created_at"',
        '"text": note.text, "tag": note.tag, "created_at"',
    )
    revision = make_migration(project, "add notes.tag")
    assert "add_column" in revision.read_text()
    with Load(port, requests=TRAFFIC) as load:
        expanded = commit(project, "expand: notes.tag")
        sh(project, "make", "deploy")
        assert releases_served(service["web"]) == {expanded}
    no_failures(load, root)
    assert "tag" in psql(project, url)
    status, _, body = get(service["web"] + "/notes")
    notes = json.loads(body)
    assert status == 200 and any(note.get("tag") == "load" for note in notes["notes"]), notes


def test_a_breaking_migration_is_refused_before_the_switch_and_runs_after_it_once_marked(service):
    """Contract in two deploys: first the code stops using notes.tag; then the migration that drops
    it is refused before the switch (current and schema untouched), and, marked AFTER_SWITCH, runs
    after verify. A rollback then returns to code that needs no tag, and the schema stays. Under
    load, not one request fails."""
    project, port, root, url = service["project"], service["port"], service["root"], service["url"]
    package = project / "my_service"
    with Load(port, requests=TRAFFIC) as load:
        edit(package / "views.py", f"note = Note(text=text, tag={TAG})", "note = Note(text=text)")
        edit(package / "views.py", '"tag": note.tag, ', "")
        edit(package / "models.py", "    tag: Mapped[str | None] = mapped_column(String(50))\n", "")
        stops_using = commit(project, "contract 1: the code stops using notes.tag")
        sh(project, "make", "deploy")
        assert releases_served(service["web"]) == {stops_using}

        revision = make_migration(project, "drop notes.tag")
        dropping = commit(project, "contract 2: drop notes.tag")
        refused = sh(project, "bin/deploy", check=False)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert revision.name in refused.stderr and "drops a column" in refused.stderr
        assert (root / "current").resolve().name.endswith("-" + stops_using)
        assert "tag" in psql(project, url)

        edit(revision, "AFTER_SWITCH = False", "AFTER_SWITCH = True")
        marked = commit(project, "contract 2: drop notes.tag after the switch")
        deployed = sh(project, "bin/deploy")
        assert releases_served(service["web"]) == {marked}
        assert "tag" not in psql(project, url)
        assert deployed.stdout.index("==> verify") < deployed.stdout.index("==> migrate_after")

        sh(project, "make", "rollback")
        assert releases_served(service["web"]) == {stops_using}
        assert "tag" not in psql(project, url)
    no_failures(load, root)
    assert dropping != marked and health(service["web"])[1]["status"] == "ok"
    assert os.path.exists(root / "history")
