"""End to end: Sentry from the real processes of a served service (uWSGI workers behind nginx, the
attached Celery worker, uWSGI's cron) reaches a local fake ingest with the release and environment,
and no secret value of the service is ever sent; `make status` reports the running service."""

import os
import re
import secrets
import subprocess
from pathlib import Path

import pytest

from testkit.fake_ingest import FakeIngest
from testkit.http import get, request
from testkit.serve import bake_for_serving, make, serving

pytestmark = [pytest.mark.e2e, pytest.mark.venv]

RELEASE = "20261125T210000-e2e1234"
DSN_KEY = secrets.token_hex(16)
# A secret setting a developer added to settings.py: *_TOKEN values are scrubbed by name pattern.
TOKEN = "tok_live_" + secrets.token_hex(12)
SETTING = 'PAYMENT_API_TOKEN = env.str("PAYMENT_API_TOKEN", "")\n'
# Code paths a user's service has: secrets in frame locals under innocent names, in an exception
# message, in a logged warning (a breadcrumb) and in a logged error's extra data.
VIEWS = """

@pages.post("/boom")
def boom():
    token = settings.PAYMENT_API_TOKEN
    signing = settings.SECRET_KEY
    raise RuntimeError(f"payment backend refused {token} ({len(signing)})")


@pages.get("/log")
def log_error():
    log.warning("retrying with %s", settings.SENTRY_DSN)
    log.error("payment failed", extra={"auth": settings.PAYMENT_API_TOKEN})
    return "logged"
"""
TASKS = """

@celery.task
def explode():
    dsn = settings.SENTRY_DSN
    raise RuntimeError(f"cannot reach {dsn}")
"""


def set_env(path, **values):
    """Set keys in a .env file: replace their lines, append the rest."""
    lines = [line for line in path.read_text().splitlines() if line.split("=", 1)[0] not in values]
    path.write_text("\n".join([*lines, *(f"{key}={value}" for key, value in values.items())]) + "\n")


@pytest.fixture(scope="module")
def service(tmp_path_factory, wheelhouse):
    """A baked service with Sentry pointed at a fake ingest, served by `make serve`; stopped after."""
    project, port = bake_for_serving(tmp_path_factory.mktemp("sentry"))
    package = project / "my_service"
    settings = (package / "settings.py").read_text()
    marker = "\n# The deployed revision"
    (package / "settings.py").write_text(settings.replace(marker, f"\n{SETTING}{marker.lstrip()}"))
    with open(package / "views.py", "a") as views:
        views.write(VIEWS)
    with open(package / "tasks.py", "a") as tasks:
        tasks.write(TASKS)
    # What a deploy writes: the revision becomes Sentry's release.
    (project / "REVISION").write_text(RELEASE + "\n")
    with FakeIngest() as ingest:
        set_env(
            project / ".env",
            SENTRY_DSN=ingest.dsn(DSN_KEY),
            APP_ENV="staging",
            PAYMENT_API_TOKEN=TOKEN,
            SENTRY_TRACES_SAMPLE_RATE="1",
            SENTRY_PROFILES_SAMPLE_RATE="1",
        )
        env_lines = (project / ".env").read_text().splitlines()
        secret_key = next(line.split("=", 1)[1] for line in env_lines if line.startswith("SECRET_KEY="))
        with serving(project, check_stop=True):
            yield {
                "project": project,
                "url": f"http://127.0.0.1:{port}",
                "ingest": ingest,
                "secrets": [secret_key, ingest.dsn(DSN_KEY), TOKEN],
            }


def mechanism(event):
    """The type of what caught an event's exception (flask, celery...); None for a message."""
    values = event.get("exception", {}).get("values") or [{}]
    return values[-1].get("mechanism", {}).get("type")


def assert_no_secret_sent(service):
    """No secret value anywhere in any envelope; the DSN's public key only in envelope headers."""
    for raw in service["ingest"].envelopes:
        for secret in service["secrets"]:
            assert secret.encode() not in raw, f"a secret was sent: {raw[:300]!r}"
        # Sentry's protocol names the public key in each envelope's header (dynamic sampling context).
        assert DSN_KEY.encode() not in raw.partition(b"\n")[2]
    # brotli is pinned in the service: the SDK compresses with it.
    assert service["ingest"].encodings == {"br"}


def test_web_error_through_nginx_reaches_sentry_with_release_and_environment(service):
    """An unhandled exception in a uWSGI worker is an event; its locals and message are scrubbed."""
    status, _, _ = request(service["url"] + "/boom", data=b"note=" + TOKEN.encode())
    assert status == 500
    event = service["ingest"].wait_for("event", lambda event: mechanism(event) == "flask")
    [exception] = event["exception"]["values"]
    assert exception["type"] == "RuntimeError" and exception["mechanism"]["type"] == "flask"
    assert exception["value"] == f"payment backend refused [Filtered] ({len(service['secrets'][0])})"
    assert (event["release"], event["environment"]) == (RELEASE, "staging")
    assert event["request"]["url"].endswith("/boom") and event["request"]["method"] == "POST"
    assert event["request"]["data"] == {"note": "[Filtered]"}
    frame = exception["stacktrace"]["frames"][-1]
    assert frame["function"] == "boom" and "[Filtered]" in frame["vars"]["token"]
    assert_no_secret_sent(service)


def test_logged_error_is_an_event_and_the_warning_its_breadcrumb(service):
    status, _, _ = get(service["url"] + "/log")
    assert status == 200
    event = service["ingest"].wait_for("event", lambda event: "payment failed" in str(event.get("logentry")))
    assert (event["release"], event["environment"]) == (RELEASE, "staging")
    assert event["extra"]["auth"] == "[Filtered]"
    crumbs = [crumb.get("message") for crumb in event["breadcrumbs"]["values"]]
    assert "retrying with [Filtered]" in crumbs
    assert_no_secret_sent(service)


def test_failed_task_in_the_attached_celery_worker_is_reported(service):
    """Sentry starts in the worker uWSGI supervises (worker_init), before it runs a task."""
    code = "from my_service.tasks import explode; explode.delay()"
    python = service["project"] / ".venv/bin/python"
    subprocess.run([python, "-c", code], cwd=service["project"], check=True, timeout=60)
    event = service["ingest"].wait_for("event", lambda event: mechanism(event) == "celery")
    [exception] = event["exception"]["values"]
    assert exception["value"] == "cannot reach [Filtered]"
    assert (event["release"], event["environment"]) == (RELEASE, "staging")
    assert_no_secret_sent(service)


def test_uwsgi_cron_job_checks_in_with_its_schedule_and_max_runtime(service):
    """uWSGI fires the heartbeat at start: in progress, then ok, under the job's monitor."""
    ingest = service["ingest"]
    ok = ingest.wait_for("check_in", lambda check_in: check_in["status"] == "ok", timeout=90)
    assert ok["monitor_slug"] == "my-service-heartbeat"
    assert (ok["release"], ok["environment"]) == (RELEASE, "staging")
    started = next(c for c in ingest.payloads("check_in") if c["check_in_id"] == ok["check_in_id"])
    assert started["status"] == "in_progress"
    assert started["monitor_config"]["schedule"] == {"type": "crontab", "value": "* * * * *"}
    assert started["monitor_config"]["max_runtime"] >= 1
    assert_no_secret_sent(service)


def test_traced_request_sends_a_transaction_and_a_profile_from_uwsgi(service):
    """With both sample rates at 1, a page served by a worker is traced and profiled."""
    status, _, _ = get(service["url"] + "/")
    assert status == 200
    ingest = service["ingest"]
    transaction = ingest.wait_for("transaction", lambda event: event["transaction"] == "pages.index")
    assert (transaction["release"], transaction["environment"]) == (RELEASE, "staging")
    profile = ingest.wait_for("profile_chunk")
    assert (profile["release"], profile["environment"]) == (RELEASE, "staging")
    assert_no_secret_sent(service)


def status_rows(output):
    """The process table of `make status`: {name: [pid, state, requests, respawns, rss...]}."""
    rows = {}
    for line in output.splitlines():
        match = re.match(r"^(worker \d+|celery)\s+(.*)$", line)
        if match:
            rows[match[1]] = match[2].split()
    return rows


def test_make_status_prints_release_workers_and_celery(service):
    """`make status` shows the deployed revision, every worker's pid, state, requests and RSS, and Celery."""
    project = service["project"]
    for _ in range(20):
        assert get(service["url"] + "/health")[0] == 200
    result = make(project, "--no-print-directory", "status", timeout=30)
    assert result.returncode == 0, result.stderr
    assert re.search(rf"^release\s+{RELEASE}$", result.stdout, flags=re.MULTILINE), result.stdout
    rows = status_rows(result.stdout)
    workers = {name: row for name, row in rows.items() if name.startswith("worker")}
    assert sorted(workers) == [f"worker {n}" for n in range(1, 5)], result.stdout
    for pid, state, _requests, _respawns, rss, unit in workers.values():
        assert state in ("idle", "busy") and unit == "MiB" and float(rss) > 10
        assert b"uWSGI worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert sum(int(row[2]) for row in workers.values()) >= 20
    pid, state, _, _, rss, _ = rows["celery"]
    assert state == "up" and float(rss) > 10
    assert pid == (project / "var/run/celery.pid").read_text().strip()


def test_status_after_stop_says_nothing_runs(service):
    """Runs last: after `make stop`, bin/status exits 3 and says so."""
    project = service["project"]
    assert make(project, "stop", timeout=90).returncode == 0
    result = subprocess.run([project / "bin/status"], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 3
    assert result.stdout.startswith("not running")
    assert os.listdir(project / "var/run").count("stats.sock") == 0
