"""End to end: `make serve` runs uWSGI, Celery, cron and nginx on loopback; `make stop` ends them all."""

import json
import re
import subprocess
import time

import pytest

from testkit.env import wait_for
from testkit.http import get
from testkit.proc import group_alive, processes_mentioning
from testkit.serve import bake_for_serving, make, send_task, serving
from testkit.uwsgi import uwsgi_get, uwsgi_stats

pytestmark = [pytest.mark.e2e, pytest.mark.venv]

VARIANTS = [{}, {"use_celery": "false", "cheap_mode": "true"}]
# A user's long task, added to the baked service before it starts.
SLOW_TASK = """

@celery.task
def slow(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds
"""


@pytest.fixture(scope="module", params=VARIANTS, ids=["defaults", "use_celery=false-cheap_mode=true"])
def service(request, tmp_path_factory, wheelhouse):
    """A baked service served by `make serve` on a free loopback port; stopped (and checked) after."""
    project, port = bake_for_serving(tmp_path_factory.mktemp("serve"), **request.param)
    if (project / "my_service" / "tasks.py").exists():
        with open(project / "my_service" / "tasks.py", "a") as tasks:
            tasks.write(SLOW_TASK)
    with serving(project) as groups:
        yield {"project": project, "url": f"http://127.0.0.1:{port}", "groups": groups, **request.param}


def test_pages_and_health_answer_through_nginx(service):
    status, _, body = get(service["url"] + "/")
    assert status == 200 and "It works." in body
    status, headers, body = get(service["url"] + "/health")
    assert status == 200, body
    assert headers["Content-Type"] == "application/json"
    health = json.loads(body)
    assert health["release"] == "dev"
    assert health["database"] == "ok"
    assert health["broker"] == ("disabled" if service.get("use_celery") == "false" else "ok")


def test_hashed_asset_is_cached_for_a_year_with_security_headers(service):
    _, _, page = get(service["url"] + "/")
    href = page.split('rel="stylesheet" href="')[1].split('"')[0]
    status, headers, body = get(service["url"] + href)
    assert status == 200 and "font-family" in body
    assert headers.get_all("Cache-Control") == ["public, max-age=31536000, immutable"]
    assert headers["Expires"].endswith("GMT")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Server"] == "nginx"


def test_uwsgi_itself_serves_hashed_assets_with_a_30_day_expires(service):
    """Without nginx in front, uWSGI's static-map + static-expires-uri serve the same files."""
    project = service["project"]
    manifest = json.loads((project / "var/static/build/manifest-dev.json").read_text())
    status, headers, content = uwsgi_get(
        project / "var/run/uwsgi.sock", "/static/" + manifest["css/site.css"]
    )
    assert status == 200
    assert content == (project / "static/css/site.css").read_bytes()
    expires = time.mktime(time.strptime(headers["Expires"], "%a, %d %b %Y %H:%M:%S GMT"))
    assert 29 * 86400 < expires - time.mktime(time.gmtime()) <= 30 * 86400 + 60


def test_dotfiles_and_backups_are_a_plain_404(service):
    for path in ("/.env", "/.git/config", "/static/.env", "/static/%2e%2e/.env", "/app.py~", "/x.bak"):
        status, _, body = get(service["url"] + path)
        assert status == 404, path
        assert "SECRET_KEY" not in body


def test_unknown_host_header_is_refused(service):
    assert get(service["url"] + "/", Host="attacker.example.net")[0] == 400


def test_celery_task_round_trip_through_the_attached_worker(service):
    """A task sent through the embedded SQLite broker is run by the worker uWSGI supervises."""
    project = service["project"]
    code = "from my_service.tasks import add; print(add.delay(20, 22).get(timeout=60, interval=0.1))"
    result = subprocess.run(
        [project / ".venv/bin/python", "-c", code], cwd=project, capture_output=True, text=True, timeout=90
    )
    if service.get("use_celery") == "false":
        # Celery off: no tasks module, and no worker beside uWSGI.
        assert "No module named 'my_service.tasks'" in result.stderr
        assert "attach-daemon" not in (project / "deploy" / "uwsgi.ini").read_text()
    else:
        assert result.stdout.strip() == "42", result.stderr


def test_reload_lets_a_running_task_finish(service):
    """`make reload` restarts the Celery worker only after its running task is done."""
    if service.get("use_celery") == "false":
        assert not (service["project"] / "my_service" / "tasks.py").exists()
        return
    project = service["project"]
    code = (
        "import subprocess, time\n"
        "result = slow.delay(4)\n"
        "time.sleep(1.5)\n"
        "subprocess.run(['bin/reload'], check=True, capture_output=True)\n"
        "print(result.get(timeout=60, interval=0.1))\n"
        "print(add.delay(1, 1).get(timeout=60, interval=0.1))\n"
    )
    result = send_task(project, code)
    assert result.stdout.split() == ["4", "2"], result.stderr[-2000:]
    # The web workers were replaced one by one meanwhile; the chain ends with all of them back.
    log = project / "var/log/uwsgi.log"
    deadline = time.monotonic() + 60
    while "chain reloading complete" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "chain reloading complete" in log.read_text()


def test_reload_of_code_that_does_not_load_is_refused_and_the_service_runs_on(service):
    """A new worker that cannot load the app would stop the whole server (need-app): refused."""
    project = service["project"]
    views = project / "my_service" / "views.py"
    original = views.read_text()
    run = project / "var" / "run"
    master = (run / "uwsgi.pid").read_text()
    # Every running worker has loaded the app: one still importing would read the broken file.
    wait_for(
        lambda: all(w["pid"] == 0 or w["apps"] for w in uwsgi_stats(run / "stats.sock")["workers"]),
        60,
        "every running worker has loaded the app",
    )
    try:
        views.write_text(original + "\nraise RuntimeError('half-edited')\n")
        result = make(project, "reload")
    finally:
        views.write_text(original)
    assert result.returncode != 0
    assert "half-edited" in result.stderr and "not reloading" in result.stderr, result.stderr
    assert (project / "var" / "run" / "uwsgi.pid").read_text() == master
    assert get(service["url"] + "/health")[0] == 200


def test_cron_job_ran_under_uwsgi(service):
    """uWSGI's cron fires the every-minute heartbeat job at start; it records its run."""
    record = service["project"] / "var" / "run" / "jobs" / "heartbeat.json"
    deadline = time.monotonic() + 75
    while not record.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert json.loads(record.read_text())["result"] == "alive"


def test_make_stop_leaves_no_process_and_lets_a_running_task_finish(service):
    """Runs last in the module: `make stop` waits for a running task, then no process is left."""
    project = service["project"]
    celery = service.get("use_celery") != "false"
    if celery:
        sent = send_task(project, "import time\nresult = slow.delay(3)\ntime.sleep(1)\nprint(result.id)")
        assert sent.returncode == 0, sent.stderr[-2000:]
        task_id = sent.stdout.strip()
        assert re.fullmatch(r"[0-9a-f-]{36}", task_id), f"a task id, not {sent.stdout!r}"
    result = make(project, "stop", timeout=90)
    assert result.returncode == 0, result.stderr
    if celery:
        # The worker is gone; the result backend (SQLite) still tells what happened to the task.
        state = send_task(project, f"r = celery.AsyncResult({task_id!r})\nprint(r.state, r.result)")
        assert state.stdout.split() == ["SUCCESS", "3"], state.stderr[-2000:]
    assert not any(group_alive(pgid) for pgid in service["groups"])
    assert processes_mentioning(service["project"]) == []
    assert not (service["project"] / "var" / "run" / "uwsgi.sock").exists()
