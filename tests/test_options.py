"""Every option value bakes; every bad answer is refused with one clear line and nothing left behind."""

import json
import subprocess

import pytest

from testkit.bake import run_cookiecutter
from testkit.env import ROOT, TOOLS_BIN

OPTIONS = json.loads((ROOT / "cookiecutter.json").read_text())

GOOD_ANSWERS = [
    {"project_name": "Billing API"},
    {"project_slug": "billing2"},
    {"description": "Bills: \"quoted\", 'single', back\\slash, \u00e9t\u00e9 <b>&"},
    {"author_name": "Zoë O'Brien"},
    {"author_email": "ops+billing@example.co.uk"},
    {"domain_name": "api.billing.example.org"},
    {"domain_name": "localhost"},
    {"use_tls": True},
    {"python_version": "3.11"},
    {"python_version": "3.12"},
    {"python_version": "3.13"},
    {"use_celery": False},
    {"use_sentry": False},
    {"deploy_root": "/opt/services"},
    {"http_port": "1"},
    {"http_port": "65535"},
    {"processes": "1"},
    {"processes": "16"},
    {"cheap_mode": True},
    {"create_virtualenv": False},
    {"process_manager": "emperor"},
]

BAD_ANSWERS = [
    ("project_slug", "My-Service", "lowercase letters, digits and _"),
    ("project_slug", "MyService", "lowercase letters, digits and _"),
    ("project_slug", "my-service", "lowercase letters, digits and _"),
    ("project_slug", "2fast", "lowercase letters, digits and _"),
    ("project_slug", "my service", "lowercase letters, digits and _"),
    ("project_slug", "class", "not a Python keyword"),
    ("project_slug", "match", "not a Python keyword"),
    ("project_slug", "json", "standard library"),
    ("project_slug", "logging", "standard library"),
    ("project_slug", "celery", "dependency"),
    ("project_slug", "flask", "dependency"),
    ("project_slug", "tests", "dependency or of a directory"),
    ("project_slug", "_private", "lowercase letters, digits and _"),
    ("project_slug", "sys", "standard library"),
    ("project_slug", "uwsgi", "dependency"),
    ("project_name", " ", "non-empty"),
    ("project_name", "\tMy Service", "single line"),
    ("author_name", "", "non-empty"),
    ("author_name", "Zoë\nO'Brien", "single line"),
    ("description", "line one\nline two", "single line"),
    ("description", "", "non-empty"),
    ("author_email", "not-an-email", "email address"),
    ("author_email", "a@b", "email address"),
    ("domain_name", "exa mple.com", "domain name"),
    ("domain_name", "Example.COM", "domain name"),
    ("domain_name", "-bad.example.com", "domain name"),
    ("domain_name", "127.0.0.1", "not an IP address"),
    ("domain_name", "com", "domain name"),
    ("domain_name", "example.com/admin", "domain name"),
    ("domain_name", "exa_mple.com", "domain name"),
    ("domain_name", "[::1]", "not an IP address"),
    ("python_version", "3.9", "3.11, 3.12, 3.13"),
    ("python_version", "python3", "3.11, 3.12, 3.13"),
    ("python_version", "3.10", "3.11, 3.12, 3.13"),
    ("deploy_root", "srv", "absolute"),
    ("deploy_root", "/", "absolute"),
    ("deploy_root", "/srv/my apps", "no spaces"),
    ("deploy_root", "/srv/../etc", "absolute path like /srv"),
    ("deploy_root", "/srv/$HOME", "absolute path like /srv"),
    ("deploy_root", "/srv/'app'", "quotes"),
    ("http_port", "0", "1 to 65535"),
    ("http_port", "65536", "1 to 65535"),
    ("http_port", "80a", "1 to 65535"),
    ("http_port", "-1", "1 to 65535"),
    ("processes", "0", "1 to 256"),
    ("processes", "four", "1 to 256"),
    ("processes", "257", "1 to 256"),
    ("process_manager", "supervisord", "one of systemd, emperor"),
    ("processes", "1e3", "1 to 256"),
    ("http_port", " 8080", "1 to 65535"),
]


def answer_id(answers):
    return "-".join(f"{key}={value}" for key, value in answers.items())[:60]


@pytest.mark.parametrize("answers", GOOD_ANSWERS, ids=answer_id)
def test_every_option_value_bakes(cookies, answers):
    """Each listed answer (and every default) produces a service that passes its own ruff settings."""
    result = cookies.bake(extra_context=answers)
    assert result.exit_code == 0, result.exception
    slug = answers.get("project_slug") or ("billing_api" if "project_name" in answers else "my_service")
    assert result.project_path.name == slug
    assert (result.project_path / slug / "settings.py").is_file()
    # What `make lint` runs first: the service's own ruff settings, on this option's files.
    ruff = str(TOOLS_BIN / "ruff")
    for command in ([ruff, "check", "."], [ruff, "format", "--check", "."]):
        linted = subprocess.run(command, cwd=result.project_path, capture_output=True, text=True, check=False)
        assert linted.returncode == 0, linted.stdout + linted.stderr


def test_every_choice_in_cookiecutter_json_is_covered():
    """Each option appears in GOOD_ANSWERS, so a new option cannot ship unbaked."""
    covered = {key for answers in GOOD_ANSWERS for key in answers}
    options = {key for key in OPTIONS if not key.startswith("_")}
    assert options <= covered


@pytest.mark.parametrize(
    "field,value,allowed", BAD_ANSWERS, ids=[f"{field}={value}" for field, value, _ in BAD_ANSWERS]
)
def test_bad_answer_is_refused_with_one_line_and_no_output(tmp_path, field, value, allowed):
    """One `error: <field>=<value>: expected <allowed>` line of ours, exit 1, no directory left."""
    result = run_cookiecutter(tmp_path, f"{field}={value}")
    assert result.returncode == 1
    ours = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert ours == [line for line in ours if line.startswith(f"error: {field}={value!r}: expected ")]
    assert len(ours) == 1, result.stderr
    assert allowed in ours[0]
    assert tracebacks_are_cookiecutters_only(result.stderr)
    assert list(tmp_path.iterdir()) == []


def tracebacks_are_cookiecutters_only(stderr):
    """cookiecutter prints its own trace after a failed hook; no frame may come from our code."""
    frames = [line for line in stderr.splitlines() if line.lstrip().startswith('File "')]
    return all("site-packages" in frame for frame in frames)


# Yes/no options, as a replay file or .cruft.json can hold them: anything but a real boolean.
BAD_BOOLEANS = [
    ("use_tls", "maybe"),
    ("use_celery", "yes"),
    ("use_sentry", 1),
    ("cheap_mode", None),
    ("create_virtualenv", "false"),
]


@pytest.mark.parametrize("field,value", BAD_BOOLEANS, ids=[f"{key}={value!r}" for key, value in BAD_BOOLEANS])
def test_bad_yes_no_answer_in_a_replay_file_is_refused_with_one_line(tmp_path, field, value):
    """A hand-edited replay holding a non-boolean: our one line, exit 1, nothing written."""
    answers = {key: value for key, value in OPTIONS.items() if not key.startswith("_")}
    answers.update({"project_slug": "my_service", "_template": str(ROOT), field: value})
    replay = tmp_path / "replay.json"
    replay.write_text(json.dumps({"cookiecutter": answers}))
    output = tmp_path / "out"
    output.mkdir()
    command = [TOOLS_BIN / "cookiecutter", "--replay-file", replay, "--output-dir", output, ROOT]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 1
    ours = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert ours == [f"error: {field}={value!r}: expected true or false"], result.stderr
    assert tracebacks_are_cookiecutters_only(result.stderr)
    assert list(output.iterdir()) == []


@pytest.mark.parametrize("field", [key for key, value in OPTIONS.items() if isinstance(value, bool)])
def test_bad_yes_no_answer_on_the_command_line_is_refused_by_cookiecutter(tmp_path, field):
    """cookiecutter converts yes/no answers before our checks: it names the field, exit 1, no output."""
    result = run_cookiecutter(tmp_path, f"{field}=perhaps")
    assert result.returncode == 1
    assert f"perhaps provided for variable {field} could not be converted to a boolean" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_several_bad_answers_are_all_reported_at_once(tmp_path):
    result = run_cookiecutter(tmp_path, "http_port=0", "processes=0", "author_email=x")
    assert result.returncode == 1
    fields = [line.split("=")[0] for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert fields == ["error: author_email", "error: http_port", "error: processes"]
