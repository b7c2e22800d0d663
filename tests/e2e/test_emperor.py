"""End to end: process_manager=emperor runs the service as a vassal of a real uWSGI Emperor.

The Emperor runs as root, as on a server, and starts the vassal as the owner of its ini (tyrant
mode). The service user must be able to run Python, so the service gets a virtualenv of the
system's Python (root's pyenv is not readable by others) and the layout lives in a directory
every user can enter, owned by `nobody`.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from test_serve import uwsgi_get

from testkit.bake import run_cookiecutter
from testkit.env import CACHE, CI, ROOT, TOOLS_BIN, free_port, require, wait_for
from testkit.load import Load

pytestmark = [pytest.mark.e2e, pytest.mark.venv]

SYSTEM_PYTHON = Path("/usr/bin/python3")
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
        message = "the Emperor test needs " + " and ".join(missing)
        if CI:
            pytest.fail(message)
        pytest.skip(message)


def system_wheelhouse():
    """A uWSGI wheel for the system Python, built once per machine beside the tools' wheelhouse."""
    wheelhouse = CACHE / "shipshape" / "wheelhouse-system"
    env = {**os.environ, "PYTHON": str(SYSTEM_PYTHON), "WHEELHOUSE": str(wheelhouse)}
    subprocess.run([ROOT / "scripts" / "wheelhouse"], check=True, env=env)
    return wheelhouse


def run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)
    assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
    return result


@pytest.fixture(scope="module")
def layout():
    """A baked emperor service in the server layout <base>/srv/my_service/{current,shared}."""
    require_root_and_system_python()
    version = run([SYSTEM_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]).stdout.strip()
    base = Path(tempfile.mkdtemp(prefix="shipshape-emperor-", dir="/tmp"))
    base.chmod(0o755)
    srv = base / "srv"
    answers = [f"deploy_root={srv}", "process_manager=emperor", f"python_version={version}"]
    result = run_cookiecutter(base / "src", *answers)
    assert result.returncode == 0, result.stdout + result.stderr
    code = base / "src" / "my_service"
    env = {**os.environ, "PYTHON": str(SYSTEM_PYTHON), "UV": str(TOOLS_BIN / "uv")}
    env["UV_FIND_LINKS"] = env["PIP_FIND_LINKS"] = str(system_wheelhouse())
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
    try:
        yield {"base": base, "srv": srv, "root": root, "code": code, "shared": shared}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def start_emperor(layout):
    """The Emperor from the shipped emperor.ini, in its own process group; returns (process, log)."""
    log = open(layout["srv"] / "emperor.log", "ab")  # noqa: SIM115 (closed by the test)
    command = [layout["code"] / ".venv/bin/uwsgi", "--ini", layout["code"] / "deploy/emperor/emperor.ini"]
    env = {**os.environ, "VASSALS_DIR": str(layout["srv"] / "vassals")}
    process = subprocess.Popen(
        command, cwd=layout["srv"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    return process, log


def health(layout):
    """/health's status straight from the vassal's socket, None while nothing answers there."""
    try:
        return uwsgi_get(layout["shared"] / "run" / "uwsgi.sock", "/health")[0]
    except OSError:
        return None


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


def pid_file(layout, name):
    """The pid in a pid file; None while it is missing or still being written (empty)."""
    try:
        return int((layout["shared"] / "run" / name).read_text())
    except (OSError, ValueError):
        return None


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def children(pid):
    """The pids whose parent is pid (the vassal master's web workers)."""
    found = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry))
    return found


def owner(pid):
    return Path(f"/proc/{pid}").stat().st_uid


def test_vassal_starts_reloads_by_touch_and_stops_by_removal(layout):
    """The Emperor starts the linked vassal as its owner, a touch reloads it while every request
    through nginx is answered, and removing the link stops the service and everything it started."""
    require("nginx")
    emperor, log = start_emperor(layout)
    vassal = layout["srv"] / "vassals" / "my_service.ini"
    groups = [emperor.pid]
    try:
        vassal.symlink_to(layout["root"] / "current" / "deploy" / "emperor" / "my_service.ini")
        run(["chown", "-h", f"{SERVICE_USER}:{SERVICE_GROUP}", vassal])
        wait_for(lambda: health(layout) == 200, 60, "the vassal answers /health")
        master, celery = pid_file(layout, "uwsgi.pid"), pid_file(layout, "celery.pid")
        groups += [master, celery]
        service_uid = int(run(["id", "-u", SERVICE_USER]).stdout)
        assert owner(master) == owner(celery) == service_uid, "the vassal runs as its ini's owner, not root"
        workers = children(master) - {celery}
        port, nginx = start_nginx(layout)
        groups.append(nginx)
        # Pages and /health through nginx: a connection the vassal drops is a 502 there, and any
        # exception in a client is a failed request too (testkit/load.py).
        with Load(port, threads=10, max_seconds=180, requests=(("GET", "/"), ("GET", "/health"))) as load:
            wait_for(lambda: load.ok > 100, 30, "100 requests before the touch")
            os.utime(vassal, follow_symlinks=False)
            wait_for(lambda: children(master) and not children(master) & workers, 60, "new web workers")
            wait_for(lambda: health(layout) == 200, 30, "the reloaded vassal answers")
            reloaded_at = load.ok
            wait_for(lambda: load.ok > reloaded_at + 100, 30, "100 requests after the reload")
        assert alive(master), "a touch reloads the vassal in place"
        assert load.ok > 200 and not load.failures, f"{load.failures[:20]} ({load.ok} ok)"
        # A touch is a full reload: Celery is restarted too.
        wait_for(lambda: pid_file(layout, "celery.pid") not in (None, celery), 60, "a new Celery worker")
        celery = pid_file(layout, "celery.pid")
        groups.append(celery)

        vassal.unlink()
        wait_for(lambda: not alive(master) and not alive(celery), 60, "the vassal and its Celery stop")
        assert health(layout) is None, "the socket is gone"
        assert emperor.poll() is None, "the Emperor keeps running for the other vassals"
    except BaseException:
        log.flush()
        print((layout["srv"] / "emperor.log").read_text()[-6000:], file=sys.stderr)
        raise
    finally:
        for pgid in filter(None, groups):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        emperor.wait(timeout=30)
        log.close()
