"""Bad settings stop the service with one line naming the key; `make doctor` finds each broken thing.

One baked service (with its venv) serves the whole module; each test breaks one thing in it and
puts it back afterwards.
"""

import os
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from testkit.bake import bake, run_cookiecutter
from testkit.env import require

pytestmark = pytest.mark.venv

# (key, bad value, secret): a secret's value must appear nowhere in the output.
BAD_SETTINGS = [
    ("APP_ENV", "prod", False),
    ("SECRET_KEY", "short-but-secret-Xq9", True),
    ("SECRET_KEY", "", True),
    ("SECRET_KEY", None, True),
    ("DEBUG", "maybe", False),
    ("LOG_LEVEL", "LOUD", False),
    ("ALLOWED_HOSTS", "", False),
    ("HTTP_PORT", "0", False),
    ("HTTP_PORT", "eighty", False),
    ("HTTP_PORT", "70000", False),
    ("DISK_FREE_MIN_MB", "-5", False),
    ("DATABASE_URL", "mysql://admin:db-pass-Zr81@db.internal/app", True),
    ("DATABASE_URL", "no url at all", True),
    ("CACHE_URL", "memcached://cache:cache-pass-Mc31@cache.internal:11211", True),
    ("CACHE_PREFIX", "", False),
    ("CELERY_BROKER_URL", "kafka://worker:broker-pass-Kd02@mq.internal:9092", True),
    ("CELERY_RESULT_BACKEND", "mongodb://results:result-pass-Pw55@db.internal/results", True),
    ("CELERY_TASK_TIME_LIMIT", "0", False),
    ("CELERY_TASK_TIME_LIMIT", "ten", False),
    ("CELERY_CONCURRENCY", "-1", False),
    ("SENTRY_DSN", "https://sentry-secret-Ab12.example.com", True),
    ("SENTRY_TRACES_SAMPLE_RATE", "2", False),
    ("SENTRY_TRACES_SAMPLE_RATE", "half", False),
    ("SENTRY_PROFILES_SAMPLE_RATE", "-0.1", False),
    ("WEB_HOSTS", "0", False),
    ("RUN_CRON", "yes", False),
]


def setting_id(case):
    key, value, _ = case
    return f"{key}=<unset>" if value is None else f"{key}={value}"


@pytest.fixture(scope="module")
def project(tmp_path_factory, wheelhouse):
    """A default service with its venv; its .env and deploy files are restored after each test."""
    return bake(tmp_path_factory.mktemp("bad-input"))


@pytest.fixture
def service(project):
    saved = {
        path: path.read_bytes()
        for path in (project / ".env", project / "deploy/nginx.conf", project / "deploy/uwsgi.ini")
    }
    uwsgi = project / ".venv/bin/uwsgi"
    shutil.copy2(uwsgi, project / "uwsgi.saved")
    yield project
    for path, content in saved.items():
        path.write_bytes(content)
    (project / ".env").chmod(0o600)
    os.replace(project / "uwsgi.saved", uwsgi)
    (project / "var/run/uwsgi.sock").unlink(missing_ok=True)


def set_env(project, key, value):
    """Replace KEY's line in .env (or drop it when value is None)."""
    env = project / ".env"
    lines = [line for line in env.read_text().splitlines() if not line.startswith(f"{key}=")]
    if value is not None:
        lines.append(f"{key}={value}")
    env.write_text("\n".join(lines) + "\n")


def run(project, *command):
    return subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("case", BAD_SETTINGS, ids=setting_id)
def test_bad_setting_stops_with_one_line_naming_the_key(service, case):
    """`python -m <pkg>.settings` (what serve, deploy and doctor run first): one line, exit 1, no value."""
    key, value, secret = case
    set_env(service, key, value)
    result = run(service, ".venv/bin/python", "-m", "my_service.settings")
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: invalid settings"), result.stderr
    assert f"{key}:" in lines[0]
    assert "Traceback" not in result.stderr
    if secret and value:
        assert value not in result.stderr
        assert value.split("://")[-1].split("@")[0] not in result.stderr


def test_every_bad_setting_is_named_in_the_same_single_line(service):
    """Three bad keys at once: one line naming all three, so one edit of .env fixes them all."""
    for key, value in (("HTTP_PORT", "x"), ("APP_ENV", "prod"), ("SECRET_KEY", "short-secret-Lm3")):
        set_env(service, key, value)
    result = run(service, ".venv/bin/python", "-m", "my_service.settings")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert all(f"{key}:" in line for key in ("HTTP_PORT", "APP_ENV", "SECRET_KEY"))
    assert "short-secret-Lm3" not in line


def test_settings_refuse_to_print_a_secret(service):
    """Shell scripts can ask settings for values, but never for a secret: it would land in logs."""
    lines = (service / ".env").read_text().splitlines()
    secret = next(line for line in lines if line.startswith("SECRET_KEY="))
    for key in ("SECRET_KEY", "DATABASE_URL", "SENTRY_DSN"):
        result = run(service, ".venv/bin/python", "-m", "my_service.settings", key)
        assert result.returncode == 1
        assert result.stderr.strip() == f"error: {key}: a secret, never printed; code reads it from settings"
        assert secret.split("=", 1)[1] not in result.stdout + result.stderr
    assert run(service, ".venv/bin/python", "-m", "my_service.settings", "HTTP_PORT").stdout.strip().isdigit()


# What each web host shares once there are several: a URL of the servers every host reaches.
SHARED_STATE = {
    "DATABASE_URL": "postgresql://app:db-pass-Hs71@db.internal/app",
    "CACHE_URL": "redis://:cache-pass-Hs72@redis.internal:6379/2",
    "CELERY_BROKER_URL": "redis://:broker-pass-Hs73@redis.internal:6379/0",
    "CELERY_RESULT_BACKEND": "redis://:result-pass-Hs74@redis.internal:6379/1",
}


@pytest.mark.parametrize("key", SHARED_STATE)
def test_several_web_hosts_refuse_state_kept_on_one_host_naming_the_setting(service, key):
    """WEB_HOSTS=2 (what provision writes for two web hosts) with one of the defaults that live on
    one host (SQLite, the in-process cache, the SQLite broker and results): refused in one line
    naming that key alone, so `make doctor` and the deploy's settings check refuse it too."""
    set_env(service, "WEB_HOSTS", "2")
    for other, url in SHARED_STATE.items():
        set_env(service, other, url if other != key else None)
    result = run(service, ".venv/bin/python", "-m", "my_service.settings")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("error: invalid settings") and f"{key}:" in line, line
    assert "WEB_HOSTS=2 must share one" in line
    assert [other for other in SHARED_STATE if f"{other}:" in line] == [key]
    assert not any(url.split("@")[0].split(":")[-1] in line for url in SHARED_STATE.values())
    set_env(service, key, SHARED_STATE[key])
    assert run(service, ".venv/bin/python", "-m", "my_service.settings").returncode == 0


def doctor(project, *command):
    require("nginx")
    result = run(project, *(command or ["bin/doctor"]))
    lines = result.stdout.splitlines()
    failed = [line.split()[1] for line in lines if line.startswith("FAIL ")]
    return result, failed


def test_doctor_passes_on_a_healthy_service(service):
    """Right after baking, every check is OK and the exit status is 0."""
    require("make")
    result, failed = doctor(service, "make", "--no-print-directory", "doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    assert failed == []
    checks = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("OK ")]
    assert checks == ["settings", "env_file", "uwsgi", "socket", "nginx", "listen", "disk", "tls"]


def break_settings(project):
    set_env(project, "SECRET_KEY", "tiny-secret-Qv7")
    return "tiny-secret-Qv7"


def break_env_mode(project):
    (project / ".env").chmod(0o644)


def break_uwsgi(project):
    """A uWSGI built without PCRE: --help lacks the static-expires-uri option."""
    fake = project / ".venv/bin/uwsgi"
    fake.unlink()
    fake.write_text("#!/bin/sh\necho 'Usage: uwsgi [options...]'\necho '    --static-map  map mountpoint'\n")
    fake.chmod(0o755)


def break_socket(project):
    """A socket any local user may connect to."""
    path = project / "var/run/uwsgi.sock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
    path.chmod(0o666)


def break_nginx(project):
    with open(project / "deploy/nginx.conf", "a") as site:
        site.write("\nserver { listen 80; no_such_directive on; }\n")


def break_listen(project):
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    ini = project / "deploy/uwsgi.ini"
    ini.write_text(ini.read_text().replace("listen = 1024", f"listen = {somaxconn + 1}"))


def break_disk(project):
    set_env(project, "DISK_FREE_MIN_MB", str(10**12))


BREAKAGES = [
    ("settings", break_settings),
    ("env_file", break_env_mode),
    ("uwsgi", break_uwsgi),
    ("socket", break_socket),
    ("nginx", break_nginx),
    ("listen", break_listen),
    ("disk", break_disk),
]


@pytest.mark.parametrize("check,breakage", BREAKAGES, ids=[check for check, _ in BREAKAGES])
def test_doctor_names_the_one_broken_thing_and_what_to_fix(service, check, breakage):
    """Each broken thing: its check alone FAILs with a `fix:` line, exit status 1, no secret shown."""
    secret = breakage(service)
    result, failed = doctor(service)
    assert result.returncode == 1
    assert failed == [check], result.stdout
    lines = result.stdout.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("FAIL "))
    assert lines[index + 1].lstrip().startswith("fix: ")
    assert "1 of 8 checks failed" in result.stdout
    if secret:
        assert secret not in result.stdout + result.stderr
    if check == "socket":
        assert stat.S_IMODE(os.stat(service / "var/run/uwsgi.sock").st_mode) == 0o666


def certificate(directory, days, name="fullchain.pem", key="privkey.pem"):
    require("openssl")
    directory.mkdir(parents=True, exist_ok=True)
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(days)]
    command += ["-subj", "/CN=localhost", "-keyout", directory / key, "-out", directory / name]
    subprocess.run(command, check=True, capture_output=True)


def tls_none(tls):
    pass


def tls_valid(tls):
    certificate(tls, 90)


def tls_expiring(tls):
    certificate(tls, 3)


def tls_wrong_key(tls):
    certificate(tls, 90)
    certificate(tls, 90, name="other.pem", key="privkey.pem")


TLS_STATES = [
    (tls_none, "is missing: nginx will not start"),
    (tls_valid, None),
    (tls_expiring, "expires within 14 days"),
    (tls_wrong_key, "is not the key of"),
]


@pytest.mark.parametrize("prepare,failure", TLS_STATES, ids=["missing", "valid", "expiring", "wrong-key"])
def test_doctor_checks_the_certificate_of_a_use_tls_site(tmp_path, prepare, failure):
    """use_tls: doctor fails on a missing, expiring or mismatched certificate, and passes a good one."""
    result = run_cookiecutter(tmp_path, "use_tls=true")
    assert result.returncode == 0, result.stderr
    project = tmp_path / "my_service"
    prepare(project / "var" / "tls")
    result, failed = doctor(project)
    line = next(line for line in result.stdout.splitlines() if line.split()[1:2] == ["tls"])
    if failure:
        assert "tls" in failed and failure in line, result.stdout
    else:
        assert line.startswith("OK   tls") and "key matches" in line, result.stdout
