"""The baked service's Ansible playbooks, without a host: lint (production profile), syntax, variables.

ansible-core and ansible-lint come from the template's tools (.tools); HOME and ANSIBLE_HOME point
at temporary directories so nothing of this machine's Ansible setup leaks in.
"""

import json
import subprocess

import pytest

from testkit.bake import run_cookiecutter
from testkit.env import ROOT

TOOLS = ROOT / ".tools" / "bin"
PLAYBOOKS = ("provision.yml", "deploy.yml", "rollback.yml")


def ansible(project, tool, *arguments, tmp_path):
    env = {
        "PATH": f"{TOOLS}:/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "ANSIBLE_HOME": str(tmp_path / "home" / ".ansible"),
        "ANSIBLE_CONFIG": str(project / "deploy" / "ansible" / "ansible.cfg"),
    }
    command = [TOOLS / tool, *arguments]
    return subprocess.run(
        command, cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(params=["systemd", "emperor"])
def project(request, tmp_path):
    result = run_cookiecutter(tmp_path, f"process_manager={request.param}")
    assert result.returncode == 0, result.stderr
    return tmp_path / "my_service"


def test_playbooks_pass_ansible_lint_with_the_production_profile(project, tmp_path):
    result = ansible(project, "ansible-lint", "--offline", "--nocolor", "--profile", "production",
                     "deploy/ansible/", tmp_path=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Profile 'production' was required, and it passed" in result.stdout + result.stderr


def test_playbooks_pass_the_syntax_check(project, tmp_path):
    paths = [f"deploy/ansible/{name}" for name in PLAYBOOKS]
    inventory = "deploy/ansible/inventory.example.ini"
    result = ansible(
        project, "ansible-playbook", "--syntax-check", "-i", inventory, *paths, tmp_path=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(f"playbook: {path}" in result.stdout for path in paths)


def primary(project, inventory, tmp_path):
    path = tmp_path / "inventory.ini"
    path.write_text(inventory)
    result = ansible(project, "ansible", "-i", path, "--playbook-dir", "deploy/ansible", "localhost",
                     "-m", "debug", "-a", "var=primary_host", tmp_path=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.split("=>", 1)[1])["primary_host"]


def test_migrations_run_on_the_host_marked_primary_else_on_the_first(project, tmp_path):
    assert primary(project, "[web]\nweb1\nweb2 primary=true\nweb3\n", tmp_path) == "web2"
    assert primary(project, "[web]\nweb1\nweb2\n", tmp_path) == "web1"


def test_the_shipped_inventory_example_names_its_primary_and_holds_no_secret(project, tmp_path):
    text = (project / "deploy" / "ansible" / "inventory.example.ini").read_text()
    assert primary(project, text, tmp_path) == "web1.example.com"
    assert "SECRET_KEY=" not in text and "password" not in text.lower()


def test_make_provision_without_hosts_says_what_is_missing(project):
    result = subprocess.run(["make", "provision"], cwd=project, capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "make provision needs HOSTS=<inventory>" in result.stderr
