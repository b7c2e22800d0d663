"""Baking a service from this checkout, and working in it as its developer does: shell commands,
git commits, the Python versions it can be baked for, and the uWSGI wheels its venv installs."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from testkit.env import CACHE, ROOT, TOOLS_BIN, fail_or_skip

# git as a throwaway author, for the commits a test makes in a baked service.
GIT = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com"]


def build_wheelhouse(python, wheelhouse=None):
    """uWSGI built for python into the wheelhouse (WHEELHOUSE's, unless named) once: scripts/wheelhouse
    is idempotent. Returns the wheelhouse it was given (None: the environment's)."""
    env = {**os.environ, "PYTHON": str(python)}
    if wheelhouse is not None:
        env["WHEELHOUSE"] = str(wheelhouse)
    subprocess.run([ROOT / "scripts" / "wheelhouse"], check=True, env=env)
    return wheelhouse


def system_wheelhouse(python):
    """A uWSGI wheel for the system's Python, built once per machine beside the tools' wheelhouse."""
    return build_wheelhouse(python, CACHE / "shipshape" / "wheelhouse-system")


def python_interpreter(version):
    """A python<version> that runs: on PATH, or in pyenv's versions (its shims answer only when
    PYENV_VERSION names them). Missing: fails under CI=true, skips locally."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [shutil.which(f"python{version}"), *pyenv.glob(f"versions/{version}.*/bin/python{version}")]
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "-c", "pass"], capture_output=True, check=False).returncode == 0:
            return Path(candidate)
    fail_or_skip(
        f"python{version} not found: `pyenv install {version}` (or apt-get install python{version}-dev)"
    )


def env_with_python(version, directory):
    """os.environ with python<version> first on PATH (bin/install asks for it by that name), after
    building uWSGI for it into the wheelhouse."""
    interpreter = python_interpreter(version)
    build_wheelhouse(interpreter)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"python{version}").symlink_to(interpreter)
    return {**os.environ, "PATH": f"{directory}{os.pathsep}{os.environ['PATH']}"}


def run_cookiecutter(output_dir, *answers, env=None):
    """Run the cookiecutter CLI as a user would: --no-input with key=value answers."""
    command = [TOOLS_BIN / "cookiecutter", "--no-input", "--output-dir", output_dir, ROOT, *answers]
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False)


def bake(output_dir, env=None, **answers):
    """Bake with the post-gen hook building .venv from the wheelhouse; return the project path."""
    env = {**(env or os.environ), "SKIP_VENV": "0"}
    # The venv uses the tools' Python: the wheelhouse holds uWSGI for that version.
    answers = {"python_version": f"{sys.version_info.major}.{sys.version_info.minor}", **answers}
    result = run_cookiecutter(output_dir, *(f"{key}={value}" for key, value in answers.items()), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "==> .venv ready" in result.stdout, result.stdout + result.stderr
    return output_dir / answers.get("project_slug", "my_service")


def sh(cwd, *command, check=True, timeout=300, **env):
    """Run command in cwd with env added to the environment; with check, assert that it exited 0
    (the message shows the command and its output's tails). Returns the completed process."""
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **env}
    )
    if check:
        assert result.returncode == 0, f"{command}\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    return result


def commit(project, message):
    """Commit everything in the project's git repository, the message also written to CHANGES.txt
    (so that no commit is empty); return the short revision."""
    (project / "CHANGES.txt").write_text(message + "\n")
    sh(project, *GIT, "add", "-A")
    sh(project, *GIT, "commit", "-qm", message)
    return sh(project, "git", "rev-parse", "--short", "HEAD").stdout.strip()
