"""End to end: the nginx site refuses what it must, sends its headers everywhere, and serves HTTPS.

A default service runs under `make serve`; raw HTTP requests (paths exactly as written, nothing
normalised by a client library) go through its nginx. The use_tls site is checked with `nginx -t`
and then served for real with a self-signed certificate made by openssl, in front of the same uWSGI.
"""

import grp
import http.client
import os
import pwd
import re
import socket
import ssl
import stat
import subprocess
import time
import uuid

import pytest

from testkit.bake import GIT, run_cookiecutter
from testkit.env import free_port, require, wait_for
from testkit.http import assert_mozilla_intermediate_tls
from testkit.serve import bake_for_serving, serving

pytestmark = [pytest.mark.e2e, pytest.mark.venv]
SECRET_CONTENT = "TOP-SECRET-CONTENT-4f1c"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "strict-origin-when-cross-origin",
}


# A page of the user's that sets its own policy: nginx's default must step aside, not add a second.
# Then pages that answer every other status an app produces: a redirect, an error, a dead worker.
USER_VIEWS = """

@pages.route("/own-csp")
def own_csp():
    return "strict page", 200, {"Content-Security-Policy": "default-src 'none'"}


@pages.route("/moved")
def moved():
    from flask import redirect

    return redirect("/", 302)


@pages.route("/broken")
def broken():
    raise RuntimeError("a bug in a view")


@pages.route("/worker-dies")
def worker_dies():
    import os

    os._exit(1)
"""
# Leftovers (names and nginx paths) that exist on disk wherever nginx could find a file: the code
# directory, nginx's default root (<prefix>/html: the server has no root of its own), shared/static
# and shared/media. Only nginx's refusal keeps them from being served.
LEFTOVERS = (".env", ".git/config", ".git/HEAD", ".htaccess", "index.html~", "settings.py.bak")
LEFTOVERS += ("site.css~", "site.css.bak", "site.CSS.BAK", "old.orig", "x.swp")


def raw_request(port, path, method="GET", headers=None, body=b"", host="localhost"):
    """(status, headers as a list of pairs, body) for one request sent byte for byte."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
    head += "".join(f"{key}: {value}\r\n" for key, value in (headers or {}).items())
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(head.encode() + b"\r\n" + body)
        answer = b"".join(iter(lambda: client.recv(65536), b""))
    return parse(answer)


def parse(answer):
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    return int(status_line.split()[1]), [tuple(line.split(": ", 1)) for line in lines], body.decode("latin-1")


def values(headers, name):
    return [value for key, value in headers if key.lower() == name.lower()]


@pytest.fixture(scope="module")
def served(tmp_path_factory, wheelhouse):
    """A default service under `make serve` on a free port, with files nginx must never hand out."""
    project, port = bake_for_serving(tmp_path_factory.mktemp("hardening"))
    with open(project / "my_service/views.py", "a") as views:
        views.write(USER_VIEWS)
    with serving(project):
        for name in LEFTOVERS:
            for root in (project, project / "var/nginx/html", project / "var/static", project / "var/media"):
                if not (root / name).exists():
                    (root / name).parent.mkdir(parents=True, exist_ok=True)
                    (root / name).write_text(SECRET_CONTENT)
        (project / "var/static/visible.css").write_text("body{}")
        (project / "var/media/report.html").write_text("<script>alert(1)</script>")
        yield {"project": project, "port": port}


REFUSED_PATHS = [
    "/.env",
    "/.git/config",
    "/.git/HEAD",
    "/.htaccess",
    "/static/.env",
    "/media/.env",
    "/static/.git/config",
    "/static/%2e%2e/.env",
    "/static/%2E%2E/.env",
    "/static/../.env",
    "/static/..%2f.env",
    "/static/../../etc/passwd",
    "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/static//..//..//etc/passwd",
    "/static/build/../../.env",
    "/static/site.css~",
    "/static/site.css.bak",
    "/static/site.CSS.BAK",
    "/static/old.orig",
    "/static/x.swp",
    "/media/site.css.bak",
    "/index.html~",
    "/settings.py.bak",
]


def reached_uwsgi(served, marker):
    """Whether a request with `marker` in its query string reached uWSGI: a request sent after it,
    which reaches the app, is waited for in uWSGI's log first (the log is written after answering).
    uWSGI logs only 4xx, 5xx and slow requests, so both are pages the app does not have: a refused
    path that got through would be the app's 404, and logged."""
    log, after = served["project"] / "var/log/uwsgi.log", f"{marker}-after"
    assert raw_request(served["port"], f"/no-such-page?probe={after}")[0] == 404
    wait_for(lambda: after in log.read_text(), 10, "uWSGI logs a request")
    return f"probe={marker} " in log.read_text()


@pytest.mark.parametrize("path", REFUSED_PATHS)
def test_dotfiles_backups_and_traversal_are_refused_by_nginx_itself(served, path):
    """Sent raw (no client-side normalisation), with the files on disk wherever nginx could find
    them: nginx answers 404 or 400 itself (the app never sees the request), never a file's
    content, with the security headers."""
    marker = f"refused-{uuid.uuid4().hex}"
    status, headers, body = raw_request(served["port"], f"{path}?probe={marker}")
    assert status in (400, 404), (path, status)
    assert SECRET_CONTENT not in body and "root:" not in body and "SECRET_KEY" not in body
    assert values(headers, "Server") == ["nginx"]
    for name, value in SECURITY_HEADERS.items():
        assert values(headers, name) == [value], (path, status, name)
    assert not reached_uwsgi(served, marker), f"{path} was passed to the app, not refused by nginx"


def test_every_location_sends_the_security_headers_once(served):
    """The add_header trap: every location re-includes the snippet; an app page's own CSP wins alone."""
    port, project = served["port"], served["project"]
    _, _, page = raw_request(port, "/")
    stylesheet = re.search(r'href="(/static/build/[^"]+)"', page).group(1)
    answers = {
        "app page": raw_request(port, "/"),
        "health": raw_request(port, "/health"),
        "app 404": raw_request(port, "/no-such-page"),
        "hashed asset": raw_request(port, stylesheet),
        "static": raw_request(port, "/static/visible.css"),
        "media": raw_request(port, "/media/report.html"),
        "refused dotfile": raw_request(port, "/.env"),
    }
    assert answers["hashed asset"][0] == answers["static"][0] == answers["media"][0] == 200
    for where, (status, headers, _) in answers.items():
        for name, value in SECURITY_HEADERS.items():
            assert values(headers, name) == [value], (where, status, name)
        assert values(headers, "Server") == ["nginx"], where
        assert values(headers, "Strict-Transport-Security") == [], "HSTS only over HTTPS"
        assert len(values(headers, "Content-Security-Policy")) <= 1, where
    csp = values(answers["app page"][1], "Content-Security-Policy")
    assert csp and csp[0].startswith("default-src 'self'")
    status, headers, _ = raw_request(port, "/own-csp")
    assert status == 200
    assert values(headers, "Content-Security-Policy") == ["default-src 'none'"]
    # Uploaded files: downloads of inert data, never a page that runs scripts.
    media = answers["media"][1]
    assert values(media, "Content-Type") == ["application/octet-stream"]
    assert values(media, "Content-Security-Policy") == ["default-src 'none'; sandbox"]
    assert values(answers["hashed asset"][1], "Cache-Control") == ["public, max-age=31536000, immutable"]
    assert (project / "var/static/visible.css").exists()


# (what answers, request) -> the status it gets; 413 has a test of its own below. The site makes
# no 403: try_files answers a directory with 404, and no location denies.
EVERY_STATUS = {
    ("app page", "/"): 200,
    ("app redirect", "/moved"): 302,
    ("nginx: a path above the root", "/static/../../etc/passwd"): 400,
    ("nginx: a request without a path", ""): 400,
    ("app: an unknown Host", "/", "attacker.example.net"): 400,
    ("nginx: a directory of static files", "/static/build/"): 404,
    ("nginx: a refused dotfile", "/.env"): 404,
    ("nginx: a missing static file", "/static/missing.css"): 404,
    ("app: no such page", "/no-such-page"): 404,
    ("app: a method the page lacks", "/health", "localhost", "POST"): 405,
    ("app: an exception in a view", "/broken"): 500,
    ("nginx: the worker died mid-request", "/worker-dies"): 502,
}


@pytest.mark.parametrize("case", list(EVERY_STATUS), ids=[case[0] for case in EVERY_STATUS])
def test_every_status_from_nginx_or_the_app_carries_the_security_headers_once(served, case):
    """Success, redirect and error answers alike, whoever produced them, carry each security
    header exactly once (`always`, and the add_header trap), and no nginx version."""
    _, path, host, method = (*case, "localhost", "GET")[:4]
    status, headers, body = raw_request(served["port"], path, method, host=host)
    assert status == EVERY_STATUS[case], (case, status, body[:300])
    for name, value in SECURITY_HEADERS.items():
        assert values(headers, name) == [value], (case, status, name)
    assert values(headers, "Server") == ["nginx"] and "nginx/" not in body


def test_oversized_upload_is_refused_with_413_before_reaching_the_app(served):
    """A real 11 MiB POST: nginx answers 413 (limit 10 MiB); the app never sees the request."""
    port, log = served["port"], served["project"] / "var/log/uwsgi.log"
    before = log.read_text().count("POST /upload")
    size = 11 * 1024 * 1024
    head = f"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(head.encode())
        chunk, sent = b"x" * 65536, 0
        try:
            while sent < size:
                client.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # nginx may close its side once it has answered
        answer = b"".join(iter(lambda: client.recv(65536), b""))
    status, headers, body = parse(answer)
    assert status == 413
    assert "413" in body and "nginx/" not in body, "no version on error pages"
    for name, value in SECURITY_HEADERS.items():
        assert values(headers, name) == [value], name
    assert log.read_text().count("POST /upload") == before
    # A body under the limit goes through to the app (which has no /upload: 404 or 405 from Flask).
    small_status, _, _ = raw_request(port, "/upload", "POST", {"Content-Length": "1024"}, b"x" * 1024)
    assert small_status in (404, 405)


def test_a_client_that_never_finishes_its_headers_is_dropped(served):
    """client_header_timeout (15 s): a slowloris connection is closed, not held forever."""
    with socket.create_connection(("127.0.0.1", served["port"]), timeout=40) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        started = time.monotonic()
        leftover = client.recv(65536)
        elapsed = time.monotonic() - started
    assert 10 < elapsed < 30, elapsed
    assert b"200 OK" not in leftover


def test_the_uwsgi_socket_is_ours_and_not_world_accessible(served):
    """660, owned by the user who runs the service, group its own locally (www-data on servers)."""
    info = os.stat(served["project"] / "var/run/uwsgi.sock")
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert (info.st_uid, info.st_gid) == (os.getuid(), os.getgid())


def test_env_is_never_printed_by_the_service_commands(served):
    """serve's output, the logs and `make doctor` never show the SECRET_KEY."""
    project = served["project"]
    secret = next(
        line.split("=", 1)[1]
        for line in (project / ".env").read_text().splitlines()
        if line.startswith("SECRET_KEY=")
    )
    doctor = subprocess.run(["bin/doctor"], cwd=project, capture_output=True, text=True, timeout=120)
    assert doctor.returncode == 0, doctor.stdout
    assert "OK   socket    socket mode 660" in doctor.stdout
    logs = "".join(path.read_text(errors="replace") for path in (project / "var/log").glob("*.log"))
    assert secret not in doctor.stdout + doctor.stderr + logs


def make_certificate(directory):
    """A self-signed certificate for localhost, made the way an operator would test one."""
    require("openssl")
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", directory / "privkey.pem",
         "-out", directory / "fullchain.pem"],
        check=True, capture_output=True,
    )  # fmt: skip
    return directory / "fullchain.pem"


def tls_harness(directory, site, http_port, https_port):
    """The use_tls site on loopback ports, wrapped as on a server (nginx.conf, temp paths)."""
    site = "".join(line for line in site.splitlines(keepends=True) if "listen [::]" not in line)
    site = site.replace("listen 80;", f"listen 127.0.0.1:{http_port};")
    site = site.replace("listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;")
    (directory / "site.conf").write_text(site)
    temp = "".join(
        f"{name}_temp_path {directory}/{name};\n"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # Root's nginx runs workers as nobody, who cannot open the 660 socket: run them as us.
    me = f"{pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name}"
    user = f"user {me};\n" if os.getuid() == 0 else ""
    (directory / "nginx.conf").write_text(
        f"{user}worker_processes 1;\npid {directory}/nginx.pid;\nerror_log {directory}/error.log;\n"
        f"events {{}}\nhttp {{\ninclude /etc/nginx/mime.types;\naccess_log off;\n"
        f"{temp}include {directory}/site.conf;\n}}\n"
    )


def test_tls_site_serves_https_with_hsts_and_redirects_plain_http(served, tmp_path):
    """use_tls: `nginx -t` passes with real certificate files; HTTPS answers with HSTS, HTTP redirects."""
    nginx = require("nginx")
    result = run_cookiecutter(tmp_path, "use_tls=true")
    assert result.returncode == 0, result.stderr
    tls_project, project = tmp_path / "my_service", served["project"]
    certificate = make_certificate(project / "var/tls")
    (project / "var/acme/.well-known/acme-challenge").mkdir(parents=True)
    (project / "var/acme/.well-known/acme-challenge/token-1").write_text("challenge-answer")
    for name in LEFTOVERS:
        for directory in ("var/acme", "var/acme/.well-known", "var/acme/.well-known/acme-challenge"):
            (project / directory / name).parent.mkdir(parents=True, exist_ok=True)
            (project / directory / name).write_text(SECRET_CONTENT)
    # Release files from the use_tls bake; state (socket, certificates) from the running service.
    site = (tls_project / "deploy/nginx.conf").read_text()
    site = site.replace("/srv/my_service/current", str(tls_project)).replace(
        "/srv/my_service/shared", str(project / "var")
    )
    http_port, https_port = free_port(), free_port()
    harness = tmp_path / "nginx"
    harness.mkdir()
    tls_harness(harness, site, http_port, https_port)
    command = [nginx, "-p", f"{harness}/", "-c", "nginx.conf", "-e", "stderr"]
    checked = subprocess.run([*command, "-t"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    subprocess.run(command, check=True, capture_output=True, timeout=30)
    pid = None
    try:
        pid = int((harness / "nginx.pid").read_text())
        context = ssl.create_default_context(cafile=str(certificate))
        connection = http.client.HTTPSConnection("localhost", https_port, context=context, timeout=30)
        connection.request("GET", "/")
        response = connection.getresponse()
        body = response.read().decode()
        assert response.status == 200 and "It works." in body
        assert response.headers.get_all("Strict-Transport-Security") == [
            "max-age=31536000; includeSubDomains"
        ]
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get_all(name) == [value]
        connection.request("GET", "/.env")
        response = connection.getresponse()
        response.read()
        assert response.status == 404
        assert response.headers.get_all("Strict-Transport-Security") == [
            "max-age=31536000; includeSubDomains"
        ]
        connection.close()
        assert_mozilla_intermediate_tls("127.0.0.1", https_port, certificate, "localhost")
        # Plain HTTP: a redirect to the same path over HTTPS, and ACME challenges for renewals.
        status, headers, _ = raw_request(http_port, "/health?x=1")
        assert status == 301
        assert values(headers, "Location") == ["https://localhost/health?x=1"]
        assert values(headers, "Strict-Transport-Security") == []
        status, _, body = raw_request(http_port, "/.well-known/acme-challenge/token-1")
        assert (status, body) == (200, "challenge-answer")
        # Leftovers in the ACME root (beside the challenges, and above them) are never served.
        for name in LEFTOVERS:
            for path in (f"/.well-known/acme-challenge/{name}", f"/.well-known/{name}", f"/{name}"):
                status, _, body = raw_request(http_port, path)
                assert status in (301, 400, 404) and SECRET_CONTENT not in body, (path, status)
    finally:
        if pid:
            os.kill(pid, 15)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
                time.sleep(0.1)


def test_make_serve_runs_a_use_tls_site_as_plain_http_on_loopback(tmp_path):
    """bin/serve's local site drops the redirect server and certificate lines; nginx -t accepts it."""
    nginx = require("nginx")
    result = run_cookiecutter(tmp_path, "use_tls=true", "http_port=18443")
    assert result.returncode == 0, result.stderr
    project = tmp_path / "my_service"
    written = subprocess.run(
        ["bin/serve", "--nginx-config", tmp_path / "local"], cwd=project, capture_output=True, text=True
    )
    assert written.returncode == 0, written.stderr
    site = (tmp_path / "local/site.conf").read_text()
    assert "ssl" not in site.replace("# Certificates", "") and "return 301" not in site
    assert re.findall(r"listen [^;]+;", site) == ["listen 127.0.0.1:8080;"]
    checked = subprocess.run(
        [nginx, "-t", "-p", f"{tmp_path}/local/", "-c", "nginx.conf", "-e", "stderr"],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stderr


def ini_values(ini):
    """{key: [values]} of a uWSGI ini, comments skipped."""
    found = {}
    for line in ini.splitlines():
        if "=" in line and not line.startswith(("#", ";")):
            key, value = (part.strip() for part in line.split("=", 1))
            found.setdefault(key, []).append(value)
    return found


def test_uwsgi_is_bounded_against_leaks_stuck_requests_and_big_headers(tmp_path):
    """harakiri (below nginx's read timeout), reload-on-rss, buffer-size, post-buffering, a 660 socket."""
    result = run_cookiecutter(tmp_path)
    assert result.returncode == 0, result.stderr
    project = tmp_path / "my_service"
    ini = ini_values((project / "deploy/uwsgi.ini").read_text())
    assert int(ini["harakiri"][0]) == 60
    assert int(ini["reload-on-rss"][0]) > 0
    assert int(ini["buffer-size"][0]) >= 32768
    assert int(ini["post-buffering"][0]) > 0
    # Recycling by request count met a chain reload and reset a connection: memory only.
    assert "max-requests" not in ini
    assert ini["chmod-socket"] == ["660"] and ini["chown-socket"] == ["%U:%(socket_group)"]
    assert "set-placeholder" in ini and "socket_group=www-data" in ini["set-placeholder"]
    site = (project / "deploy/nginx.conf").read_text()
    read_timeout = int(re.search(r"uwsgi_read_timeout (\d+)s;", site).group(1))
    assert read_timeout > int(ini["harakiri"][0]), "uWSGI, not nginx, decides a request is stuck"
    assert site.count("server_tokens off;") == site.count("server {")
    assert "Strict-Transport-Security" not in (project / "deploy/nginx/security-headers.conf").read_text()


def test_env_is_ignored_by_git_and_never_committed(tmp_path):
    """In a fresh repository of the baked service, `git add -A` stages .env.example but never .env."""
    result = run_cookiecutter(tmp_path)
    assert result.returncode == 0, result.stderr
    project = tmp_path / "my_service"
    for command in (["init", "-q"], ["add", "-A"]):
        subprocess.run([*GIT, *command], cwd=project, check=True, capture_output=True)
    tracked = subprocess.run([*GIT, "ls-files"], cwd=project, check=True, capture_output=True, text=True)
    assert ".env.example" in tracked.stdout.splitlines()
    assert ".env" not in tracked.stdout.splitlines()
    assert stat.S_IMODE(os.stat(project / ".env").st_mode) == 0o600
