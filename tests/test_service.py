"""A baked service installs from the wheelhouse and passes its own tests and lint."""

import os
import stat
import subprocess

import pytest

from testkit.bake import bake, env_with_python, run_cookiecutter
from testkit.env import require_server

pytestmark = pytest.mark.venv

VARIANTS = [
    {},
    {"use_celery": "false", "use_sentry": "false", "cheap_mode": "true"},
]


def server_test_env(env=None):
    """The service's own tests run their PostgreSQL and Redis tests only with these set."""
    require_server("PostgreSQL", 5432, "apt-get install postgresql (trust auth for postgres on 127.0.0.1)")
    require_server("redis", 6379, "start it with `redis-server --daemonize yes --bind 127.0.0.1`")
    return {
        **(env or os.environ),
        "TEST_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/postgres",
        "TEST_REDIS_URL": f"redis://127.0.0.1:6379/{os.getpid() % 15 + 1}",
    }


def make_test_and_lint(project, env):
    """`make test` then `make lint`: both pass, no test skipped (the server tests ran), no warning."""
    for target in ("test", "lint"):
        result = subprocess.run(
            ["make", target], cwd=project, env=env, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"make {target}\n{result.stdout}\n{result.stderr}"
        if target == "test":
            assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout
    assert "All checks passed" in result.stdout
    assert "warning" not in result.stdout.lower()


@pytest.mark.parametrize("answers", VARIANTS, ids=["defaults", "use_celery=false-use_sentry=false-cheap"])
def test_baked_service_passes_its_own_tests_and_lint(bake_with_venv, answers):
    """Right after baking, `make test` (PostgreSQL and Redis tests included) and `make lint` pass
    with zero warnings."""
    make_test_and_lint(bake_with_venv(**answers), server_test_env())


@pytest.mark.parametrize("version", ["3.12", "3.13"])
def test_a_service_baked_for_each_offered_python_passes_its_own_tests(tmp_path, wheelhouse, version):
    """python_version=3.12 and 3.13 (3.11, the default, is the bake above): the venv runs that Python,
    and `make test` passes under -W error (3.13 warns about every SQLite connection left unclosed)."""
    env = env_with_python(version, tmp_path / "bin")
    project = bake(tmp_path, env=env, python_version=version)
    result = subprocess.run(
        [project / ".venv/bin/python", "-c", "import sys; print(sys.version)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.startswith(f"{version}."), result.stdout
    make_test_and_lint(project, server_test_env(env))


def test_venv_has_a_uwsgi_with_pcre(bake_with_venv):
    """uWSGI came from the wheelhouse with PCRE: static-expires-uri, which uwsgi.ini uses, exists."""
    project = bake_with_venv()
    result = subprocess.run(
        [project / ".venv/bin/uwsgi", "--help"], capture_output=True, text=True, check=True
    )
    assert "static-expires-uri" in result.stdout


def test_bake_needs_no_network_once_the_cache_holds_the_packages(bake_with_venv, tmp_path):
    """A second bake with uv offline still builds the venv from the cache and the wheelhouse."""
    bake_with_venv()
    env = {**os.environ, "SKIP_VENV": "0", "UV_OFFLINE": "1"}
    result = run_cookiecutter(tmp_path / "offline", env=env)
    assert result.returncode == 0, result.stderr
    assert "==> .venv ready" in result.stdout
    assert (tmp_path / "offline" / "my_service" / ".venv" / "bin" / "uwsgi").exists()


def test_failed_venv_keeps_the_files_and_says_how_to_retry(tmp_path, wheelhouse):
    """A venv step that fails (no package source) leaves the bake in place with `make install` advice."""
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {
        **os.environ,
        "SKIP_VENV": "0",
        "UV_OFFLINE": "1",
        "UV_CACHE_DIR": str(empty),
        "UV_FIND_LINKS": str(empty),
    }
    result = run_cookiecutter(tmp_path / "out", env=env)
    assert result.returncode == 0, result.stderr
    assert "creating .venv failed" in result.stdout
    assert "make install" in result.stdout
    project = tmp_path / "out" / "my_service"
    assert (project / "my_service" / "settings.py").is_file()
    assert stat.S_IMODE(os.stat(project / ".env").st_mode) == 0o600


BROKERS = {
    "redis": (6379, "redis-server --daemonize yes --bind 127.0.0.1", "redis://127.0.0.1:6379/{db}"),
    "rabbitmq": (5672, "rabbitmq-server -detached", "amqp://guest:guest@127.0.0.1:5672//"),
}
ROUND_TRIP = """
import sys
from celery.contrib.testing.worker import start_worker
from my_service.tasks import add, celery
assert celery.conf.broker_url.startswith(sys.argv[1]), celery.conf.broker_url
with start_worker(celery, pool="solo", perform_ping_check=False, shutdown_timeout=10):
    print(add.delay(40, 2).get(timeout=30, interval=0.1))
"""


@pytest.mark.parametrize("broker", BROKERS)
def test_switching_the_broker_is_one_setting(bake_with_venv, broker):
    """With only CELERY_BROKER_URL changed, a real worker takes a task from the machine's broker."""
    port, start, url = BROKERS[broker]
    require_server(broker, port, f"start it with `{start}`")
    project = bake_with_venv()
    url = url.format(db=os.getpid() % 15 + 1)
    env = {**os.environ, "CELERY_BROKER_URL": url}
    result = subprocess.run(
        [project / ".venv/bin/python", "-c", ROUND_TRIP, url.split(":")[0]],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.stdout.strip() == "42", result.stderr[-2000:]


def test_create_virtualenv_false_skips_the_venv_and_says_how_to_make_it(tmp_path):
    env = {**os.environ, "SKIP_VENV": "0"}
    result = run_cookiecutter(tmp_path, "create_virtualenv=false", env=env)
    assert result.returncode == 0, result.stderr
    assert "skipped .venv (run `make install` to create it)" in result.stdout
    assert not (tmp_path / "my_service" / ".venv").exists()
