"""End to end: `make serve` runs uWSGI, Celery, cron and nginx on loopback; `make stop` ends them all."""

import json
import os
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from conftest import bake, free_port, require

pytestmark = [pytest.mark.e2e, pytest.mark.venv]

VARIANTS = [{}, {"use_celery": "false", "cheap_mode": "true"}]


def get(url, **headers):
    """(status, headers, body) for a GET, also for 4xx/5xx answers."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode()


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def processes_mentioning(path):
    """Pids whose command line names the path (uWSGI renames its own processes; nginx and Celery don't)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if entry.isdigit() and int(entry) != os.getpid() and str(path).encode() in cmdline.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def make(project, target, timeout=180):
    return subprocess.run(
        ["make", target], cwd=project, capture_output=True, text=True, timeout=timeout, check=False
    )


def log_tail(project):
    logs = sorted((project / "var" / "log").glob("*.log"))
    return "\n".join(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-30:]) for log in logs)


@pytest.fixture(scope="module", params=VARIANTS, ids=["defaults", "use_celery=false-cheap_mode=true"])
def service(request, tmp_path_factory, wheelhouse):
    """A baked service served by `make serve` on a free loopback port; stopped (and checked) after."""
    require("nginx")
    require("make")
    port = free_port()
    project = bake(tmp_path_factory.mktemp("serve"), http_port=port, **request.param)
    groups = []
    try:
        result = make(project, "serve")
        assert result.returncode == 0, result.stdout + result.stderr + log_tail(project)
        run = project / "var" / "run"
        groups = [int((run / "uwsgi.pgid").read_text()), int((run / "nginx.pid").read_text())]
        yield {"project": project, "url": f"http://127.0.0.1:{port}", "groups": groups, **request.param}
    except BaseException:
        print(log_tail(project))
        raise
    finally:
        make(project, "stop", timeout=90)
        for pgid in groups:
            if group_alive(pgid):
                os.killpg(pgid, 9)


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


def test_cron_job_ran_under_uwsgi(service):
    """uWSGI's cron fires the every-minute heartbeat job at start; it records its run."""
    record = service["project"] / "var" / "run" / "jobs" / "heartbeat.json"
    deadline = time.monotonic() + 75
    while not record.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert json.loads(record.read_text())["result"] == "alive"


def test_make_stop_leaves_no_process(service):
    """Runs last in the module: after `make stop` no process of the service is left."""
    result = make(service["project"], "stop", timeout=90)
    assert result.returncode == 0, result.stderr
    assert not any(group_alive(pgid) for pgid in service["groups"])
    assert processes_mentioning(service["project"]) == []
    assert not (service["project"] / "var" / "run" / "uwsgi.sock").exists()
