"""The checkout, the machine and its tools: where things are, whether this is CI, what is missing.

A missing tool, server or privilege fails the test under CI=true and skips it locally, saying how to
get it (`fail_or_skip`): CI must never pass by skipping.
"""

import os
import shutil
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The tools' virtualenv (.tools/bin): cookiecutter, ruff, uv beside the Python running this.
TOOLS_BIN = Path(sys.executable).parent
CI = os.environ.get("CI") == "true"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
WHEELHOUSE = Path(os.environ.get("WHEELHOUSE", CACHE / "shipshape" / "wheelhouse"))
# The machine's own Python (Debian 12's, as on the lab's bookworm hosts): readable by every user.
SYSTEM_PYTHON = Path("/usr/bin/python3")
INSTALL_HINTS = {
    "nginx": "apt-get install nginx (or `make system-packages`)",
    "wrk": "apt-get install wrk (or `make system-packages`)",
    "make": "apt-get install make",
    "redis-server": "apt-get install redis-server (or `make system-packages`)",
    "systemd-analyze": "apt-get install systemd",
}


def fail_or_skip(message):
    """Fail under CI=true, skip locally: what every missing prerequisite does."""
    import pytest  # here: the benchmarks import this module too, outside pytest

    if CI:
        pytest.fail(message)
    pytest.skip(message)


def require(tool):
    """Return the tool's path; a missing tool fails under CI=true and skips (saying how) locally."""
    path = shutil.which(tool)
    if path is None:
        fail_or_skip(f"{tool} not found: {INSTALL_HINTS.get(tool, 'install it')}")
    return path


def require_server(name, port, hint):
    """Fail under CI=true, skip (saying how to start it) locally, unless 127.0.0.1:port accepts."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        fail_or_skip(f"{name} is not listening on 127.0.0.1:{port}: {hint}")


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


def isolate_environment():
    """Hooks skip the venv unless asked for one, and find uWSGI in the wheelhouse; the developer's
    shell (Sentry, Celery, state and database settings) cannot leak into a bake."""
    for key in list(os.environ):
        if key.startswith(("SENTRY_", "CELERY_")) or key in {"STATE_DIR", "DATABASE_URL", "ENV_FILE"}:
            del os.environ[key]
    os.environ["SKIP_VENV"] = "1"
    os.environ["UV_FIND_LINKS"] = os.environ["PIP_FIND_LINKS"] = str(WHEELHOUSE)
