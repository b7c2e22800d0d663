from {{ cookiecutter.project_slug }} import db, settings
from {{ cookiecutter.project_slug }}.app import create_app


def test_index_links_a_hashed_stylesheet_that_exists(client):
    """The page references its CSS by content hash, and the hashed file is in STATIC_ROOT."""
    response = client.get("/")
    assert response.status_code == 200
    href = response.text.split('rel="stylesheet" href="')[1].split('"')[0]
    assert href.startswith("/static/build/css/site.") and href.endswith(".css")
    assert (settings.STATIC_ROOT / href.removeprefix("/static/")).is_file()


def test_a_cdn_static_url_serves_the_hashed_files_and_its_origin_is_allowed(monkeypatch):
    """STATIC_URL on a CDN: pages link the same hashed names there, and their own
    Content-Security-Policy lets the browser load them (nginx's same-origin one would not)."""
    monkeypatch.setattr(settings, "STATIC_URL", "https://cdn.example.net/assets/")
    response = create_app().test_client().get("/", headers={"Host": settings.ALLOWED_HOSTS[0]})
    href = response.text.split('rel="stylesheet" href="')[1].split('"')[0]
    assert href.startswith("https://cdn.example.net/assets/build/css/site.") and href.endswith(".css")
    assert (settings.STATIC_ROOT / href.removeprefix("https://cdn.example.net/assets/")).is_file()
    policy = response.headers["Content-Security-Policy"]
    assert policy.startswith("default-src 'self' https://cdn.example.net;"), policy


def test_health_reports_release_and_dependencies(client):
    """/health answers 200 with the release and the state of each dependency."""
    response = client.get("/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["release"] == settings.RELEASE
    assert body["database"] == "ok"
    assert body["broker"] in {"ok", "disabled"}
    assert body["cache"] == "in-process"


def test_health_is_503_without_a_traceback_when_the_database_is_down(client, monkeypatch, tmp_path):
    """An unreachable database turns /health into a 503 naming the database, not a 500."""
    monkeypatch.setattr(settings, "DATABASE_URL", f"sqlite:///{tmp_path}/missing/dir/db.sqlite3")
    try:
        response = client.get("/health")
    finally:
        db.dispose()
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "error"
    assert body["database"].startswith("error: ")
    assert "missing/dir" not in response.text


def test_health_is_503_when_the_sqlite_database_cannot_be_written(client, monkeypatch, tmp_path):
    """A database SQLite can read but not write (here its journal cannot be created, as on a full
    disk or a read-only directory) is down for /health: SELECT 1 alone would not notice."""
    monkeypatch.setattr(settings, "DATABASE_URL", f"sqlite:///{tmp_path}/db.sqlite3")
    try:
        assert client.get("/health").get_json()["database"] == "ok"
        (tmp_path / "db.sqlite3-journal").mkdir()
        response = client.get("/health")
    finally:
        db.dispose()
    assert response.status_code == 503
    assert response.get_json()["database"] == "error: OperationalError"


def test_unknown_host_is_refused(client):
    """Requests for a Host outside ALLOWED_HOSTS get 400."""
    assert client.get("/", headers={"Host": "evil.example.net"}).status_code == 400
    assert client.get("/", headers={"Host": "localhost:{{ cookiecutter.http_port }}"}).status_code == 200
