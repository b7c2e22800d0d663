"""The cache behind GET /notes: one Redis shared by every process, and a Redis that is down is a 503."""

import os
import subprocess
import sys
import uuid

import pytest

from {{ cookiecutter.project_slug }} import settings
from {{ cookiecutter.project_slug }}.app import create_app

# Another process of the service (another uWSGI worker, or another host) posts a note.
POST_FROM_ANOTHER_PROCESS = """
from {{ cookiecutter.project_slug }}.app import create_app
response = create_app().test_client().post("/notes", json={"text": "from another process"})
assert response.status_code == 201, response.text
"""


def post_from_another_process(cache_url, key_prefix):
    env = {**os.environ, "DATABASE_URL": settings.DATABASE_URL, "CACHE_URL": cache_url}
    env["CACHE_PREFIX"] = key_prefix
    command = [sys.executable, "-c", POST_FROM_ANOTHER_PROCESS]
    subprocess.run(command, cwd=settings.BASE_DIR, env=env, check=True, timeout=60)


def app_with_cache(monkeypatch, url, key_prefix="test:"):
    monkeypatch.setattr(settings, "CACHE_URL", url)
    monkeypatch.setattr(settings, "CACHE_PREFIX", key_prefix)
    return create_app()


def test_a_note_posted_by_another_process_clears_the_shared_redis_cache(monkeypatch, database, redis_url):
    """With CACHE_URL=redis://, a write in one worker is read at once by every other worker."""
    key_prefix = f"test-{uuid.uuid4().hex}:"
    client = app_with_cache(monkeypatch, redis_url, key_prefix).test_client()
    assert client.get("/notes").get_json() == {"notes": []}
    post_from_another_process(redis_url, key_prefix)
    assert [note["text"] for note in client.get("/notes").get_json()["notes"]] == ["from another process"]


def test_the_in_process_cache_is_each_workers_own(monkeypatch, database):
    """memory:// (the default) is per process: another worker's write shows once the cached list expires."""
    client = app_with_cache(monkeypatch, "memory://").test_client()
    assert client.get("/notes").get_json() == {"notes": []}
    post_from_another_process("memory://", "test:")
    assert client.get("/notes").get_json() == {"notes": []}


def test_health_reports_a_redis_cache_that_answers(monkeypatch, redis_url):
    client = app_with_cache(monkeypatch, redis_url).test_client()
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json()["cache"] == "ok"


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_health_is_503_when_the_redis_cache_is_down_and_pages_still_answer(monkeypatch, database):
    """A Redis cache nobody answers on turns /health into a 503 naming the cache; GET /notes reads the
    database instead, POST /notes still writes."""
    client = app_with_cache(monkeypatch, "redis://127.0.0.1:1/0").test_client()
    response = client.get("/health")
    assert response.status_code == 503
    body = response.get_json()
    assert body["cache"] == "error: ConnectionError"
    assert body["database"] == "ok"
    assert client.post("/notes", json={"text": "written while the cache is down"}).status_code == 201
    notes = client.get("/notes").get_json()["notes"]
    assert [note["text"] for note in notes] == ["written while the cache is down"]
