"""Which commit a benchmark result describes: the full hash, and a loud mark when the tree was dirty.

Every bench script calls `add_option(parser)` and then `check(args.allow_dirty)` before measuring:
a tree with uncommitted changes (tracked or untracked, outside bench/results/, which the benches
write themselves) is refused with one line and exit 1, unless --allow-dirty is given. Then the
results say so: a `DIRTY` field in the JSON, `banner()` as the first line of the .md and the printed
table, and `mark_figure()` a red note over the PNG. `recheck()` at the end catches a tree that
changed while the bench ran (a commit or an edit in the middle of the run).
"""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OWN_OUTPUT = "bench/results/"
DIRTY = "uncommitted changes, so these figures describe no commit"


def git(*args):
    """git's output in the template's repository; one line and exit 1 where there is none."""
    result = subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        sys.exit(f"error: `git {' '.join(args)}` in {REPO} failed: {result.stderr.strip()}")
    return result.stdout


def state():
    """The commit checked out (full and short hash) and the changed files, bench/results/ aside."""
    changed = [line[3:] for line in git("status", "--porcelain").splitlines()]
    changed = [path for path in changed if not path.strip('"').startswith(OWN_OUTPUT)]
    facts = {"DIRTY": {"what": DIRTY, "files": changed}} if changed else {}
    return {
        **facts,
        "git_commit": git("rev-parse", "HEAD").strip(),
        "git_rev": git("rev-parse", "--short", "HEAD").strip(),
        "git_dirty": bool(changed),
    }


def add_option(parser):
    parser.add_argument(
        "--allow-dirty",
        action="store_true",
        help="measure a tree with uncommitted changes (the results are marked DIRTY)",
    )


def check(allow_dirty):
    """The tree's state for the results; exit 1 with one line if it is dirty and that is not allowed."""
    facts = state()
    if facts["git_dirty"] and not allow_dirty:
        files = facts["DIRTY"]["files"]
        sys.exit(
            f"error: {REPO} has uncommitted changes ({len(files)} files: {', '.join(files[:3])}"
            f"{', ...' if len(files) > 3 else ''}); commit them, or pass --allow-dirty (results marked DIRTY)"
        )
    if facts["git_dirty"]:
        print(banner(facts), flush=True)
    return facts


def recheck(facts):
    """Mark facts DIRTY (in place) if the tree's commit or changes differ from the start of the run."""
    now = state()
    files = facts.get("DIRTY", {}).get("files")
    if (now["git_commit"], now.get("DIRTY", {}).get("files")) != (facts["git_commit"], files):
        facts["git_dirty"] = True
        facts["DIRTY"] = {
            "what": f"the tree changed during the run ({facts['git_rev']} at the start, {now['git_rev']}"
            f"{' with uncommitted changes' if now['git_dirty'] else ''} at the end), so these figures "
            "describe no commit",
            "files": now.get("DIRTY", {}).get("files", []),
        }
        print(banner(facts), file=sys.stderr)
    return facts


def describe(facts):
    """`template <short hash>` for a result's header line, with the dirty mark when there is one."""
    return f"template {facts['git_rev']}" + (" + UNCOMMITTED CHANGES" if facts["git_dirty"] else "")


def banner(facts):
    """The first line of a result over a dirty tree (empty over a clean one)."""
    if not facts["git_dirty"]:
        return ""
    return f"**DIRTY TREE at {facts['git_rev']}: {facts['DIRTY']['what']}.**"


def with_banner(text, facts):
    """text with the dirty banner as its first line when there is one."""
    return f"{banner(facts)}\n\n{text}" if facts["git_dirty"] else text


def mark_figure(fig, facts):
    """Add a strip above a laid-out figure naming the commit; red and loud over a dirty tree."""
    strip, old = 0.35, fig.get_figheight()
    boxes = [(ax, ax.get_position()) for ax in fig.axes]
    fig.set_figheight(old + strip)
    scale = old / (old + strip)
    for ax, box in boxes:
        ax.set_position([box.x0, box.y0 * scale, box.width, box.height * scale])
    for legend in fig.legends:
        legend.set_bbox_to_anchor((0, 0, 1, scale), transform=fig.transFigure)
    text, style = f"shipshape {facts['git_commit']}, {facts['date']}", {"fontsize": 9}
    if facts["git_dirty"]:
        text, style = banner(facts).strip("*"), {"color": "red", "weight": "bold", "fontsize": 11}
    fig.text(0.5, 1 - strip / 2 / (old + strip), text, ha="center", va="center", **style)
