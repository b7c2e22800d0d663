"""What a bake produces: the right files per option, each of them valid, no template leftovers."""

import ast
import os
import re
import stat
import subprocess
import tomllib

import pytest

from testkit.env import ROOT, require

TEMPLATE = ROOT / "{{cookiecutter.project_slug}}"
MATRIX = [
    {},
    {"use_celery": False},
    {"use_sentry": False},
    {"use_celery": False, "use_sentry": False, "cheap_mode": True},
    {"process_manager": "emperor"},
]


def matrix_id(answers):
    return "-".join(f"{key}={str(value).lower()}" for key, value in answers.items()) or "defaults"


@pytest.fixture(params=MATRIX, ids=matrix_id)
def baked(request, cookies):
    result = cookies.bake(extra_context=request.param)
    assert result.exit_code == 0, result.exception
    return request.param, result.project_path


def files(root):
    return [path for path in root.rglob("*") if path.is_file()]


def test_no_template_syntax_is_left_behind(baked):
    _, project = baked
    for path in files(project):
        text = path.read_text()
        # `cookiecutter.` catches leftovers; the name alone is a pinned dependency of cruft (`make update`).
        assert "cookiecutter." not in text, path
        # HTML templates and the Ansible playbooks are Jinja of their own (Flask's, Ansible's).
        if path.suffix != ".html" and "ansible" not in path.relative_to(project).parts:
            assert "{{" not in text and "{%" not in text, path


def test_python_files_parse(baked):
    _, project = baked
    for path in project.rglob("*.py"):
        ast.parse(path.read_text(), filename=str(path))


def test_pyproject_parses_and_names_the_package(baked):
    _, project = baked
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == project.name


def test_uwsgi_ini_is_strict_and_has_no_inline_comments(baked):
    """uWSGI takes `key = value ; note` as the value: comments must sit on their own line."""
    answers, project = baked
    lines = (project / "deploy" / "uwsgi.ini").read_text().splitlines()
    options = [line for line in lines if line and not line.startswith(("#", ";"))]
    assert options[:2] == ["[uwsgi]", "strict = true"], "strict checks only the lines after it"
    for line in lines:
        if "=" in line and not line.startswith(("#", ";")):
            assert not re.search(r"\s[#;]", line.split("=", 1)[1]), line
    text = "\n".join(lines)
    assert ("attach-daemon2 = cmd=cd %(code_dir) && exec" in text) == answers.get("use_celery", True)
    assert ("cheap = true" in text) == answers.get("cheap_mode", False)
    assert "listen = 1024" in text and "die-on-term = true" in text and "need-app = true" in text


def test_disabled_options_leave_no_trace(baked):
    answers, project = baked
    package = project / project.name
    celery, sentry = answers.get("use_celery", True), answers.get("use_sentry", True)
    assert (package / "tasks.py").exists() == celery
    assert (project / "tests" / "test_tasks.py").exists() == celery
    assert (project / "tests" / "test_observability.py").exists() == sentry
    requirements = (project / "requirements.txt").read_text()
    assert ("celery==" in requirements) == celery
    assert ("sentry-sdk==" in requirements) == sentry
    code = "\n".join(path.read_text() for path in package.rglob("*.py"))
    assert ("import sentry_sdk" in code or "from sentry_sdk" in code) == sentry
    assert ("from .tasks" in code) == celery
    assert ("SENTRY_DSN=" in (project / ".env.example").read_text()) == sentry


def test_process_manager_decides_what_starts_uwsgi_on_servers(baked):
    """systemd: one unit per service. emperor: a vassal ini and the Emperor's own ini and unit."""
    answers, project = baked
    emperor = answers.get("process_manager", "systemd") == "emperor"
    deploy = project / "deploy"
    assert (deploy / "systemd" / f"{project.name}.service").exists() == (not emperor)
    assert (deploy / "systemd" / f"{project.name}.socket").exists() == (not emperor)
    assert (deploy / "systemd" / "wait-for-workers").exists() == (not emperor)
    assert (deploy / "systemd" / "uwsgi-emperor.service").exists() == emperor
    assert (deploy / "emperor" / f"{project.name}.ini").exists() == emperor
    assert (deploy / "emperor" / "emperor.ini").exists() == emperor
    for ini in deploy.rglob("*.ini"):
        if "ansible" in ini.parts:  # the inventory example: Ansible's INI, not uWSGI's
            continue
        lines = [line for line in ini.read_text().splitlines() if line and not line.startswith(("#", ";"))]
        assert lines[:2] == ["[uwsgi]", "strict = true"], ini
        assert not any(re.search(r"\s[#;]", line.split("=", 1)[-1]) for line in lines[2:]), ini
    if emperor:
        vassal = (deploy / "emperor" / f"{project.name}.ini").read_text()
        assert f"ini = /srv/{project.name}/current/deploy/uwsgi.ini" in vassal
        assert "emperor-tyrant = true" in (deploy / "emperor" / "emperor.ini").read_text()


def test_env_file_is_private_ignored_and_complete(baked):
    """.env: mode 600, git-ignored, and has every key of .env.example."""
    _, project = baked
    env = project / ".env"
    assert stat.S_IMODE(os.stat(env).st_mode) == 0o600
    assert ".env*" in (project / ".gitignore").read_text().splitlines()

    def keys(path):
        return {line.split("=")[0].lstrip("#") for line in path.read_text().splitlines() if "=" in line}

    assert keys(project / ".env.example") == keys(env)
    secret = next(line for line in env.read_text().splitlines() if line.startswith("SECRET_KEY="))
    assert len(secret.removeprefix("SECRET_KEY=")) >= 43


def test_env_example_documents_every_setting(baked):
    """Every key settings.py reads appears in .env.example (set or commented out)."""
    _, project = baked
    settings = (project / project.name / "settings.py").read_text()
    read = set(re.findall(r'env\.\w+\(\s*"([A-Z_]+)"', settings)) - {"RELEASE"}
    example = (project / ".env.example").read_text()
    documented = set(re.findall(r"^#?([A-Z_]+)=", example, flags=re.MULTILINE))
    assert read <= documented, read - documented


def test_nginx_site_passes_nginx_t(baked, tmp_path):
    """The site, wrapped in a minimal nginx.conf as on a server, passes `nginx -t`."""
    nginx = require("nginx")
    _, project = baked
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / name).mkdir()
    site = (project / "deploy" / "nginx.conf").read_text()
    # The includes point at the release on a server; point them at this bake.
    site = re.sub(r"/srv/\w+/current", str(project), site)
    (tmp_path / "site.conf").write_text(site)
    temp_paths = "".join(
        f"{name}_temp_path {tmp_path / name};\n" for name in ("proxy", "fastcgi", "uwsgi", "scgi")
    )
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
        f"http {{\ninclude /etc/nginx/mime.types;\nclient_body_temp_path {tmp_path}/client_body;\n"
        f"{temp_paths}include {tmp_path}/site.conf;\n}}\n"
    )
    result = subprocess.run(
        [nginx, "-t", "-p", f"{tmp_path}/", "-c", "nginx.conf", "-e", "stderr"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_scripts_are_executable_and_parse(baked):
    _, project = baked
    for path in (project / "bin").iterdir():
        assert os.access(path, os.X_OK), path
        if path.read_text().startswith("#!/usr/bin/env python3"):
            ast.parse(path.read_text(), filename=str(path))
        else:
            assert subprocess.run(["bash", "-n", path], check=False).returncode == 0, path


@pytest.mark.parametrize("path", sorted(p.relative_to(TEMPLATE) for p in TEMPLATE.rglob("*") if p.is_file()))
def test_template_files_keep_jinja_small(path):
    """At most 6 control tags per file and no nesting: whole files are decided by the post-gen hook."""
    text = (TEMPLATE / path).read_text()
    tags = re.findall(r"{%-?\s*(if|for|elif|else|endif|endfor)\b", text)
    assert sum(tag in ("if", "for") for tag in tags) <= 6
    depth = 0
    for tag in tags:
        depth += {"if": 1, "for": 1, "endif": -1, "endfor": -1}.get(tag, 0)
        assert depth <= 1, f"nested Jinja blocks in {path}"


def test_hooks_stay_short():
    assert len((ROOT / "hooks" / "pre_gen_project.py").read_text().splitlines()) <= 100
    assert len((ROOT / "hooks" / "post_gen_project.py").read_text().splitlines()) <= 150


def test_settings_is_the_only_module_that_reads_the_environment(baked):
    _, project = baked
    readers = {
        path.name
        for path in (project / project.name).rglob("*.py")
        if re.search(r"os\.environ|os\.getenv|dotenv", path.read_text())
    }
    assert readers == {"settings.py"}


def test_deploy_script_reads_as_a_runbook(baked):
    """bin/deploy: a header listing its steps, each a function of at most 25 lines, called in order."""
    _, project = baked
    source = (project / "bin" / "deploy").read_text()
    tree = ast.parse(source)
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert all(node.end_lineno - node.lineno < 25 for node in functions.values())
    steps = re.findall(r"^  \d\. (\w+)", ast.get_docstring(tree), flags=re.MULTILINE)
    assert steps[:4] == ["take_lock", "build_release", "install_venv", "check_settings"]
    assert "switch_current" in steps
    assert all(name in functions for name in steps)


# An upper-case document name (a quoted one is a file a test writes), or a section sign and whose.
CITED_DOCUMENT = re.compile(r"(?<![/\w\"'])([A-Z][A-Z0-9_-]+\.md)\b|(RFC\s+\d+\s*)?§\s*\d")


def test_every_cited_document_exists_in_the_project_or_the_service(cookies):
    """Files give the reason where a line is, and cite only documents a reader has: a document named
    in upper case must exist in the template or the baked service, and a section (§) is an RFC's."""
    result = cookies.bake()
    assert result.exit_code == 0, result.exception
    project = result.project_path
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    paths = [ROOT / name for name in tracked.stdout.splitlines()] + files(project)
    known = {path.name for path in paths}
    cited = []
    for path in paths:
        if path.suffix in (".png", ".json") or not path.is_file():
            continue
        for match in CITED_DOCUMENT.finditer(path.read_text(errors="replace")):
            document, section = match.groups()
            if (document and document not in known) or (not document and not section):
                cited.append(f"{path}: {match.group(0).strip()}")
    assert not cited, cited
