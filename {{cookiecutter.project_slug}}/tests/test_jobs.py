import fcntl
import json
import os
import time

from {{ cookiecutter.project_slug }} import jobs, settings


def test_cleanup_tmp_removes_only_old_files():
    tmp = settings.STATE_DIR / "tmp"
    tmp.mkdir(exist_ok=True)
    old, new = tmp / "old.txt", tmp / "new.txt"
    old.write_text("x")
    new.write_text("y")
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (day_ago, day_ago))
    assert jobs.cleanup_tmp() == 1
    assert not old.exists() and new.exists()
    # Idempotent: a second run finds nothing more to do.
    assert jobs.cleanup_tmp() == 0


def test_a_running_job_is_never_started_twice():
    """While one copy holds the lock, another run skips instead of overlapping."""
    jobs.JOBS_DIR.mkdir(parents=True, exist_ok=True)
    record = jobs.JOBS_DIR / "cleanup_tmp.json"
    record.unlink(missing_ok=True)
    with open(jobs.JOBS_DIR / "cleanup_tmp.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert jobs.run("cleanup_tmp") == 0
        assert not record.exists()
    assert jobs.run("cleanup_tmp") == 0
    assert json.loads(record.read_text())["job"] == "cleanup_tmp"


def test_unknown_job_is_a_usage_error(capsys):
    assert jobs.main(["nope"]) == 2
    assert "cleanup_tmp" in capsys.readouterr().err
