"""Finish the baked service: prune unused files, write .env, create the virtualenv.

Two environment switches turn side effects off: SKIP_VENV=1 (tests, or anyone who runs `make
install` later) skips the virtualenv; SHIPSHAPE_UPDATE=1 (set by the service's `make update`
around `cruft update`) marks the throwaway renders of the old and the new template, which get no
.env, no secret and no virtualenv.
"""

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

# Rendered by cookiecutter: every answer as JSON data, never pasted between quotes.
ANSWERS = json.loads(r"""{{ cookiecutter | tojson }}""")
SLUG = ANSWERS["project_slug"]

# option -> {value: paths to delete when the option has that value}
PRUNE = {
    "use_celery": {False: [f"{SLUG}/tasks.py", "tests/test_tasks.py"]},
    "use_sentry": {False: ["tests/test_observability.py"]},
    "process_manager": {
        "systemd": ["deploy/emperor", "deploy/systemd/uwsgi-emperor.service"],
        "emperor": [
            f"deploy/systemd/{SLUG}.service",
            f"deploy/systemd/{SLUG}.socket",
            "deploy/systemd/wait-for-workers",
        ],
    },
}

# Set by the service's bin/update around `cruft update`: cruft renders the old and the new template
# with these hooks in temporary folders, where a fresh secret would become a change to .env and a
# virtualenv would be built for nothing. Pruning still runs there.
UPDATE_SWITCH = "SHIPSHAPE_UPDATE"


def prune(answers, root):
    """Delete the files of options that are switched off."""
    for option, by_value in PRUNE.items():
        for path in by_value.get(answers[option], []):
            target = root / path
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()


def write_env(root):
    """Write .env from .env.example with a fresh SECRET_KEY, readable by the owner only."""
    lines = (root / ".env.example").read_text().splitlines()
    key = secrets.token_urlsafe(50)
    lines = [f"SECRET_KEY={key}" if line.startswith("SECRET_KEY=") else line for line in lines]
    fd = os.open(root / ".env", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as env_file:
        env_file.write("\n".join(lines) + "\n")
    print("==> wrote .env with a fresh SECRET_KEY (mode 600)")


def find_uv():
    """Return the uv binary beside cookiecutter's Python or on PATH, or None."""
    beside = Path(sys.executable).parent / "uv"
    return str(beside) if beside.exists() else shutil.which("uv")


def create_venv(answers, root):
    """Create .venv with bin/install; on failure keep the files and say how to retry."""
    if not answers["create_virtualenv"] or os.environ.get("SKIP_VENV") == "1":
        print("==> skipped .venv (run `make install` to create it)")
        return
    env = dict(os.environ, PYTHON=f"python{answers['python_version']}")
    uv = find_uv()
    if uv:
        env["UV"] = uv
    started = time.monotonic()
    print(f"==> creating .venv with {'uv' if uv else 'pip'} (bin/install)", flush=True)
    result = subprocess.run(["bin/install"], cwd=root, env=env, check=False)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        print(f"warning: creating .venv failed after {elapsed:.1f}s; the files are in place.")
        print(f"         retry with: cd {root} && make install")
        return
    print(f"==> .venv ready ({elapsed:.1f}s)")


def print_next_steps(root):
    """Tell the user what to run next."""
    print(f"\nYour service is in {root}")
    print(f"  cd {root.name}")
    print("  make serve    # uWSGI + Celery + cron + nginx under ./var")
    print("  make test     # the service's own tests")
    print("  make stop")


def main():
    root = Path.cwd()
    prune(ANSWERS, root)
    if os.environ.get(UPDATE_SWITCH) == "1":
        print(f"==> rendering for an update ({UPDATE_SWITCH}=1): no .env, no .venv")
        return 0
    write_env(root)
    create_venv(ANSWERS, root)
    print_next_steps(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
