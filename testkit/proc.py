"""Processes on this machine, as /proc and pid files tell: what the service started, whether it is
still alive, and what it left behind."""

import os
from pathlib import Path


def read_pid(path):
    """The pid in a pid file; None while it is missing or still being written (empty)."""
    try:
        return int(Path(path).read_text())
    except (OSError, ValueError):
        return None


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def cwd_of(pid):
    """The working directory of pid; None if it is gone (or pid is None)."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def children(pid):
    """The pids whose parent is pid (a uWSGI master's web workers, Celery, cron jobs)."""
    found = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry))
    return found


def processes_mentioning(path):
    """Pids whose command line names the path (uWSGI renames its own processes; nginx and Celery don't)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if entry.isdigit() and int(entry) != os.getpid() and str(path).encode() in cmdline.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids
