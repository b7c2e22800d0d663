"""Booted Debian hosts of the lab (scripts/lab, as root): one host with the service installed by the
service README's "On a server" steps, and fleets that the service's own playbooks (deploy/ansible)
provision and deploy to, with or without the lab's load balancer lb1.

The wheels for a host's Python (Debian 12's /usr/bin/python3, the same as this machine's) are built
once per machine in ~/.cache/shipshape/wheelhouse-lab-<hash of requirements.txt>.
"""

import contextlib
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import uuid

from testkit.bake import bake, env_with_python, run_cookiecutter, sh, system_wheelhouse
from testkit.env import CACHE, ROOT, SYSTEM_PYTHON, fail_or_skip
from testkit.load import Load

LAB = ROOT / "scripts" / "lab"
APP_ROOT = "/srv/my_service"
# The release the README's steps install (INSTALL) on a lab host.
RELEASE = f"{APP_ROOT}/releases/20260101T000000-baked"
# What a fleet's clients send, in turn: a page, a write, a read.
REQUESTS = (("GET", "/"), ("POST", "/notes", {"text": "during the deploy"}), ("GET", "/notes"))

# The README's "On a server" steps, as root on the host; /tmp/wheels and /tmp/release come from here.
# The service user, shared/, the release with its venv and static files:
INSTALL_RELEASE = rf"""
set -euo pipefail
apt-get update -q
apt-get install -y -q --no-install-recommends nginx python3-venv libpython3.11 libxml2
useradd --system --user-group --home-dir {APP_ROOT} --no-create-home --shell /usr/sbin/nologin my_service
install -d -o root -g root -m 755 {APP_ROOT} {APP_ROOT}/releases
install -d -o my_service -g www-data -m 750 {APP_ROOT}/shared
for name in run log data static media tmp; do
    install -d -o my_service -g www-data -m 750 {APP_ROOT}/shared/$name
done
install -o my_service -g my_service -m 600 /tmp/env {APP_ROOT}/shared/.env
mv /tmp/release {RELEASE}
chown -R root:root {RELEASE}
python3 -m venv {RELEASE}/.venv
{RELEASE}/.venv/bin/pip install --quiet --no-index --find-links /tmp/wheels -r {RELEASE}/requirements.txt
ln -s ../../shared/.env {RELEASE}/.env
ln -s {RELEASE} {APP_ROOT}/current
cd {RELEASE} && runuser -u my_service -g www-data -- .venv/bin/python -m my_service.assets
"""
# The site in place of Debian's default one, and systemd told of new units:
INSTALL_SITE = rf"""ln -s {APP_ROOT}/current/deploy/nginx.conf /etc/nginx/sites-enabled/my_service
rm /etc/nginx/sites-enabled/default
nginx -t
systemctl reload nginx
systemctl daemon-reload
"""
# All of it with the service's own units (process_manager=systemd):
INSTALL = (
    INSTALL_RELEASE
    + rf"""cp {APP_ROOT}/current/deploy/systemd/my_service.service \
    {APP_ROOT}/current/deploy/systemd/my_service.socket /etc/systemd/system/
"""
    + INSTALL_SITE
    + "systemctl enable --now my_service.socket my_service.service\n"
)


def lab_problems():
    """What keeps the lab from booting here (scripts/lab's needs), as one line; empty when none."""
    problems = [
        f"{tool} not found" for tool in ("systemd-nspawn", "mmdebstrap", "rsync") if not shutil.which(tool)
    ]
    if os.geteuid() != 0:
        problems.append("the lab needs root")
    if not SYSTEM_PYTHON.exists():
        problems.append(f"{SYSTEM_PYTHON} (Debian 12's, as on the hosts) is missing")
    return "; ".join(problems)


def require_lab():
    if problems := lab_problems():
        fail_or_skip(problems + " (apt-get install systemd-container mmdebstrap rsync python3)")


def host_wheelhouse(project):
    """Wheels of every runtime requirement for the host's Python, built here once per machine."""
    requirements = (project / "requirements.txt").read_bytes()
    wheelhouse = CACHE / "shipshape" / f"wheelhouse-lab-{hashlib.sha256(requirements).hexdigest()[:12]}"
    if (wheelhouse / ".complete").exists():
        return wheelhouse
    system = system_wheelhouse(SYSTEM_PYTHON)
    shutil.rmtree(wheelhouse, ignore_errors=True)
    command = [SYSTEM_PYTHON, "-m", "pip", "wheel", "--quiet", "--find-links", system, "-w", wheelhouse]
    subprocess.run([*command, "-r", project / "requirements.txt"], check=True, capture_output=True)
    (wheelhouse / ".complete").touch()
    return wheelhouse


class Host:
    """A lab host from its inventory line: ssh as root with the lab's key, and its address (and the
    URL of its port 80) for clients here."""

    def __init__(self, inventory):
        fields = dict(line.split("=", 1) for line in inventory.split() if "=" in line)
        self.address = fields["ansible_host"]
        self.url = f"http://{self.address}"
        self.ssh_command = [
            "ssh", "-i", fields["ansible_ssh_private_key_file"], "-o", "BatchMode=yes",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "LogLevel=ERROR",
            f"root@{self.address}",
        ]  # fmt: skip

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


@contextlib.contextmanager
def installed_host(base, install, *answers, prefix="u"):
    """Bake with answers into base, boot a lab host (web1), copy the release, its wheels and .env
    there and run the install script; yields (web1, the script's output: the test checks what it
    did). The lab is removed on the way out."""
    result = run_cookiecutter(
        base, "deploy_root=/srv", "python_version=3.11", *answers, env={**os.environ, "SKIP_VENV": "1"}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    project = base / "my_service"
    wheelhouse = host_wheelhouse(project)
    name = prefix + uuid.uuid4().hex[:5]
    try:
        up = subprocess.run([LAB, "up", "1", "--name", name], capture_output=True, text=True, check=False)
        assert up.returncode == 0, up.stderr
        web1 = Host(up.stdout)
        env_file = project / ".env"
        settings = (
            f"APP_ENV=production\nALLOWED_HOSTS={web1.address},example.com\nSTATE_DIR={APP_ROOT}/shared"
        )
        env_file.write_text(env_file.read_text() + settings + "\n")
        release = base / "release"
        shutil.copytree(project, release, ignore=shutil.ignore_patterns(".env"))
        (release / "REVISION").write_text("baked\n")
        web1.copy(release, "/tmp/release")
        web1.copy(wheelhouse, "/tmp/wheels")
        web1.sh(f"cat > /tmp/env <<'EOF'\n{env_file.read_text()}EOF\n")
        yield web1, web1.sh(install, timeout=300, check=False)
    finally:
        subprocess.run([LAB, "down", "--name", name], capture_output=True, timeout=300, check=False)


class Fleet:
    """The baked service, its inventory of the lab's hosts, the web hosts and the load balancer."""

    def __init__(self, project, inventory, hosts, lb=None):
        self.project, self.inventory, self.hosts, self.lb = project, inventory, hosts, lb

    def make(self, target, check=True, timeout=900, **env):
        return sh(
            self.project, "make", target, f"HOSTS={self.inventory}", check=check, timeout=timeout, **env
        )

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
            load.start()
        try:
            result = self.make(target, check=check)
        finally:
            for load in loads:
                load.stop()
        return result, loads


# Per Debian release of the hosts: the service's Python and the command that runs the hosts' Python
# here to build their wheels: bookworm's is this machine's own, trixie's runs in a trixie build root
# (scripts/lab python). What uWSGI links, `make provision` installs from the lab's package source.
RELEASES = {
    "bookworm": ("3.11", str(SYSTEM_PYTHON)),
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


def recap(output):
    """{host: {ok: n, changed: n, ...}} from ansible-playbook's PLAY RECAP."""
    lines = output.split("PLAY RECAP")[-1].strip().splitlines()
    return {
        line.split()[0]: {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", line)}
        for line in lines
        if "=" in line
    }


def rotation_of(fleet):
    """{web host: (address, status)} of lb1's backend, from HAProxy's runtime API (`show stat`)."""
    csv = fleet.lb.sh("echo 'show stat' | socat stdio /run/haproxy/admin.sock")
    header, *rows = csv.splitlines()
    stats = [dict(zip(header.lstrip("# ").split(","), row.split(","), strict=False)) for row in rows if row]
    return {
        row["svname"]: (row["addr"], row["status"])
        for row in stats
        if row["pxname"] == "my_service_web" and row["svname"] not in ("FRONTEND", "BACKEND")
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
