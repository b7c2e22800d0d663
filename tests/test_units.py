"""The systemd units read as systemd reads them: `systemd-analyze verify` against the server layout.

No systemd runs here, but its own checker parses each unit, knows every directive and checks that
each command it names exists and is executable, through the `current` symlink of a real layout.
"""

import subprocess

import pytest
from conftest import bake, require, run_cookiecutter

pytestmark = pytest.mark.venv


def verify(unit):
    command = [require("systemd-analyze"), "verify", unit]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def test_service_unit_passes_systemd_analyze_verify(tmp_path, wheelhouse):
    """Every directive is known and ExecStart/ExecReload exist through <deploy_root>/<slug>/current."""
    server = tmp_path / "srv"
    project = bake(tmp_path / "src", deploy_root=server)
    (server / "my_service" / "shared").mkdir(parents=True)
    (server / "my_service" / "current").symlink_to(project)
    result = verify(project / "deploy" / "systemd" / "my_service.service")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == "", result.stderr


def test_emperor_unit_passes_systemd_analyze_verify_but_for_the_emperor_binary(tmp_path):
    """The Emperor's unit is valid; the uWSGI it runs is built once per server in /opt/uwsgi-emperor."""
    result = run_cookiecutter(tmp_path, "process_manager=emperor")
    assert result.returncode == 0, result.stderr
    result = verify(tmp_path / "my_service" / "deploy" / "systemd" / "uwsgi-emperor.service")
    complaints = [line for line in result.stderr.splitlines() if line.strip()]
    missing = "Command /opt/uwsgi-emperor/bin/uwsgi is not executable: No such file or directory"
    assert complaints == [f"uwsgi-emperor.service: {missing}"], result.stderr
