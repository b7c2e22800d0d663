from celery.contrib.testing.worker import start_worker

from {{ cookiecutter.project_slug }}.tasks import add, celery


def test_task_round_trip_through_the_configured_broker():
    """A real worker consumes from the configured broker (embedded SQLite by default)."""
    with start_worker(celery, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        assert add.delay(2, 3).get(timeout=20, interval=0.1) == 5


def test_tasks_are_acknowledged_late_and_json_only():
    """A worker killed mid-task leaves the task for another worker; no pickle."""
    assert celery.conf.task_acks_late is True
    assert celery.conf.accept_content == ["json"]


def test_health_is_503_when_the_broker_is_unreachable(client, monkeypatch):
    """A broker that refuses connections turns /health into a 503 naming the broker, pages stay up."""
    monkeypatch.setattr(celery.conf, "broker_url", "redis://127.0.0.1:1/0")
    response = client.get("/health")
    assert response.status_code == 503
    assert response.get_json()["broker"].startswith("error: ")
    assert response.get_json()["database"] == "ok"
    assert client.get("/").status_code == 200
