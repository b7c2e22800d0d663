"""Sentry, in process: off without a DSN; with one, web errors, logged errors, failed tasks and cron
check-ins arrive at a local fake ingest with release and environment, and no secret value leaves."""

import gzip
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import brotli
import pytest
import sentry_sdk

from {{ cookiecutter.project_slug }} import jobs, observability, settings
from {{ cookiecutter.project_slug }}.app import create_app

DSN_KEY = "0123456789abcdef0123456789abcdef"
# Secret settings as a deployed service has them, including one a developer added (*_TOKEN).
SECRETS = {
    "DATABASE_URL": "postgresql://app:db-pass-Xk29w@db.internal:5432/app",
    "CELERY_BROKER_URL": "redis://:broker-pass-77Qz@redis.internal:6379/0",
    "PAYMENT_API_TOKEN": "tok_live_4f9b2c7e1a5d",
    "SMTP_PASSWORD": "smtp-pass-9d8e7f",
}


class FakeIngest(BaseHTTPRequestHandler):
    """Records the envelopes the SDK posts to /api/<project>/envelope/, decompressed."""

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        encoding = self.headers.get("Content-Encoding", "")
        body = {"gzip": gzip.decompress, "br": brotli.decompress}.get(encoding, bytes)(body)
        self.server.encodings.append(encoding)
        self.server.envelopes.append(body)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def items(raw):
    """(item header, payload) pairs of one raw envelope: a header line, then items (length or newline)."""
    _, _, rest = raw.partition(b"\n")
    while rest.strip():
        line, _, rest = rest.partition(b"\n")
        header = json.loads(line)
        if "length" in header:
            payload, rest = rest[: header["length"]], rest[header["length"] + 1 :]
        else:
            payload, _, rest = rest.partition(b"\n")
        yield header, payload


def payloads(envelopes, kind):
    """The JSON payloads of every recorded item of one kind (event, check_in, transaction...)."""
    pairs = (pair for raw in envelopes for pair in items(raw))
    return [json.loads(payload) for header, payload in pairs if header["type"] == kind]


def wait_for(envelopes, kind, predicate, timeout=20):
    """The first recorded item of a kind that matches; the SDK sends from a background thread."""
    deadline = time.monotonic() + timeout
    while True:
        sentry_sdk.flush(timeout=2)
        found = [item for item in payloads(envelopes, kind) if predicate(item)]
        if found or time.monotonic() > deadline:
            assert found, f"no matching {kind} in {payloads(envelopes, kind)}"
            return found[0]
        time.sleep(0.1)


def secret_forms():
    """What must never be sent: whole secret values and the passwords inside URLs."""
    passwords = ["db-pass-Xk29w", "broker-pass-77Qz"]
    values = [settings.SECRET_KEY, settings.SENTRY_DSN, *SECRETS.values(), *passwords]
    return [value.encode() for value in values]


@pytest.fixture
def envelopes(monkeypatch):
    """Sentry initialised against a fake ingest, with secret settings; after the test no secret was sent."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeIngest)
    server.envelopes, server.encodings = [], []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(settings, "SENTRY_DSN", f"http://{DSN_KEY}@127.0.0.1:{server.server_port}/1")
    for name, value in SECRETS.items():
        monkeypatch.setattr(settings, name, value, raising=False)
    observability.init_sentry()
    sentry_sdk.get_isolation_scope().clear_breadcrumbs()
    try:
        yield server.envelopes
        sentry_sdk.flush(timeout=10)
        for raw in server.envelopes:
            for secret in secret_forms():
                assert secret not in raw, f"{secret!r} was sent"
            # The DSN's public key authenticates the envelope (Sentry's protocol): only its header has it.
            assert DSN_KEY.encode() not in raw.partition(b"\n")[2]
        # brotli is pinned: the SDK compresses with it (and the fake ingest decoded it). Every test
        # here sends something, so no envelope at all is a failure, not "all brotli".
        assert server.encodings, "no envelope reached the fake ingest"
        assert set(server.encodings) == {"br"}, server.encodings
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.init()  # back to no client: later tests run without Sentry
        server.shutdown()
        server.server_close()


def test_sentry_is_off_without_a_dsn():
    """No SENTRY_DSN: nothing is set up to send, and a job still runs (its monitor is a no-op)."""
    assert settings.SENTRY_DSN == ""
    observability.init()
    assert sentry_sdk.get_client().dsn is None
    assert jobs.main(["heartbeat"]) == 0


def test_logged_error_is_an_event_and_warnings_are_its_breadcrumbs(envelopes):
    log = logging.getLogger("{{ cookiecutter.project_slug }}.billing")
    log.info("not sent: below the breadcrumb level")
    log.warning("retrying with token %s", settings.PAYMENT_API_TOKEN)
    log.error("charge failed for order %s", 42, extra={"auth": settings.PAYMENT_API_TOKEN})
    event = wait_for(envelopes, "event", lambda event: "charge failed" in json.dumps(event))
    assert event["release"] == settings.RELEASE
    assert event["environment"] == settings.APP_ENV == "test"
    assert event["logentry"]["message"] == "charge failed for order %s"
    crumbs = [crumb["message"] for crumb in event["breadcrumbs"]["values"]]
    assert crumbs == [f"retrying with token {observability.FILTERED}"]
    assert event["extra"]["auth"] == observability.FILTERED


def test_unhandled_web_error_is_reported_with_its_request(app, envelopes):
    """The Flask integration reports the exception; locals, form data and the message are scrubbed."""
    app = create_app()  # a fresh app: the shared one has served requests and takes no new route

    @app.post("/boom")
    def boom():
        connection = settings.DATABASE_URL  # secrets under innocent names, in the frame
        signing = settings.SECRET_KEY
        raise RuntimeError(f"cannot reach {connection} ({len(signing)})")

    client = app.test_client()
    response = client.post("/boom?next=" + settings.PAYMENT_API_TOKEN, data={"note": settings.SMTP_PASSWORD})
    assert response.status_code == 500
    event = wait_for(envelopes, "event", lambda event: "exception" in event)
    [exception] = event["exception"]["values"]
    assert exception["type"] == "RuntimeError"
    assert exception["mechanism"]["type"] == "flask"
    assert exception["value"] == f"cannot reach {observability.FILTERED} (46)"
    assert event["request"]["url"].endswith("/boom")
    assert event["request"]["data"] == {"note": observability.FILTERED}
    assert event["request"]["query_string"] == f"next={observability.FILTERED}"
    assert (event["release"], event["environment"]) == (settings.RELEASE, "test")
    frame = exception["stacktrace"]["frames"][-1]
    assert frame["function"] == "boom" and observability.FILTERED in frame["vars"]["signing"]


def test_traced_and_profiled_request_sends_a_transaction_and_a_profile(app, envelopes, monkeypatch):
    """Sample rates of 1: every request is a transaction with release and environment, and profiled."""
    monkeypatch.setattr(settings, "SENTRY_TRACES_SAMPLE_RATE", 1.0)
    monkeypatch.setattr(settings, "SENTRY_PROFILES_SAMPLE_RATE", 1.0)
    observability.init_sentry()
    response = app.test_client().get("/?q=" + settings.PAYMENT_API_TOKEN)
    assert response.status_code == 200
    transaction = wait_for(envelopes, "transaction", lambda event: event["transaction"] == "pages.index")
    assert (transaction["release"], transaction["environment"]) == (settings.RELEASE, "test")
    profile = wait_for(envelopes, "profile_chunk", lambda chunk: True)
    assert (profile["release"], profile["environment"]) == (settings.RELEASE, "test")
{%- if cookiecutter.use_celery %}


def test_failed_celery_task_is_reported_from_the_worker(envelopes, monkeypatch):
    from celery.app import trace
    from celery.contrib.testing.worker import start_worker
    from celery.worker.consumer import consumer

    from {{ cookiecutter.project_slug }}.tasks import celery

    # Sentry wraps Celery's build_tracer when it starts; pytest imported the worker's modules earlier
    # (collecting test_tasks.py), so hand them the wrapped one. A real worker imports them after
    # worker_init, where tasks.py starts Sentry (the template's end-to-end tests run that path).
    monkeypatch.setattr(consumer, "build_tracer", trace.build_tracer)

    @celery.task(name="tests.explode")
    def explode():
        broker = settings.CELERY_BROKER_URL  # a secret in a frame local under an innocent name
        raise RuntimeError(f"task failed talking to {broker}")

    worker = start_worker(celery, pool="solo", perform_ping_check=False, shutdown_timeout=10)
    with worker, pytest.raises(RuntimeError):
        explode.delay().get(timeout=20, interval=0.1)
    event = wait_for(envelopes, "event", lambda event: "exception" in event)
    [exception] = event["exception"]["values"]
    assert exception["mechanism"]["type"] == "celery"
    assert exception["value"] == f"task failed talking to {observability.FILTERED}"
    assert (event["release"], event["environment"]) == (settings.RELEASE, "test")
{%- endif %}


def test_cron_job_checks_in_progress_then_ok_with_its_schedule(envelopes):
    assert jobs.run("heartbeat") == 0
    slug = "{{ cookiecutter.project_slug | replace('_', '-') }}-heartbeat"
    wait_for(envelopes, "check_in", lambda check_in: check_in["status"] == "ok")
    statuses = [check_in["status"] for check_in in payloads(envelopes, "check_in")]
    assert statuses == ["in_progress", "ok"]
    first = payloads(envelopes, "check_in")[0]
    assert first["monitor_slug"] == slug
    assert first["monitor_config"]["schedule"] == {"type": "crontab", "value": "* * * * *"}
    # uWSGI's harakiri (50 s) kills a stuck run without a final check-in: Sentry flags it after this.
    assert first["monitor_config"]["max_runtime"] == 2
    assert (first["release"], first["environment"]) == (settings.RELEASE, "test")


def test_failing_cron_job_checks_in_error_and_reports_the_exception(envelopes, monkeypatch):
    def broken():
        raise OSError("disk full")

    monkeypatch.setitem(jobs.JOBS, "heartbeat", broken)
    with pytest.raises(OSError):
        jobs.run("heartbeat")
    wait_for(envelopes, "check_in", lambda check_in: check_in["status"] == "error")


def test_secret_values_are_found_by_setting_name_and_in_urls():
    config = types.SimpleNamespace(
        SECRET_KEY="k" * 50,
        GITHUB_TOKEN="ghp_abcdef123456",
        SMTP_PASSWORD="hunter2hunter2",
        STRIPE_KEY_ID="sk_live_xyz987",
        SENTRY_DSN="https://abcdef0123456789@o1.ingest.example.com/7",
        DATABASE_URL="postgresql://app:p%40ss-word@db/app",
        CELERY_BROKER_URL="sqla+sqlite:////srv/app/data/broker.sqlite3",
        SHORT_TOKEN="abc",
        APP_ENV="production",
        lowercase_token="not a setting",
    )
    found = set(observability.secret_values(config))
    assert {"k" * 50, "ghp_abcdef123456", "hunter2hunter2", "sk_live_xyz987"} <= found
    assert {config.SENTRY_DSN, "abcdef0123456789"} <= found
    assert {config.DATABASE_URL, "p%40ss-word", "p@ss-word"} <= found
    # Not secrets: a URL without a password, a value too short to match safely, ordinary settings.
    assert not found & {config.CELERY_BROKER_URL, "abc", "production", "not a setting"}


def test_scrubber_keeps_check_ins_and_replaces_values_under_any_key():
    scrub = observability.value_scrubber(["s3cret-value"])
    check_in = {"type": "check_in", "monitor_slug": "job", "status": "ok"}
    assert scrub(check_in, {}) == check_in
    event = {"extra": {"innocent": ["x s3cret-value y"], "s3cret-value": 1}}
    assert scrub(event, {}) == {"extra": {"innocent": ["x [Filtered] y"], "[Filtered]": 1}}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("SENTRY_DSN", "https://sentry.example.com/12"),
        ("SENTRY_DSN", "not-a-dsn-but-maybe-a-secret"),
        ("SENTRY_TRACES_SAMPLE_RATE", "1.5"),
        ("SENTRY_PROFILES_SAMPLE_RATE", "-0.1"),
    ],
)
def test_bad_sentry_setting_stops_start_up_with_one_line(key, value):
    """A bad DSN or sample rate is refused at start-up, naming the key and not echoing the value."""
    env = {**os.environ, key: value}
    command = [sys.executable, "-m", "{{ cookiecutter.project_slug }}.settings", "APP_ENV"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert key in result.stderr and value not in result.stderr
    assert "Traceback" not in result.stderr


def test_cron_monitor_schedules_match_the_uwsgi_cron_lines():
    """Sentry expects each job when uWSGI runs it, for at least as long as uWSGI lets it run."""
    ini = (Path(settings.BASE_DIR) / "deploy" / "uwsgi.ini").read_text()
    fields = ("minute", "hour", "day", "month", "week")
    for line in re.findall(r"^cron2 = (.+)$", ini, flags=re.MULTILINE):
        options, job = dict(o.split("=") for o in line.split()[0].split(",")), line.split()[-1]

        def crontab(value):
            return "*" if value == "-1" else f"*/{value[1:]}" if value.startswith("-") else value

        schedule = " ".join(crontab(options.get(field, "-1")) for field in fields)
        assert jobs.SCHEDULES[job] == (schedule, int(options["harakiri"])), line
