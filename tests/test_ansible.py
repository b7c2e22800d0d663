"""`make provision/deploy/rollback HOSTS=<inventory>` from this machine onto two booted Debian hosts.

The lab (scripts/lab) boots web1 and web2; the baked service's own playbooks (deploy/ansible)
provision them and deploy releases built here once (the code, wheels for the hosts' Python, hashed
static files). Clients on this machine send GET and POST requests to each host's nginx on port 80
while the deploy, the rollback and a refused deploy run: none may fail.
"""

import re

import pytest

from testkit.bake import commit
from testkit.lab import APP_ROOT, assert_doctor_names_the_host_that_fails, lab_fleet, recap

pytestmark = [pytest.mark.lab, pytest.mark.venv]


@pytest.fixture(scope="class")
def fleet(request, tmp_path_factory):
    """Two hosts of the class's Debian release."""
    release = request.cls.release
    with lab_fleet(tmp_path_factory.mktemp(f"ansible-{release}"), release, 2) as hosts:
        yield hosts


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
