"""A service's life with its template: created with cookiecutter or cruft, updated with `make update`.

Everything runs offline against a local git copy of the template (v1), changed in later commits
(v2, v3) the way a template evolves: edited, new and removed files, a new option, a new setting.
"""

import json
import os
import re
import shutil
import stat
import subprocess
import sys

import pytest

from testkit.env import ROOT, TOOLS_BIN, require

# What cookiecutter reads from the template repository.
TEMPLATE_PARTS = ["cookiecutter.json", "hooks", "{{cookiecutter.project_slug}}"]
SERVICE = "{{cookiecutter.project_slug}}"
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


@pytest.fixture
def user_env(tmp_path):
    """A user's environment with an empty home: no ~/.cookiecutterrc or replay files of the developer."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {**os.environ, **GIT_IDENTITY, "HOME": str(home), "SKIP_VENV": "1"}


def run(*command, cwd, env, check=True):
    result = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True)
    if check:
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result


def git(cwd, *args):
    return run("git", *args, cwd=cwd, env={**os.environ, **GIT_IDENTITY}).stdout


def commit_all(cwd, message):
    git(cwd, "add", "-A")
    git(cwd, "commit", "-q", "-m", message)
    return git(cwd, "rev-parse", "HEAD").strip()


def make_template_repo(path):
    """Copy the template's files (as the other tests bake them: the working tree) into a git repo."""
    listed = git(ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *TEMPLATE_PARTS)
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, path / name)
    git(path, "init", "-q", "-b", "main")
    commit_all(path, "template v1")
    return path


def tree(root):
    """Every file below root (relative path -> text), without git's and the tools' own directories."""
    skip = {".git", ".venv", ".ruff_cache", ".pytest_cache", "__pycache__"}
    return {
        str(path.relative_to(root)): path.read_text()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not skip & set(path.relative_to(root).parts)
    }


def modes(root):
    """Permission bits of every file but .cruft.json: executable scripts, the private .env."""
    return {
        str(path.relative_to(root)): stat.S_IMODE(path.stat().st_mode)
        for path in root.rglob("*")
        if path.is_file() and path.name != ".cruft.json"
    }


def without_secret(files):
    """The tree with .env's SECRET_KEY value blanked: the one thing that must differ between bakes."""
    env = re.sub(r"(?m)^SECRET_KEY=.*$", "SECRET_KEY=", files[".env"])
    return {**files, ".env": env}


def secret_of(project):
    return re.search(r"(?m)^SECRET_KEY=(.*)$", (project / ".env").read_text()).group(1)


def cookiecutter(*args, env):
    return run(TOOLS_BIN / "cookiecutter", *args, cwd=env["HOME"], env=env)


def cruft(*args, cwd, env, check=True):
    return run(TOOLS_BIN / "cruft", *args, cwd=cwd, env=env, check=check)


def update_exited_1(result):
    """`make update` failed because bin/update exited 1: make itself exits 2 on a failed recipe
    and names the recipe's status on its last line."""
    last = result.stderr.rstrip().splitlines()[-1:]
    return (
        result.returncode == 2
        and bool(last)
        and re.fullmatch(r"make(\[\d+\])?: \*\*\* \[\S+: update\] Error 1", last[0])
    )


@pytest.mark.parametrize(
    "answers",
    [{}, {"project_name": "Billing API", "use_celery": False, "http_port": "9000"}],
    ids=["defaults", "extra-context"],
)
def test_cruft_create_and_cookiecutter_bake_the_same_service(tmp_path, user_env, answers):
    """`cruft create` gives the tree `cookiecutter` gives, plus .cruft.json; only the secret differs."""
    template = make_template_repo(tmp_path / "template")
    pairs = [
        f"{key}={str(value).lower() if isinstance(value, bool) else value}" for key, value in answers.items()
    ]
    cookiecutter("--no-input", "-o", tmp_path / "cc", template, *pairs, env=user_env)
    cruft(
        "create",
        "--no-input",
        "--output-dir",
        tmp_path / "cruft",
        "--extra-context",
        json.dumps(answers),
        template,
        cwd=tmp_path,
        env=user_env,
    )
    slug = "billing_api" if answers else "my_service"
    baked, created = tmp_path / "cc" / slug, tmp_path / "cruft" / slug
    created_files = tree(created)
    state = json.loads(created_files.pop(".cruft.json"))
    assert without_secret(created_files) == without_secret(tree(baked))
    assert secret_of(baked) != secret_of(created)
    assert modes(created) == modes(baked)
    assert modes(created)[".env"] == 0o600
    assert state["commit"] == git(template, "rev-parse", "HEAD").strip()
    assert state["template"] == str(template)
    assert {key: state["context"]["cookiecutter"][key] for key in answers} == answers


def test_user_config_default_context_answers_for_cookiecutter_and_cruft(tmp_path, user_env):
    """A ~/.cookiecutterrc-style file with default_context sets the answers for both tools."""
    template = make_template_repo(tmp_path / "template")
    config = tmp_path / "team.yaml"
    config.write_text(
        f'default_context:\n  project_name: "Ledger"\n  http_port: "9090"\n  use_sentry: false\n'
        f"replay_dir: {tmp_path / 'replay'}\n"
    )
    cookiecutter("--no-input", "--config-file", config, "-o", tmp_path / "cc", template, env=user_env)
    cruft(
        "create",
        "--no-input",
        "--config-file",
        config,
        "--output-dir",
        tmp_path / "cruft",
        template,
        cwd=tmp_path,
        env=user_env,
    )
    for project in (tmp_path / "cc" / "ledger", tmp_path / "cruft" / "ledger"):
        assert "HTTP_PORT=9090" in (project / ".env.example").read_text().splitlines()
        assert "SENTRY_DSN" not in (project / ".env.example").read_text()
    created = tree(tmp_path / "cruft" / "ledger")
    created.pop(".cruft.json")
    assert without_secret(created) == without_secret(tree(tmp_path / "cc" / "ledger"))


def test_replay_bakes_the_same_answers_again(tmp_path, user_env):
    """`cookiecutter --replay` repeats the last bake's answers without asking."""
    template = make_template_repo(tmp_path / "template")
    cookiecutter(
        "--no-input",
        "-o",
        tmp_path / "first",
        template,
        "project_name=Mail Relay",
        "processes=2",
        env=user_env,
    )
    cookiecutter("--replay", "-o", tmp_path / "again", template, env=user_env)
    first, again = tree(tmp_path / "first" / "mail_relay"), tree(tmp_path / "again" / "mail_relay")
    assert without_secret(first) == without_secret(again)
    assert "processes = 2" in again["deploy/uwsgi.ini"]


def test_renders_for_an_update_write_no_env_and_no_secret(tmp_path, user_env):
    """With SHIPSHAPE_UPDATE=1 (set by `make update`) the hooks write no .env; all else is the same."""
    template = make_template_repo(tmp_path / "template")
    cookiecutter("--no-input", "-o", tmp_path / "bake", template, env=user_env)
    result = cookiecutter(
        "--no-input", "-o", tmp_path / "render", template, env={**user_env, "SHIPSHAPE_UPDATE": "1"}
    )
    assert "rendering for an update (SHIPSHAPE_UPDATE=1): no .env, no .venv" in result.stdout
    rendered, baked = tree(tmp_path / "render" / "my_service"), tree(tmp_path / "bake" / "my_service")
    assert ".env" not in rendered
    baked.pop(".env")
    assert rendered == baked


@pytest.fixture
def cruft_service(tmp_path, user_env):
    """A service made with `cruft create` (no venv) and committed, and its template repo."""
    template = make_template_repo(tmp_path / "template")
    cruft("create", "--no-input", "--output-dir", tmp_path, template, cwd=tmp_path, env=user_env)
    service = tmp_path / "my_service"
    git(service, "init", "-q", "-b", "main")
    commit_all(service, "baked")
    return service, template


def test_make_update_refuses_a_dirty_tree_in_one_line(cruft_service, user_env):
    """Uncommitted work is never mixed with a template update: one line, exit 1, nothing changed."""
    service, _ = cruft_service
    require("make")
    (service / "README.md").write_text("local notes\n")
    result = run("make", "--no-print-directory", "update", cwd=service, env=user_env, check=False)
    assert update_exited_1(result), (result.returncode, result.stderr)
    assert result.stderr.splitlines()[0] == (
        "error: the working tree has uncommitted changes: commit them, then run `make update`"
    )
    assert git(service, "status", "--porcelain").splitlines() == [" M README.md"]


def test_make_update_without_a_venv_says_to_run_make_install(cruft_service, user_env):
    """cruft comes from the service's own .venv (pinned in requirements-dev.txt)."""
    service, _ = cruft_service
    require("make")
    result = run("make", "--no-print-directory", "update", cwd=service, env=user_env, check=False)
    assert result.returncode != 0
    assert "error: .venv/bin/cruft is missing: run `make install`" in result.stderr


def test_bin_update_refuses_unknown_arguments_in_one_line(cruft_service, user_env):
    """A typo never starts an update: one line naming what is allowed, exit 1."""
    service, _ = cruft_service
    result = run(service / "bin" / "update", "--force", cwd=service, env=user_env, check=False)
    assert (result.returncode, result.stdout) == (1, "")
    assert (
        result.stderr == "error: arguments=--force: expected none, --checkout REF, --check or --merge-env\n"
    )


def test_new_settings_are_appended_to_env_and_no_value_changes(cruft_service, user_env):
    """Keys of .env.example missing from .env are added with their defaults and comments, once."""
    service, _ = cruft_service
    env_file, example = service / ".env", service / ".env.example"
    env_file.write_text(env_file.read_text().replace("LOG_LEVEL=INFO", "LOG_LEVEL=DEBUG"))
    before = env_file.read_text()
    example.write_text(
        example.read_text() + "\n# Requests per second per client.\nRATE_LIMIT=10\n#PROXY_URL=http://proxy\n"
    )
    result = run(service / "bin" / "update", "--merge-env", cwd=service, env=user_env)
    assert "added RATE_LIMIT, PROXY_URL" in result.stdout
    text = env_file.read_text()
    assert text.startswith(before)
    assert text.endswith("\n# Requests per second per client.\nRATE_LIMIT=10\n\n#PROXY_URL=http://proxy\n")
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    again = run(service / "bin" / "update", "--merge-env", cwd=service, env=user_env)
    assert "has every key of .env.example" in again.stdout
    assert env_file.read_text() == text


def test_requirements_pin_each_package_once(tmp_path, user_env):
    """requirements-dev.txt repeats some runtime pins (cruft's tree): never at another version."""
    template = make_template_repo(tmp_path / "template")
    for index, answers in enumerate([[], ["use_celery=false", "use_sentry=false"]]):
        cookiecutter("--no-input", "-o", tmp_path / str(index), template, *answers, env=user_env)
        project = tmp_path / str(index) / "my_service"
        pins = {}
        for name in ("requirements.txt", "requirements-dev.txt"):
            for line in (project / name).read_text().splitlines():
                match = re.match(r"([A-Za-z0-9_.-]+)==([^\s;]+)", line)
                if match:
                    pins.setdefault(match.group(1).lower(), set()).add(match.group(2))
        assert {name: versions for name, versions in pins.items() if len(versions) > 1} == {}
        assert "cruft" in pins


# --- the long run: v1 baked with a venv, user work, template v2, `make update`, template v3 ---


def edit(path, old, new):
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def user_work(service):
    """What a team does in its service after baking: code, requirements, settings, a deploy setting."""
    with (service / "my_service" / "views.py").open("a") as views:
        views.write(
            '\n\n@pages.get("/version")\ndef version():\n    return jsonify(release=settings.RELEASE)\n'
        )
    with (service / "requirements.txt").open("a") as requirements:
        requirements.write("humanize==4.12.3\n")
    edit(service / ".env", "LOG_LEVEL=INFO", "LOG_LEVEL=DEBUG")
    edit(service / "deploy" / "nginx.conf", "client_max_body_size 10m;", "client_max_body_size 25m;")
    return commit_all(service, "our work")


def template_v2(template):
    """An edited file, a new file, a removed file, a new option with a default, a new setting."""
    part = template / SERVICE
    edit(part / "README.md", "## Run it", "Template v2 adds a runbook: docs/RUNBOOK.md.\n\n## Run it")
    edit(part / "deploy" / "nginx.conf", "", "# nginx site (template v2)\n")
    (part / "docs").mkdir()
    (part / "docs" / "RUNBOOK.md").write_text(
        "# Runbook of {{ cookiecutter.project_name }}\n\nAlerts go to {{ cookiecutter.alert_channel }}.\n"
    )
    (part / "deploy" / "nginx" / "uwsgi_params").unlink()
    options = json.loads((template / "cookiecutter.json").read_text())
    prompts = options.pop("__prompts__")
    options = {**options, "alert_channel": "ops-alerts", "__prompts__": prompts}
    (template / "cookiecutter.json").write_text(json.dumps(options, indent=2) + "\n")
    with (part / ".env.example").open("a") as example:
        example.write("\n# Requests per second per client before nginx answers 429.\nRATE_LIMIT=10\n")
    return commit_all(template, "template v2")


def committed_files(repo):
    """Every file of the HEAD commit (relative path -> text)."""
    names = git(repo, "ls-tree", "-r", "-z", "--name-only", "HEAD").split("\0")
    return {name: git(repo, "show", f"HEAD:{name}") for name in filter(None, names)}


def venv_snapshot(service):
    venv = service / ".venv"
    return {str(path.relative_to(venv)): path.lstat().st_mtime_ns for path in venv.rglob("*")}


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory, wheelhouse):
    """Bake v1 with cruft and a real venv, commit, work, move the template to v2, `make update`."""
    require("make")
    root = tmp_path_factory.mktemp("lifecycle")
    home = root / "home"
    home.mkdir()
    env = {**os.environ, **GIT_IDENTITY, "HOME": str(home), "SKIP_VENV": "0"}
    template = make_template_repo(root / "template")
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    created = cruft(
        "create",
        "--no-input",
        "--output-dir",
        root,
        "--extra-context",
        json.dumps({"python_version": python}),
        template,
        cwd=root,
        env=env,
    )
    assert "==> .venv ready" in created.stdout, created.stdout + created.stderr
    service = root / "my_service"
    env["SKIP_VENV"] = "1"
    git(service, "init", "-q", "-b", "main")
    commit_all(service, "baked from the template")
    (service / ".venv" / "marker").write_text("ours\n")
    secret = secret_of(service)
    user_work(service)
    venv_before = venv_snapshot(service)
    v2 = template_v2(template)
    facts = {"service": service, "template": template, "env": env, "secret": secret, "v2": v2}
    facts["lint_stale"] = run("make", "--no-print-directory", "lint", cwd=service, env=env, check=False)
    facts["cruft_check_stale"] = cruft("check", cwd=service, env=env, check=False)
    # As a user runs it: no SKIP_VENV, so only SHIPSHAPE_UPDATE keeps cruft's renders from building venvs.
    update_env = {key: value for key, value in env.items() if key != "SKIP_VENV"}
    before = tree(service)
    facts["update"] = run("make", "--no-print-directory", "update", cwd=service, env=update_env, check=False)
    facts["venv_changes"] = venv_before != venv_snapshot(service)
    facts["status_after_update"] = git(service, "status", "--porcelain")
    facts["files"] = after = tree(service)
    facts["written"] = sorted(path for path in after if before.get(path) != after[path])
    facts["removed"] = sorted(set(before) - set(after))
    commit_all(service, "update from the template")
    facts["committed"] = committed_files(service)
    ignored = run("git", "check-ignore", "--", *facts["written"], cwd=service, env=env, check=False)
    facts["ignored_written"] = ignored.stdout.splitlines()
    facts["lint_current"] = run("make", "--no-print-directory", "lint", cwd=service, env=env, check=False)
    facts["cruft_check_current"] = cruft("check", cwd=service, env=env, check=False)
    return facts


def test_make_update_succeeds_and_says_what_it_did(lifecycle):
    """One command, no prompt: cruft renders both template versions without a venv or a secret."""
    update = lifecycle["update"]
    assert update.returncode == 0, update.stdout + update.stderr
    assert "==> .env: added RATE_LIMIT" in update.stdout
    assert "==> done" in update.stdout
    assert "==> rendering for an update (SHIPSHAPE_UPDATE=1)" in update.stdout
    assert "creating .venv" not in update.stdout
    assert ".rej" not in lifecycle["status_after_update"]


def test_update_brings_every_kind_of_template_change(lifecycle):
    """Edited, new and removed files arrive; a new option gets its default, recorded in .cruft.json."""
    files = lifecycle["files"]
    assert "Template v2 adds a runbook" in files["README.md"]
    assert files["deploy/nginx.conf"].startswith("# nginx site (template v2)\n")
    assert files["docs/RUNBOOK.md"] == "# Runbook of My Service\n\nAlerts go to ops-alerts.\n"
    assert "deploy/nginx/uwsgi_params" not in files
    state = json.loads(files[".cruft.json"])
    assert state["commit"] == lifecycle["v2"]
    assert state["context"]["cookiecutter"]["alert_channel"] == "ops-alerts"


def test_update_keeps_the_teams_own_work(lifecycle):
    """Code, requirements and deploy settings changed in the service survive beside the template's."""
    files = lifecycle["files"]
    assert '@pages.get("/version")' in files["my_service/views.py"]
    assert files["requirements.txt"].endswith("humanize==4.12.3\n")
    assert "client_max_body_size 25m;" in files["deploy/nginx.conf"]


def test_update_adds_new_settings_to_env_and_keeps_every_value(lifecycle):
    """.env keeps its secret and the team's values, gains the new key with its default, stays mode 600."""
    service = lifecycle["service"]
    env = lifecycle["files"][".env"]
    assert secret_of(service) == lifecycle["secret"]
    assert "LOG_LEVEL=DEBUG" in env.splitlines()
    assert env.endswith("\n# Requests per second per client before nginx answers 429.\nRATE_LIMIT=10\n")
    assert stat.S_IMODE((service / ".env").stat().st_mode) == 0o600


def test_update_leaves_the_virtualenv_alone(lifecycle):
    """No file of .venv is created, changed or removed, and no .venv shows up in the diff."""
    assert not lifecycle["venv_changes"]
    assert (lifecycle["service"] / ".venv" / "marker").read_text() == "ours\n"
    assert ".venv" not in lifecycle["status_after_update"]


def test_the_commit_after_an_update_holds_every_file_it_wrote_and_none_is_ignored(lifecycle):
    """`git add -A && git commit` after `make update` takes every file the update created or changed,
    as it is on disk, and drops every file it removed; none it wrote is git-ignored but .env (the
    merged settings, private to this machine)."""
    written, committed, files = lifecycle["written"], lifecycle["committed"], lifecycle["files"]
    assert {"README.md", "docs/RUNBOOK.md", ".env", ".cruft.json"} <= set(written), written
    assert lifecycle["removed"] == ["deploy/nginx/uwsgi_params"]
    assert lifecycle["ignored_written"] == [".env"]
    missing = [path for path in written if path != ".env" and committed.get(path) != files[path]]
    assert missing == [], f"written by the update but not committed as written: {missing}"
    assert not set(lifecycle["removed"]) & set(committed)


def test_make_lint_fails_on_a_stale_service_until_it_is_updated(lifecycle):
    """`make lint` ends with `cruft check`: it fails while the template has newer commits, then passes."""
    stale, current = lifecycle["lint_stale"], lifecycle["lint_current"]
    assert stale.returncode != 0
    assert re.search(
        r"^error: the template has newer commits than \w+: run `make update`$", stale.stderr, re.M
    )
    assert lifecycle["cruft_check_stale"].returncode == 1
    assert current.returncode == 0, current.stdout + current.stderr
    assert "==> template: up to date" in current.stdout
    assert lifecycle["cruft_check_current"].returncode == 0


def copy_of(service, tmp_path):
    """A copy of the updated service whose .venv links to the original's (copying it takes seconds)."""
    copy = tmp_path / service.name
    shutil.copytree(service, copy, symlinks=True, ignore=shutil.ignore_patterns(".venv"))
    (copy / ".venv").symlink_to(service / ".venv")
    exclude_venv_link(copy)
    return copy


def exclude_venv_link(service):
    """.gitignore's `.venv/` matches a directory, not a link to one."""
    with (service / ".git" / "info" / "exclude").open("a") as exclude:
        exclude.write(".venv\n")


def test_make_update_on_an_up_to_date_service_changes_nothing(lifecycle, tmp_path):
    """A second `make update` says the service is already at the template's commit and exits 0."""
    service = copy_of(lifecycle["service"], tmp_path)
    result = run("make", "--no-print-directory", "update", cwd=service, env=lifecycle["env"], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"==> already at {lifecycle['v2'][:12]}" in result.stdout
    assert git(service, "status", "--porcelain") == ""


def test_make_lint_only_warns_when_the_template_cannot_be_reached(lifecycle, tmp_path):
    """Offline or without access, lint still passes; the warning never shows a token from the URL."""
    service = copy_of(lifecycle["service"], tmp_path)
    state = json.loads((service / ".cruft.json").read_text())
    state["template"] = "https://ci-bot:tok3n-Secret@127.0.0.1:9/shipshape.git"
    (service / ".cruft.json").write_text(json.dumps(state, indent=2) + "\n")
    commit_all(service, "template moved")
    result = run("make", "--no-print-directory", "lint", cwd=service, env=lifecycle["env"], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning: could not reach the template to check for updates: unable to access" in result.stdout
    assert "tok3n-Secret" not in result.stdout + result.stderr


def template_branch(template, name, path, old, new):
    """A template change on its own branch off main; main stays checked out, so other tests see v2."""
    git(template, "checkout", "-q", "-b", name, "main")
    edit(template / SERVICE / path, old, new)
    commit_all(template, name)
    git(template, "checkout", "-q", "main")


def test_a_conflicting_template_change_fails_the_update_and_names_the_file(lifecycle, tmp_path):
    """cruft exits 0 on a conflict; `make update` fails (bin/update's exit 1) and lists the file."""
    service = copy_of(lifecycle["service"], tmp_path)
    nginx = "deploy/nginx.conf"
    template_branch(lifecycle["template"], "v3-uploads", nginx, "body_size 10m;", "body_size 50m;")
    result = run(
        "make",
        "--no-print-directory",
        "update",
        "CHECKOUT=v3-uploads",
        cwd=service,
        env=lifecycle["env"],
        check=False,
    )
    assert update_exited_1(result), (result.returncode, result.stdout + result.stderr)
    assert "error: the update left conflicts" in result.stderr
    assert "  deploy/nginx.conf: conflict markers" in result.stderr.splitlines(), result.stderr
    assert "<<<<<<< " in (service / nginx).read_text()


def test_changes_that_do_not_apply_leave_rej_files_that_are_listed(lifecycle, tmp_path):
    """Without the template's old files in git history cruft writes .rej files, even for .env.example."""
    service = copy_of(lifecycle["service"], tmp_path)
    # A team that moved the service into a fresh repository: git cannot merge three ways any more.
    shutil.rmtree(service / ".git")
    git(service, "init", "-q", "-b", "main")
    exclude_venv_link(service)
    edit(service / ".env.example", "# DEBUG, INFO", "# Log level: DEBUG, INFO")
    commit_all(service, "imported")
    template_branch(
        lifecycle["template"], "v3-wording", ".env.example", "# DEBUG, INFO", "# One of DEBUG, INFO"
    )
    result = run(
        "make",
        "--no-print-directory",
        "update",
        "CHECKOUT=v3-wording",
        cwd=service,
        env=lifecycle["env"],
        check=False,
    )
    assert update_exited_1(result), (result.returncode, result.stdout + result.stderr)
    assert "  .env.example: rejected changes in .env.example.rej" in result.stderr.splitlines()
    assert "?? .env.example.rej" in git(service, "status", "--porcelain").splitlines()
