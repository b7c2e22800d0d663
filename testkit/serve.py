"""A baked service running on this machine: `make serve` (var/ in the checkout) or `make deploy`
(releases under var/deploy), stopped on the way out whatever happened, and what explains a failure."""

import contextlib
import os
import signal

from testkit.bake import bake, commit, sh
from testkit.env import free_port, require
from testkit.proc import group_alive, read_pid

# A user's task that leaves a trace of every execution (var/tmp/executions.log), and one that tells
# the release it runs: appended to a baked service's tasks.py.
RECORD_TASK = """

@celery.task
def record(key: str, seconds: float) -> str:
    import time

    time.sleep(seconds)
    with open(settings.STATE_DIR / "tmp" / "executions.log", "a") as log:
        log.write(key + "\\n")
    return key


@celery.task
def release() -> str:
    return settings.RELEASE
"""


def bake_for_serving(directory, env=None, **answers):
    """A service baked with its venv into directory for nginx on a free loopback port, once nginx
    and make are found: (project, port)."""
    require("nginx")
    require("make")
    port = free_port()
    return bake(directory, env=env, http_port=port, **answers), port


def make(project, *args, timeout=180, **env):
    """`make args` in the project, env added to the environment: the completed process, whatever it
    exited with."""
    return sh(project, "make", *args, check=False, timeout=timeout, **env)


def log_tail(project):
    """The last 30 lines of each of the service's logs (var/log)."""
    logs = sorted((project / "var" / "log").glob("*.log"))
    return "\n".join(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-30:]) for log in logs)


@contextlib.contextmanager
def serving(project, check_stop=False, stop_timeout=90):
    """`make serve` in project, yielding its process groups (uWSGI, nginx); the logs' tails printed
    if the body fails; on the way out `make stop` (with check_stop, asserted to exit 0 within
    stop_timeout s), then SIGKILL to any group it left alive."""
    groups = []
    try:
        result = make(project, "serve")
        assert result.returncode == 0, result.stdout + result.stderr + log_tail(project)
        run = project / "var" / "run"
        groups = [int((run / "uwsgi.pgid").read_text()), int((run / "nginx.pid").read_text())]
        yield groups
    except BaseException:
        print(log_tail(project))
        raise
    finally:
        stopped = make(project, "stop", timeout=stop_timeout)
        for pgid in groups:
            if group_alive(pgid):
                os.killpg(pgid, signal.SIGKILL)
        if check_stop:
            assert stopped.returncode == 0, stopped.stdout + stopped.stderr


@contextlib.contextmanager
def deployed(project, **env):
    """The project put in git and its first commit (v1) deployed by `make deploy` into var/deploy,
    which starts it; yields (that revision, the deploy root). On the way out `make stop`; if that
    failed, SIGKILL to the process groups its pid files name."""
    sh(project, "git", "init", "-q")
    first = commit(project, "v1")
    root = project / "var" / "deploy"
    try:
        sh(project, "make", "deploy", **env)
        yield first, root
    finally:
        stop = sh(project, "make", "stop", check=False, DEPLOY_ROOT=str(root))
        if stop.returncode != 0:
            for pid in filter(None, map(read_pid, (root / "shared" / "run").glob("*.p*id"))):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


def diagnostics(root):
    """A deploy's nginx errors and uWSGI events (not its request lines), to explain a failed request."""
    log = root / "shared" / "log"
    errors = (log / "nginx-error.log").read_text().splitlines()[-10:]
    events = [line for line in (log / "uwsgi.log").read_text().splitlines() if " - " in line[:30]]
    return "\n".join(["--- nginx-error.log", *errors, "--- uwsgi.log events", *events[-60:]])


def send_task(project, code, timeout=120):
    """Run Python in the service's venv and directory with its tasks imported: a Celery client, as
    the app would be."""
    command = [project / ".venv/bin/python", "-c", "from my_service.tasks import *\n" + code]
    return sh(project, *command, check=False, timeout=timeout)
