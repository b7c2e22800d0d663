import os
import subprocess
import sys

from {{ cookiecutter.project_slug }} import settings

SECRET = "this-secret-must-never-be-printed"


def check(env=None, **overrides):
    """Run `python -m <package>.settings HTTP_PORT` as bin/serve does, in a fresh process."""
    command = [sys.executable, "-m", "{{ cookiecutter.project_slug }}.settings", "HTTP_PORT"]
    env = {**(os.environ if env is None else env), **overrides}
    return subprocess.run(command, cwd=settings.BASE_DIR, env=env, capture_output=True, text=True)


def test_valid_settings_print_the_requested_values():
    result = check(HTTP_PORT="9090")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "9090"


def test_every_bad_key_is_named_in_one_line_without_its_value():
    """Start-up stops with one line that names each bad key and never echoes a secret."""
    result = check(SECRET_KEY=SECRET[:20], HTTP_PORT="eighty", LOG_LEVEL="LOUD", DEBUG="maybe")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for key in ("SECRET_KEY", "HTTP_PORT", "LOG_LEVEL", "DEBUG"):
        assert key in lines[0]
    assert SECRET[:20] not in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_secret_key_is_an_error():
    result = check({key: value for key, value in os.environ.items() if key != "SECRET_KEY"})
    assert result.returncode == 1
    assert "SECRET_KEY" in result.stderr


def test_paths_derive_from_state_dir():
    assert settings.RUN_DIR == settings.STATE_DIR / "run"
    assert settings.STATIC_ROOT == settings.STATE_DIR / "static"
    assert str(settings.STATE_DIR) == os.environ["STATE_DIR"]


def test_make_dirs_creates_every_state_directory_from_the_one_list(tmp_path):
    """`python -m <package>.settings --make-dirs` (bin/serve, bin/deploy) creates settings.STATE_DIRS."""
    command = [sys.executable, "-m", "{{ cookiecutter.project_slug }}.settings", "--make-dirs"]
    env = {**os.environ, "STATE_DIR": str(tmp_path / "state")}
    result = subprocess.run(command, cwd=settings.BASE_DIR, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    names = {path.relative_to(settings.STATE_DIR).as_posix() for path in settings.STATE_DIRS}
    assert names == {"run", "log", "data", "static", "media", "tmp"}
    assert {path.name for path in (tmp_path / "state").iterdir()} == names
