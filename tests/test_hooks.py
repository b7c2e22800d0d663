"""The hooks, rendered as cookiecutter renders them and then imported."""

import importlib.util
import os
import stat

import pytest
from cookiecutter.environment import StrictEnvironment
from cookiecutter.generate import generate_context
from cookiecutter.prompt import prompt_for_config

from testkit.bake import run_cookiecutter
from testkit.env import ROOT


def render_hook(name, tmp_path, **answers):
    """Render hooks/<name>.py with the default answers plus overrides and import it as a module."""
    context = generate_context(ROOT / "cookiecutter.json", extra_context=answers)
    context["cookiecutter"] = prompt_for_config(context, no_input=True)
    env = StrictEnvironment(context=context, keep_trailing_newline=True)
    source = env.from_string((ROOT / "hooks" / f"{name}.py").read_text()).render(**context)
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_answers_pass_every_check(tmp_path):
    hook = render_hook("pre_gen_project", tmp_path)
    assert hook.errors(hook.ANSWERS) == []


def test_user_text_reaches_the_hook_as_data(tmp_path):
    """Quotes, backslashes and triple quotes in answers cannot break or inject into the hook."""
    tricky = 'x""" + __import__("os").system("false") + """\\\' y'
    hook = render_hook("pre_gen_project", tmp_path, description=tricky)
    assert hook.ANSWERS["description"] == tricky


def test_every_field_has_a_check(tmp_path):
    hook = render_hook("pre_gen_project", tmp_path)
    options = {key for key in hook.ANSWERS if not key.startswith("_")}
    assert set(hook.CHECKS) == options


@pytest.mark.parametrize("value", [None, "yes", 1])
def test_non_boolean_flags_are_refused(tmp_path, value):
    """Answers that bypass cookiecutter's own conversion (replay files, the API) are still checked."""
    hook = render_hook("pre_gen_project", tmp_path)
    assert hook.errors({**hook.ANSWERS, "use_celery": value}) == [
        f"error: use_celery={value!r}: expected true or false"
    ]


# Every value of each option the prune table names (cookiecutter.json and the pre-gen checks).
OPTION_VALUES = {
    "use_celery": [True, False],
    "use_sentry": [True, False],
    "process_manager": ["systemd", "emperor"],
}


def baked_files(tmp_path, option, value):
    """The files of a real bake (cookiecutter's CLI, hooks included) with option=value, relative paths."""
    answer = str(value).lower() if isinstance(value, bool) else value
    result = run_cookiecutter(tmp_path / f"{option}={answer}", f"{option}={answer}")
    assert result.returncode == 0, result.stdout + result.stderr
    project = tmp_path / f"{option}={answer}" / "my_service"
    return {str(path.relative_to(project)) for path in project.rglob("*") if path.is_file()}


def expand(paths, files):
    """The prune table's paths as files: a directory stands for every file below it."""
    return {file for file in files if any(file == path or file.startswith(path + "/") for path in paths)}


@pytest.mark.parametrize("option", list(OPTION_VALUES))
def test_an_options_value_removes_exactly_the_files_its_prune_table_names(tmp_path, option):
    """Baked with each value of the option, the files of the prune table's entry for that value are
    absent, those of the other values' entries present, and no other file differs between values."""
    hook = render_hook("post_gen_project", tmp_path)
    assert set(hook.PRUNE) == set(OPTION_VALUES)
    assert set(hook.PRUNE[option]) <= set(OPTION_VALUES[option])
    bakes = {value: baked_files(tmp_path, option, value) for value in OPTION_VALUES[option]}
    everything = set().union(*bakes.values())
    for value, files in bakes.items():
        for other, paths in hook.PRUNE[option].items():
            listed = expand(paths, everything)
            assert len(listed) >= len(paths), f"{option}: {paths} name files no bake has"
            if other == value:
                assert not listed & files, f"{option}={value} keeps {sorted(listed & files)}"
            else:
                assert listed <= files, f"{option}={value} lacks {sorted(listed - files)}"
        pruned = expand(hook.PRUNE[option].get(value, []), everything)
        assert everything - files == pruned, f"{option}={value}: missing beyond the table"


def test_env_file_gets_a_fresh_long_secret_and_mode_600(tmp_path):
    hook = render_hook("post_gen_project", tmp_path)
    secrets = []
    for name in ("a", "b"):
        root = tmp_path / name
        root.mkdir()
        (root / ".env.example").write_text("APP_ENV=development\nSECRET_KEY=replace-me\n")
        hook.write_env(root)
        assert stat.S_IMODE(os.stat(root / ".env").st_mode) == 0o600
        lines = (root / ".env").read_text().splitlines()
        assert lines[0] == "APP_ENV=development"
        secrets.append(lines[1].removeprefix("SECRET_KEY="))
    assert all(len(secret) >= 43 for secret in secrets)
    assert secrets[0] != secrets[1]
