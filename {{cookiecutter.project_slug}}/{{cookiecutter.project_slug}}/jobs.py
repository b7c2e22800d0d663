"""The periodic jobs uWSGI's cron runs: `python -m {{ cookiecutter.project_slug }}.jobs <job>`.

The schedule lives in deploy/uwsgi.ini (cron2 lines), so it ships and reloads with the code.
uWSGI fires each job at start and after every full reload, and several hosts may each run it:
so every job is idempotent, and `run()` holds a file lock so that two copies never overlap.
"""

import fcntl
import json
import logging
import sys
import time
from pathlib import Path
{%- if cookiecutter.use_sentry %}

from sentry_sdk.crons import monitor
{%- endif %}

from . import observability, settings

log = logging.getLogger(__name__)
JOBS_DIR = settings.RUN_DIR / "jobs"


def heartbeat() -> str:
    """Prove that cron runs: every minute, and at start. Its record is RUN_DIR/jobs/heartbeat.json."""
    return "alive"


def cleanup_tmp(max_age: float = 24 * 3600) -> int:
    """Delete files older than a day from STATE_DIR/tmp. Every 15 minutes; running twice is harmless."""
    tmp = settings.TMP_DIR
    cutoff = time.time() - max_age
    removed = 0
    for path in tmp.rglob("*") if tmp.exists() else ():
        if path.is_file() and path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


JOBS = {"heartbeat": heartbeat, "cleanup_tmp": cleanup_tmp}
{%- if cookiecutter.use_sentry %}
# Each job's schedule (crontab syntax) and the seconds a run may take (its harakiri), for its Sentry
# cron monitor: the cron2 lines of deploy/uwsgi.ini say the same (tests/test_observability.py).
SCHEDULES = {"heartbeat": ("* * * * *", 50), "cleanup_tmp": ("*/15 * * * *", 600)}
{%- endif %}


def run(name: str) -> int:
    """Run one job under its lock and record the outcome in RUN_DIR/jobs/<name>.json."""
    settings.make_state_dirs()
    JOBS_DIR.mkdir(exist_ok=True)
    with open(JOBS_DIR / f"{name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("job %s is already running; skipped", name)
            return 0
        started = time.time()
{%- if cookiecutter.use_sentry %}
        # A Sentry cron monitor per job (a no-op without SENTRY_DSN): in progress, then ok or error.
        # A run killed by harakiri sends neither: Sentry reports it once max_runtime has passed.
        schedule, harakiri = SCHEDULES[name]
        config = {
            "schedule": {"type": "crontab", "value": schedule},
            # Minutes: a run may start this late, and last this long (more than its harakiri).
            "checkin_margin": 2,
            "max_runtime": harakiri // 60 + 2,
        }
        slug = f"{{ cookiecutter.project_slug }}-{name}".replace("_", "-")
        with monitor(monitor_slug=slug, monitor_config=config):
            result = JOBS[name]()
{%- else %}
        result = JOBS[name]()
{%- endif %}
        record = {
            "job": name,
            "release": settings.RELEASE,
            "started": started,
            "finished": time.time(),
            "result": result,
        }
        Path(JOBS_DIR / f"{name}.json").write_text(json.dumps(record))
        log.info("job %s finished: %s", name, result)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in JOBS:
        print(f"usage: python -m {__package__}.jobs <job>; jobs: {', '.join(JOBS)}", file=sys.stderr)
        return 2
    observability.init()
    return run(argv[0])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
