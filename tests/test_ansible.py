"""`make provision/deploy/rollback HOSTS=<inventory>` from this machine onto two booted Debian hosts.

The lab (scripts/lab) boots web1 and web2; the baked service's own playbooks (deploy/ansible)
provision them and deploy releases built here once (the code, wheels for the hosts' Python, hashed
static files). Clients on this machine send GET and POST requests to each host's nginx on port 80
while the deploy, the rollback and a refused deploy run: none may fail.
"""

import contextlib
import os
import re
import subprocess
import uuid

import pytest
from test_server_unit import LAB, Host, require_lab

from testkit.bake import bake, env_with_python
from testkit.load import Load

pytestmark = [pytest.mark.lab, pytest.mark.venv]
GIT = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com"]
APP_ROOT = "/srv/my_service"
REQUESTS = (("GET", "/"), ("POST", "/notes", {"text": "during the deploy"}), ("GET", "/notes"))


def sh(project, *command, check=True, timeout=900, **env):
    result = subprocess.run(
        command, cwd=project, capture_output=True, text=True, timeout=timeout, env={**os.environ, **env}
    )
    if check:
        assert result.returncode == 0, f"{command}\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    return result


def commit(project, message):
    (project / "CHANGES.txt").write_text(message + "\n")
    sh(project, *GIT, "add", "-A")
    sh(project, *GIT, "commit", "-qm", message)
    return sh(project, "git", "rev-parse", "--short", "HEAD").stdout.strip()


class Fleet:
    """The baked service, its inventory of the lab's hosts, the web hosts and the load balancer."""

    def __init__(self, project, inventory, hosts, lb=None):
        self.project, self.inventory, self.hosts, self.lb = project, inventory, hosts, lb

    def make(self, target, check=True, **env):
        return sh(self.project, "make", target, f"HOSTS={self.inventory}", check=check, **env)

    def releases(self):
        """What each host's nginx answers /health with: {address: release}."""
        return {
            host.address: host.sh("curl -sf http://127.0.0.1/health -H 'Host: example.com'")
            for host in self.hosts
        }

    def revisions(self):
        return {
            address: re.search(r'"release": ?"(\w+)"', body)[1] for address, body in self.releases().items()
        }

    def current(self):
        return {host.address: host.sh(f"readlink {APP_ROOT}/current") for host in self.hosts}

    def errors(self):
        """What uWSGI logged of failed requests and errors on each host, to explain a failure."""
        journal = "journalctl -u my_service -u uwsgi-emperor --no-pager -o cat"
        command = f"{journal} | grep -E 'HTTP/1.. 5|Error|error' | tail -n 20"
        return {host.address: host.sh(command, check=False) for host in self.hosts}

    def under_load(self, target, check=True):
        """make target while 10 clients per host send GET and POST to its port 80; (result, loads)."""
        loads = [
            Load(80, threads=10, max_seconds=600, requests=REQUESTS, host=host.address) for host in self.hosts
        ]
        for load in loads:
            load.__enter__()
        try:
            result = self.make(target, check=check)
        finally:
            for load in loads:
                load.__exit__()
        return result, loads


# Per Debian release of the hosts: the service's Python and the command that runs the hosts' Python
# here to build their wheels: bookworm's is this machine's own, trixie's runs in a trixie build root
# (scripts/lab python). What uWSGI links, `make provision` installs from the lab's package source.
RELEASES = {
    "bookworm": ("3.11", "/usr/bin/python3"),
    "trixie": ("3.13", f"{LAB} python --release trixie --"),
}


def shared_state(inventory):
    """With several web hosts, what they share (settings refuse one host's SQLite or memory): the
    lab's PostgreSQL, and its Redis as broker, result backend and cache (databases 0, 1, 2)."""
    found = dict(re.findall(r"^(lab_\w+_url)=(\S+)$", inventory, flags=re.MULTILINE))
    redis = found["lab_redis_url"].rsplit("/", 1)[0]
    return (
        f"DATABASE_URL={found['lab_database_url']}\nCELERY_BROKER_URL={redis}/0\n"
        f"CELERY_RESULT_BACKEND={redis}/1\nCACHE_URL={redis}/2\n"
    )


@contextlib.contextmanager
def lab_fleet(base, release, count, lb=False, **answers):
    """count fresh lab hosts of release (web1 primary), with a load balancer lb1 if lb, and a baked
    service whose env file for them says production (and, for several hosts, names the lab's
    PostgreSQL and Redis); the lab is removed afterwards, also when the test failed."""
    require_lab()
    python, host_python = RELEASES[release]
    env = os.environ if python == "3.11" else env_with_python(python, base / "bin")
    project = bake(base, env=env, deploy_root="/srv", python_version=python, **answers)
    sh(project, "git", "init", "-q")
    name = "a" + uuid.uuid4().hex[:5]
    options = [*(["--lb"] if lb else []), *(["--services"] if count > 1 else [])]
    command = [LAB, "up", str(count), *options, "--name", name, "--release", release]
    up = subprocess.run(command, capture_output=True, text=True, check=False)
    try:
        assert up.returncode == 0, up.stderr
        lines = [
            line + " primary=true" if line.startswith("web1 ") else line for line in up.stdout.splitlines()
        ]
        hosts = [Host(f"{up.stdout}\n{line}") for line in lines if line.startswith("web")]
        balancer = [Host(f"{up.stdout}\n{line}") for line in lines if line.startswith("lb1 ")]
        # The operator's file for the servers, kept outside the checkout (never in git).
        env_file = base / "servers.env"
        addresses = ",".join(host.address for host in balancer + hosts)
        production = f"APP_ENV=production\nALLOWED_HOSTS=example.com,{addresses}\n"
        shared = shared_state(up.stdout) if count > 1 else ""
        # With a load balancer, pages load their hashed files from it, as from a CDN's origin.
        shared += "".join(f"STATIC_URL=http://{host.address}/static/\n" for host in balancer)
        env_file.write_text((project / ".env").read_text() + production + shared)
        inventory = base / "inventory.ini"
        settings = f"\n[web:vars]\nenv_file={env_file}\n\n[all:vars]\nhost_python='{host_python}'\n"
        inventory.write_text("\n".join(lines) + settings)
        fleet = Fleet(project, inventory, hosts, *balancer)
        fleet.lab = name
        yield fleet
    finally:
        down = subprocess.run([LAB, "down", "--name", name], capture_output=True, text=True, timeout=300)
        assert down.returncode == 0, f"lab {name} was not removed: {down.stderr}"


@pytest.fixture(scope="class")
def fleet(request, tmp_path_factory):
    """Two hosts of the class's Debian release."""
    release = request.cls.release
    with lab_fleet(tmp_path_factory.mktemp(f"ansible-{release}"), release, 2) as hosts:
        yield hosts


def recap(output):
    """{host: {ok: n, changed: n, ...}} from ansible-playbook's PLAY RECAP."""
    lines = output.split("PLAY RECAP")[-1].strip().splitlines()
    return {
        line.split()[0]: {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", line)}
        for line in lines
        if "=" in line
    }


def assert_doctor_names_the_host_that_fails(fleet):
    """make doctor HOSTS=: each host's shared/ and its own nginx (Debian's default site back on
    web1, shared/.env readable by others on web2): each host fails its own check alone."""
    healthy = fleet.make("doctor")
    assert healthy.stdout.count("all 8 checks passed") == 2, healthy.stdout
    web1, web2 = fleet.hosts
    web1.sh("ln -s /etc/nginx/sites-available/default /etc/nginx/sites-enabled/default")
    web2.sh(f"chmod 644 {APP_ROOT}/shared/.env")
    try:
        broken = fleet.make("doctor", check=False)
    finally:
        web1.sh("rm /etc/nginx/sites-enabled/default")
        web2.sh(f"chmod 600 {APP_ROOT}/shared/.env")
    assert broken.returncode != 0
    reports = re.split(r"^(?=web\d \| )", broken.stdout, flags=re.MULTILINE)
    report = {block[:4]: block for block in reports if block.startswith("web")}
    assert "FAIL nginx" in report["web1"] and "1 of 8 checks failed" in report["web1"], broken.stdout
    assert "FAIL env_file  .env has mode 644" in report["web2"] and "1 of 8 checks failed" in report["web2"]


class Servers:
    """Two hosts without a load balancer, each serving through its own nginx (a class per Debian
    release). Bookworm's two web hosts are tested behind lb1 in tests/test_fleet.py, with the same
    checks; booting a third pair of hosts for them here cost the suite minutes for no new path."""

    def test_provision_sets_up_each_host_and_a_second_run_changes_nothing(self, fleet):
        first = fleet.make("provision")
        assert all(counts["changed"] > 0 for counts in recap(first.stdout).values()), first.stdout
        second = fleet.make("provision")
        counts = recap(second.stdout)
        assert set(counts) == {"web1", "web2"}, second.stdout
        assert all(host["changed"] == 0 and host["failed"] == 0 for host in counts.values()), second.stdout
        for host in fleet.hosts:
            assert host.sh(f"stat -c '%U:%G %a' {APP_ROOT}/shared/.env") == "my_service:my_service 600"
            assert host.sh(f"stat -c '%U:%G %a' {APP_ROOT}/shared/run") == "my_service:www-data 750"
            assert "SECRET_KEY=" in host.sh(f"cat {APP_ROOT}/shared/.env")
            assert host.sh("ls /etc/nginx/sites-enabled") == "my_service"
            assert host.sh("id -un my_service") == "my_service"

    def test_deploy_redeploy_and_rollback_under_load_fail_no_request(self, fleet):
        """The first deploy starts the unit; a second deploy and a rollback run under GET and POST
        load through each host's nginx: 0 failed requests, every host on the expected revision."""
        first = commit(fleet.project, "first release")
        fleet.make("deploy")
        assert set(fleet.revisions().values()) == {first}
        for host in fleet.hosts:
            assert host.sh("systemctl is-active my_service my_service.socket").split() == ["active", "active"]
            # The unit's uWSGI, not one that bin/serve started beside it.
            master = host.sh(f"cat {APP_ROOT}/shared/run/uwsgi.pid")
            assert host.sh("systemctl show --property MainPID --value my_service") == master
            assert host.sh(f"ls {APP_ROOT}/releases/*/wheels | grep -ci '^uwsgi-'") == "1"

        second = commit(fleet.project, "second release")
        result, loads = fleet.under_load("deploy")
        assert [load.failures[:5] for load in loads] == [[], []], (result.stdout[-4000:], fleet.errors())
        assert all(load.ok > 50 for load in loads)
        assert set(fleet.revisions().values()) == {second}

        result, loads = fleet.under_load("rollback")
        assert [load.failures[:5] for load in loads] == [[], []], (result.stdout[-4000:], fleet.errors())
        assert set(fleet.revisions().values()) == {first}
        for host in fleet.hosts:
            journal = host.sh("journalctl -u my_service --no-pager -o cat")
            assert "spawned uWSGI worker" in journal and "chain reloading complete" in journal, journal[
                -2000:
            ]

    def test_unhealthy_release_is_refused_naming_the_hosts_and_nothing_changes(self, fleet):
        """A release whose /health fails in its throwaway process: the deploy exits non-zero naming
        each host, current is untouched and the hosts keep serving, 0 failed requests."""
        before, revisions = fleet.current(), fleet.revisions()
        views = fleet.project / "my_service" / "views.py"
        source = views.read_text()
        views.write_text(
            source.replace("return jsonify(body), 200 if healthy else 503", "return jsonify(body), 503")
        )
        commit(fleet.project, "a release whose health check fails")
        try:
            result, loads = fleet.under_load("deploy", check=False)
        finally:
            views.write_text(source)
            commit(fleet.project, "health restored")
        assert result.returncode != 0
        for host in ("web1", "web2"):
            assert re.search(rf"fatal: \[{host}\].*is unhealthy", result.stdout), result.stdout[-4000:]
        assert [load.failures[:5] for load in loads] == [[], []], fleet.errors()
        assert fleet.current() == before
        assert fleet.revisions() == revisions

    def test_make_doctor_checks_every_server_and_names_the_host_that_fails(self, fleet):
        assert_doctor_names_the_host_that_fails(fleet)


class TestTrixieServers(Servers):
    release = "trixie"


@pytest.fixture(scope="module")
def emperor_host(tmp_path_factory):
    with lab_fleet(
        tmp_path_factory.mktemp("ansible-emperor"), "bookworm", 1, process_manager="emperor"
    ) as hosts:
        yield hosts


def test_emperor_runs_the_vassal_that_deploys_link_and_reload(emperor_host):
    """process_manager=emperor: provision installs the Emperor's unit, the first deploy its uWSGI
    and the vassal link (owned by the service user: tyrant mode); a second deploy under load
    chain-reloads the vassal: 0 failed requests."""
    emperor_host.make("provision")
    first = commit(emperor_host.project, "first release")
    emperor_host.make("deploy")
    (host,) = emperor_host.hosts
    assert emperor_host.revisions() == {host.address: first}
    assert host.sh("systemctl is-active uwsgi-emperor") == "active"
    link = host.sh("stat -c '%U:%G %N' /etc/uwsgi-emperor/vassals/my_service.ini")
    assert link.startswith("my_service:www-data") and f"{APP_ROOT}/current/deploy/emperor" in link, link

    second = commit(emperor_host.project, "second release")
    result, loads = emperor_host.under_load("deploy")
    assert [load.failures[:5] for load in loads] == [[]], result.stdout[-4000:]
    assert emperor_host.revisions() == {host.address: second}
