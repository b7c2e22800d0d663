"""End to end: faults under load through nginx, and the service coming back without a human.

One service served by `make serve`, its broker a throwaway Redis of this module on a free loopback
port (never the machine's shared one, which others use), so that the broker can be stopped and
started again. Its app database lives in a directory of its own, so that it alone can be made
unwritable. The master killed under the Emperor uses the layout test_emperor.py's vassal runs in
(the emperor_layout fixture, tests/e2e/conftest.py).
"""

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from testkit.emperor import pid_file, start_nginx, vassal_running
from testkit.env import free_port, require, wait_for
from testkit.http import get, health
from testkit.load import Load
from testkit.proc import alive, read_pid
from testkit.serve import RECORD_TASK, bake_for_serving, send_task, serving
from testkit.uwsgi import uwsgi_stats

pytestmark = [pytest.mark.e2e, pytest.mark.venv]
# deploy/uwsgi.ini: a worker has at most this many requests in flight.
THREADS_PER_WORKER = 2
# CELERY_TASK_TIME_LIMIT of the service: Redis redelivers a killed worker's tasks after
# visibility_timeout = 2 * limit + 60 s (tasks.py).
TASK_TIME_LIMIT = 5
REDELIVERY = 2 * TASK_TIME_LIMIT + 60
# The service's default CELERY_CONCURRENCY (threads of the Celery worker), each with a prefetch of 1.
CELERY_CONCURRENCY = 2


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


# A user's slow page, added to the baked service: it notes which worker serves it.
SLOW_PAGE = """

@pages.get("/slow")
def slow():
    import os
    import time

    with open(settings.STATE_DIR / "tmp" / "slow.pids", "a") as pids:
        pids.write(f"{os.getpid()}\\n")
    time.sleep(4)
    return "slept"
"""


@pytest.fixture(scope="module")
def service(tmp_path_factory, wheelhouse, redis):
    """A baked service served by `make serve` (Celery on the module's Redis); stopped after."""
    project, port = bake_for_serving(tmp_path_factory.mktemp("faults"))
    with open(project / "my_service" / "tasks.py", "a") as tasks:
        tasks.write(RECORD_TASK)
    with open(project / "my_service" / "views.py", "a") as views:
        views.write(SLOW_PAGE)
    database = project / "var" / "db"
    database.mkdir(parents=True)
    with open(project / ".env", "a") as env:
        env.write(f"CELERY_BROKER_URL=redis://127.0.0.1:{redis.port}/0\n")
        env.write(f"CELERY_TASK_TIME_LIMIT={TASK_TIME_LIMIT}\n")
        env.write(f"DATABASE_URL=sqlite:///{database}/app.sqlite3\n")
    with serving(project):
        run = project / "var" / "run"
        yield {"project": project, "port": port, "url": f"http://127.0.0.1:{port}", "run": run}


def web_workers(service):
    """{worker id: pid} from uWSGI's stats socket."""
    workers = uwsgi_stats(service["run"] / "stats.sock")["workers"]
    return {worker["id"]: worker["pid"] for worker in workers if worker["pid"]}


def executions(service, prefix):
    log = service["project"] / "var" / "tmp" / "executions.log"
    return [key for key in log.read_text().split() if key.startswith(prefix)] if log.exists() else []


def test_a_killed_web_worker_fails_only_its_in_flight_requests(service):
    """kill -9 of a web worker serving a slow page, under 20 connections: the master respawns it;
    the requests in flight on that worker fail (at least the slow one, at most its 2 threads'
    worth), the other slow pages and every other request succeed, also after the respawn."""
    url, pids = service["url"], service["project"] / "var" / "tmp" / "slow.pids"
    with Load(service["port"], threads=20, max_seconds=90) as load:
        wait_for(lambda: load.ok > 300, 30, "300 requests before the kill")
        slow = [None] * 3

        def fetch_slow(n):
            # Any exception (a reset, a closed connection) is this request's failure, not a dead thread.
            try:
                slow[n] = get(url + "/slow")[0]
            except Exception as error:
                slow[n] = repr(error)

        slow_threads = [threading.Thread(target=fetch_slow, args=(n,)) for n in range(3)]
        for thread in slow_threads:
            thread.start()
        victim = int(wait_for(lambda: pids.exists() and pids.read_text().split(), 10, "a slow page")[0])
        before = web_workers(service)
        worker_id = next(worker for worker, pid in before.items() if pid == victim)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: web_workers(service).get(worker_id) not in (None, victim), 30, "a respawned worker")
        for thread in slow_threads:
            thread.join(timeout=30)
        respawned_at = load.ok
        wait_for(lambda: load.ok > respawned_at + 1000, 60, "1000 requests after the respawn")
    served_by_victim = pids.read_text().split().count(str(victim))
    failed_slow = [status for status in slow if status != 200]
    assert len(failed_slow) == served_by_victim, f"slow pages {slow}, {served_by_victim} on the victim"
    failed = len(failed_slow) + len(load.failures)
    assert failed <= THREADS_PER_WORKER, f"slow pages {slow}, load {load.failures} ({load.ok} ok)"
    assert set(web_workers(service)) == set(before), "every worker slot is back"


def test_with_the_broker_stopped_health_is_503_pages_200_and_tasks_arrive_once_it_is_back(service, redis):
    """Redis stopped: /health answers 503 naming the broker (the database still ok) while pages
    answer 200; a plain send fails loudly instead of vanishing, a send that retries is delivered
    once Redis is back, and the Celery worker reconnects by itself and runs it."""
    assert health(service["url"])[0] == 200
    retrying = None
    redis.stop()
    try:
        try:
            _, body = wait_for(
                lambda: (answer := health(service["url"]))[0] == 503 and answer, 15, "/health 503"
            )
            assert body["broker"].startswith("error: ") and body["database"] == "ok", body
            with Load(service["port"], threads=10, max_seconds=30) as load:
                time.sleep(3)
            assert load.ok > 50 and not load.failures, load.failures
            plain = send_task(service["project"], "record.delay('broker-plain', 0)", timeout=60)
            assert plain.returncode != 0 and "OperationalError" in plain.stderr, plain.stderr[-2000:]
            # A sender that retries (the retry_policy a user passes when a task must not be dropped).
            retrying = subprocess.Popen(
                [service["project"] / ".venv/bin/python", "-c", RETRYING_SEND],
                cwd=service["project"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            time.sleep(3)
            assert retrying.poll() is None, "the retrying sender waits for the broker"
        finally:
            redis.start()
        out, err = retrying.communicate(timeout=60)
    finally:
        if retrying and retrying.poll() is None:
            os.killpg(retrying.pid, signal.SIGKILL)
            retrying.wait(timeout=10)
    assert retrying.returncode == 0, err[-2000:]
    wait_for(lambda: health(service["url"])[0] == 200, 30, "/health 200 again")
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
    sent = send_task(service["project"], "for key in range(12):\n    record.delay(f'kill-{key}', 1)\n")
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
    # Only a task killed after its work and before its ack runs twice: at most the tasks the killed
    # worker was running, CELERY_CONCURRENCY (2) threads with a prefetch of 1 each.
    assert len(executed) - len(everything) <= CELERY_CONCURRENCY, executed
    assert done_at_kill < len(everything), "the kill came while tasks were left"


def pid_of(path):
    """The pid in a pid file while that process is alive; None otherwise."""
    pid = read_pid(path)
    return pid if pid and alive(pid) else None


def unwritable(directory):
    """Make the database's directory unwritable to the service; returns the undo. The service runs
    as root here and mode bits do not bind root: chattr +i does, as a read-only mount would. Where
    root lacks CAP_LINUX_IMMUTABLE (a container), a directory where SQLite puts its journal blocks
    every write the same way."""
    if os.geteuid() != 0:
        mode = directory.stat().st_mode
        directory.chmod(0o555)
        return lambda: directory.chmod(mode)
    if subprocess.run(["chattr", "+i", directory], capture_output=True, check=False).returncode == 0:
        return lambda: subprocess.run(["chattr", "-i", directory], check=True)
    journal = directory / "app.sqlite3-journal"
    journal.mkdir()
    return journal.rmdir


def test_an_unwritable_database_turns_health_503_and_recovers_by_itself(service):
    """The app database's directory becomes unwritable (SQLite cannot write its journal): /health
    answers 503 naming the database while pages answer 200; once writable, /health is 200 again."""
    directory = service["project"] / "var" / "db"
    assert health(service["url"])[0] == 200
    restore = unwritable(directory)
    try:
        _, body = wait_for(lambda: (answer := health(service["url"]))[0] == 503 and answer, 15, "/health 503")
        assert body["database"].startswith("error: ") and body["broker"] == "ok", body
        with Load(service["port"], threads=10, max_seconds=30) as load:
            time.sleep(3)
        assert load.ok > 50 and not load.failures, load.failures
    finally:
        restore()
    wait_for(lambda: health(service["url"])[0] == 200, 15, "/health 200 again")


def test_the_sqlite_broker_loses_the_tasks_a_killed_worker_held_and_no_other(service, tmp_path):
    """The default broker (kombu's sqla transport over SQLite) has no redelivery: a message is
    marked invisible when a worker takes it and never made visible again if that worker dies
    without acknowledging. So kill -9 loses the tasks the worker held (at most CELERY_CONCURRENCY,
    2: prefetch 1 per thread), and only those; the README says to use Redis or RabbitMQ when that
    matters. If this fails because nothing was lost, kombu gained redelivery: update the README."""
    project = service["project"]
    env = {**os.environ, "CELERY_BROKER_URL": f"sqla+sqlite:///{tmp_path}/broker.sqlite3"}
    sent = subprocess.run(
        [project / ".venv/bin/python", "-c", SQLA_SEND], cwd=project, env=env, capture_output=True, text=True
    )
    assert sent.returncode == 0, sent.stderr[-2000:]
    # The worker as uWSGI starts it, but this test's own process group on the SQLite broker.
    worker = [project / ".venv/bin/celery", "--app", "my_service.tasks", "worker", "--pool", "threads"]
    workers = []
    try:
        with open(tmp_path / "worker.log", "ab") as log:
            start = lambda: subprocess.Popen(  # noqa: E731
                worker, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            workers.append(start())
            # Killed while it holds a task (under load, 0.3 s after a first task it often held none).
            broker = tmp_path / "broker.sqlite3"
            wait_for(lambda: held_tasks(service, broker) >= 1, 60, "a task taken and not done")
            os.killpg(workers[0].pid, signal.SIGKILL)
            workers[0].wait(timeout=10)
            done_at_kill = set(executions(service, "sqla-"))
            workers.append(start())
            # The queue drains: nothing visible is left in the broker. Then a warm shutdown (SIGTERM)
            # lets the tasks still running finish: once the worker has exited, none is running.
            wait_for(lambda: visible_messages(tmp_path / "broker.sqlite3") == 0, 60, "the queue drained")
            os.killpg(workers[1].pid, signal.SIGTERM)
            workers[1].wait(timeout=60)
    finally:
        for process in workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    executed = executions(service, "sqla-")
    lost = {f"sqla-{key}" for key in range(8)} - set(executed)
    assert len(executed) == len(set(executed)), f"no task ran twice: {executed}"
    assert 1 <= len(lost) <= CELERY_CONCURRENCY, (
        f"lost {sorted(lost)}; done at the kill: {sorted(done_at_kill)}"
    )
    assert not lost & done_at_kill


SQLA_SEND = """
from my_service.tasks import record
for key in range(8):
    record.delay(f"sqla-{key}", 1)
"""


def held_tasks(service, broker, sent=8):
    """Tasks taken from the queue (no longer visible) and not done. The queue is read first: a task
    taken or finished between the two reads is not counted."""
    visible = visible_messages(broker)
    return sent - visible - len(executions(service, "sqla-"))


def visible_messages(broker):
    import sqlite3

    with contextlib.closing(sqlite3.connect(broker, timeout=5)) as connection:
        return connection.execute("SELECT count(*) FROM kombu_message WHERE visible = 1").fetchone()[0]


def test_a_master_killed_under_the_emperor_is_respawned_and_serves_through_nginx(emperor_layout):
    """kill -9 of the vassal's uWSGI master under load through nginx: the Emperor starts it again,
    requests succeed again within 60 s without anyone acting, and the killed master's Celery
    worker does not linger beside the new one."""
    require("nginx")
    layout = emperor_layout
    with vassal_running(layout) as (emperor, _, groups):
        port, nginx_pid = start_nginx(layout)
        # nginx's master leads the process group of its workers (it called setsid): its group is
        # killed on the way out, as the vassal's are; a kill of the master alone would leave them.
        groups.append(nginx_pid)
        master = pid_file(layout, "uwsgi.pid")
        celery = wait_for(lambda: pid_file(layout, "celery.pid"), 60, "Celery's pid file")
        groups += [master, celery]
        with Load(port, threads=10, max_seconds=120) as load:
            wait_for(lambda: load.ok > 200, 30, "200 requests before the kill")
            os.kill(master, signal.SIGKILL)
            wait_for(lambda: pid_file(layout, "uwsgi.pid") not in (None, master), 60, "a new master")
            groups.append(pid_file(layout, "uwsgi.pid"))
            wait_for(lambda: get(f"http://127.0.0.1:{port}/health")[0] == 200, 60, "/health 200 via nginx")
            time.sleep(1)
            failed_before, ok_before = len(load.failures), load.ok
            wait_for(lambda: load.ok > ok_before + 500, 60, "500 requests after the respawn")
            later_failures = load.failures[failed_before:]
        assert not later_failures, later_failures
        wait_for(lambda: not alive(celery), 30, "the killed master's Celery worker gone")
        new_celery = wait_for(
            lambda: pid_file(layout, "celery.pid") not in (None, celery), 60, "a new Celery"
        )
        groups.append(pid_file(layout, "celery.pid"))
        assert new_celery and alive(pid_file(layout, "celery.pid"))
        assert emperor.poll() is None
