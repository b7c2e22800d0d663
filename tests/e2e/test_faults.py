"""End to end: faults under load through nginx, and the service coming back without a human.

One service served by `make serve`, its broker a throwaway Redis of this module on a free loopback
port (never the machine's shared one, which others use), so that the broker can be stopped and
started again. Its app database lives in a directory of its own, so that it alone can be made
unwritable. The master killed under the Emperor uses test_emperor's layout.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import time

import pytest
from conftest import bake, free_port, require
from test_deploy import RECORD_TASK, Load
from test_serve import get, group_alive, log_tail, make

pytestmark = [pytest.mark.e2e, pytest.mark.venv]
# deploy/uwsgi.ini: a worker has at most this many requests in flight.
THREADS_PER_WORKER = 2
# CELERY_TASK_TIME_LIMIT of the service: Redis redelivers a killed worker's tasks after
# visibility_timeout = 2 * limit + 60 s (tasks.py).
TASK_TIME_LIMIT = 5
REDELIVERY = 2 * TASK_TIME_LIMIT + 60


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.2)
    return result


class Redis:
    """A redis-server of this module on a free loopback port, in its own process group. Its
    append-only file (fsync always) keeps queued tasks across a stop, as a broker's Redis must."""

    def __init__(self, directory):
        self.binary = require("redis-server")
        self.port, self.directory, self.process = free_port(), directory, None

    def start(self):
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.directory]
        command += ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        with open(self.directory / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for(self.accepts, 10, "redis-server accepts connections")

    def accepts(self):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1):
            return True
        return False

    def stop(self, sig=signal.SIGTERM):
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout=20)


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    server = Redis(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def service(tmp_path_factory, wheelhouse, redis):
    """A baked service served by `make serve` (Celery on the module's Redis); stopped after."""
    require("nginx")
    require("make")
    port = free_port()
    project = bake(tmp_path_factory.mktemp("faults"), http_port=port)
    with open(project / "my_service" / "tasks.py", "a") as tasks:
        tasks.write(RECORD_TASK)
    database = project / "var" / "db"
    database.mkdir(parents=True)
    with open(project / ".env", "a") as env:
        env.write(f"CELERY_BROKER_URL=redis://127.0.0.1:{redis.port}/0\n")
        env.write(f"CELERY_TASK_TIME_LIMIT={TASK_TIME_LIMIT}\n")
        env.write(f"DATABASE_URL=sqlite:///{database}/app.sqlite3\n")
    groups = []
    try:
        result = make(project, "serve")
        assert result.returncode == 0, result.stdout + result.stderr + log_tail(project)
        run = project / "var" / "run"
        groups = [int((run / "uwsgi.pgid").read_text()), int((run / "nginx.pid").read_text())]
        yield {"project": project, "port": port, "url": f"http://127.0.0.1:{port}", "run": run}
    except BaseException:
        print(log_tail(project))
        raise
    finally:
        make(project, "stop", timeout=90)
        for pgid in groups:
            if group_alive(pgid):
                os.killpg(pgid, signal.SIGKILL)


def health(service):
    status, _, body = get(service["url"] + "/health")
    return status, json.loads(body)


def web_workers(service):
    """{worker id: pid} from uWSGI's stats socket."""
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(10)
        client.connect(str(service["run"] / "stats.sock"))
        stats = json.loads(b"".join(iter(lambda: client.recv(65536), b"")))
    return {worker["id"]: worker["pid"] for worker in stats["workers"] if worker["pid"]}


def python(service, code, timeout=120):
    """Run Python in the service's venv and directory: a Celery client, as the app would be."""
    project = service["project"]
    return subprocess.run(
        [project / ".venv/bin/python", "-c", "from my_service.tasks import *\n" + code],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def executions(service, prefix):
    log = service["project"] / "var" / "tmp" / "executions.log"
    return [key for key in log.read_text().split() if key.startswith(prefix)] if log.exists() else []


def test_a_killed_web_worker_fails_at_most_its_in_flight_requests(service):
    """kill -9 of one web worker under 20 connections: the master respawns it, at most the
    requests in flight on that worker (its threads) fail, and every later request succeeds."""
    with Load(service["port"], threads=20, max_seconds=90) as load:
        wait_for(lambda: load.ok > 300, 30, "300 requests before the kill")
        before = web_workers(service)
        worker_id, victim = sorted(before.items())[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: web_workers(service).get(worker_id) not in (None, victim), 30, "a respawned worker")
        respawned_at = load.ok
        wait_for(lambda: load.ok > respawned_at + 1000, 60, "1000 requests after the respawn")
    assert len(load.failures) <= THREADS_PER_WORKER, f"{load.failures} (of {load.ok} answered)"
    assert set(web_workers(service)) == set(before), "every worker slot is back"


def test_with_the_broker_stopped_health_is_503_pages_200_and_tasks_arrive_once_it_is_back(service, redis):
    """Redis stopped: /health answers 503 naming the broker (the database still ok) while pages
    answer 200; a plain send fails loudly instead of vanishing, a send that retries is delivered
    once Redis is back, and the Celery worker reconnects by itself and runs it."""
    assert health(service)[0] == 200
    redis.stop()
    try:
        _, body = wait_for(lambda: (answer := health(service))[0] == 503 and answer, 15, "/health 503")
        assert body["broker"].startswith("error: ") and body["database"] == "ok", body
        with Load(service["port"], threads=10, max_seconds=30) as load:
            time.sleep(3)
        assert load.ok > 50 and not load.failures, load.failures
        plain = python(service, "record.delay('broker-plain', 0)", timeout=60)
        assert plain.returncode != 0 and "OperationalError" in plain.stderr, plain.stderr[-2000:]
        # A sender that retries (the retry_policy a user passes when a task must not be dropped).
        retrying = subprocess.Popen(
            [service["project"] / ".venv/bin/python", "-c", RETRYING_SEND],
            cwd=service["project"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(3)
        assert retrying.poll() is None, "the retrying sender waits for the broker"
    finally:
        redis.start()
    out, err = retrying.communicate(timeout=60)
    assert retrying.returncode == 0, err[-2000:]
    wait_for(lambda: health(service)[0] == 200, 30, "/health 200 again")
    wait_for(lambda: executions(service, "broker-"), 60, "the task sent while the broker was down ran")
    assert executions(service, "broker-") == ["broker-retried"]
    assert out.split() == ["broker-retried"]


RETRYING_SEND = """
from my_service.tasks import record
policy = {"max_retries": 120, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5}
print(record.apply_async(("broker-retried", 0), retry=True, retry_policy=policy).get(timeout=60))
"""


def test_a_killed_celery_worker_is_respawned_and_no_task_is_lost(service):
    """kill -9 of the Celery worker while it runs tasks: uWSGI starts a new one, and every task
    runs; those the killed worker held are redelivered by Redis after the visibility timeout
    (acks_late: at least once, so a task killed after its work but before its ack runs twice)."""
    sent = python(service, "for key in range(12):\n    record.delay(f'kill-{key}', 1)\n")
    assert sent.returncode == 0, sent.stderr[-2000:]
    wait_for(lambda: executions(service, "kill-"), 30, "a first task done")
    time.sleep(0.3)
    victim = pid_of(service["run"] / "celery.pid")
    os.kill(victim, signal.SIGKILL)
    done_at_kill = len(executions(service, "kill-"))
    wait_for(lambda: pid_of(service["run"] / "celery.pid") not in (None, victim), 30, "a new Celery worker")
    everything = {f"kill-{key}" for key in range(12)}
    wait_for(lambda: set(executions(service, "kill-")) == everything, REDELIVERY + 40, "all 12 tasks ran")
    executed = executions(service, "kill-")
    # At most the tasks the killed worker held (CELERY_CONCURRENCY 2, prefetch 1 each) run twice.
    assert len(executed) - len(everything) <= 2 * 2, executed
    assert done_at_kill < len(everything), "the kill came while tasks were left"


def pid_of(path):
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        pid = int(path.read_text())
        os.kill(pid, 0)
        return pid
    return None


def unwritable(directory):
    """Make a directory unwritable to the service, which runs as root here: chattr +i binds root
    too (mode bits do not), as a read-only mount would. Returns the undo."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", directory], check=True)
        return lambda: subprocess.run(["chattr", "-i", directory], check=True)
    mode = directory.stat().st_mode
    directory.chmod(0o555)
    return lambda: directory.chmod(mode)


def test_an_unwritable_database_turns_health_503_and_recovers_by_itself(service):
    """The app database's directory becomes unwritable (SQLite cannot write its journal): /health
    answers 503 naming the database while pages answer 200; once writable, /health is 200 again."""
    directory = service["project"] / "var" / "db"
    assert health(service)[0] == 200
    restore = unwritable(directory)
    try:
        _, body = wait_for(lambda: (answer := health(service))[0] == 503 and answer, 15, "/health 503")
        assert body["database"].startswith("error: ") and body["broker"] == "ok", body
        with Load(service["port"], threads=10, max_seconds=30) as load:
            time.sleep(3)
        assert load.ok > 50 and not load.failures, load.failures
    finally:
        restore()
    wait_for(lambda: health(service)[0] == 200, 15, "/health 200 again")
