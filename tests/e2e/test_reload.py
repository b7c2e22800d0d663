"""End to end: `make reload` returns only once every worker serves the new code, and says so when
uWSGI ignored it; reloads run back to back under load without a failed request."""

import subprocess

import pytest

from testkit.http import get
from testkit.load import Load
from testkit.proc import cwd_of, read_pid
from testkit.serve import bake_for_serving, make, serving
from testkit.uwsgi import uwsgi_stats

pytestmark = [pytest.mark.e2e, pytest.mark.venv]

DEFAULT, CHEAP = {}, {"cheap_mode": "true"}
# Cheap mode (workers start on demand, go back to none when idle) is checked where it differs: which
# workers a reload must wait for. The drop and the load tests need no second service.
BOTH = pytest.mark.parametrize("served", [DEFAULT, CHEAP], indirect=True, ids=["default", "cheap_mode"])
ONE = pytest.mark.parametrize("served", [DEFAULT], indirect=True, ids=["default"])


@pytest.fixture(scope="module")
def served(request, tmp_path_factory, wheelhouse):
    """A baked service under `make serve` (uWSGI, Celery, nginx), stopped after the module."""
    project, port = bake_for_serving(tmp_path_factory.mktemp("reload"), **request.param)
    with serving(project):
        yield project, port


MARKED_INDEX = (
    'return render_template("index.html", release=settings.RELEASE).replace("It works", PAGE_MARK, 1)'
)


def edit_page(project, marker):
    """Change what the home page says in code a worker runs once, when it imports views.py (a
    template is read from disk again by an old worker too; a module's constant is not): only a
    worker that the reload replaced serves the marker."""
    views = project / "my_service" / "views.py"
    lines = [line for line in views.read_text().splitlines() if not line.startswith("PAGE_MARK = ")]
    text = "\n".join(lines) + "\n"
    text = text.replace('return render_template("index.html", release=settings.RELEASE)', MARKED_INDEX)
    assert MARKED_INDEX in text
    text = text.replace('@pages.get("/")\n', f'PAGE_MARK = "It works ({marker})"\n\n\n@pages.get("/")\n', 1)
    views.write_text(text)


# A hook a service registers with Python's atexit (as Sentry's SDK does, to send what it still holds).
EXIT_HOOK = """

import atexit as _atexit
import os as _os

_atexit.register(lambda: open(f"var/exited-{_os.getpid()}", "w").close())
"""
SLOW_IMPORT = "\n__import__('time').sleep(2)\n"


def pages_with(port, marker, count=40):
    """How many of `count` requests to / answered 200 with the marker in the page."""
    return sum(
        status == 200 and f"It works ({marker})" in body
        for status, _, body in (get(f"http://127.0.0.1:{port}/") for _ in range(count))
    )


def celery_pid(project):
    return read_pid(project / "var" / "run" / "celery.pid")


@BOTH
def test_make_reload_returns_once_every_worker_serves_the_new_code(served):
    """Right after `make reload` returns, 40 of 40 requests get the new page and the Celery worker
    that ran before has been replaced by one running in the code directory."""
    project, port = served
    before = celery_pid(project)
    edit_page(project, "returned")
    result = make(project, "reload")
    assert result.returncode == 0, result.stdout + result.stderr
    assert pages_with(port, "returned") == 40
    after = celery_pid(project)
    assert after is not None and after != before and cwd_of(before) is None
    assert cwd_of(after) == project


@ONE
def test_make_reload_exits_1_when_uwsgi_drops_it_during_a_running_chain_reload(served):
    """A trigger that reaches uWSGI while a chain reload runs is ignored by uWSGI; `make reload`
    says so and exits 1 instead of reporting a reload that never happened."""
    project, port = served
    views = project / "my_service" / "views.py"
    original = views.read_text()
    # Code that takes 2 s to import: the chain reload the touch starts lasts 8 s (4 workers).
    views.write_text(original + SLOW_IMPORT)
    (project / "var" / "run" / "reload").touch()
    # uWSGI notices the touch within a second; bin/reload's own import check then takes 2 s.
    subprocess.run(["sleep", "1.5"], check=True)
    dropped = subprocess.run(
        [project / "bin" / "reload"], cwd=project, capture_output=True, text=True, timeout=400
    )
    assert dropped.returncode == 1, dropped.stdout + dropped.stderr
    assert "uWSGI dropped the reload" in dropped.stderr
    # Once that chain is over, the same command goes through.
    views.write_text(original)
    edit_page(project, "after-drop")
    again = make(project, "reload", timeout=400)
    assert again.returncode == 0, again.stdout + again.stderr
    assert pages_with(port, "after-drop") == 40


@ONE
def test_make_reload_still_reloads_a_uwsgi_started_without_the_master_fifo(served):
    """A service updated from an older template runs a uWSGI started from an ini without
    `master-fifo` until it restarts (the FIFO of an earlier run may still be there, unread):
    `make reload` (and so a deploy) falls back to the trigger file."""
    project, port = served
    ini = project / "deploy" / "uwsgi.ini"
    original = ini.read_text()
    assert "\nmaster-fifo = " in original
    ini.write_text("\n".join(line for line in original.splitlines() if not line.startswith("master-fifo")))
    try:
        assert make(project, "stop", timeout=120).returncode == 0
        with serving(project):
            edit_page(project, "no-fifo")
            result = make(project, "reload")
            assert result.returncode == 0, result.stdout + result.stderr
            assert pages_with(port, "no-fifo") == 40
    finally:
        ini.write_text(original)
        # The module's other tests run against the service as baked.
        assert make(project, "serve", timeout=300).returncode == 0


@ONE
def test_python_exit_hooks_run_in_every_worker_a_reload_replaces(served):
    """uWSGI skips the interpreter's teardown when a worker leaves (it costs 0.2 s per worker);
    Python's exit hooks still run in each replaced worker: Sentry's flush is one."""
    project, _ = served
    views = project / "my_service" / "views.py"
    original = views.read_text()
    views.write_text(original + EXIT_HOOK)
    try:
        assert make(project, "reload").returncode == 0
        hooked = {worker["pid"] for worker in uwsgi_stats(project / "var/run/stats.sock")["workers"]}
        assert make(project, "reload").returncode == 0
    finally:
        views.write_text(original)
    exited = {int(path.name.removeprefix("exited-")) for path in (project / "var").glob("exited-*")}
    assert len(hooked) == 4 and hooked <= exited, (hooked, exited)


@ONE
def test_back_to_back_reloads_under_load_fail_no_request_and_each_serves_its_code(served):
    """Under 20 connections, three edits each followed at once by `make reload`: right after each,
    every request gets that edit, and not one request fails meanwhile."""
    project, port = served
    with Load(port, threads=20, max_seconds=300) as load:
        for version in ("r1", "r2", "r3"):
            edit_page(project, version)
            result = make(project, "reload", timeout=400)
            assert result.returncode == 0, result.stdout + result.stderr
            assert pages_with(port, version) == 40
    assert load.ok > 100
    assert not load.failures, f"{len(load.failures)} of {load.ok} failed: {load.failures[:10]}"
