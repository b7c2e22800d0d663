"""End to end: uWSGI's cron never runs two copies of a job at once, also across a full reload.

uWSGI fires every job whose fields match at start and again after each full reload, and its
`unique` flag forgets the running copy on reload: only jobs.py's lock keeps a second
copy from starting while the first still runs.
"""

import itertools
import os
import re
import signal

import pytest

from testkit.env import wait_for
from testkit.serve import bake_for_serving, serving

pytestmark = [pytest.mark.e2e, pytest.mark.venv]

# A user's job that runs longer than the gap between a start and a reload, marking both ends. Its
# start mark names the other copies running at that moment (started, not ended, process alive), so
# an overlap shows even when the overlapping copy is killed before its end mark.
SLOW_JOB = """

def slow() -> str:
    \"\"\"Every minute; 30 s long. Marks `start <pid> <time> <running copies' pids, or ->`, then
    `end <pid> <time>`.\"\"\"
    import os

    marks = settings.STATE_DIR / "tmp" / "slow.log"
    lines = [line.split() for line in marks.read_text().splitlines()] if marks.exists() else []
    ended = {line[1] for line in lines if line[0] == "end"}
    unended = {line[1] for line in lines if line[0] == "start"} - ended - {str(os.getpid())}
    running = []
    for pid in unended:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if b"jobs\\x00slow" in cmdline.read():
                    running.append(pid)
        except OSError:
            pass
    with open(marks, "a") as log:
        log.write(f"start {os.getpid()} {time.time()} {','.join(running) or '-'}\\n")
    time.sleep(30)
    with open(marks, "a") as log:
        log.write(f"end {os.getpid()} {time.time()}\\n")
    return "slept"


JOBS["slow"] = slow
"""
SLOW_CRON = (
    "cron2 = minute=-1,unique=1,harakiri=50 cd %(code_dir) && exec %(code_dir)/.venv/bin/python"
    " -m my_service.jobs slow\n"
)


def runs(marks):
    """[(start, end)] of every finished run, in start order."""
    starts, ends = {}, {}
    for kind, pid, at, *_ in (line.split() for line in marks.read_text().splitlines()):
        (starts if kind == "start" else ends)[pid] = float(at)
    return sorted((starts[pid], ends[pid]) for pid in starts if pid in ends)


def started_while_another_ran(marks):
    """The start marks written while another copy was running, finished or not."""
    return [
        line
        for line in marks.read_text().splitlines()
        if line.startswith("start ") and line.split()[3] != "-"
    ]


def test_a_full_reload_never_starts_a_second_copy_of_a_running_job(tmp_path, wheelhouse):
    """A reload while a job runs fires it again; the second copy skips, and the job runs again
    at the next minute: no copy starts while another runs (killed copies included), and none is
    skipped for long."""
    project, _ = bake_for_serving(tmp_path, use_celery="false", use_sentry="false")
    jobs = project / "my_service" / "jobs.py"
    main_guard = '\nif __name__ == "__main__":'
    jobs.write_text(jobs.read_text().replace(main_guard, SLOW_JOB + main_guard))
    with open(project / "deploy" / "uwsgi.ini", "a") as ini:
        ini.write(SLOW_CRON)
    marks = project / "var" / "tmp" / "slow.log"
    with serving(project, check_stop=True, stop_timeout=120):
        wait_for(lambda: marks.exists() and "start" in marks.read_text(), 60, "the job's first run")
        log = project / "var" / "log" / "uwsgi.log"
        # A worker still importing the app misses the reload signal and is killed only after
        # worker-reload-mercy (30 s): reload once every worker serves.
        wait_for(lambda: log.read_text().count("WSGI app 0 (mountpoint='') ready") >= 4, 60, "4 workers")
        master = int((project / "var" / "run" / "uwsgi.pid").read_text())
        os.kill(master, signal.SIGHUP)
        wait_for(lambda: "job slow is already running; skipped" in log.read_text(), 60, "a skipped copy")
        wait_for(lambda: len(runs(marks)) >= 2, 100, "the next minute's run")
    assert started_while_another_ran(marks) == [], marks.read_text()
    finished = runs(marks)
    for (_, end), (start, _) in itertools.pairwise(finished):
        assert start >= end, f"two copies overlapped: {finished}"
    assert finished[1][0] - finished[0][1] < 65, f"the job was skipped for over a minute: {finished}"
    assert len(re.findall(r"\[uwsgi-cron\] running .*jobs slow", log.read_text())) >= 3
