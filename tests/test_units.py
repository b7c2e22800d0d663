"""The systemd units read as systemd reads them: `systemd-analyze verify` against the server layout,
and `systemd-analyze security --offline=true` for how much of the system each unit can reach.

No systemd runs here, but its own checker parses each unit, knows every directive and checks that
each command it names exists and is executable, through the `current` symlink of a real layout.
That the service works inside its sandbox is shown on a booted host (tests/test_server_unit.py).
"""

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from testkit.bake import bake, run_cookiecutter
from testkit.env import require

pytestmark = pytest.mark.venv


def verify(unit):
    command = [require("systemd-analyze"), "verify", unit]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def test_service_and_socket_units_pass_systemd_analyze_verify(tmp_path, wheelhouse):
    """Every directive is known, the socket path fits a unix socket address, and ExecStart,
    ExecStartPost and ExecReload exist through <deploy_root>/<slug>/current."""
    # A short deploy root: a unix socket's path has at most 107 bytes, pytest's tmp_path is long.
    server = Path(tempfile.mkdtemp(prefix="units-", dir="/tmp"))
    try:
        project = bake(tmp_path / "src", deploy_root=server)
        (server / "my_service" / "shared").mkdir(parents=True)
        (server / "my_service" / "current").symlink_to(project)
        for unit in ("my_service.service", "my_service.socket"):
            result = verify(project / "deploy" / "systemd" / unit)
            assert result.returncode == 0, result.stdout + result.stderr
            assert result.stderr == "", result.stderr
    finally:
        shutil.rmtree(server)


def test_emperor_unit_passes_systemd_analyze_verify_but_for_the_emperor_binary(tmp_path):
    """The Emperor's unit is valid; the uWSGI it runs is built once per server in /opt/uwsgi-emperor."""
    result = run_cookiecutter(tmp_path, "process_manager=emperor")
    assert result.returncode == 0, result.stderr
    result = verify(tmp_path / "my_service" / "deploy" / "systemd" / "uwsgi-emperor.service")
    complaints = [line for line in result.stderr.splitlines() if line.strip()]
    missing = "Command /opt/uwsgi-emperor/bin/uwsgi is not executable: No such file or directory"
    assert complaints == [f"uwsgi-emperor.service: {missing}"], result.stderr


def exposure(unit):
    """The overall exposure `systemd-analyze security --offline=true` gives a unit file (0 to 10)."""
    command = [require("systemd-analyze"), "security", "--offline=true", "--no-pager", unit.name]
    result = subprocess.run(command, cwd=unit.parent, capture_output=True, text=True, check=False)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert found, result.stdout + result.stderr
    return float(found.group(1))


def test_service_unit_is_sandboxed_to_an_exposure_of_at_most_2_5(tmp_path):
    """systemd rates the shipped unit "OK" (<= 2.5 of 10; it was 9.4 UNSAFE before the sandbox)."""
    result = run_cookiecutter(tmp_path, "use_celery=true")
    assert result.returncode == 0, result.stderr
    assert exposure(tmp_path / "my_service" / "deploy" / "systemd" / "my_service.service") <= 2.5


def test_emperor_unit_is_sandboxed_as_far_as_tyrant_mode_allows(tmp_path):
    """The Emperor keeps root, CAP_SETUID/SETGID/KILL and a writable deploy root, little else (was 9.8)."""
    result = run_cookiecutter(tmp_path, "process_manager=emperor")
    assert result.returncode == 0, result.stderr
    assert exposure(tmp_path / "my_service" / "deploy" / "systemd" / "uwsgi-emperor.service") <= 2.5


def test_systemctl_reload_outlasts_bin_reloads_own_timeout(tmp_path):
    """systemd bounds ExecReload with TimeoutStartSec (there is no reload timeout of its own). A
    shorter one kills bin/reload on a busy host mid-reload: `systemctl reload` fails and so does
    the deploy, with no word on what stalled. bin/reload must give up first and say why."""
    result = run_cookiecutter(tmp_path, "use_celery=true")
    assert result.returncode == 0, result.stderr
    unit = (tmp_path / "my_service" / "deploy" / "systemd" / "my_service.service").read_text()
    reload = (tmp_path / "my_service" / "bin" / "reload").read_text()
    assert "ExecReload=" in unit and "TimeoutSec=" not in unit
    (start_timeout,) = re.findall(r"^TimeoutStartSec=(\d+)$", unit, flags=re.MULTILINE)
    (reload_timeout,) = re.findall(r'"RELOAD_TIMEOUT", "(\d+)"', reload)
    assert int(start_timeout) > int(reload_timeout) + 10
