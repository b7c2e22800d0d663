"""The template's own commands: what `make demo` and `make test` promise around pytest and apt."""

import os
import subprocess

import pytest

from testkit.env import ROOT, TOOLS_BIN


def as_unprivileged_user(command):
    """Run command as `nobody` when we are root (CI), else as ourselves (already not root)."""
    return ["runuser", "-u", "nobody", "--", *command] if os.geteuid() == 0 else command


def test_missing_system_packages_print_the_exact_apt_command_when_not_root():
    """Not root: nothing is installed; one line names the packages, the next the command to run."""
    env = {**os.environ, "SYSTEM_PACKAGES": "nginx shipshape-no-such-package"}
    command = as_unprivileged_user([str(ROOT / "scripts" / "system-packages")])
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "missing system packages: shipshape-no-such-package" in result.stderr
    assert "sudo apt-get update && sudo apt-get install -y shipshape-no-such-package" in result.stderr


@pytest.mark.parametrize("ci,status", [("true", 1), ("", 0)])
def test_no_collected_test_fails_in_ci_only(ci, status):
    """pytest's exit 5 (nothing collected) is fine for a narrow local run, a failure under CI=true."""
    env = {**os.environ, "CI": ci, "PYTEST_ADDOPTS": "-n 0"}
    result = subprocess.run(
        [ROOT / "scripts" / "test", "-k", "no_test_has_this_name", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == status, result.stdout + result.stderr
    assert "pytest collected no tests" in result.stderr


def test_the_templates_own_python_passes_ruff():
    """Tests, testkit, benchmarks and hooks follow the same lint and format rules as the baked service."""
    ruff = str(TOOLS_BIN / "ruff")
    paths = ["tests", "bench", "testkit", "hooks", "scripts/lab", "scripts/lab-apt-proxy"]
    for command in ([ruff, "check", *paths], [ruff, "format", "--check", *paths]):
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
