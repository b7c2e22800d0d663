"""The lab (scripts/lab): booted Debian hosts with real systemd, sshd and nginx, and a clean `down`.

Each test boots its own lab under a name of its own (several labs run side by side), and a
fixture runs `scripts/lab down` for it whatever happens. The root filesystems are cached in
~/.cache/shipshape/lab: the first run builds them (about a minute per release), later ones boot
in seconds.
"""

import fcntl
import importlib.util
import ipaddress
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from testkit.env import ROOT, fail_or_skip, free_port, wait_for
from testkit.lab import LAB

LAB_PYTHON_RUNS = Path(os.environ.get("SHIPSHAPE_LAB_STATE", "/var/tmp/shipshape-lab")) / ".python"
STATE = Path(os.environ.get("SHIPSHAPE_LAB_STATE", "/var/tmp/shipshape-lab"))
RELEASES = ["bookworm", "trixie"]
FORWARDING_BEFORE = Path("/proc/sys/net/ipv4/ip_forward").read_text()
# Building a root filesystem the first time takes a minute or two; booting takes seconds.
UP_TIMEOUT = 600

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module", autouse=True)
def _lab_prerequisites():
    """Root and the lab's tools, or fail under CI=true / skip saying how to get them."""
    problems = [f"{tool} not found" for tool in ("systemd-nspawn", "mmdebstrap") if not shutil.which(tool)]
    if problems:
        problems.append("apt-get install systemd-container mmdebstrap (or `make system-packages`)")
    if os.geteuid() != 0:
        problems.append("the lab needs root (bridges, mounts, cgroups)")
    if problems:
        fail_or_skip("; ".join(problems))


def lab(*arguments, name, check=True, timeout=UP_TIMEOUT):
    """Run scripts/lab with arguments for the lab called name; return the completed process."""
    result = subprocess.run(
        [LAB, *arguments, "--name", name], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check:
        assert result.returncode == 0, f"scripts/lab {' '.join(arguments)}:\n{result.stdout}{result.stderr}"
    return result


class Lab:
    """A lab booted by `scripts/lab up`: its inventory (stdout) parsed as Ansible reads INI."""

    def __init__(self, name, stdout):
        self.name = name
        self.stdout = stdout
        self.groups, self.variables = parse_inventory(stdout)
        self.state = json.loads((STATE / name / "state.json").read_text())

    def ssh_command(self, host):
        """ssh to host exactly as the inventory tells Ansible to connect (the command to follow)."""
        address = self.groups_by_host()[host]["ansible_host"]
        return [
            "ssh",
            "-i",
            self.variables["ansible_ssh_private_key_file"],
            *shlex.split(self.variables["ansible_ssh_common_args"]),
            "-o",
            "BatchMode=yes",
            f"{self.variables['ansible_user']}@{address}",
        ]

    def ssh(self, host, *command, check=True, timeout=60):
        """Run command on host over ssh; its stdout."""
        result = subprocess.run(
            [*self.ssh_command(host), shlex.join(command)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check:
            assert result.returncode == 0, f"{host}: {command}: {result.stdout}{result.stderr}"
        return result.stdout.strip()

    def put(self, host, source, target):
        """Copy the file source to target on host."""
        with open(source, "rb") as data:
            subprocess.run(
                [*self.ssh_command(host), f"cat > {shlex.quote(target)}"], stdin=data, check=True, timeout=60
            )

    def groups_by_host(self):
        return {host: variables for group in self.groups.values() for host, variables in group.items()}


def parse_inventory(text):
    """Ansible's INI inventory: [group] sections of `host key=value...`, and [all:vars] `key=value`."""
    groups, variables, section = {}, {}, None
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("["):
            assert line.endswith("]"), f"not an inventory line: {line!r}"
            section = line[1:-1]
            if section != "all:vars":
                groups[section] = {}
            continue
        assert section is not None, f"a line before any section: {line!r}"
        words = shlex.split(line)
        if section == "all:vars":
            assert len(words) == 1 and "=" in words[0], f"not key=value: {line!r}"
            key, _, value = words[0].partition("=")
            variables[key] = value
        else:
            host, *pairs = words
            assert all("=" in pair for pair in pairs), f"not host key=value...: {line!r}"
            groups[section][host] = dict(pair.split("=", 1) for pair in pairs)
    return groups, variables


def new_name():
    """A lab name of our own: 't' and 5 hex digits (names end up in interface names)."""
    return "t" + uuid.uuid4().hex[:5]


@pytest.fixture
def boot():
    """boot(N, *flags) runs `scripts/lab up` and returns a Lab; every lab is taken down afterwards."""
    names = []

    def up(count, *flags, release="bookworm"):
        name = new_name()
        names.append(name)
        result = lab("up", str(count), "--release", release, *flags, name=name)
        return Lab(name, result.stdout)

    yield up
    for name in names:
        lab("down", name=name, check=False)


@pytest.fixture(scope="module", params=RELEASES)
def web2(request):
    """A lab of two web hosts, booted once per release for the read-only tests below."""
    name = new_name()
    try:
        result = lab("up", "2", "--release", request.param, name=name)
        yield Lab(name, result.stdout)
    finally:
        lab("down", name=name, check=False)


def test_up_prints_an_inventory_with_the_web_hosts_and_how_to_reach_them(web2):
    """stdout is the inventory alone: group web with web1 and web2, root over ssh with the lab's key."""
    assert set(web2.groups) == {"web"}
    assert set(web2.groups["web"]) == {"web1", "web2"}
    addresses = [host["ansible_host"] for host in web2.groups["web"].values()]
    assert len(set(addresses)) == 2
    assert web2.variables["ansible_user"] == "root"
    assert web2.variables["ansible_python_interpreter"] == "/usr/bin/python3"
    key = Path(web2.variables["ansible_ssh_private_key_file"])
    assert key.is_file() and key.stat().st_mode & 0o077 == 0, "the private key is the owner's alone"
    assert "ssh-ed25519" in key.with_suffix(".pub").read_text()
    assert "StrictHostKeyChecking=no" in web2.variables["ansible_ssh_common_args"]


def test_each_host_boots_systemd_and_answers_ssh_with_the_inventorys_key(web2):
    """`systemctl is-system-running --wait` says running (degraded names its failed units)."""
    for host in ("web1", "web2"):
        state = web2.ssh(host, "systemctl", "is-system-running", "--wait", check=False)
        failed = web2.ssh(host, "systemctl", "--failed", "--no-legend", "--plain")
        assert state == "running", f"{host} is {state!r}; failed units: {failed}"
        assert web2.ssh(host, "hostname") == host
        assert web2.ssh(host, "cat", "/proc/1/comm") == "systemd"


def test_each_host_runs_nginx_that_answers_this_machine_on_port_80(web2):
    """curl from here to each host's address gets an answer from the host's own nginx."""
    for host, variables in web2.groups["web"].items():
        assert web2.ssh(host, "systemctl", "is-active", "nginx") == "active"
        result = subprocess.run(
            ["curl", "-sS", "-m", "10", "-o", "/dev/null", "-D", "-", f"http://{variables['ansible_host']}/"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, f"{host}: {result.stderr}"
        assert "server: nginx" in result.stdout.lower(), result.stdout


def test_each_host_has_its_own_machine_id(web2):
    """Clones of one root filesystem still get distinct machine-ids (systemd makes them at boot)."""
    ids = [web2.ssh(host, "cat", "/etc/machine-id") for host in ("web1", "web2")]
    assert all(len(machine_id) == 32 for machine_id in ids), ids
    assert ids[0] != ids[1]


def test_hosts_reach_each_other_by_name_on_a_private_bridge_with_no_way_out(web2):
    """Names resolve from /etc/hosts at once; no default route; this machine forwards nothing."""
    subnet = web2.state["subnet"]
    assert subnet.endswith("/24") and subnet.startswith(("10.", "172.", "192.168."))
    assert "200" in web2.ssh(
        "web1", "curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", "http://web2/"
    )
    started = time.monotonic()
    web2.ssh("web1", "python3", "-c", "import socket; socket.getfqdn()")
    assert time.monotonic() - started < 5, "a name lookup waited for an unreachable resolver (10 s each)"
    assert "default" not in web2.ssh("web1", "ip", "-4", "route")
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == FORWARDING_BEFORE, "forwarding changed"


def test_hosts_install_packages_from_their_distribution_through_the_labs_proxy(web2):
    """As on a real server, `apt-get update` and `apt-get install` work on a host with no setting of
    ours: its apt goes through the lab's proxy on `control`, which reaches the Debian mirrors of its
    sources.list (the package `make provision` asks for is installed for real, dpkg says so)."""
    python = web2.ssh("web1", "python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])")
    web2.ssh("web1", "apt-get", "update", "-q", timeout=300)
    web2.ssh(
        "web1", "apt-get", "install", "-y", "-q", "--no-install-recommends", f"libpython{python}", timeout=300
    )
    status = web2.ssh("web1", "dpkg-query", "-W", "-f", "${Status}", f"libpython{python}")
    assert status == "install ok installed"


def test_the_apt_proxy_serves_the_mirrors_alone_on_the_bridges_address_alone(web2):
    """The proxy refuses any URL outside the hosts' Debian mirrors (403, nothing fetched), listens
    on control's address and port only (127.0.0.1 refuses), and the hosts have no other way out."""
    proxy = web2.state["apt_proxy"]
    assert listeners(proxy["pid"]) == [f"{proxy['address']}:{proxy['port']}"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy["port"]), timeout=5).close()
    through = f"http://control:{proxy['port']}"
    # A minute: the mirror answers through the proxy, sometimes slowly on a busy machine.
    elsewhere = ["curl", "-sS", "-m", "60", "-o", "/dev/null", "-w", "%{http_code}", "-x", through]
    assert web2.ssh("web1", *elsewhere, "http://example.org/", timeout=120) == "403"
    sources = web2.ssh("web1", "cat", "/etc/apt/sources.list")
    mirror = next(line.split()[1] for line in sources.splitlines() if line.startswith("deb "))
    release = f"{mirror}/dists/{web2.state['release']}/InRelease"
    assert web2.ssh("web1", *elsewhere, release, timeout=120) == "200"
    direct = ["curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", release]
    assert web2.ssh("web1", *direct, check=False) == "000", "a host reached a mirror without the proxy"


def test_lb_adds_a_host_in_group_lb_that_answers_like_the_web_hosts(boot):
    """`up 1 --lb`: web has web1, lb has lb1; lb1 answers ssh and reaches web1 by name."""
    booted = boot(1, "--lb")
    assert set(booted.groups) == {"web", "lb"}
    assert set(booted.groups["web"]) == {"web1"}
    assert set(booted.groups["lb"]) == {"lb1"}
    assert booted.ssh("lb1", "systemctl", "is-active", "nginx") == "active"
    assert "200" in booted.ssh("lb1", "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "http://web1/")


def leftovers(name):
    """What remains on this machine of the lab called name: interfaces, processes, mounts,
    cgroups, nspawn's own directories and state, found by the names the lab gives them
    (sslab-NAME, vb-NAME-HOST, --machine=NAME-HOST, shipshape-lab-NAME-HOST, the state directory,
    which the --services postmaster's command line names and the servers run in)."""
    found = []
    links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, check=True).stdout)
    found += [f"interface {link['ifname']}" for link in links if f"-{name}" in link["ifname"]]
    state_dir = str(STATE / name)
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                arguments = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            try:
                cwd = os.readlink(proc / "cwd")
            except OSError:
                cwd = ""
            if cwd.startswith(f"{state_dir}/") or any(
                argument.startswith((f"--machine={name}-".encode(), f"{state_dir}/".encode()))
                for argument in arguments
            ):
                found.append(f"process {proc.name}: {b' '.join(arguments).decode()}")
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if line.split()[4].startswith(state_dir):
            found.append(f"mount {line.split()[4]}")
    found += [f"nspawn {path}" for path in Path("/run/systemd/nspawn/propagate").glob(f"{name}-*")]
    for pattern in (f"shipshape-lab-{name}-*", f"*/shipshape-lab-{name}-*"):
        found += [f"cgroup {cgroup}" for cgroup in Path("/sys/fs/cgroup").glob(pattern)]
    if Path(state_dir).exists():
        found.append(f"state {state_dir}")
    return found


def test_down_leaves_no_bridge_process_mount_cgroup_or_state_and_runs_twice(boot):
    """After `down`: no bridge or veth, no nspawn or container process, no mount, no cgroup, no
    state directory (with its ssh key); a second `down` exits 0."""
    booted = boot(2)
    kinds = {thing.split()[0] for thing in leftovers(booted.name)}
    assert kinds == {"interface", "process", "mount", "cgroup", "nspawn", "state"}, (
        "the lab's parts, seen while up"
    )
    locks = [
        Path(path) for host in booted.state["hosts"] for path in host["nspawn_files"] if "/locks/" in path
    ]
    assert all(lock.exists() for lock in locks), "nspawn's locks on the hosts' roots, seen while up"
    status = lab("status", name=booted.name)
    assert "web1" in status.stdout and "running" in status.stdout
    lab("down", name=booted.name)
    assert leftovers(booted.name) == []
    assert [lock for lock in locks if lock.exists()] == []
    assert lab("status", name=booted.name, check=False).returncode == 3
    again = lab("down", name=booted.name)
    assert "nothing to remove" in again.stderr


@pytest.mark.parametrize("services", [False, True], ids=["services=false", "services=true"])
def test_an_interrupted_up_removes_what_it_made(services):
    """SIGTERM while hosts boot: `up` exits non-zero and leaves nothing behind (no `down` needed);
    with --services (started before the hosts), neither PostgreSQL nor Redis."""
    if services:
        require_services()
    name = new_name()
    state_file = STATE / name / "state.json"
    process = subprocess.Popen(
        [LAB, "up", "2", *(["--services"] if services else []), "--name", name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def a_host_started():
            data = json.loads(state_file.read_text()) if state_file.is_file() else {"hosts": []}
            return data if any(host.get("pid") for host in data["hosts"]) else None

        state = wait_for(a_host_started, UP_TIMEOUT, "a host's systemd-nspawn started", every=0.05)
        locks = [
            Path(path)
            for host in state["hosts"]
            for path in host.get("nspawn_files", [])
            if "/locks/" in path
        ]
        assert leftovers(name), "the lab's parts, seen while up runs"
        servers = service_processes(state)
        assert len(servers) == (2 if services else 0), "the services, recorded before the hosts start"
        assert all(map(runs, servers.values())), "the services, seen while up runs"
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode != 0
        assert stdout == "", "no inventory for a lab that is not up"
        assert "removing what it made" in stderr
        assert leftovers(name) == []
        assert not any(map(runs, servers.values())), "the services' servers"
        assert [lock for lock in locks if lock.exists()] == [], "nspawn's locks on the hosts' roots"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        lab("down", name=name, check=False)


def test_up_refuses_a_subnet_this_machine_uses_and_makes_nothing():
    """A --subnet that overlaps a route here (loopback's) is refused with one line; nothing is made."""
    name = new_name()
    result = lab("up", "1", "--subnet", "127.0.0.0/24", name=name, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: --subnet 127.0.0.0/24 collides with")
    assert result.stdout == ""
    assert not (STATE / name).exists()


# --- up --services: PostgreSQL and Redis on this machine, on the bridge's address alone -----------

SERVICES_PROBE = r"""
import json, socket, struct, sys

redis_port, redis_password, postgres_port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])


def receive(connection, enough):
    reply = b""
    while not enough(reply) and (chunk := connection.recv(4096)):
        reply += chunk
    return reply


def redis(command):
    with socket.create_connection(("control", redis_port), timeout=10) as connection:
        connection.sendall(command.encode())
        return receive(connection, lambda reply: reply.count(b"\r\n") == command.count("\r\n")).decode()


# PostgreSQL's startup message (protocol 3.0) for user app, database app; the server's first
# answer is an authentication request: code 10 (SASL) lists its mechanisms.
with socket.create_connection(("control", postgres_port), timeout=10) as connection:
    parameters = b"user\0app\0database\0app\0\0"
    connection.sendall(struct.pack("!ii", 8 + len(parameters), 196608) + parameters)
    reply = receive(
        connection, lambda reply: len(reply) >= 5 and len(reply) > struct.unpack("!i", reply[1:5])[0]
    )
print(json.dumps({
    "redis without password": redis("PING\r\n"),
    "redis with password": redis(f"AUTH {redis_password}\r\nPING\r\n"),
    "postgres asks": [reply[:1].decode(), struct.unpack("!i", reply[5:9])[0], reply[9:].decode()],
}))
"""


def require_services():
    """PostgreSQL and Redis installed here (--services runs this machine's own), or fail under CI=true
    / skip saying how to get them."""
    servers = [*Path("/usr/lib/postgresql").glob("*/bin/postgres"), Path("/usr/bin/redis-server")]
    if len(servers) < 2 or not servers[-1].exists():
        fail_or_skip("--services needs PostgreSQL and Redis here: apt-get install postgresql redis-server")


def runs(process):
    """Is process (pid, a part of its command line) alive and still that process (no pid reuse)?"""
    pid, part = process
    try:
        return part in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def service_processes(state):
    """The --services servers recorded in a lab's state, {name: (pid, a part of its command line)}:
    the postmaster's names its data directory, redis-server's its address and port."""
    services = state.get("services", {})
    return {
        name: (service["pid"], f"{service['dir']}/data" if name == "postgres" else f":{service['port']}")
        for name, service in services.items()
    }


def listeners(pid):
    """The addresses pid listens on for TCP (from `ss -ltnp`)."""
    lines = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout.splitlines()
    return sorted(line.split()[3] for line in lines if f"pid={pid}," in line)


@pytest.fixture(scope="module")
def services_lab():
    """One web host with `up 1 --services`, booted once for the read-only tests below."""
    require_services()
    name = new_name()
    try:
        result = lab("up", "1", "--services", name=name)
        yield Lab(name, result.stdout)
    finally:
        lab("down", name=name, check=False)


def test_services_add_their_urls_for_the_host_named_control_to_the_inventory(services_lab):
    """[all:vars] gains lab_database_url=postgresql://app:PASSWORD@control:PORT/app and
    lab_redis_url=redis://:PASSWORD@control:PORT/0 (random hex passwords, the recorded ports),
    nothing else; the hosts resolve control to the bridge's address."""
    variables, services = services_lab.variables, services_lab.state["services"]
    postgres, redis = services["postgres"], services["redis"]
    assert variables["lab_database_url"] == (
        f"postgresql://app:{postgres['password']}@control:{postgres['port']}/app"
    )
    assert variables["lab_redis_url"] == f"redis://:{redis['password']}@control:{redis['port']}/0"
    assert set(variables) == {
        "ansible_user",
        "ansible_ssh_private_key_file",
        "ansible_ssh_common_args",
        "ansible_python_interpreter",
        "lab_database_url",
        "lab_redis_url",
    }
    passwords = [postgres["password"], redis["password"]]
    assert all(len(password) == 32 and int(password, 16) >= 0 for password in passwords)
    assert passwords[0] != passwords[1]
    control = postgres["address"]
    assert control == str(ipaddress.ip_network(services_lab.state["subnet"])[1])
    assert f"{control} control" in services_lab.ssh("web1", "cat", "/etc/hosts")


def test_services_answer_the_lab_hosts_with_their_password_and_redis_refuses_without_it(services_lab):
    """From web1 (python3 sockets, by the name control): Redis answers NOAUTH without the password,
    +OK +PONG with it; PostgreSQL asks app for SCRAM-SHA-256. From this machine: psql with the
    URL's password runs a query as app in app; a wrong password is refused."""
    postgres, redis = (services_lab.state["services"][name] for name in ("postgres", "redis"))
    answers = json.loads(
        services_lab.ssh(
            "web1",
            *("python3", "-c", SERVICES_PROBE, str(redis["port"]), redis["password"], str(postgres["port"])),
        )
    )
    assert answers["redis without password"].startswith("-NOAUTH"), answers
    assert answers["redis with password"] == "+OK\r\n+PONG\r\n", answers
    kind, code, mechanisms = answers["postgres asks"]
    assert (kind, code) == ("R", 10), answers
    assert "SCRAM-SHA-256" in mechanisms
    # The inventory's URL as this machine uses it: control is the bridge's address here.
    url = services_lab.variables["lab_database_url"].replace("@control:", f"@{postgres['address']}:")
    psql = lab_module().postgres_bin() / "psql"

    def query(database_url):
        return subprocess.run(
            [psql, database_url, "-tAc", "select current_user || ' ' || current_database()"],
            env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
            capture_output=True,
            text=True,
            check=False,
        )

    good = query(url)
    assert (good.returncode, good.stdout.strip()) == (0, "app app"), good.stderr
    wrong = query(url.replace(postgres["password"], "wrong"))
    assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr, wrong.stderr


def test_services_listen_on_the_bridges_address_alone(services_lab):
    """`ss -ltnp`: the postmaster and redis-server listen only on control's address and port,
    never on loopback or on every address; their ports on 127.0.0.1 refuse connections."""
    for name, service in services_lab.state["services"].items():
        assert listeners(service["pid"]) == [f"{service['address']}:{service['port']}"], name
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", service["port"]), timeout=5).close()


def test_down_stops_the_services_and_removes_their_data_leaving_this_machines_own_alone(boot):
    """After `down` of a lab with --services: its postmaster (and the postmaster's children) and
    redis-server are gone (by recorded pid), their directories too, nothing listens on their
    ports; this machine's own PostgreSQL (127.0.0.1:5432) and Redis (6379), if they ran, still
    answer."""
    own = {port: answers_on_loopback(port) for port in (5432, 6379)}
    booted = boot(1, "--services")
    services = booted.state["services"]
    servers = service_processes(booted.state)
    postmaster = servers["postgres"][0]
    children = [
        proc for proc in Path("/proc").iterdir() if proc.name.isdigit() and parent_of(proc) == postmaster
    ]
    assert all(map(runs, servers.values())) and children, "the services, seen while up"
    directories = [Path(service["dir"]) for service in services.values()]
    assert all(directory.is_dir() for directory in directories)
    assert (directories[0] / "data" / "PG_VERSION").is_file()
    lab("down", name=booted.name)
    assert [process for process in servers.values() if runs(process)] == []
    assert [child for child in children if parent_of(child) == postmaster] == [], "the postmaster's"
    assert [directory for directory in directories if directory.exists()] == []
    assert leftovers(booted.name) == []
    for service in services.values():
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((service["address"], service["port"]), timeout=5).close()
    assert {port: answers_on_loopback(port) for port in own} == own, "this machine's own services"


def answers_on_loopback(port):
    """Does something accept TCP connections on 127.0.0.1:port?"""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except OSError:
        return False
    return True


def parent_of(proc):
    """The parent pid of the process /proc/PID (0 once it is gone)."""
    try:
        return int((proc / "stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def lab_module():
    """scripts/lab imported as a module (it has no .py suffix), for its recipe and cache key."""
    loader = importlib.machinery.SourceFileLoader("lab_script", str(LAB))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("lab_script", loader))
    loader.exec_module(module)
    return module


def test_the_root_filesystem_is_cached_per_recipe(monkeypatch):
    """Another release, an extra package or another mirror names another cache entry (a rebuild);
    the same recipe names the same one."""
    module = lab_module()
    cached = module.rootfs_path("bookworm", module.rootfs_recipe("bookworm"))
    assert cached == module.rootfs_path("bookworm", module.rootfs_recipe("bookworm"))
    assert cached != module.rootfs_path("trixie", module.rootfs_recipe("trixie"))
    monkeypatch.setenv("SHIPSHAPE_LAB_PACKAGES", "make")
    assert cached != module.rootfs_path("bookworm", module.rootfs_recipe("bookworm"))
    monkeypatch.delenv("SHIPSHAPE_LAB_PACKAGES")
    monkeypatch.setenv("SHIPSHAPE_LAB_MIRROR", "http://127.0.0.1:1/debian")
    assert cached != module.rootfs_path("bookworm", module.rootfs_recipe("bookworm"))


def test_a_cached_root_filesystem_is_reused_without_building():
    """A second `scripts/lab rootfs` prints the same path at once and builds nothing."""
    first = lab("rootfs", "--release", "bookworm", name="lab")
    started = time.monotonic()
    second = lab("rootfs", "--release", "bookworm", name="lab")
    assert second.stdout == first.stdout and Path(second.stdout.strip(), "etc", "os-release").is_file()
    assert "building" not in second.stderr
    assert time.monotonic() - started < 10


def test_a_cached_root_filesystem_is_picked_while_another_one_builds():
    """A build holds the cache's build lock for minutes; picking a cached entry does not wait for it."""
    lab("rootfs", "--release", "bookworm", name="lab")
    cache = Path(os.environ.get("SHIPSHAPE_LAB_CACHE", Path.home() / ".cache" / "shipshape" / "lab"))
    with open(cache / ".build.lock", "a") as build_lock:
        fcntl.flock(build_lock, fcntl.LOCK_EX)
        picked = lab("rootfs", "--release", "bookworm", name="lab", timeout=30)
    assert Path(picked.stdout.strip(), "etc", "os-release").is_file()


def test_only_root_filesystems_unused_for_two_weeks_are_pruned(tmp_path, monkeypatch):
    """Other recipes of a release (other packages, another checkout's) stay while they are used; an
    entry unused for PRUNE_AFTER_DAYS goes, with its pip cache; other files are left alone."""
    monkeypatch.setenv("SHIPSHAPE_LAB_STATE", str(tmp_path / "state"))
    module = lab_module()
    old = time.time() - (module.PRUNE_AFTER_DAYS + 1) * 86400
    names = ["bookworm-aaaaaaaaaaaa", "bookworm-bbbbbbbbbbbb", "build-trixie-cccccccccccc", "notes"]
    for name in [*names, "pip-build-trixie-cccccccccccc"]:
        (tmp_path / name).mkdir()
    for name in ("bookworm-bbbbbbbbbbbb", "build-trixie-cccccccccccc", "notes"):
        os.utime(tmp_path / name, (old, old))
    module.prune_rootfs(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bookworm-aaaaaaaaaaaa", "notes"]


def test_a_failed_build_leaves_no_root_filesystem_in_the_cache(tmp_path):
    """mmdebstrap failing (its mirrors refuse connections) exits 1 naming it; the cache holds nothing
    that a later `up` could take for a root filesystem."""
    dead = f"http://127.0.0.1:{free_port()}/debian"
    env = {
        **os.environ,
        "SHIPSHAPE_LAB_CACHE": str(tmp_path),
        "SHIPSHAPE_LAB_MIRROR": dead,
        "SHIPSHAPE_LAB_SECURITY_MIRROR": dead + "-security",
    }
    result = subprocess.run(
        [LAB, "rootfs", "--release", "bookworm"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "error: mmdebstrap failed" in result.stderr
    assert result.stdout == ""
    assert sorted(path.name for path in tmp_path.iterdir()) == [".build.lock", ".lock"]


# --- lab python: the hosts' own Python, here, for building wheels ---------------------------------

PYTHON_VERSIONS = {"bookworm": "3.11", "trixie": "3.13"}
# What a trixie host needs beyond its packages to run a uWSGI wheel built by `lab python` (found
# with ldd there: the rest, libpcre2, zlib, expat, libcrypt, every host has).
TRIXIE_UWSGI_PACKAGES = "libpython3.13"
UWSGI_VERSION = next(
    line.split("==")[1]
    for line in (ROOT / "{{cookiecutter.project_slug}}" / "requirements.txt").read_text().splitlines()
    if line.startswith("uwsgi==")
)
# Compiling uWSGI takes about 30 s (2 shared cores); the first run builds the build root (a minute).
PYTHON_TIMEOUT = 600


def lab_python(release, *arguments, cwd=None, env=None, timeout=PYTHON_TIMEOUT):
    """`scripts/lab python --release release -- arguments...`; the completed process."""
    return subprocess.run(
        [LAB, "python", "--release", release, "--", *map(str, arguments)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def python_run_leftovers():
    """What `lab python` runs leave on this machine: run directories, their cgroups and processes."""
    found = [f"run {path}" for path in LAB_PYTHON_RUNS.glob("python-*")]
    for pattern in ("shipshape-lab-python-*", "*/shipshape-lab-python-*"):
        found += [f"cgroup {cgroup}" for cgroup in Path("/sys/fs/cgroup").glob(pattern)]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                arguments = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(argument.startswith(b"--machine=python-") for argument in arguments):
                found.append(f"process {proc.name}: {b' '.join(arguments).decode()}")
    return found


PROBE = """
import os, sys
print(f"{sys.version_info[0]}.{sys.version_info[1]}", os.getcwd(), os.getuid())
with open("here.txt", "w") as here:
    here.write("cwd")
os.makedirs(sys.argv[1])
with open(os.path.join(sys.argv[1], "out.txt"), "w") as out:
    out.write("out")
with open("/etc/lab-python-probe", "w") as system:
    system.write("overlay")
print("to stderr", file=sys.stderr)
sys.exit(3)
"""


@pytest.mark.parametrize("release", RELEASES)
def test_python_runs_the_releases_own_python_here_with_its_outputs_and_exit_status(release, tmp_path):
    """`lab python --release R -- ARGS` is R's python3 (3.11, 3.13) as root, in the current
    directory: stdout, stderr and the exit status are python's alone; it writes into the current
    directory and into an argument's path whose parent exists; what it writes elsewhere stays out
    of the cached build root; no run directory, cgroup or process is left."""
    # Built (or picked) first: the run's stderr is then python's alone.
    build_root = Path(lab("rootfs", "--build", "--release", release, name="lab").stdout.strip())
    (tmp_path / "probe.py").write_text(PROBE)
    output = tmp_path / "new" / "dir"
    (tmp_path / "new").mkdir()
    result = lab_python(release, "probe.py", output, cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert result.stdout == f"{PYTHON_VERSIONS[release]} {tmp_path} 0\n"
    assert result.stderr == "to stderr\n"
    assert (tmp_path / "here.txt").read_text() == "cwd"
    assert (output / "out.txt").read_text() == "out"
    assert (build_root / "usr" / "bin" / "gcc").exists()
    assert not (build_root / "etc" / "lab-python-probe").exists()
    assert python_run_leftovers() == []


def test_python_binds_what_its_arguments_name_and_never_the_systems_own(tmp_path):
    """Absolute paths (also --option=/path) that exist are bound, else their existing parent; the
    outermost of nested ones; never /, /usr, /etc and the like (the build root's own)."""
    module = lab_module()
    (tmp_path / "a" / "b").mkdir(parents=True)
    arguments = [
        "-m",
        "pip",
        f"--find-links={tmp_path}/a/b",
        "-w",
        f"{tmp_path}/a/new",
        f"{tmp_path}/a/missing/deeper",
        "/usr/include",
        "/etc/hosts",
        "/",
        "/no-such-dir",
        "relative/path",
    ]
    assert module.bind_points("/srv/cwd", arguments) == sorted([f"{tmp_path}/a", "/srv/cwd"])
    assert module.bind_option("/a:b") == "--bind=/a\\:b"


def test_two_python_runs_at_once_share_the_cached_build_root_and_both_succeed(tmp_path):
    """Each run has its own overlay and cgroups over the one build root: both finish, both write."""
    code = "import sys, time; time.sleep(2); open(sys.argv[1], 'w').write('done')"
    runs = [
        subprocess.Popen(
            [LAB, "python", "--release", "trixie", "--", "-c", code, tmp_path / name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("first", "second")
    ]
    for run in runs:
        _, stderr = run.communicate(timeout=PYTHON_TIMEOUT)
        assert run.returncode == 0, stderr
    assert [(tmp_path / name).read_text() for name in ("first", "second")] == ["done", "done"]
    assert python_run_leftovers() == []


def sleeping_python_run(seconds, stderr=subprocess.PIPE):
    """`lab python` on trixie running a python that prints "up", then sleeps for seconds."""
    code = f"import time; print('up', flush=True); time.sleep({seconds})"
    command = [LAB, "python", "--release", "trixie", "--", "-c", code]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)


def test_a_terminated_python_run_stops_python_and_removes_what_it_made():
    """SIGTERM to `lab python`: python inside is stopped at once, the exit status is 143, and no
    run directory, cgroup or process is left."""
    process = sleeping_python_run(300)
    try:
        assert process.stdout.readline() == "up\n"
        assert python_run_leftovers(), "the run's parts, seen while it runs"
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
        assert process.returncode == 128 + signal.SIGTERM
        assert python_run_leftovers() == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_next_python_run_sweeps_up_after_one_that_was_killed():
    """`lab python` killed with SIGKILL cannot clean up: its python finishes, and the next run
    removes the run directory and cgroups it left."""
    process = sleeping_python_run(1, stderr=None)
    assert process.stdout.readline() == "up\n"
    process.kill()
    process.wait()
    process.stdout.close()
    wait_for(
        lambda: not any(thing.startswith("process") for thing in python_run_leftovers()),
        30,
        "the killed run's python finished",
    )
    assert any(thing.startswith("run") for thing in python_run_leftovers()), "left by the killed run"
    assert lab_python("trixie", "-c", "pass").returncode == 0
    assert python_run_leftovers() == []


def test_python_without_root_or_its_tools_says_so_in_one_line(tmp_path):
    """Not root, or no systemd-nspawn and mmdebstrap: one line on stderr, exit 1, nothing on stdout."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(Path(sys.executable).resolve())
    missing = subprocess.run(
        [LAB, "python", "--", "-V"], env={"PATH": str(bin_dir)}, capture_output=True, text=True, check=False
    )
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr.startswith("error: missing systemd-nspawn, mmdebstrap: apt-get install")
    assert len(missing.stderr.splitlines()) == 1
    nobody = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", LAB, "python", "--", "-V"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (nobody.returncode, nobody.stdout) == (1, "")
    assert nobody.stderr == "error: the lab needs root (network bridges, mounts, cgroups): run it with sudo\n"


@pytest.fixture(scope="module")
def trixie_uwsgi_wheel(tmp_path_factory):
    """uWSGI (the template's pin) built by `lab python --release trixie -- -m pip wheel`, from PyPI
    (an empty --find-links: nothing of this machine's)."""
    directory = tmp_path_factory.mktemp("trixie-wheel")
    (directory / "empty").mkdir()
    started = time.monotonic()
    result = lab_python(
        "trixie",
        *("-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check"),
        *("-w", directory / "w", f"uwsgi=={UWSGI_VERSION}", "--find-links", directory / "empty"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"lab python pip wheel uwsgi: {time.monotonic() - started:.1f} s")
    return list((directory / "w").iterdir())


def test_python_builds_a_uwsgi_wheel_that_runs_with_pcre_on_a_trixie_host(
    trixie_uwsgi_wheel, boot, monkeypatch
):
    """The wheel is cp313 for plain linux (not manylinux: it links the system's libraries); in a venv
    on a booted trixie host with libpython3.13 added, every library it links is found, `uwsgi
    --version` answers and its options include PCRE's static-expires-uri."""
    assert [wheel.name for wheel in trixie_uwsgi_wheel] == [
        f"uwsgi-{UWSGI_VERSION}-cp313-cp313-linux_x86_64.whl"
    ]
    monkeypatch.setenv("SHIPSHAPE_LAB_PACKAGES", TRIXIE_UWSGI_PACKAGES)
    booted = boot(1, release="trixie")
    wheel = f"/tmp/{trixie_uwsgi_wheel[0].name}"
    booted.put("web1", trixie_uwsgi_wheel[0], wheel)
    booted.ssh("web1", "python3", "-m", "venv", "/tmp/venv")
    booted.ssh("web1", "/tmp/venv/bin/pip", "install", "--quiet", "--no-index", wheel, timeout=120)
    assert "not found" not in booted.ssh("web1", "ldd", "/tmp/venv/bin/uwsgi")
    assert booted.ssh("web1", "/tmp/venv/bin/uwsgi", "--version") == UWSGI_VERSION
    assert "static-expires-uri" in booted.ssh("web1", "/tmp/venv/bin/uwsgi", "--help")
