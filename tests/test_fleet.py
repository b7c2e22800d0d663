"""Two web hosts behind the lab's load balancer: a rolling deploy and rollback that nobody notices.

The lab boots lb1, web1 (primary) and web2, and PostgreSQL and Redis on its bridge for the web
hosts to share. `make provision` turns lb1 into the load balancer (HAProxy, deploy/haproxy.cfg);
clients on this machine send GET and POST requests through it while deploys and rollbacks roll host
by host. Two kinds of keep-alive clients run side by side: browser-like ones send a request again
that a reused connection lost before any byte of its answer, strict ones (wrk, a service's client)
never do. A deploy takes a host out of rotation through HAProxy's runtime API, never by a reload,
so no client connection is closed: no resend and no failed request, of either kind. Any error, and
any answer but 200 or 201, is a failed request.
"""

import base64
import json
import os
import re
import subprocess
import time

import pytest

from testkit.bake import commit
from testkit.lab import (
    APP_ROOT,
    REQUESTS,
    assert_doctor_names_the_host_that_fails,
    lab_fleet,
    recap,
    rotation_of,
)
from testkit.load import Load

pytestmark = [pytest.mark.lab, pytest.mark.venv]
TASKS = 250  # sent from each web host


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    with lab_fleet(tmp_path_factory.mktemp("fleet"), "bookworm", 2, lb=True) as fleet:
        # Batches as a percentage: half of two hosts is one at a time (two would leave none in
        # rotation, which the roll refuses).
        fleet.inventory.write_text(fleet.inventory.read_text() + "deploy_serial=50%\n")
        fleet.make("provision")
        fleet.first = commit(fleet.project, "first release")
        fleet.make("deploy")
        fleet.deployed_at = time.time()
        yield fleet


CLIENTS = 5  # of each kind: browser-like (resends) and strict (never resends)


class Clients:
    """Browser-like and strict keep-alive clients through lb1, side by side while a command runs."""

    def __init__(self, fleet):
        self.browser = Load(80, CLIENTS, 600, REQUESTS, host=fleet.lb.address, resend=True)
        self.strict = Load(80, CLIENTS, 600, REQUESTS, host=fleet.lb.address)

    def __enter__(self):
        self.browser.__enter__()
        self.strict.__enter__()
        return self

    def __exit__(self, *exc):
        self.strict.__exit__(*exc)
        self.browser.__exit__(*exc)

    def assert_no_request_failed_or_was_resent(self, output, fleet):
        """No request failed, of either kind of client; no connection was lost, so the browser-like
        clients resent nothing; each kind was answered throughout."""
        assert self.strict.failures[:5] == [], (len(self.strict.failures), output[-4000:], fleet.errors())
        assert self.browser.failures[:5] == [], (len(self.browser.failures), output[-4000:], fleet.errors())
        assert self.browser.resent == 0, self.browser.resent
        assert self.browser.ok > 100 and self.strict.ok > 100, (self.browser.ok, self.strict.ok)


def through_the_balancer(fleet, target, check=True):
    """make target while browser-like and strict clients send GET and POST through lb1;
    (result, clients)."""
    with Clients(fleet) as clients:
        result = fleet.make(target, check=check)
    return result, clients


def assert_every_host_in_rotation(fleet):
    assert {host: status for host, (_, status) in rotation_of(fleet).items()} == {"web1": "UP", "web2": "UP"}


def access_log(fleet, since=0):
    """lb1's access log (HAProxy's, in its journal) since `since` (epoch s)."""
    return fleet.lb.sh(f"journalctl -u haproxy --no-pager -o cat --since=@{int(since)}")


def balanced_requests(fleet, since):
    """(start, end, web host address) of each request lb1 passed on since `since` (epoch s)."""
    requests = []
    for match in re.finditer(
        r" (\d+) ms my_service_web/\S+ ([\d.]+):\d+ retries=\d+ end_ms=(\d+)", access_log(fleet, since)
    ):
        took, address, end = int(match[1]) / 1000, match[2], int(match[3]) / 1000
        if end >= since:
            requests.append((end - took, end, address))
    return requests


def reload_windows(host, since):
    """[(start, end)] of each chain reload on the host since `since` (uWSGI's journal lines)."""
    journal = host.sh(f"journalctl -u my_service --no-pager -o short-unix --since=@{int(since)}")
    # A chain reload replaces worker 1 first; until "complete" the host serves both releases.
    lines = journal.splitlines()
    starts = [float(line.split()[0]) for line in lines if "chain next victim is worker 1" in line]
    ends = [float(line.split()[0]) for line in lines if "chain reloading complete" in line]
    assert len(starts) == len(ends), journal[-3000:]
    return list(zip(starts, ends, strict=True))


def assert_never_sent_to_a_reloading_host(fleet, since):
    requests = balanced_requests(fleet, since)
    assert requests, "lb1 logged no request"
    for host in fleet.hosts:
        windows = reload_windows(host, since)
        assert windows, f"{host.address} never reloaded"
        overlapping = [
            (start, end)
            for start, end, address in requests
            if address == host.address and any(start < w_end and end > w_start for w_start, w_end in windows)
        ]
        assert overlapping == [], (host.address, windows, overlapping[:5])
    # And the load went to both hosts: nothing here holds because one host took it all.
    assert {address for *_, address in requests} == {host.address for host in fleet.hosts}


def test_provision_makes_lb1_the_load_balancer_of_both_web_hosts_which_log_the_client(fleet):
    """lb1 balances over web1 and web2; each web host knows the fleet's size, and only the
    primary runs the cron jobs. A second provision changes nothing."""
    again = fleet.make("provision")
    counts = recap(again.stdout)
    assert set(counts) == {"lb1", "web1", "web2"}, again.stdout
    assert all(host["changed"] == 0 and host["failed"] == 0 for host in counts.values()), again.stdout
    assert rotation_of(fleet) == {
        "web1": (f"{fleet.hosts[0].address}:80", "UP"),
        "web2": (f"{fleet.hosts[1].address}:80", "UP"),
    }
    web1, web2 = fleet.hosts
    assert "WEB_HOSTS=2\n" in web1.sh(f"cat {APP_ROOT}/shared/.env") + "\n"
    assert "RUN_CRON=true" in web1.sh(f"cat {APP_ROOT}/shared/.env")
    assert "RUN_CRON=false" in web2.sh(f"cat {APP_ROOT}/shared/.env")
    headers = subprocess.run(
        ["curl", "-si", f"http://{fleet.lb.address}/health"], capture_output=True, text=True, timeout=30
    ).stdout
    assert headers.startswith("HTTP/1.1 200"), headers
    # The security headers once each: the load balancer sets them over the web hosts' copies.
    assert headers.lower().count("x-content-type-options: nosniff") == 1, headers
    # The web hosts log the client (this machine, as lb1 saw it), not lb1: they believe lb1's
    # X-Forwarded-For. A client's own X-Forwarded-For names nobody else.
    client = access_log(fleet).splitlines()[-1].split()[0]
    forged = subprocess.run(
        ["curl", "-sf", "-H", "X-Forwarded-For: 192.0.2.9", f"http://{fleet.lb.address}/health?forged"],
        capture_output=True,
        timeout=30,
    )
    assert forged.returncode == 0
    # lb1's own health checks, every 2 s, say who they are.
    grep = "grep -h 'GET /health' /var/log/nginx/access.log | grep -v haproxy-health-check || true"
    logged = "\n".join(host.sh(grep) for host in fleet.hosts)
    assert [line.split()[0] for line in logged.splitlines() if "?forged" in line] == [client], logged
    assert fleet.lb.address not in {line.split()[0] for line in logged.splitlines()}, logged


def test_rolling_deploy_and_rollback_through_the_balancer_fail_no_request(fleet):
    """A deploy, then a rollback, host by host under GET and POST load through lb1: 0 failed
    requests, every host on one revision after each, and lb1 never passed a request to a host
    while that host was chain-reloading (its access log against each host's uWSGI journal); that
    log names every request the clients sent, with the client's address."""
    second = commit(fleet.project, "second release")
    since = time.time()
    result, clients = through_the_balancer(fleet, "deploy")
    clients.assert_no_request_failed_or_was_resent(result.stdout, fleet)
    # The access log's lines (HAProxy's own, such as "Server my_service_web/web1 is UP", are not).
    logged = [line for line in access_log(fleet, since).splitlines() if " end_ms=" in line]
    assert len(logged) >= clients.browser.ok + clients.strict.ok, (
        len(logged),
        clients.browser.ok,
        clients.strict.ok,
    )
    this_machine = {line.split()[0] for line in logged}
    assert len(this_machine) == 1 and this_machine != {fleet.lb.address}, this_machine
    assert set(fleet.revisions().values()) == {second}
    # Migrations before the first host switches; the after-switch ones once the last is back.
    tasks = re.findall(r"^TASK \[([^\]]+)\]", result.stdout, flags=re.MULTILINE)

    def runs_of(name):
        return [n for n, task in enumerate(tasks) if task.startswith(name)]

    switches, rejoined = runs_of("Switch, reload and verify"), runs_of("Put the batch back into rotation")
    assert len(switches) == len(rejoined) == 2, tasks
    migrated = runs_of("Migrate ")
    assert len(migrated) == 2 and migrated[0] < switches[0] and migrated[1] > rejoined[-1], tasks
    assert_never_sent_to_a_reloading_host(fleet, since)
    assert_every_host_in_rotation(fleet)

    since = time.time()
    result, clients = through_the_balancer(fleet, "rollback")
    clients.assert_no_request_failed_or_was_resent(result.stdout, fleet)
    assert set(fleet.revisions().values()) == {fleet.first}
    assert_never_sent_to_a_reloading_host(fleet, since)


# A release's two migrations: each records, in a note, where it ran (the address PostgreSQL sees the
# migrating host at) and, in created_at, when its transaction began.
EXPAND = '''"""Expand: a nullable column the serving release never reads; runs before the switch."""

import sqlalchemy as sa
from alembic import op

revision = "f1ee00000001"
down_revision = "af6f780d13df"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("notes", sa.Column("origin", sa.Text(), nullable=True))
    op.execute("INSERT INTO notes (text) VALUES ('migration expand on ' || host(inet_client_addr()))")


def downgrade() -> None:
    op.drop_column("notes", "origin")
'''
CONTRACT = '''"""Contract: drop the column again, once no worker serves the release before it."""

import sqlalchemy as sa
from alembic import op

revision = "f1ee00000002"
down_revision = "f1ee00000001"
branch_labels = None
depends_on = None
# A drop: the release serving before the switch selects every column it maps, so this waits.
AFTER_SWITCH = True


def upgrade() -> None:
    op.drop_column("notes", "origin")
    op.execute("INSERT INTO notes (text) VALUES ('migration contract on ' || host(inet_client_addr()))")


def downgrade() -> None:
    op.add_column("notes", sa.Column("origin", sa.Text(), nullable=True))
'''
# Run on a web host as the service: the notes the migrations wrote, with when, as JSON. The program
# goes in base64: no quote of its own meets the shell's.
NOTES_OF_MIGRATIONS = (
    f"cd {APP_ROOT}/current && echo {{program}} | base64 -d"
    " | runuser -u my_service -g www-data -- .venv/bin/python -"
)
NOTES_PROGRAM = """
import json
from sqlalchemy import create_engine, text
from my_service import db, settings
engine = create_engine(db.sqlalchemy_url(settings.DATABASE_URL))
query = "SELECT text, extract(epoch FROM created_at) FROM notes WHERE text LIKE 'migration %'"
with engine.connect() as connection:
    print(json.dumps([[text, float(moment)] for text, moment in connection.execute(text(query))]))
"""


def test_a_release_with_an_expand_and_a_contract_migration_migrates_once_on_the_primary_in_order(fleet):
    """A release with an expand migration and one marked AFTER_SWITCH, rolled over both hosts under
    load: each ran exactly once, on the primary (web1) alone, the expand before the first host's
    chain reload began and the contract after the last one ended; nothing failed."""
    versions = fleet.project / "migrations" / "versions"
    (versions / "20990101_f1ee00000001_expand.py").write_text(EXPAND)
    (versions / "20990102_f1ee00000002_contract.py").write_text(CONTRACT)
    commit(fleet.project, "a release with an expand and a contract migration")
    since = time.time()
    result, clients = through_the_balancer(fleet, "deploy")
    clients.assert_no_request_failed_or_was_resent(result.stdout, fleet)
    program = base64.b64encode(NOTES_PROGRAM.encode()).decode()
    notes = json.loads(fleet.hosts[0].sh(NOTES_OF_MIGRATIONS.format(program=program)))
    web1 = fleet.hosts[0].address
    assert sorted(text for text, _ in notes) == [
        f"migration contract on {web1}",
        f"migration expand on {web1}",
    ]
    ran = {text.split()[1]: moment for text, moment in notes}
    windows = [window for host in fleet.hosts for window in reload_windows(host, since)]
    assert ran["expand"] < min(start for start, _ in windows), (ran, windows)
    assert ran["contract"] > max(end for _, end in windows), (ran, windows)


# Appended to wsgi.py: the app as uWSGI serves it answers /health with 503; the deploy's throwaway
# check (the Flask app without uWSGI) still passes.
UNHEALTHY_UNDER_UWSGI = """
try:
    import uwsgi  # noqa: F401

    _app = application

    def application(environ, start_response):
        if environ["PATH_INFO"] != "/health":
            return _app(environ, start_response)
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
        return [b"unhealthy under uWSGI"]
except ImportError:
    pass
"""


def test_a_release_unhealthy_under_uwsgi_stops_the_roll_at_the_first_host(fleet):
    """A release that passes its checks in a throwaway process but whose /health fails once uWSGI
    serves it: web1 is switched back, the roll stops before web2, which never changed, the last
    lines say who serves what, the fleet lock is released, and no request failed."""
    before, revisions = fleet.current(), fleet.revisions()
    wsgi = fleet.project / "my_service" / "wsgi.py"
    source = wsgi.read_text()
    wsgi.write_text(source + UNHEALTHY_UNDER_UWSGI)
    commit(fleet.project, "a release whose health fails under uWSGI only")
    try:
        result, clients = through_the_balancer(fleet, "deploy", check=False)
    finally:
        wsgi.write_text(source)
        commit(fleet.project, "health restored")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    clients.assert_no_request_failed_or_was_resent(output, fleet)
    assert "The deploy stopped at web1" in output, output[-4000:]
    web1, web2 = fleet.hosts
    assert re.search(rf"web1 {before[web1.address].split('/')[-1]}", output), output[-3000:]
    assert re.search(rf"web2 {before[web2.address].split('/')[-1]}", output), output[-3000:]
    assert fleet.current() == before
    assert fleet.revisions() == revisions
    assert_every_host_in_rotation(fleet)
    assert fleet.hosts[0].sh(f"test -e {APP_ROOT}/fleet.lock && echo held || echo free") == "free"


def veth_of(fleet, host):
    """This machine's end of the host's link to the lab's bridge (nspawn's vb-<machine>)."""
    name = f"vb-{fleet.lab}-{host}"
    assert subprocess.run(["ip", "link", "show", "dev", name], capture_output=True).returncode == 0, name
    return name


def test_a_host_cut_off_mid_deploy_fails_the_deploy_and_the_next_one_converges(fleet):
    """web2 loses its network as its turn to switch begins (drained out of rotation): the deploy
    fails saying web2 is unreachable, web1 serves the new release, lb1 goes on serving (0 failed
    requests: web2 is kept out by its health checks); once web2 is back, the next deploy brings both
    onto one revision."""
    third = commit(fleet.project, "third release")
    link = veth_of(fleet, "web2")
    with Clients(fleet) as clients:
        deploy = subprocess.Popen(
            ["make", "deploy", f"HOSTS={fleet.inventory}"],
            cwd=fleet.project,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        output = []
        try:
            # The second batch's switch task starts: web2 is out of rotation and drained.
            for line in deploy.stdout:
                output.append(line)
                if sum(seen.startswith("TASK [Switch, reload and verify") for seen in output) == 2:
                    subprocess.run(["ip", "link", "set", link, "down"], check=True)
                    break
            output += deploy.communicate(timeout=600)[0]
        finally:
            subprocess.run(["ip", "link", "set", link, "up"], check=True)
            if deploy.poll() is None:
                deploy.kill()
    output = "".join(output)
    assert deploy.returncode != 0
    assert "web2 is unreachable" in output and "The deploy stopped at web2" in output, output[-4000:]
    assert "web2 unknown (unreachable)" in output and f"-{third}" in output, output[-4000:]
    clients.assert_no_request_failed_or_was_resent(output, fleet)
    assert fleet.revisions()[fleet.hosts[0].address] == third

    # Back, web2 converges under load and rejoins the rotation: lb1 passes it requests again.
    since = time.time()
    result, clients = through_the_balancer(fleet, "deploy")
    clients.assert_no_request_failed_or_was_resent(result.stdout, fleet)
    assert set(fleet.revisions().values()) == {third}
    rejoined = time.time()
    with Clients(fleet) as clients:
        time.sleep(5)
    served = {address for start, _, address in balanced_requests(fleet, since) if start >= rejoined}
    assert served == {host.address for host in fleet.hosts}, served
    assert_every_host_in_rotation(fleet)


def stylesheet_of(fleet, host):
    page = host.sh("curl -sf http://127.0.0.1/ -H 'Host: example.com'")
    return re.search(r'rel="stylesheet" href="([^"]+)"', page)[1]


def test_each_releases_static_files_reach_the_balancer_before_any_host_switches(fleet):
    """STATIC_URL points at lb1, as at a CDN whose origin it is: a release with a new stylesheet
    links it there by its hash; the deploy put it on lb1 before the first switch, lb1 serves it
    with immutable caching, and the earlier releases' files stay there, none rewritten."""
    static = "/var/www/my_service-static/build"
    before = fleet.lb.sh(f"cd {static} && find . -type f -printf '%p %T@\\n' | sort")
    assert "./css/site." in before
    css = fleet.project / "static" / "css" / "site.css"
    css.write_text(css.read_text() + "\n/* the fourth release */\n")
    commit(fleet.project, "fourth release, a new stylesheet")
    result = fleet.make("deploy")
    output = result.stdout
    uploaded = output.index("TASK [Put the hashed static files on the load balancers")
    assert uploaded < output.index("TASK [Switch, reload and verify"), output[-3000:]
    href = stylesheet_of(fleet, fleet.hosts[0])
    assert href.startswith(f"http://{fleet.lb.address}/static/build/css/site.")
    assert "./" + href.split("/static/build/")[1] not in before
    assert stylesheet_of(fleet, fleet.hosts[1]) == href
    headers = subprocess.run(["curl", "-sfi", href], capture_output=True, text=True, timeout=30).stdout
    assert headers.startswith("HTTP/1.1 200") and "immutable" in headers and "the fourth release" in headers
    after = fleet.lb.sh(f"cd {static} && find . -type f -printf '%p %T@\\n' | sort").splitlines()
    assert set(before.splitlines()) <= set(after), "a file of an earlier release was removed or rewritten"


def test_tasks_sent_from_each_host_during_a_rolling_deploy_run_exactly_once_on_the_shared_broker(fleet):
    """250 tasks sent from each web host to the lab's Redis while a deploy rolls over both: each is
    done exactly once, and tasks sent from each host were also done by the other's Celery worker
    (one broker, not one per host; each host's journal names the tasks its worker finished)."""
    send = (
        f"cd {APP_ROOT}/current && runuser -u my_service -g www-data -- .venv/bin/python -c "
        "'from my_service.tasks import add\n"
        f"results = [add.delay(n, n) for n in range({TASKS})]\n"
        "[print(r.id, r.get(timeout=300, interval=0.05)) for r in results]'"
    )
    since = int(time.time()) - 1
    commit(fleet.project, "a release deployed while tasks are sent")
    senders = [
        subprocess.Popen(
            [*host.ssh_command, send], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
        )
        for host in fleet.hosts
    ]
    try:
        deployed = fleet.make("deploy")
        outputs = [sender.communicate(timeout=600)[0] for sender in senders]
    finally:
        for sender in senders:
            if sender.poll() is None:
                sender.kill()
    assert [sender.returncode for sender in senders] == [0, 0], outputs
    assert "Switch, reload and verify" in deployed.stdout
    sent = {}
    for host, output in zip(fleet.hosts, outputs, strict=True):
        for line in output.splitlines():
            task_id, result = line.split()
            sent[task_id] = (host.address, int(result))
    assert len(sent) == 2 * TASKS
    assert sorted(result for _, result in sent.values()) == sorted(
        2 * n for n in range(TASKS) for _ in range(2)
    )
    done = {}
    for host in fleet.hosts:
        journal = host.sh(f"journalctl -u my_service --no-pager -o cat --since=@{since}")
        for task_id in re.findall(r"Task my_service\.tasks\.add\[([0-9a-f-]+)\] succeeded", journal):
            done.setdefault(task_id, []).append(host.address)
    assert sorted(done) == sorted(sent), "a task never ran, or ran without being sent"
    assert [task for task, hosts in done.items() if len(hosts) > 1] == [], "a task ran twice"
    for host in fleet.hosts:
        others = {done[task][0] for task, (sender, _) in sent.items() if sender == host.address}
        assert others - {host.address}, f"no task sent from {host.address} ran on another host"


def test_cron_runs_on_the_primary_only_once_a_minute(fleet):
    """Over three minutes and more since the first deploy, the every-minute heartbeat ran on web1
    alone, at most once in any minute and in each of the last three minutes."""
    time.sleep(max(0.0, fleet.deployed_at + 200 - time.time()))
    web1, web2 = fleet.hosts
    runs = {}
    for host in fleet.hosts:
        journal = host.sh("journalctl -u my_service --no-pager -o short-unix")
        lines = [line for line in journal.splitlines() if "job heartbeat finished" in line]
        runs[host] = [float(line.split()[0]) for line in lines]
    assert runs[web2] == []
    minutes = [int(moment // 60) for moment in runs[web1]]
    assert len(minutes) == len(set(minutes)), minutes
    now = int(time.time() // 60)
    assert {now - 3, now - 2, now - 1} <= set(minutes), (now, minutes)


def test_every_host_runs_the_same_release_built_here_once(fleet):
    """The hosts have no compiler; each host's current release holds the same files (the code,
    the wheels built on this machine, the hashed static files), checksum for checksum."""
    # The venv is each host's own (made there from the wheels), and so are Python's bytecode caches.
    files = "find . -path ./.venv -prune -o -name __pycache__ -prune -o -type f -print"
    checksums = f"cd {APP_ROOT}/current/ && {files} | sort | xargs sha256sum"
    web1, web2 = (
        {path: digest for digest, path in map(str.split, host.sh(checksums).splitlines())}
        for host in fleet.hosts
    )
    assert web1 == web2, {
        path: (web1.get(path), web2.get(path))
        for path in web1.keys() ^ web2.keys()
        | {path for path in web1.keys() & web2.keys() if web1[path] != web2[path]}
    }
    assert any(path.lower().startswith("./wheels/uwsgi-") for path in web1)
    assert any(path.startswith("./static-build/build/") for path in web1)
    for host in fleet.hosts:
        assert host.sh("command -v gcc cc || echo none") == "none"


def test_a_second_deploy_meanwhile_is_refused_by_the_fleet_lock_until_unlocked(fleet):
    """A deploy or rollback in progress (its lock on the primary) stops another at once, naming
    who holds it, and nothing changes; `make unlock` frees a lock that a killed run left."""
    web1 = fleet.hosts[0]
    web1.sh(f"mkdir {APP_ROOT}/fleet.lock && echo 'ops@laptop since 12:00' > {APP_ROOT}/fleet.lock/holder")
    before = fleet.current()
    refused = fleet.make("rollback", check=False)
    assert refused.returncode != 0
    assert "another deploy or rollback holds" in refused.stdout and "ops@laptop since 12:00" in refused.stdout
    assert fleet.current() == before
    fleet.make("unlock")
    assert web1.sh(f"test -e {APP_ROOT}/fleet.lock && echo held || echo free") == "free"


def test_make_doctor_checks_each_web_host_and_names_the_host_that_fails(fleet):
    """As on two hosts without a load balancer (tests/test_ansible.py): each web host is checked,
    and a broken host fails its own check alone."""
    assert_doctor_names_the_host_that_fails(fleet)
