"""Sentry: off without a DSN; with one, errors and logged errors arrive with release and environment."""

import gzip
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import sentry_sdk

from {{ cookiecutter.project_slug }} import observability, settings


class FakeIngest(BaseHTTPRequestHandler):
    """Records the raw envelopes the SDK posts to /api/<project>/envelope/."""

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.server.envelopes.append(body)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def envelopes(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeIngest)
    server.envelopes = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(settings, "SENTRY_DSN", f"http://public@127.0.0.1:{server.server_port}/1")
    observability.init_sentry()
    try:
        yield server.envelopes
    finally:
        sentry_sdk.get_client().close()
        server.shutdown()
        server.server_close()


def events(raw_envelopes):
    """The event payloads (items with a level) in the recorded envelopes."""
    items = (json.loads(line) for raw in raw_envelopes for line in raw.splitlines() if line.startswith(b"{"))
    return [item for item in items if "level" in item]


def test_sentry_is_off_without_a_dsn():
    assert settings.SENTRY_DSN == ""
    observability.init()
    assert not sentry_sdk.get_client().is_active()


def test_logged_error_arrives_with_release_and_environment(envelopes):
    logging.getLogger("{{ cookiecutter.project_slug }}.billing").error("charge failed for order %s", 42)
    sentry_sdk.flush(timeout=10)
    [event] = [event for event in events(envelopes) if "charge failed" in json.dumps(event)]
    assert event["release"] == settings.RELEASE
    assert event["environment"] == settings.APP_ENV == "test"


def test_secret_key_never_leaves_in_an_event(envelopes):
    """Frame locals are sent with exceptions: the scrubber must blank the secret key."""
    secret_key = settings.SECRET_KEY
    try:
        raise RuntimeError("boom")
    except RuntimeError as error:
        sentry_sdk.capture_exception(error)
    sentry_sdk.flush(timeout=10)
    assert events(envelopes), "no event arrived"
    assert all(secret_key.encode() not in raw for raw in envelopes)
