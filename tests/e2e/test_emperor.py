"""End to end: process_manager=emperor runs the service as a vassal of a real uWSGI Emperor.

The Emperor runs as root, as on a server, and starts the vassal as the owner of its ini (tyrant
mode), in the layout of the emperor_layout fixture (tests/e2e/conftest.py, testkit/emperor.py).
"""

import os

import pytest

from testkit.emperor import SERVICE_USER, health, pid_file, run, start_nginx, vassal_running
from testkit.env import require, wait_for
from testkit.load import Load
from testkit.proc import alive, children

pytestmark = [pytest.mark.e2e, pytest.mark.venv]


def owner(pid):
    return os.stat(f"/proc/{pid}").st_uid


def test_vassal_starts_reloads_by_touch_and_stops_by_removal(emperor_layout):
    """The Emperor starts the linked vassal as its owner, a touch reloads it while every request
    through nginx is answered, and removing the link stops the service and everything it started."""
    require("nginx")
    layout = emperor_layout
    with vassal_running(layout) as (emperor, vassal, groups):
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
