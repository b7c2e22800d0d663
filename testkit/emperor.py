"""process_manager=emperor on this machine: a baked service in the server layout
<base>/srv/my_service/{current,shared}, a real uWSGI Emperor as root running it as a vassal owned by
the service user (tyrant mode), and nginx in front of the vassal's socket.

The service user must be able to run Python, so the service gets a virtualenv of the system's
Python (root's pyenv is not readable by others) and the layout lives in a directory every user can
enter, owned by `nobody`.
"""

import contextlib
import os
import signal
import subprocess
import sys

from testkit.bake import run_cookiecutter, system_wheelhouse
from testkit.env import SYSTEM_PYTHON, TOOLS_BIN, fail_or_skip, free_port, wait_for
from testkit.proc import read_pid
from testkit.uwsgi import uwsgi_get

# The vassal runs as the owner and group of its link: group www-data, as in the systemd unit, so that
# its socket can belong to nginx's group.
SERVICE_USER, SERVICE_GROUP = "nobody", "www-data"


def require_root_and_system_python():
    """The Emperor drops privileges to the vassal's owner: only root can, and only to a readable Python."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (the Emperor switches to the vassal's owner)")
    if not SYSTEM_PYTHON.exists():
        missing.append(f"{SYSTEM_PYTHON} (apt-get install python3-dev python3-venv)")
    if missing:
        fail_or_skip("the Emperor test needs " + " and ".join(missing))


def run(command, **kwargs):
    """Run command; assert that it exited 0 (the message shows its output)."""
    result = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)
    assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
    return result


def server_layout(base):
    """Bake an emperor service into base (which every user can enter) in the server layout
    <base>/srv/my_service/{current,shared}, its venv of the system's Python, owned by the service
    user: {"base", "srv", "root", "code", "shared"}."""
    version = run([SYSTEM_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]).stdout.strip()
    base.chmod(0o755)
    srv = base / "srv"
    answers = [f"deploy_root={srv}", "process_manager=emperor", f"python_version={version}"]
    result = run_cookiecutter(base / "src", *answers)
    assert result.returncode == 0, result.stdout + result.stderr
    code = base / "src" / "my_service"
    env = {**os.environ, "PYTHON": str(SYSTEM_PYTHON), "UV": str(TOOLS_BIN / "uv")}
    env["UV_FIND_LINKS"] = env["PIP_FIND_LINKS"] = str(system_wheelhouse(SYSTEM_PYTHON))
    run(["bin/install"], cwd=code, env=env)
    root = srv / "my_service"
    shared = root / "shared"
    for name in ("run", "log", "data", "media", "tmp", "static"):
        (shared / name).mkdir(parents=True)
    (root / "current").symlink_to(code)
    build = [code / ".venv/bin/python", "-m", "my_service.assets"]
    run(build, cwd=code, env={**os.environ, "STATE_DIR": shared})
    run(["chown", "-R", f"{SERVICE_USER}:{SERVICE_GROUP}", base / "src", root])
    (srv / "vassals").mkdir()
    return {"base": base, "srv": srv, "root": root, "code": code, "shared": shared}


def start_emperor(layout):
    """The Emperor from the shipped emperor.ini, in its own process group; returns (process, log)."""
    log = open(layout["srv"] / "emperor.log", "ab")  # noqa: SIM115 (closed by the caller)
    command = [layout["code"] / ".venv/bin/uwsgi", "--ini", layout["code"] / "deploy/emperor/emperor.ini"]
    env = {**os.environ, "VASSALS_DIR": str(layout["srv"] / "vassals")}
    process = subprocess.Popen(
        command, cwd=layout["srv"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    return process, log


@contextlib.contextmanager
def vassal_running(layout):
    """The Emperor started and the service's vassal linked (the link owned by the service user), once
    it answers /health; yields (the Emperor's process, the link, a list of process groups). The
    test adds the groups it sees started (the vassal's master, Celery, nginx): on the way out the
    link is removed and every group, the Emperor's first, gets SIGKILL. The Emperor's log is
    printed if the body fails."""
    emperor, log = start_emperor(layout)
    vassal = layout["srv"] / "vassals" / "my_service.ini"
    groups = [emperor.pid]
    try:
        vassal.symlink_to(layout["root"] / "current" / "deploy" / "emperor" / "my_service.ini")
        run(["chown", "-h", f"{SERVICE_USER}:{SERVICE_GROUP}", vassal])
        wait_for(lambda: health(layout) == 200, 60, "the vassal answers /health")
        yield emperor, vassal, groups
    except BaseException:
        log.flush()
        print((layout["srv"] / "emperor.log").read_text()[-6000:], file=sys.stderr)
        raise
    finally:
        with contextlib.suppress(OSError):
            vassal.unlink()
        for pgid in filter(None, groups):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        emperor.wait(timeout=30)
        log.close()


def health(layout):
    """/health's status straight from the vassal's socket, None while nothing answers there."""
    try:
        return uwsgi_get(layout["shared"] / "run" / "uwsgi.sock", "/health")[0]
    except OSError:
        return None


def pid_file(layout, name):
    """The pid in one of the vassal's pid files (shared/run); None while it is missing or empty."""
    return read_pid(layout["shared"] / "run" / name)


def start_nginx(layout):
    """nginx in front of the vassal's socket, configured by `bin/serve --nginx-config` as `make
    serve` does; returns (port, pid of its master, which leads its workers' process group)."""
    port = free_port()
    config = layout["shared"] / "nginx-conf"
    env = {
        **os.environ,
        "CODE_DIR": str(layout["code"]),
        "STATE_DIR": str(layout["shared"]),
        "HTTP_PORT": str(port),
    }
    subprocess.run([layout["code"] / "bin/serve", "--nginx-config", config], env=env, check=True)
    subprocess.run(["nginx", "-p", f"{config}/", "-c", "nginx.conf", "-e", "stderr"], check=True)
    pid = wait_for(lambda: pid_file(layout, "nginx.pid"), 10, "nginx's pid file")
    return port, pid
