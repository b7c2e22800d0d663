"""The shipped systemd unit and nginx site on a booted Debian host: installed by hand, under load.

One lab host (scripts/lab) gets a baked service the way the service README's "On a server" says:
the service user, shared/ owned by it and nginx's group, a release under /srv/my_service/releases
with its venv built on the host from wheels made here (the host reaches no registry), shared/.env,
the unit, and the site from deploy/nginx.conf with Debian's default site disabled. Then, with
clients on this machine sending requests to the host's port 80: it serves inside its sandbox,
Celery and cron run, it writes under shared/ only, `systemctl reload` drops nothing, and
`systemctl restart` or a `kill -9` of the master fail only the few requests measured here.

The wheels for the host's Python (Debian 12's /usr/bin/python3, the same as this machine's) are
built once per machine in ~/.cache/shipshape/wheelhouse-lab-<hash of requirements.txt>.
"""

import hashlib
import http.client
import os
import shlex
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from testkit.bake import run_cookiecutter
from testkit.env import CACHE, CI, ROOT
from testkit.load import Load

LAB = ROOT / "scripts" / "lab"
SYSTEM_PYTHON = Path("/usr/bin/python3")
ROOT_DIR = "/srv/my_service"
RELEASE = f"{ROOT_DIR}/releases/20260101T000000-baked"
# Failed requests out of all sent while the unit restarts or its master is killed (see README).
RESTART_FAILURES_MAX = 10
KILL_FAILURES_MAX = 10

pytestmark = pytest.mark.lab

# The README's "On a server" steps, as root on the host; /tmp/wheels and /tmp/release come from here.
INSTALL = rf"""
set -euo pipefail
apt-get update -q
apt-get install -y -q --no-install-recommends nginx python3-venv libpython3.11 libxml2
useradd --system --user-group --home-dir {ROOT_DIR} --no-create-home --shell /usr/sbin/nologin my_service
install -d -o root -g root -m 755 {ROOT_DIR} {ROOT_DIR}/releases
install -d -o my_service -g www-data -m 750 {ROOT_DIR}/shared
for name in run log data static media tmp; do
    install -d -o my_service -g www-data -m 750 {ROOT_DIR}/shared/$name
done
install -o my_service -g my_service -m 600 /tmp/env {ROOT_DIR}/shared/.env
mv /tmp/release {RELEASE}
chown -R root:root {RELEASE}
python3 -m venv {RELEASE}/.venv
{RELEASE}/.venv/bin/pip install --quiet --no-index --find-links /tmp/wheels -r {RELEASE}/requirements.txt
ln -s ../../shared/.env {RELEASE}/.env
ln -s {RELEASE} {ROOT_DIR}/current
cd {RELEASE} && runuser -u my_service -g www-data -- .venv/bin/python -m my_service.assets
cp {ROOT_DIR}/current/deploy/systemd/my_service.service {ROOT_DIR}/current/deploy/systemd/my_service.socket \
    /etc/systemd/system/
ln -s {ROOT_DIR}/current/deploy/nginx.conf /etc/nginx/sites-enabled/my_service
rm /etc/nginx/sites-enabled/default
nginx -t
systemctl reload nginx
systemctl daemon-reload
systemctl enable --now my_service.socket my_service.service
"""


def fail_or_skip(message):
    if CI:
        pytest.fail(message)
    pytest.skip(message)


def host_wheelhouse(project):
    """Wheels of every runtime requirement for the host's Python, built here once per machine."""
    requirements = (project / "requirements.txt").read_bytes()
    wheelhouse = CACHE / "shipshape" / f"wheelhouse-lab-{hashlib.sha256(requirements).hexdigest()[:12]}"
    if (wheelhouse / ".complete").exists():
        return wheelhouse
    system = CACHE / "shipshape" / "wheelhouse-system"
    env = {**os.environ, "PYTHON": str(SYSTEM_PYTHON), "WHEELHOUSE": str(system)}
    subprocess.run([ROOT / "scripts" / "wheelhouse"], check=True, env=env)
    shutil.rmtree(wheelhouse, ignore_errors=True)
    command = [SYSTEM_PYTHON, "-m", "pip", "wheel", "--quiet", "--find-links", system, "-w", wheelhouse]
    subprocess.run([*command, "-r", project / "requirements.txt"], check=True, capture_output=True)
    (wheelhouse / ".complete").touch()
    return wheelhouse


class Host:
    """The lab's web1: ssh as root with the lab's key, and its address for clients here."""

    def __init__(self, inventory):
        fields = dict(line.split("=", 1) for line in inventory.split() if "=" in line)
        self.address = fields["ansible_host"]
        self.ssh_command = [
            "ssh", "-i", fields["ansible_ssh_private_key_file"], "-o", "BatchMode=yes",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "LogLevel=ERROR",
            f"root@{self.address}",
        ]  # fmt: skip
        self.key = fields["ansible_ssh_private_key_file"]

    def sh(self, script, check=True, timeout=120):
        """Run a shell script on the host as root; its stdout."""
        result = subprocess.run(
            [*self.ssh_command, "bash -s"], input=script, capture_output=True, text=True, timeout=timeout
        )
        if check:
            assert result.returncode == 0, (
                f"{script}\n--- rc {result.returncode}\n{result.stdout}{result.stderr}"
            )
        return result.stdout.strip()

    def copy(self, source, target):
        ssh = shlex.join(self.ssh_command[:-1])
        command = ["rsync", "-a", "-e", ssh, f"{source}/", f"root@{self.address}:{target}/"]
        subprocess.run(command, check=True, capture_output=True, timeout=300)

    def journal(self, since="-1h"):
        return self.sh(f"journalctl -u my_service --no-pager -o cat --since={since}")


def require_lab():
    problems = [tool for tool in ("systemd-nspawn", "mmdebstrap", "rsync") if not shutil.which(tool)]
    problems = [f"{tool} not found" for tool in problems]
    if os.geteuid() != 0:
        problems.append("the lab needs root")
    if not SYSTEM_PYTHON.exists():
        problems.append(f"{SYSTEM_PYTHON} (Debian 12's, as on the hosts) is missing")
    if problems:
        fail_or_skip("; ".join(problems) + " (apt-get install systemd-container mmdebstrap rsync python3)")


def boot_and_install(base, install, *answers):
    """Bake with answers, boot a lab host, copy release, wheels and .env, run install; (name, Host)."""
    result = run_cookiecutter(
        base, "deploy_root=/srv", "python_version=3.11", *answers, env={**os.environ, "SKIP_VENV": "1"}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    project = base / "my_service"
    wheelhouse = host_wheelhouse(project)
    name = "u" + uuid.uuid4().hex[:5]
    up = subprocess.run([LAB, "up", "1", "--name", name], capture_output=True, text=True, check=False)
    assert up.returncode == 0, up.stderr
    web1 = Host(up.stdout)
    env_file = project / ".env"
    settings = [f"APP_ENV=production\nALLOWED_HOSTS={web1.address},example.com\nSTATE_DIR={ROOT_DIR}/shared"]
    env_file.write_text(env_file.read_text() + "\n".join(settings) + "\n")
    release = base / "release"
    shutil.copytree(project, release, ignore=shutil.ignore_patterns(".env"))
    (release / "REVISION").write_text("baked\n")
    web1.copy(release, "/tmp/release")
    web1.copy(wheelhouse, "/tmp/wheels")
    web1.sh(f"cat > /tmp/env <<'EOF'\n{env_file.read_text()}EOF\n")
    installed = web1.sh(install, timeout=300, check=False)
    return name, web1, installed


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """web1 of a fresh lab, serving a baked service installed by the README's steps."""
    require_lab()
    name = None
    try:
        name, web1, installed = boot_and_install(tmp_path_factory.mktemp("server-unit"), INSTALL)
        journal = web1.sh("journalctl -u my_service --no-pager -o cat | tail -n 40", check=False)
        assert web1.sh("systemctl is-active my_service", check=False) == "active", installed + journal
        yield web1
    finally:
        if name:
            subprocess.run([LAB, "down", "--name", name], capture_output=True, timeout=300, check=False)


def get(host, path="/"):
    """(status, body) of GET path from this machine through the host's nginx."""
    connection = http.client.HTTPConnection(host.address, 80, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def under_load(host, action, settle):
    """Run action (a shell script on the host) under 200 GET / a second from here: 10 strict keep-alive
    clients at a steady pace each (a fast 502 does not make a client send more); (ok, failures)."""
    with Load(80, threads=10, max_seconds=600, host=host.address, rate=200) as load:
        time.sleep(2)
        host.sh(action, timeout=120)
        deadline = time.monotonic() + 60
        while get(host)[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(settle)
    return load.ok, load.failures


def master_pid(host):
    return int(host.sh("systemctl show --property MainPID --value my_service"))


def test_unit_serves_through_the_distros_nginx_inside_its_sandbox(host):
    """GET / and /health through port 80: nginx reaches the 660 socket, owned by the service, www-data."""
    status, body = get(host)
    assert status == 200, body
    status, body = get(host, "/health")
    assert status == 200 and '"release"' in body, body
    socket = host.sh(f"stat -c '%U:%G %a' {ROOT_DIR}/shared/run/uwsgi.sock")
    assert socket == "my_service:www-data 660"
    sandbox = host.sh("systemctl show --property NoNewPrivileges,ProtectSystem,PrivateUsers my_service")
    assert sorted(sandbox.split()) == ["NoNewPrivileges=yes", "PrivateUsers=yes", "ProtectSystem=strict"]


def test_unit_is_active_only_once_every_worker_accepts(host):
    """`systemctl restart` returns when the workers serve: a request right after it is answered."""
    host.sh("systemctl restart my_service")
    stats = host.sh(
        f'{RELEASE}/.venv/bin/python -c "import json,socket; s=socket.socket(socket.AF_UNIX); '
        f"s.connect('{ROOT_DIR}/shared/run/stats.sock'); "
        "d=json.loads(b''.join(iter(lambda: s.recv(65536), b''))); "
        "print(sum(w['accepting'] for w in d['workers']), len(d['workers']))\""
    )
    accepting, workers = stats.split()
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
    assert host.sh(f"{enter} touch {ROOT_DIR}/shared/media/upload.bin && echo written") == "written"
    for outside in (f"{RELEASE}/written", "/run/lock/written", "/dev/shm/written", f"{ROOT_DIR}/written"):
        result = host.sh(f"{enter} touch {outside} 2>&1; echo rc=$?", check=False)
        assert "rc=1" in result and "Read-only file system" in result, (outside, result)
    # Nothing the service made during the tests lies outside shared/ (its private /tmp aside).
    strays = host.sh(
        f"find / -xdev -user my_service -not -path '{ROOT_DIR}/shared*' -not -path '/tmp/systemd-private-*'"
    )
    assert strays == ""


def test_journald_holds_the_services_logs_but_no_request_lines(host):
    """uWSGI, Celery and cron log to the journal; requests are nginx's access log's alone."""
    for _ in range(20):
        get(host)
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


# The Emperor's README steps (process_manager=emperor): the shared part as above, then the Emperor.
INSTALL_EMPEROR = (
    INSTALL[: INSTALL.index(f"cp {ROOT_DIR}/current/deploy/systemd")]
    + rf"""
python3 -m venv /opt/uwsgi-emperor
/opt/uwsgi-emperor/bin/pip install --quiet --no-index --find-links /tmp/wheels uwsgi
install -d /etc/uwsgi-emperor/vassals
cp {ROOT_DIR}/current/deploy/emperor/emperor.ini /etc/uwsgi-emperor/
cp {ROOT_DIR}/current/deploy/systemd/uwsgi-emperor.service /etc/systemd/system/
ln -s {ROOT_DIR}/current/deploy/emperor/my_service.ini /etc/uwsgi-emperor/vassals/
chown -h my_service:www-data /etc/uwsgi-emperor/vassals/my_service.ini
ln -s {ROOT_DIR}/current/deploy/nginx.conf /etc/nginx/sites-enabled/my_service
rm /etc/nginx/sites-enabled/default
nginx -t
systemctl reload nginx
systemctl daemon-reload
systemctl enable --now uwsgi-emperor
"""
)


def test_emperor_unit_runs_its_vassal_inside_its_sandbox(tmp_path):
    """process_manager=emperor: the sandboxed Emperor starts the vassal as its link's owner; it serves,
    Celery runs, and the vassal cannot write outside the deploy root."""
    require_lab()
    name = None
    try:
        name, web1, installed = boot_and_install(tmp_path, INSTALL_EMPEROR, "process_manager=emperor")
        deadline = time.monotonic() + 90
        while get(web1)[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        journal = web1.sh("journalctl -u uwsgi-emperor --no-pager -o cat | tail -n 40", check=False)
        assert get(web1)[0] == 200, installed + journal
        owners = web1.sh("ps -o user= -C uwsgi | sort | uniq -c")
        assert "my_service" in owners and owners.count("root") == 1, owners
        script = (
            f"cd {RELEASE} && runuser -u my_service -g www-data -- .venv/bin/python -c "
            "'from my_service.tasks import add; print(add.delay(2, 3).get(timeout=60, interval=0.1))'"
        )
        assert web1.sh(script, timeout=120).splitlines()[-1] == "5"
        pid = web1.sh(f"cat {ROOT_DIR}/shared/run/uwsgi.pid")
        result = web1.sh(f"nsenter --target {pid} --mount touch /etc/written 2>&1; echo rc=$?", check=False)
        assert "Read-only file system" in result, result
    finally:
        if name:
            subprocess.run([LAB, "down", "--name", name], capture_output=True, timeout=300, check=False)
