"""The benchmarks' promise about their results: each names the commit it measured, or says loudly it can't."""

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest

from testkit.env import ROOT, require


@pytest.fixture
def clone(tmp_path):
    """A clean git clone of the template: this checkout's HEAD plus its bench/*.py and the testkit/*.py
    they import as they are now, committed (so the scripts under test are the ones in the working
    tree)."""
    require("git")
    path = tmp_path / "shipshape"
    subprocess.run(["git", "clone", "-q", ROOT, path], check=True, timeout=60)
    for script in [*(ROOT / "bench").glob("*.py"), *(ROOT / "testkit").glob("*.py")]:
        shutil.copyfile(script, path / script.relative_to(ROOT))
    git(path, "add", "bench", "testkit")
    git(path, "commit", "-q", "--allow-empty", "-m", "bench/*.py and testkit/*.py of the working tree")
    return path


def git(clone, *args):
    """Run git in the clone (as a throwaway author); return its output."""
    command = ["git", "-c", "user.name=bench-test", "-c", "user.email=bench-test@example.com", *args]
    return subprocess.run(command, cwd=clone, capture_output=True, text=True, check=True).stdout


def provenance_of(clone):
    """bench/provenance.py of the clone, imported so that it inspects the clone's tree."""
    spec = importlib.util.spec_from_file_location("clone_provenance", clone / "bench" / "provenance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "script", ["bake.py", "reload.py", "soak.py", "migrate.py", "fleet.py", "durations.py"]
)
def test_a_benchmark_refuses_a_dirty_tree_in_one_line_before_measuring(clone, script):
    """Over uncommitted changes (here an untracked file the bake would pick up) every benchmark exits 1
    with one line naming the file and --allow-dirty, before it bakes or serves anything."""
    (clone / "{{cookiecutter.project_slug}}" / "stray.py").write_text("x = 1\n")
    result = subprocess.run(
        [sys.executable, clone / "bench" / script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "{{cookiecutter.project_slug}}/stray.py" in lines[0] and "--allow-dirty" in lines[0]
    assert result.stdout == ""


def test_a_clean_tree_is_named_by_its_full_commit_and_the_benches_own_results_keep_it_clean(clone):
    """A clean tree's results carry the full hash and no mark; rewriting bench/results/ (what a first
    bench writes before the next one runs) does not make the tree dirty."""
    (clone / "bench" / "results" / "bake.md").write_text("a fresh result\n")
    facts = provenance_of(clone).check(allow_dirty=False)
    assert facts["git_commit"] == git(clone, "rev-parse", "HEAD").strip()
    assert len(facts["git_commit"]) == 40
    assert facts["git_dirty"] is False and "DIRTY" not in facts
    assert provenance_of(clone).with_banner("| table |", facts) == "| table |"


def test_a_dirty_tree_allowed_is_marked_first_in_the_json_and_the_table(clone):
    """With --allow-dirty the JSON's first field is DIRTY (with the changed files) and the .md and
    printed table start with a line saying the figures describe no commit."""
    with open(clone / "README.md", "a") as readme:
        readme.write("an edit nobody committed\n")
    provenance = provenance_of(clone)
    with pytest.raises(SystemExit):
        provenance.check(allow_dirty=False)
    facts = provenance.check(allow_dirty=True)
    assert next(iter(json.loads(json.dumps(facts)))) == "DIRTY"
    assert facts["DIRTY"]["files"] == ["README.md"] and facts["git_dirty"] is True
    first = provenance.with_banner("| table |", facts).splitlines()[0]
    assert first.startswith("**DIRTY TREE at ") and "describe no commit" in first


def test_a_tree_that_changes_during_the_run_marks_the_results_dirty(clone):
    """A commit made while a bench runs (the tree clean at both ends) still marks its results: they
    describe neither commit."""
    provenance = provenance_of(clone)
    facts = provenance.check(allow_dirty=False)
    git(clone, "commit", "-q", "--allow-empty", "-m", "committed while the bench ran")
    facts = provenance.recheck(facts)
    assert facts["git_dirty"] is True and "changed during the run" in facts["DIRTY"]["what"]
    assert provenance.with_banner("| table |", facts).startswith("**DIRTY TREE at ")
