"""The shipped systemd unit and nginx site on a booted Debian host: installed by hand, under load.

One lab host (scripts/lab) gets a baked service the way the service README's "On a server" says:
the service user, shared/ owned by it and nginx's group, a release under /srv/my_service/releases
with its venv built on the host from wheels made here (the host reaches no registry), shared/.env,
the unit, and the site from deploy/nginx.conf with Debian's default site disabled. Then, with
clients on this machine sending requests to the host's port 80: it serves inside its sandbox,
Celery and cron run, it writes under shared/ only, `systemctl reload` drops nothing, and
`systemctl restart` or a `kill -9` of the master fail only the few requests measured here.

The steps (INSTALL), the host and the wheels for its Python are testkit/lab.py's.
"""

import json
import time

import pytest

from testkit.http import get
from testkit.lab import APP_ROOT, INSTALL, INSTALL_RELEASE, INSTALL_SITE, RELEASE, installed_host, require_lab
from testkit.load import Load
from testkit.uwsgi import stats_command

# Failed requests out of all sent while the unit restarts or its master is killed (see README).
RESTART_FAILURES_MAX = 10
KILL_FAILURES_MAX = 10

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """web1 of a fresh lab, serving a baked service installed by the README's steps."""
    require_lab()
    with installed_host(tmp_path_factory.mktemp("server-unit"), INSTALL) as (web1, installed):
        journal = web1.sh("journalctl -u my_service --no-pager -o cat | tail -n 40", check=False)
        assert web1.sh("systemctl is-active my_service", check=False) == "active", installed + journal
        yield web1


def under_load(host, action, settle):
    """Run action (a shell script on the host) under 200 GET / a second from here: 10 strict keep-alive
    clients at a steady pace each (a fast 502 does not make a client send more); (ok, failures)."""
    with Load(80, threads=10, max_seconds=600, host=host.address, rate=200) as load:
        time.sleep(2)
        host.sh(action, timeout=120)
        deadline = time.monotonic() + 60
        while get(host.url + "/")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(settle)
    return load.ok, load.failures


def master_pid(host):
    return int(host.sh("systemctl show --property MainPID --value my_service"))


def test_unit_serves_through_the_distros_nginx_inside_its_sandbox(host):
    """GET / and /health through port 80: nginx reaches the 660 socket, owned by the service, www-data."""
    status, _, body = get(host.url + "/")
    assert status == 200, body
    status, _, body = get(host.url + "/health")
    assert status == 200 and '"release"' in body, body
    socket = host.sh(f"stat -c '%U:%G %a' {APP_ROOT}/shared/run/uwsgi.sock")
    assert socket == "my_service:www-data 660"
    sandbox = host.sh("systemctl show --property NoNewPrivileges,ProtectSystem,PrivateUsers my_service")
    assert sorted(sandbox.split()) == ["NoNewPrivileges=yes", "PrivateUsers=yes", "ProtectSystem=strict"]


def test_unit_is_active_only_once_every_worker_accepts(host):
    """`systemctl restart` returns when the workers serve: a request right after it is answered."""
    host.sh("systemctl restart my_service")
    stats = json.loads(
        host.sh(stats_command(f"{RELEASE}/.venv/bin/python", f"{APP_ROOT}/shared/run/stats.sock"))
    )
    accepting, workers = str(sum(w["accepting"] for w in stats["workers"])), str(len(stats["workers"]))
    assert accepting == workers == "4"


def test_celery_and_cron_run_under_the_unit(host):
    """A task sent from the host is done by the unit's Celery; the heartbeat cron job ran at start."""
    script = (
        f"cd {RELEASE} && runuser -u my_service -g www-data -- .venv/bin/python -c "
        "'from my_service.tasks import add; print(add.delay(2, 3).get(timeout=60, interval=0.1))'"
    )
    assert host.sh(script, timeout=120).splitlines()[-1] == "5"
    deadline = time.monotonic() + 60
    while "job heartbeat finished" not in host.journal() and time.monotonic() < deadline:
        time.sleep(1)
    assert "job heartbeat finished" in host.journal()


def test_the_service_writes_under_shared_only(host):
    """Inside the unit's mount namespace the service user writes shared/media, never the release or /var."""
    pid = master_pid(host)
    ids = "--setuid $(id -u my_service) --setgid $(getent group www-data | cut -d: -f3)"
    enter = f"nsenter --target {pid} --mount {ids}"
    assert host.sh(f"{enter} touch {APP_ROOT}/shared/media/upload.bin && echo written") == "written"
    for outside in (f"{RELEASE}/written", "/run/lock/written", "/dev/shm/written", f"{APP_ROOT}/written"):
        result = host.sh(f"{enter} touch {outside} 2>&1; echo rc=$?", check=False)
        assert "rc=1" in result and "Read-only file system" in result, (outside, result)
    # Nothing the service made during the tests lies outside shared/ (its private /tmp aside).
    strays = host.sh(
        f"find / -xdev -user my_service -not -path '{APP_ROOT}/shared*' -not -path '/tmp/systemd-private-*'"
    )
    assert strays == ""


def test_journald_holds_the_services_logs_but_no_request_lines(host):
    """uWSGI, Celery and cron log to the journal; requests are nginx's access log's alone."""
    for _ in range(20):
        get(host.url + "/")
    journal = host.journal()
    assert "spawned uWSGI worker" in journal
    assert "celery@" in journal and "ready." in journal
    assert "GET / " not in journal, [line for line in journal.splitlines() if "GET /" in line][:3]
    assert "GET / HTTP/1.1" in host.sh("tail -n 5 /var/log/nginx/access.log")


def test_systemctl_reload_drops_no_request(host):
    """ExecReload (bin/reload, a chain reload) under load: every request answered 200."""
    ok, failures = under_load(host, "systemctl reload my_service", settle=2)
    print(f"reload: {ok} ok, {len(failures)} failed")
    assert ok > 100 and failures == []


def test_systemctl_restart_fails_at_most_a_few_requests(host):
    """A full restart (stop, start, wait for the workers) under load."""
    ok, failures = under_load(host, "systemctl restart my_service", settle=2)
    print(f"restart: {ok} ok, {len(failures)} failed: {sorted(set(map(str, failures)))[:5]}")
    assert ok > 100 and len(failures) <= RESTART_FAILURES_MAX


def test_a_killed_master_is_back_within_a_second(host):
    """kill -9 of the uWSGI master: systemd restarts the unit after RestartSec=100ms."""
    before = master_pid(host)
    ok, failures = under_load(host, f"kill -9 {before}", settle=2)
    print(f"kill -9: {ok} ok, {len(failures)} failed: {sorted(set(map(str, failures)))[:5]}")
    assert master_pid(host) not in (0, before)
    assert ok > 100 and len(failures) <= KILL_FAILURES_MAX


# The Emperor's README steps (process_manager=emperor): the release as above, then the Emperor.
INSTALL_EMPEROR = (
    INSTALL_RELEASE
    + rf"""
python3 -m venv /opt/uwsgi-emperor
/opt/uwsgi-emperor/bin/pip install --quiet --no-index --find-links /tmp/wheels uwsgi
install -d /etc/uwsgi-emperor/vassals
cp {APP_ROOT}/current/deploy/emperor/emperor.ini /etc/uwsgi-emperor/
cp {APP_ROOT}/current/deploy/systemd/uwsgi-emperor.service /etc/systemd/system/
ln -s {APP_ROOT}/current/deploy/emperor/my_service.ini /etc/uwsgi-emperor/vassals/
chown -h my_service:www-data /etc/uwsgi-emperor/vassals/my_service.ini
"""
    + INSTALL_SITE
    + "systemctl enable --now uwsgi-emperor\n"
)


def test_emperor_unit_runs_its_vassal_inside_its_sandbox(tmp_path):
    """process_manager=emperor: the sandboxed Emperor starts the vassal as its link's owner; it serves,
    Celery runs, and the vassal cannot write outside the deploy root."""
    require_lab()
    with installed_host(tmp_path, INSTALL_EMPEROR, "process_manager=emperor") as (web1, installed):
        deadline = time.monotonic() + 90
        while get(web1.url + "/")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        journal = web1.sh("journalctl -u uwsgi-emperor --no-pager -o cat | tail -n 40", check=False)
        assert get(web1.url + "/")[0] == 200, installed + journal
        owners = web1.sh("ps -o user= -C uwsgi | sort | uniq -c")
        assert "my_service" in owners and owners.count("root") == 1, owners
        script = (
            f"cd {RELEASE} && runuser -u my_service -g www-data -- .venv/bin/python -c "
            "'from my_service.tasks import add; print(add.delay(2, 3).get(timeout=60, interval=0.1))'"
        )
        assert web1.sh(script, timeout=120).splitlines()[-1] == "5"
        pid = web1.sh(f"cat {APP_ROOT}/shared/run/uwsgi.pid")
        result = web1.sh(f"nsenter --target {pid} --mount touch /etc/written 2>&1; echo rc=$?", check=False)
        assert "Read-only file system" in result, result
