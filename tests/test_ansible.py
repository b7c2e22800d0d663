"""`make provision/deploy/rollback HOSTS=<inventory>` from this machine onto two booted Debian hosts.

The lab (scripts/lab) boots web1 and web2; the baked service's own playbooks (deploy/ansible)
provision them and deploy releases built here once (the code, wheels for the hosts' Python, hashed
static files). Clients on this machine send GET and POST requests to each host's nginx on port 80
while the deploy, the rollback and a refused deploy run: none may fail.
"""

import os
import re
import subprocess
import uuid

import pytest
from conftest import bake
from e2e.load import Load
from test_server_unit import LAB, LAB_PACKAGES, Host, require_lab

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
    """The baked service, its inventory of the lab's hosts, and the hosts."""

    def __init__(self, project, inventory, hosts):
        self.project, self.inventory, self.hosts = project, inventory, hosts

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


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Two fresh lab hosts (web1 primary) and a baked service whose .env for them says production."""
    require_lab()
    base = tmp_path_factory.mktemp("ansible")
    project = bake(base, deploy_root="/srv", python_version="3.11")
    sh(project, "git", "init", "-q")
    name = "a" + uuid.uuid4().hex[:5]
    env = {**os.environ, "SHIPSHAPE_LAB_PACKAGES": LAB_PACKAGES}
    up = subprocess.run(
        [LAB, "up", "2", "--name", name], capture_output=True, text=True, env=env, check=False
    )
    try:
        assert up.returncode == 0, up.stderr
        lines = [
            line + " primary=true" if line.startswith("web1 ") else line for line in up.stdout.splitlines()
        ]
        hosts = [Host(f"{up.stdout}\n{line}") for line in lines if line.startswith("web")]
        # The operator's file for the servers, kept outside the checkout (never in git).
        env_file = base / "servers.env"
        addresses = ",".join(host.address for host in hosts)
        env_file.write_text(
            (project / ".env").read_text() + f"APP_ENV=production\nALLOWED_HOSTS=example.com,{addresses}\n"
        )
        inventory = base / "inventory.ini"
        inventory.write_text("\n".join(lines) + f"\n\n[web:vars]\nenv_file={env_file}\n")
        yield Fleet(project, inventory, hosts)
    finally:
        subprocess.run([LAB, "down", "--name", name], capture_output=True, timeout=300, check=False)


def recap(output):
    """{host: {ok: n, changed: n, ...}} from ansible-playbook's PLAY RECAP."""
    lines = output.split("PLAY RECAP")[-1].strip().splitlines()
    return {
        line.split()[0]: {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", line)}
        for line in lines
        if "=" in line
    }


def test_provision_sets_up_each_host_and_a_second_run_changes_nothing(fleet):
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


def test_deploy_redeploy_and_rollback_under_load_fail_no_request(fleet):
    """The first deploy starts the unit; a second deploy and a rollback run under GET and POST
    load through each host's nginx: 0 failed requests, every host on the expected revision."""
    first = commit(fleet.project, "first release")
    fleet.make("deploy")
    assert set(fleet.revisions().values()) == {first}
    for host in fleet.hosts:
        assert host.sh("systemctl is-active my_service my_service.socket").split() == ["active", "active"]
        assert host.sh(f"ls {APP_ROOT}/releases/*/wheels | grep -c '^uwsgi-'") == "1"

    second = commit(fleet.project, "second release")
    result, loads = fleet.under_load("deploy")
    assert [load.failures[:5] for load in loads] == [[], []], result.stdout[-4000:]
    assert all(load.ok > 50 for load in loads)
    assert set(fleet.revisions().values()) == {second}

    result, loads = fleet.under_load("rollback")
    assert [load.failures[:5] for load in loads] == [[], []], result.stdout[-4000:]
    assert set(fleet.revisions().values()) == {first}
    for host in fleet.hosts:
        journal = host.sh("journalctl -u my_service --no-pager -o cat")
        assert "spawned uWSGI worker" in journal and "chain reloading complete" in journal, journal[-2000:]


def test_unhealthy_release_is_refused_naming_the_hosts_and_nothing_changes(fleet):
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
    assert [load.failures[:5] for load in loads] == [[], []]
    assert fleet.current() == before
    assert fleet.revisions() == revisions


def test_make_doctor_checks_every_servers_shared_and_names_the_host_that_fails(fleet):
    healthy = fleet.make("doctor")
    assert healthy.stdout.count("all 8 checks passed") == 2, healthy.stdout
    web2 = fleet.hosts[1]
    web2.sh(f"chmod 644 {APP_ROOT}/shared/.env")
    try:
        broken = fleet.make("doctor", check=False)
    finally:
        web2.sh(f"chmod 600 {APP_ROOT}/shared/.env")
    assert broken.returncode != 0
    reports = dict(re.findall(r"^(web\d) \| (\w+)", broken.stdout, flags=re.MULTILINE))
    assert reports == {"web1": "CHANGED", "web2": "FAILED"}, broken.stdout
    assert "FAIL env_file  .env has mode 644" in broken.stdout
