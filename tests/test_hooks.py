"""The hooks, rendered as cookiecutter renders them and then imported."""

import importlib.util
import os
import stat

import pytest
from conftest import ROOT
from cookiecutter.environment import StrictEnvironment
from cookiecutter.generate import generate_context
from cookiecutter.prompt import prompt_for_config


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


@pytest.mark.parametrize("option", ["use_celery", "use_sentry"])
def test_prune_table_deletes_an_options_files_only_when_it_is_off(tmp_path, option):
    hook = render_hook("post_gen_project", tmp_path)
    for value in (True, False):
        root = tmp_path / f"project-{value}"
        for path in hook.PRUNE[option][False]:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text("")
        hook.prune({**hook.ANSWERS, option: value}, root)
        for path in hook.PRUNE[option][False]:
            assert (root / path).exists() == value


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
