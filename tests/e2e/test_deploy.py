"""End to end: `make deploy` and `make rollback` under load, through nginx, without a failed request."""

import http.client
import json
import os
import time
from pathlib import Path

import pytest

from testkit.bake import commit, sh
from testkit.env import wait_for
from testkit.http import release, releases_served
from testkit.load import Load
from testkit.proc import cwd_of, read_pid
from testkit.serve import RECORD_TASK, bake_for_serving, deployed, diagnostics

pytestmark = [pytest.mark.e2e, pytest.mark.venv]


def deploy(project, message, **env):
    """Commit a visible change and `make deploy` it; the new revision."""
    revision = commit(project, message)
    sh(project, "make", "deploy", KEEP_RELEASES="3", **env)
    return revision


@pytest.fixture(scope="module")
def service(tmp_path_factory, wheelhouse):
    """A baked service in git, first deployed (and so started) into var/deploy; stopped after."""
    project, port = bake_for_serving(tmp_path_factory.mktemp("deploy"))
    with open(project / "my_service" / "tasks.py", "a") as tasks:
        tasks.write(RECORD_TASK)
    with open(project / ".env", "a") as env:
        env.write("CELERY_CONCURRENCY=16\n")
    with deployed(project, KEEP_RELEASES="3") as (first, root):
        url = f"http://127.0.0.1:{port}"
        yield {"project": project, "port": port, "url": url, "root": root, "first": first}


def test_first_deploy_serves_the_committed_revision_from_a_release(service):
    root = service["root"]
    assert release(service["url"]) == service["first"]
    current = (root / "current").resolve()
    assert current.parent == root / "releases" and current.name.endswith("-" + service["first"])
    assert not (current / ".git").exists(), "the served code must not be a git working copy"
    assert (current / ".env").resolve() == root / "shared" / ".env"


def test_rollback_right_after_the_first_deploy_exits_1_saying_nothing_served_before(service):
    """No release served before the first one: `bin/deploy --rollback` exits 1 saying so, and
    current stays where it was."""
    root = service["root"]
    current = (root / "current").resolve()
    refused = sh(service["project"], "bin/deploy", "--rollback", check=False)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "no release served before the current one" in refused.stderr
    assert (root / "current").resolve() == current
    assert release(service["url"]) == service["first"]


def test_tasks_in_flight_across_two_deploys_complete_exactly_once(service):
    """200 tasks of 1-3 s, sent before two deploys that restart the worker: each runs exactly once."""
    project, root = service["project"], service["root"]
    send = (
        "import random\n"
        "from my_service.tasks import record\n"
        "for key in range(200):\n"
        "    record.delay(str(key), random.uniform(1, 3))\n"
    )
    current = root / "current"
    sh(current, current / ".venv/bin/python", "-c", send)
    for name in ("tasks-a", "tasks-b"):
        revision = commit(project, name)
        sh(project, "make", "deploy", KEEP_RELEASES="3")
        assert release(service["url"]) == revision
    log = root / "shared" / "tmp" / "executions.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(log.read_text().split()) < 200:
        time.sleep(1)
    time.sleep(3)  # a duplicate would arrive late: give it the chance
    executed = log.read_text().split()
    assert sorted(executed, key=int) == [str(key) for key in range(200)]


def test_three_deploys_three_refused_releases_and_a_rollback_under_load(service):
    """Under 50 connections: 3 deploys, three refused releases, a rollback; each step seen on /health,
    and not one request fails (a single-threaded uWSGI worker reset about 1 in 150,000 during chain
    reloads: see `threads` in deploy/uwsgi.ini)."""
    project, port, url, root = service["project"], service["port"], service["url"], service["root"]
    media = root / "shared" / "media" / "upload.txt"
    media.write_text("<script>kept</script>")
    index = project / "my_service" / "templates" / "index.html"
    revisions = []
    with Load(port) as load:
        for version in ("v2", "v3", "v4"):
            index.write_text(index.read_text().replace("It works", f"It works ({version})", 1))
            revisions.append(commit(project, version))
            sh(project, "make", "deploy", KEEP_RELEASES="3")
            assert release(url) == revisions[-1]

        # Refused: a release that cannot import, one whose settings need a key that this
        # checkout's .env has but the deployed shared/.env lacks, and one whose /health fails.
        with open(project / ".env", "a") as env:
            env.write("PAYMENT_API_KEY=local-only\n")
        package = project / "my_service"
        app, seal = "create_app()", "\ntry:\n    env.seal()"
        breakages = [
            (package / "wsgi.py", app, app + "\nraise RuntimeError('broken release')", "broken release"),
            (package / "settings.py", seal, '\nKEY = env.str("PAYMENT_API_KEY")' + seal, "PAYMENT_API_KEY"),
            (package / "views.py", "healthy = all(", "healthy = False and all(", "503"),
        ]
        for path, old, new, reason in breakages:
            original = path.read_text()
            assert old in original
            path.write_text(original.replace(old, new, 1))
            commit(project, f"broken: {reason}")
            refused = sh(project, "make", "deploy", check=False, KEEP_RELEASES="3")
            assert refused.returncode != 0
            assert "unhealthy" in refused.stderr and reason in refused.stderr, refused.stderr
            assert (root / "current").resolve().name.endswith("-" + revisions[-1])
            assert release(url) == revisions[-1]
            path.write_text(original)

        sh(project, "make", "rollback")
        assert releases_served(url) == {revisions[-2]}
    assert load.ok > 100
    failed = f"{len(load.failures)} of {load.ok} failed: {load.failures}"
    assert not load.failures, f"{failed}\n{diagnostics(root)}"
    assert len(list((root / "releases").iterdir())) <= 3 + 3  # kept ones, plus the refused ones


def test_a_release_that_fails_verify_after_the_switch_is_switched_back_under_load(service):
    """The deploy's safety net: a release that passes every check in a throwaway process but, once
    uWSGI serves it, reports another revision fails verify after the switch. The deploy switches
    current back, reloads, exits 1 saying so, every worker serves the previous release when it
    returns, and not one of the requests of 50 connections fails."""
    project, port, url, root = service["project"], service["port"], service["url"], service["root"]
    before, serving = (root / "current").resolve(), release(url)
    views = project / "my_service" / "views.py"
    original = views.read_text()
    # uWSGI puts its version into every request's environ; the throwaway check has none.
    reported, imports = '"release": settings.RELEASE,', "from flask import "
    assert reported in original and imports in original
    under_uwsgi = '"release": settings.RELEASE + request.environ.get("uwsgi.version", b"").decode(),'
    views.write_text(original.replace(reported, under_uwsgi, 1).replace(imports, imports + "request, ", 1))
    broken = commit(project, "reports another revision once served")
    try:
        with Load(port) as load:
            refused = sh(project, "bin/deploy", check=False, KEEP_RELEASES="3")
            assert refused.returncode == 1, refused.stdout + refused.stderr
            assert f"/health did not report {broken}" in refused.stderr
            assert f"switching back to {before.name}" in refused.stderr
            assert (root / "current").resolve() == before
            assert releases_served(url) == {serving}
        assert load.ok > 100
        failed = f"{len(load.failures)} of {load.ok} failed: {load.failures[:10]}"
        assert not load.failures, f"{failed}\n{diagnostics(root)}"
    finally:
        views.write_text(original)
        commit(project, "reports its revision again")


def test_rollback_returns_to_the_release_that_served_before_never_to_one_rolled_back_from(service):
    """Deploy A, roll back, deploy B, roll back: the second rollback serves the release that served
    before B, not A (rolled back from, though newer by name). Each command runs right after the
    previous one returned, under 50 connections; when it returns every worker serves its release."""
    project, port, url = service["project"], service["port"], service["url"]
    start = release(url)
    with Load(port) as load:
        first = deploy(project, "history-a")
        assert releases_served(url) == {first}
        sh(project, "make", "rollback")
        assert releases_served(url) == {start}
        second = deploy(project, "history-b")
        assert releases_served(url) == {second}
        sh(project, "make", "rollback")
        assert releases_served(url) == {start}
    assert load.ok > 100
    assert not load.failures, f"{len(load.failures)} of {load.ok} failed: {load.failures[:10]}"


def test_uploads_survive_deploys_and_are_served_as_inert_downloads(service):
    media = service["root"] / "shared" / "media" / "upload.txt"
    assert media.read_text() == "<script>kept</script>"
    connection = http.client.HTTPConnection("127.0.0.1", service["port"], timeout=30)
    connection.request("GET", "/media/upload.txt")
    response = connection.getresponse()
    assert response.status == 200 and response.read() == b"<script>kept</script>"
    assert response.getheader("Content-Type") == "application/octet-stream"
    assert response.getheader("X-Content-Type-Options") == "nosniff"
    assert "sandbox" in response.getheader("Content-Security-Policy")


def test_celery_and_cron_run_the_deployed_release_after_old_ones_are_pruned(service):
    """After deploys that pruned the first release, the Celery worker and the cron jobs import the
    code in `current`: the uWSGI master does not keep a release as its working directory."""
    root = service["root"]
    served = release(service["url"])
    assert not any(path.name.endswith("-" + service["first"]) for path in (root / "releases").iterdir())
    master = int((root / "shared" / "run" / "uwsgi.pid").read_text())
    assert not os.readlink(f"/proc/{master}/cwd").startswith(str(root / "releases"))

    current = root / "current"
    # The rollback's reload ends with a new Celery worker in current: a task sent before the old
    # worker has stopped consuming may still run on the old code.
    celery_pid = root / "shared" / "run" / "celery.pid"
    in_current = lambda: cwd_of(read_pid(celery_pid)) == current.resolve()  # noqa: E731
    wait_for(in_current, 90, "the Celery worker restarted in current")
    ask = "from my_service.tasks import release; print(release.delay().get(timeout=120))"
    assert sh(current, current / ".venv/bin/python", "-c", ask).stdout.strip() == served

    heartbeat = root / "shared" / "run" / "jobs" / "heartbeat.json"
    since = time.time()
    deadline = since + 90
    while not heartbeat.exists() or json.loads(heartbeat.read_text())["started"] < since:
        assert time.time() < deadline, "no heartbeat within 90 s"
        time.sleep(1)
    assert json.loads(heartbeat.read_text())["release"] == served
    log = (root / "shared" / "log" / "uwsgi.log").read_text()
    assert "Traceback" not in log, diagnostics(root)


def test_a_deploy_that_installs_the_same_links_the_serving_venv_and_a_changed_one_installs_anew(service):
    """Same requirements.txt and bin/install: the new release's .venv is the serving one's, hard-linked,
    its scripts naming their own interpreter (the old release's scripts untouched); another
    requirements.txt: a fresh install, nothing shared."""
    project, root, url = service["project"], service["root"], service["url"]
    serving = (root / "current").resolve()
    revision = deploy(project, "same requirements")
    linked = (root / "current").resolve()
    assert linked.name.endswith("-" + revision) and release(url) == revision
    # pyvenv.cfg: every install writes its own (packages may be hard links to uv's cache either way).
    config = Path(".venv/pyvenv.cfg")
    assert (linked / config).stat().st_ino == (serving / config).stat().st_ino
    for served in (serving, linked):
        shebang = (served / ".venv/bin/celery").read_text().splitlines()[0]
        assert shebang == f"#!{served}/.venv/bin/python", shebang
    scripts = [path for path in (linked / ".venv/bin").iterdir() if path.is_file() and not path.is_symlink()]
    assert not [path.name for path in scripts if str(serving).encode() in path.read_bytes()]

    with open(project / "requirements.txt", "a") as requirements:
        requirements.write("# pinned by hand\n")
    revision = deploy(project, "other requirements")
    fresh = (root / "current").resolve()
    assert fresh.name.endswith("-" + revision) and release(url) == revision
    assert (fresh / config).stat().st_ino != (linked / config).stat().st_ino
