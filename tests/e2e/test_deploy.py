"""End to end: `make deploy` and `make rollback` under load, through nginx, without a failed request."""

import http.client
import json
import os
import subprocess
import threading
import time

import pytest
from conftest import bake, free_port, require

pytestmark = [pytest.mark.e2e, pytest.mark.venv]
GIT = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com"]


class Load:
    """Bounded keep-alive load on 127.0.0.1:port: `threads` clients loop GET / until stopped."""

    def __init__(self, port, threads=16, max_seconds=300):
        self.port, self.deadline = port, time.monotonic() + max_seconds
        self.ok, self.failures, self.running = 0, [], True
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(threads)]

    def client(self):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while self.running and time.monotonic() < self.deadline:
            try:
                connection.request("GET", "/")
                response = connection.getresponse()
                response.read()
                outcome = response.status
            except (OSError, http.client.HTTPException) as error:
                outcome = repr(error)
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            with self.lock:
                if outcome == 200:
                    self.ok += 1
                else:
                    self.failures.append(outcome)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        for thread in self.threads:
            thread.join(timeout=60)


def sh(project, *command, check=True, **env):
    result = subprocess.run(
        command, cwd=project, capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )
    if check:
        assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def commit(project, message):
    sh(project, *GIT, "add", "-A")
    sh(project, *GIT, "commit", "-qm", message)
    return sh(project, "git", "rev-parse", "--short", "HEAD").stdout.strip()


def health(port):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/health")
    return json.loads(connection.getresponse().read())


@pytest.fixture(scope="module")
def service(tmp_path_factory, wheelhouse):
    """A baked service in git, first deployed (and so started) into var/deploy; stopped after."""
    require("nginx")
    require("make")
    port = free_port()
    project = bake(tmp_path_factory.mktemp("deploy"), http_port=port)
    sh(project, "git", "init", "-q")
    first = commit(project, "v1")
    try:
        sh(project, "make", "deploy", KEEP_RELEASES="3")
        yield {"project": project, "port": port, "root": project / "var" / "deploy", "first": first}
    finally:
        sh(project, "make", "stop", check=False)


def test_first_deploy_serves_the_committed_revision_from_a_release(service):
    root = service["root"]
    assert health(service["port"])["release"] == service["first"]
    current = (root / "current").resolve()
    assert current.parent == root / "releases" and current.name.endswith("-" + service["first"])
    assert not (current / ".git").exists(), "the served code must not be a git working copy"
    assert (current / ".env").resolve() == root / "shared" / ".env"


def test_deploys_a_broken_release_and_a_rollback_drop_no_request(service):
    """Under load: a deploy, a refused broken release, a rollback: 0 failed requests, each step observed."""
    project, port, root = service["project"], service["port"], service["root"]
    media = root / "shared" / "media" / "upload.txt"
    media.write_text("kept")
    index = project / "my_service" / "templates" / "index.html"
    with Load(port) as load:
        index.write_text(index.read_text().replace("It works.", "It works, v2."))
        second = commit(project, "v2")
        sh(project, "make", "deploy", KEEP_RELEASES="3")
        assert health(port)["release"] == second

        wsgi = project / "my_service" / "wsgi.py"
        wsgi.write_text(wsgi.read_text() + "\nraise RuntimeError('broken release')\n")
        commit(project, "broken")
        refused = sh(project, "make", "deploy", check=False, KEEP_RELEASES="3")
        assert refused.returncode != 0
        assert "unhealthy" in refused.stderr and "broken release" in refused.stderr
        assert (root / "current").resolve().name.endswith("-" + second)
        assert health(port)["release"] == second

        sh(project, "make", "rollback")
        assert health(port)["release"] == service["first"]
        time.sleep(1)
    assert load.ok > 100
    assert load.failures == []
    assert media.read_text() == "kept"
