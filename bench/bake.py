"""How long does baking take, and how long until a baked service answers its first request?

Alternatives, run interleaved in every round (order rotated per round) on the same machine:
  render     `cookiecutter --no-input` with SKIP_VENV=1: templates and hooks only, no virtualenv.
  render-api the same bake through cookiecutter's Python API inside this process: render minus
             the CLI's interpreter start and imports (~0.4 s), i.e. the template's own cost.
  bake+venv  the same, with the post-gen hook building .venv (uv beside cookiecutter's Python,
             UV_FIND_LINKS/PIP_FIND_LINKS = the warm wheelhouse, so uWSGI is not compiled).
  first-200  from the start of a bake+venv (http_port = a free port) to the first HTTP 200 from
             /health through nginx after `make serve`; `make stop` always runs afterwards.
One untimed bake+venv runs first so uv's cache is warm: every number is a *warm* number.

Reading the result: compare each median with its target (render <= 0.5 s, bake+venv <= 5 s,
first-200 <= 10 s). min..max shows the noise of this shared machine: a median that misses while
min meets may be load from other jobs (see loadavg_start/end in the JSON); rerun before calling it a
regression. The `make serve` row is the part of first-200 after the bake (uWSGI, Celery and nginx
start, imports); it has no target. The JSON's raw runs also hold the hook's own venv time.

Every result names the commit it measured (bench/provenance.py): a tree with uncommitted changes is
refused unless --allow-dirty, and then the results are marked DIRTY.

    .tools/bin/python bench/bake.py [--runs N] [--allow-dirty]   # writes bench/results/bake.{json,md}
"""

import argparse
import contextlib
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import provenance
from provenance import REPO

sys.path.append(str(REPO))  # the checkout's root: benchmarks import testkit, never tests/
from testkit.env import free_port

TOOLS = REPO / ".tools" / "bin"
RESULTS = REPO / "bench" / "results"
WHEELHOUSE = os.environ.get("WHEELHOUSE") or str(Path.home() / ".cache/shipshape/wheelhouse")
TARGETS = {"render": 0.5, "render-api": None, "bake+venv": 5.0, "first-200": 10.0, "make serve": None}


def run(cmd, timeout, **kwargs):
    """Run cmd capturing output; on failure raise with the command and the output tail."""
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-25:])
        raise RuntimeError(f"`{' '.join(map(str, cmd))}` exited {result.returncode}:\n{tail}")
    return result.stdout


def bake(out_dir, venv, http_port=None):
    """Bake into out_dir, with or without the hook's venv; return the venv time the hook printed."""
    env = {k: v for k, v in os.environ.items() if k != "SKIP_VENV"}
    if venv:
        env.update(UV_FIND_LINKS=WHEELHOUSE, PIP_FIND_LINKS=WHEELHOUSE)
    else:
        env["SKIP_VENV"] = "1"
    extra = [f"http_port={http_port}"] if http_port else []
    output = run([TOOLS / "cookiecutter", "--no-input", "-o", out_dir, REPO, *extra], 600, env=env)
    found = re.search(r"\.venv ready \(([0-9.]+)s\)", output)
    return {"hook_venv": float(found[1])} if found else {}


def processes_of(project):
    """Pids whose working directory or command line lies in the baked project."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(str(project)) or str(project) in cmdline:
            found[int(entry.name)] = cmdline.strip() or cwd
    return found


def time_first_200(out_dir):
    """Seconds from the start of a bake+venv to the first 200 from /health; also the serve part."""
    port = free_port()
    started = time.perf_counter()
    hook = bake(out_dir, venv=True, http_port=port)
    baked, project = time.perf_counter(), Path(out_dir) / "my_service"
    try:
        run(["make", "serve"], 180, cwd=project)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as response:
            if response.status != 200:
                raise RuntimeError(f"/health answered {response.status} after `make serve`")
        done = time.perf_counter()
    except Exception as error:
        log = project / "var/log/uwsgi.log"
        tail = "\n".join(log.read_text().splitlines()[-20:]) if log.exists() else "(no uwsgi.log)"
        raise RuntimeError(f"{error}\n--- {log} (tail) ---\n{tail}") from error
    finally:
        stopped = stop(project)
    times = {"seconds": done - started, "bake": baked - started, "serve": done - baked, **hook}
    return {**times, "processes_stopped": stopped}


def stop(project):
    """Run `make stop`, check no process of the project is left (kill any by pid); return the count."""
    before = processes_of(project)
    if (project / "Makefile").exists():
        run(["make", "stop"], 120, cwd=project)
    time.sleep(0.3)
    left = processes_of(project)
    if left:
        print(f"warning: `make stop` left {len(left)} of {len(before)} processes: {left}")
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        raise RuntimeError(f"`make stop` in {project} left processes running: {left}")
    return len(before)


def time_render_api(out_dir):
    """Bake through cookiecutter's API in this process (hooks still run as subprocesses)."""
    from cookiecutter.main import cookiecutter

    os.environ["SKIP_VENV"] = "1"
    try:
        started = time.perf_counter()
        with contextlib.redirect_stdout(None):
            cookiecutter(str(REPO), no_input=True, output_dir=out_dir)
        return {"seconds": time.perf_counter() - started}
    finally:
        del os.environ["SKIP_VENV"]


def one_run(case):
    """Time one run of case in a fresh temporary directory, removed afterwards."""
    out_dir = tempfile.mkdtemp(prefix=f"bench-bake-{case.replace('+', '-')}-")
    try:
        if case == "first-200":
            return time_first_200(out_dir)
        if case == "render-api":
            return time_render_api(out_dir)
        started = time.perf_counter()
        hook = bake(out_dir, venv=(case == "bake+venv"))
        return {"seconds": time.perf_counter() - started, **hook}
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def summarize(raw):
    """One row per case: runs, median, min, max, target and whether the median meets it."""
    series = {case: [r["seconds"] for r in runs] for case, runs in raw.items()}
    if raw.get("first-200"):
        series["make serve"] = [r["serve"] for r in raw["first-200"]]
    rows = []
    for case, values in series.items():
        median, target = statistics.median(values), TARGETS[case]
        meets = "-" if target is None else ("yes" if median <= target else "NO")
        row = dict(case=case, runs=len(values), median=median, min=min(values), max=max(values))
        rows.append(dict(row, target=target, meets=meets))
    return rows


def render(head, body, markdown=False):
    """Rows of cells under a head, as an aligned text table or as a Markdown table."""
    if markdown:
        lines = [head, ["---"] * len(head), *body]
        return "\n".join("| " + " | ".join(cells) + " |" for cells in lines) + "\n"
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in [head, *body])


def table(rows, markdown=False):
    """The rows as an aligned text table, or as a Markdown table."""
    head = ["case", "runs", "median s", "min s", "max s", "target", "meets"]
    body = [[r["case"], str(r["runs"])] + [f"{r[k]:.2f}" for k in ("median", "min", "max")] for r in rows]
    for row, r in zip(body, rows, strict=True):
        row += ["-" if r["target"] is None else f"<= {r['target']:g} s", r["meets"]]
    return render(head, body, markdown)


def machine_facts():
    """Date, Python, nproc and tool versions, for the JSON (the commit: provenance.check)."""

    def out(*cmd):
        return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO).stdout.strip()

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "nproc": int(out("nproc")),
        "cookiecutter": out(str(TOOLS / "cookiecutter"), "--version").split(" from ")[0],
        "uv": out(str(TOOLS / "uv"), "--version"),
        "wheelhouse": WHEELHOUSE,
        "warm_up": "one untimed bake+venv before measuring (uv cache warm)",
        "loadavg_start": os.getloadavg(),
        "env": {k: v for k, v in os.environ.items() if k.startswith(("UV_", "PYTHONDONTWRITE"))},
    }


def measure(cases, runs):
    """Run every case `runs` times, interleaved (order rotated per round); return raw timings."""
    raw = {case: [] for case in cases}
    for round_no in range(runs):
        for case in cases[round_no % len(cases) :] + cases[: round_no % len(cases)]:
            raw[case].append(one_run(case))
            seconds, *parts = (f"{k} {round(v, 2)}" for k, v in raw[case][-1].items())
            print(f"  round {round_no + 1}/{runs}  {case:<10} {seconds}  {', '.join(parts)}", flush=True)
    return raw


def write_results(facts, rows, raw, runs, note):
    """Write bench/results/bake.json (facts + raw timings) and bake.md (the table)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {
        **facts,
        "loadavg_end": os.getloadavg(),
        "runs": runs,
        "targets_s": TARGETS,
        "summary": rows,
        "raw": raw,
        "note": note,
    }
    (RESULTS / "bake.json").write_text(json.dumps(report, indent=2) + "\n")
    text = (
        f"# Bake and first-200 times\n\n{facts['date']}, {provenance.describe(facts)}, {facts['nproc']} "
        f"cores, Python {facts['python']}, {facts['cookiecutter']}, {facts['uv']}; warm uv cache and "
        f"wheelhouse, {runs} interleaved runs per case.\n\n{table(rows, markdown=True)}"
    )
    (RESULTS / "bake.md").write_text(provenance.with_banner(text, facts) + (f"\n{note}\n" if note else ""))
    print(f"\nwrote {RESULTS / 'bake.json'} and {RESULTS / 'bake.md'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per case (default 5)")
    provenance.add_option(parser)
    args = parser.parse_args()
    facts = provenance.check(args.allow_dirty)
    cases, note = ["render", "render-api", "bake+venv", "first-200"], ""
    if shutil.which("nginx") is None:
        note = "nginx not found: first-200 skipped (apt-get install nginx, or make system-packages)"
        print(note)
        cases.remove("first-200")
    facts.update(machine_facts())
    print("warm-up: one untimed bake+venv so uv's cache is warm ...", flush=True)
    try:
        one_run("bake+venv")
        raw = measure(cases, args.runs)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    rows = summarize(raw)
    provenance.recheck(facts)
    print("\n" + provenance.with_banner(table(rows), facts))
    write_results(facts, rows, raw, args.runs, note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
