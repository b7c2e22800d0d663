"""The lab (scripts/lab): booted Debian hosts with real systemd, sshd and nginx, and a clean `down`.

Each test boots its own lab under a name of its own (several labs run side by side), and a
fixture runs `scripts/lab down` for it whatever happens. The root filesystems are cached in
~/.cache/shipshape/lab: the first run builds them (about a minute per release), later ones boot
in seconds.
"""

import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from conftest import CI, ROOT, free_port, wait_for

LAB = ROOT / "scripts" / "lab"
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
        message = "; ".join(problems)
        if CI:
            pytest.fail(message)
        pytest.skip(message)


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

    def ssh(self, host, *command, check=True):
        """Run command on host over ssh exactly as the inventory tells Ansible to connect."""
        address = self.groups_by_host()[host]["ansible_host"]
        result = subprocess.run(
            [
                "ssh",
                "-i",
                self.variables["ansible_ssh_private_key_file"],
                *shlex.split(self.variables["ansible_ssh_common_args"]),
                "-o",
                "BatchMode=yes",
                f"{self.variables['ansible_user']}@{address}",
                shlex.join(command),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check:
            assert result.returncode == 0, f"{host}: {command}: {result.stdout}{result.stderr}"
        return result.stdout.strip()

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
    (sslab-NAME, vb-NAME-HOST, --machine=NAME-HOST, shipshape-lab-NAME-HOST, the state directory)."""
    found = []
    links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, check=True).stdout)
    found += [f"interface {link['ifname']}" for link in links if f"-{name}" in link["ifname"]]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                arguments = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(argument.startswith(f"--machine={name}-".encode()) for argument in arguments):
                found.append(f"process {proc.name}: {b' '.join(arguments).decode()}")
    state_dir = str(STATE / name)
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


def test_an_interrupted_up_removes_what_it_made():
    """SIGTERM while hosts boot: `up` exits non-zero and leaves nothing behind (no `down` needed)."""
    name = new_name()
    state_file = STATE / name / "state.json"
    process = subprocess.Popen(
        [LAB, "up", "2", "--name", name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
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
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode != 0
        assert stdout == "", "no inventory for a lab that is not up"
        assert "removing what it made" in stderr
        assert leftovers(name) == []
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
    assert sorted(path.name for path in tmp_path.iterdir()) == [".lock"]
