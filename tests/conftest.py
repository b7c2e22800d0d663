"""Fixtures shared by the template's tests: baking, the wheelhouse, and required tools."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS_BIN = Path(sys.executable).parent
CI = os.environ.get("CI") == "true"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
WHEELHOUSE = Path(os.environ.get("WHEELHOUSE", CACHE / "shipshape" / "wheelhouse"))
INSTALL_HINTS = {
    "nginx": "apt-get install nginx (or `make system-packages`)",
    "wrk": "apt-get install wrk (or `make system-packages`)",
    "make": "apt-get install make",
    "redis-server": "apt-get install redis-server (or `make system-packages`)",
    "systemd-analyze": "apt-get install systemd",
}


def require(tool):
    """Return the tool's path; a missing tool fails under CI=true and skips (saying how) locally."""
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} not found: {INSTALL_HINTS.get(tool, 'install it')}"
        if CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_server(name, port, hint):
    """Fail under CI=true, skip (saying how to start it) locally, unless 127.0.0.1:port accepts."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        message = f"{name} is not listening on 127.0.0.1:{port}: {hint}"
        if CI:
            pytest.fail(message)
        pytest.skip(message)


def wait_for(condition, timeout, what, every=0.2):
    """Poll until condition() is truthy and return its value; fail naming what did not happen."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(every)
    return result


def free_port():
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(autouse=True, scope="session")
def _isolated_environment():
    """Hooks skip the venv unless a test asks for one; the developer's shell cannot leak in."""
    for key in list(os.environ):
        if key.startswith(("SENTRY_", "CELERY_")) or key in {"STATE_DIR", "DATABASE_URL", "ENV_FILE"}:
            del os.environ[key]
    os.environ["SKIP_VENV"] = "1"
    os.environ["UV_FIND_LINKS"] = os.environ["PIP_FIND_LINKS"] = str(WHEELHOUSE)


@pytest.fixture(scope="session")
def wheelhouse():
    """The machine's wheelhouse with uWSGI built once (scripts/wheelhouse is idempotent)."""
    subprocess.run(
        [ROOT / "scripts" / "wheelhouse"], check=True, env={**os.environ, "PYTHON": sys.executable}
    )
    return WHEELHOUSE


def python_interpreter(version):
    """A python<version> that runs: on PATH, or in pyenv's versions (its shims answer only when
    PYENV_VERSION names them). Missing: fails under CI=true, skips locally."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [shutil.which(f"python{version}"), *pyenv.glob(f"versions/{version}.*/bin/python{version}")]
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "-c", "pass"], capture_output=True, check=False).returncode == 0:
            return Path(candidate)
    message = f"python{version} not found: `pyenv install {version}` (or apt-get install python{version}-dev)"
    if CI:
        pytest.fail(message)
    pytest.skip(message)


def env_with_python(version, directory):
    """os.environ with python<version> first on PATH (bin/install asks for it by that name), after
    building uWSGI for it into the wheelhouse."""
    interpreter = python_interpreter(version)
    subprocess.run([ROOT / "scripts" / "wheelhouse"], check=True, env={**os.environ, "PYTHON": interpreter})
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"python{version}").symlink_to(interpreter)
    return {**os.environ, "PATH": f"{directory}{os.pathsep}{os.environ['PATH']}"}


def run_cookiecutter(output_dir, *answers, env=None):
    """Run the cookiecutter CLI as a user would: --no-input with key=value answers."""
    command = [TOOLS_BIN / "cookiecutter", "--no-input", "--output-dir", output_dir, ROOT, *answers]
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False)


def bake(output_dir, env=None, **answers):
    """Bake with the post-gen hook building .venv from the wheelhouse; return the project path."""
    env = {**(env or os.environ), "SKIP_VENV": "0"}
    # The venv uses the tools' Python: the wheelhouse holds uWSGI for that version.
    answers = {"python_version": f"{sys.version_info.major}.{sys.version_info.minor}", **answers}
    result = run_cookiecutter(output_dir, *(f"{key}={value}" for key, value in answers.items()), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "==> .venv ready" in result.stdout, result.stdout + result.stderr
    return output_dir / answers.get("project_slug", "my_service")


@pytest.fixture
def bake_with_venv(tmp_path, wheelhouse):
    """bake() into this test's temporary directory."""
    return lambda **answers: bake(tmp_path, **answers)
