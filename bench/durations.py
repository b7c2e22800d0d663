"""How long do `make reload` and a local `make deploy` take, idle and under load, and where does the time go?

One baked default service (venv, warm wheelhouse) is committed to git and runs twice side by side for
the whole bench: `make serve` (state in var/, nginx on one free port) and, after one untimed first
`make deploy` that starts it, the deployed service (DEPLOY_ROOT var/deploy, state in its shared/,
nginx on a second port: `HTTP_PORT=<port> make deploy`, since the environment wins over .env and both
cannot share a port). One untimed `make reload` and one untimed deploy follow, so every number is a
warm number. Alternatives, run interleaved in every round (order rotated per round):
  reload-idle  `make reload` (bin/reload) on the `make serve` service, nothing else asking it.
  reload-load  the same while CONNECTIONS keep-alive connections send GET / back to back to its nginx.
  deploy-idle  `make deploy` of a new commit (a comment appended to the package's __init__.py,
               committed untimed just before), onto the deployed service, which is idle.
  deploy-load  the same while the same load goes to the deployed service's nginx.
Load: wrk (-c CONNECTIONS -t 2, a Lua hook counting answers outside 2xx; socket errors are wrk's
connect/read/write/timeout counts), or with --load threads (the default without wrk) CONNECTIONS strict
keep-alive clients of testkit/load.py, where every exception is a failed request. It starts LEAD s before the
command and stops TAIL s after it ends (bounded by the command's timeout in any case).
Where the time goes: bin/reload, bin/deploy and bin/migrate print `==> <step>` as each step starts.
The command's output is read as it comes and each `==>` line timestamped; a step lasts until the
next `==>` line or the command's end, and `start` is the time before the first one (make, the
interpreter, bin/deploy's DEPLOY_ROOT lookup). In a deploy, the steps of the children it runs
(bin/reload in its `reload` step, bin/migrate in migrate_before/migrate_after) are named
`<deploy step>/<child step>`: a step is bin/deploy's own when it is the next of the numbered steps
in bin/deploy's docstring. Every step segment is counted once, so the segments of a run add up to
its total.

Reading the result: `median s` is the median total wall time of the command (min..max beside it).
Targets from the issue: `make reload` <= 3 s idle, a local `make deploy` <= 8 s idle; under load
the target is 0 failed requests (`failed` sums non-2xx answers and socket errors over all runs).
`top steps` and the per-step tables show the median of each step over runs (a step missing in a
run counts 0 there): these medians need not add up to the median total. The PNG stacks the median
steps per alternative (one colour per step name; a deploy's `reload/<step>` shares its colour with
`make reload`'s <step>) with the median total and the target marked. The machine is shared: loadavg
per run is in the JSON; compare the rows of one run, and rerun before calling a missed target a
regression. Every result names the commit it measured (bench/provenance.py): a tree with uncommitted
changes is refused unless --allow-dirty, and then the results are marked DIRTY.

    .tools/bin/python bench/durations.py [--runs N] [--load wrk|threads] [--allow-dirty]
    # writes bench/results/durations.{json,md,png}
"""

import argparse
import collections
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import provenance
from bake import REPO, RESULTS, bake, free_port, machine_facts, render, run, stop

sys.path.append(str(REPO))  # the checkout's root: benchmarks import testkit, never tests/
from testkit.load import Load

ALTERNATIVES = ["reload-idle", "reload-load", "deploy-idle", "deploy-load"]
TARGETS = {"reload-idle": 3.0, "deploy-idle": 8.0}  # s, median total; under load: 0 failed
CONNECTIONS, WRK_THREADS = 20, 2
LEAD, TAIL, SETTLE = 1.0, 0.5, 2.0  # s: load before the command, load after it, idle between runs
# bin/reload gives up after RELOAD_TIMEOUT (300 s): these bound the whole command from outside.
TIMEOUTS = {"reload": 330.0, "deploy": 450.0}
REQUEST_TIMEOUT = 30.0  # s, one request of the load
TOP = 3  # steps named in the table's `top steps`
STEP = re.compile(r"^==> (\S+)")
# wrk: count the answers outside 2xx per thread (wrk's own count is of status > 399), print all at the end.
WRK_SCRIPT = """
wrk.headers["Host"] = "127.0.0.1"
non2xx = 0
local threads = {}
function setup(thread) table.insert(threads, thread) end
function response(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
end
function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do bad = bad + thread:get("non2xx") end
  local e = summary.errors
  local form = "DURATIONS requests=%d non_2xx=%d connect=%d read=%d write=%d timeout=%d max_us=%d\\n"
  io.write(string.format(form, summary.requests, bad, e.connect, e.read, e.write, e.timeout, latency.max))
end
"""


class WrkLoad:
    """wrk against 127.0.0.1:port until stop() (SIGINT: wrk then prints its summary) or `bound` s."""

    def __init__(self, port, bound, script):
        command = ["wrk", "-c", str(CONNECTIONS), "-t", str(WRK_THREADS), "-d", f"{int(bound)}s"]
        command += ["--timeout", f"{REQUEST_TIMEOUT:g}s", "-s", str(script), f"http://127.0.0.1:{port}/"]
        self.started = time.monotonic()
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def stop(self):
        seconds = time.monotonic() - self.started
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            output, _ = self.process.communicate(timeout=REQUEST_TIMEOUT + 10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate(timeout=10)
            raise RuntimeError("wrk did not stop after SIGINT: killed") from None
        found = re.search(r"^DURATIONS (.*)$", output, re.MULTILINE)
        if self.process.returncode != 0 or not found:
            raise RuntimeError(f"wrk exited {self.process.returncode} without its summary:\n{output[-2000:]}")
        figures = {k: int(v) for k, v in (pair.split("=") for pair in found[1].split())}
        errors = {k: figures[k] for k in ("connect", "read", "write", "timeout") if figures[k]}
        failures = ({"non-2xx": figures["non_2xx"]} if figures["non_2xx"] else {}) | errors
        return {
            "requests": figures["requests"],
            "non_2xx": figures["non_2xx"],
            "socket_errors": sum(errors.values()),
            "failures": failures,
            "max_latency_s": figures["max_us"] / 1e6,
            "load_s": seconds,
        }


class ThreadLoad:
    """CONNECTIONS strict keep-alive clients (testkit/load.py), each sending GET / back to back to
    127.0.0.1:port until stop() or `bound` s. Any answer outside 200 and every exception is a failed
    request."""

    def __init__(self, port, bound, script=None):
        self.started = time.monotonic()
        self.load = Load(port, CONNECTIONS, bound, record=True, timeout=REQUEST_TIMEOUT).start()

    def stop(self):
        seconds = time.monotonic() - self.started
        load = self.load.stop()
        # A failure is an answer's status, or what was raised (a thread that never stopped, too).
        non_2xx = sum(isinstance(failure, int) for failure in load.failures)
        return {
            "requests": len(load.records),
            "non_2xx": non_2xx,
            "socket_errors": len(load.failures) - non_2xx,
            "failures": dict(collections.Counter(str(failure) for failure in load.failures)),
            "max_latency_s": max((latency for _, latency, _ in load.records), default=0.0),
            "load_s": seconds,
        }


def timed(command, cwd, env, timeout):
    """Run command in a session of its own, timestamping each output line as it arrives; return
    (seconds until its output ended, [(s since start, line)], exit status). On timeout its group is killed."""
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    lines, ended, problems = [], [], []

    def read():
        try:
            for line in process.stdout:
                lines.append((time.monotonic() - started, line.rstrip("\n")))
        except Exception as error:  # a broken read would make the steps wrong: reported below
            problems.append(repr(error))
        finally:
            ended.append(time.monotonic() - started)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if reader.is_alive():
        exited = process.poll() is not None
        if not exited:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        what = "exited but a child kept its output open" if exited else f"ran over {timeout:g} s: killed"
        raise RuntimeError(f"`{' '.join(map(str, command))}` {what}:\n{tail(lines)}")
    code = process.wait(timeout=30)
    if problems:
        raise RuntimeError(f"reading `{' '.join(map(str, command))}`'s output failed: {problems[0]}")
    return ended[0], lines, code


def tail(lines, count=25):
    return "\n".join(line for _, line in lines[-count:])


def top_level_steps(script):
    """The numbered steps of a bin/ script's docstring (`  8. switch_current ...`), in order."""
    return re.findall(r"(?m)^\s{1,3}\d{1,2}\.\s+([a-z_]+)\s", script.read_text())


def steps_of(lines, total, own=None):
    """[(step, seconds)] from the `==>` lines: `start` until the first, each step until the next or the
    end. With `own` (the command's own steps, in order) any other step is a child's: `<parent>/<step>`."""
    marks, position, parent = [("start", 0.0)], -1, None
    for t, line in lines:
        found = STEP.match(line)
        if not found:
            continue
        name = found[1].rstrip(":")
        if own is None or name in own[position + 1 :]:
            position = own.index(name) if own else position
            parent = name
        elif parent is not None:
            name = f"{parent}/{name}"
        marks.append((name, t))
    ends = [t for _, t in marks[1:]] + [total]
    return [(name, end - t) for (name, t), end in zip(marks, ends, strict=True)]


def commit_change(project, number):
    """Append a comment to the package's __init__.py and commit it: a new release for the next deploy."""
    init = project / "my_service" / "__init__.py"
    with open(init, "a") as code:
        code.write(f"# bench/durations.py: change {number}\n")
    git(project, "commit", "-q", "-a", "-m", f"bench/durations.py: change {number}")


def git(project, *args):
    identity = ["-c", "user.name=bench", "-c", "user.email=bench@example.com", "-c", "commit.gpgsign=false"]
    return run(["git", *identity, *args], 60, cwd=project)


def environment(deploy_port=None):
    """This process's environment without what would point a command elsewhere; HTTP_PORT for a deploy."""
    keep = {
        k: v for k, v in os.environ.items() if k not in ("STATE_DIR", "DEPLOY_ROOT", "CODE_DIR", "HTTP_PORT")
    }
    return keep | ({"HTTP_PORT": str(deploy_port)} if deploy_port else {})


def one_run(alternative, service, load_class, number):
    """One timed `make reload` or `make deploy` (under load for *-load); return its figures."""
    kind = alternative.split("-")[0]
    project = service["project"]
    if kind == "deploy":
        commit_change(project, number)
    port = service["serve_port"] if kind == "reload" else service["deploy_port"]
    env = environment(None if kind == "reload" else port)
    loadavg = os.getloadavg()[0]
    load = None
    if alternative.endswith("-load"):
        load = load_class(port, TIMEOUTS[kind] + LEAD + TAIL + 10, service["wrk_script"])
        time.sleep(LEAD)
    try:
        seconds, lines, code = timed(["make", kind], project, env, TIMEOUTS[kind])
        if load is not None:
            time.sleep(TAIL)
    finally:
        figures = load.stop() if load is not None else {}
    if code != 0:
        raise RuntimeError(f"`make {kind}` ({alternative}) exited {code}:\n{tail(lines)}")
    steps = steps_of(lines, seconds, service["deploy_steps"] if kind == "deploy" else None)
    marks = [[round(t, 3), line] for t, line in lines if STEP.match(line)]
    return {"seconds": seconds, "steps": steps, "marks": marks, "loadavg": loadavg, **figures}


def prepare(out_dir, serve_port, deploy_port):
    """Bake, commit, `make serve`, and the untimed first deploy (starts the deployed service), reload and
    second deploy; return what the runs need."""
    bake(out_dir, venv=True, http_port=serve_port)
    project = out_dir / "my_service"
    run(["git", "init", "-q", "-b", "main"], 30, cwd=project)
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "baked by bench/durations.py")
    print(f"  make serve on 127.0.0.1:{serve_port} ...", flush=True)
    run(["make", "serve"], 180, cwd=project, env=environment())
    print(f"  first make deploy (untimed: starts the deployed service on 127.0.0.1:{deploy_port}) ...")
    run(["make", "deploy"], TIMEOUTS["deploy"], cwd=project, env=environment(deploy_port))
    print("  warm-up: one untimed make reload and one untimed make deploy ...", flush=True)
    run(["make", "reload"], TIMEOUTS["reload"], cwd=project, env=environment())
    commit_change(project, 0)
    run(["make", "deploy"], TIMEOUTS["deploy"], cwd=project, env=environment(deploy_port))
    return {
        "project": project,
        "serve_port": serve_port,
        "deploy_port": deploy_port,
        "deploy_steps": top_level_steps(project / "bin/deploy"),
    }


def measure(runs, load_class):
    """Bake and start both services, run every alternative `runs` times interleaved, stop everything."""
    out_dir = Path(tempfile.mkdtemp(prefix="bench-durations-"))
    project = out_dir / "my_service"
    serve_port = free_port()
    deploy_port = free_port()
    while deploy_port == serve_port:
        deploy_port = free_port()
    raw = {alt: [] for alt in ALTERNATIVES}
    try:
        service = prepare(out_dir, serve_port, deploy_port)
        service["wrk_script"] = out_dir / "count-non-2xx.lua"
        service["wrk_script"].write_text(WRK_SCRIPT)
        number = 0
        for round_no in range(runs):
            shift = round_no % len(ALTERNATIVES)
            for alt in ALTERNATIVES[shift:] + ALTERNATIVES[:shift]:
                number += 1
                time.sleep(SETTLE)
                result = one_run(alt, service, load_class, number)
                raw[alt].append(result)
                big = sorted(result["steps"], key=lambda step: -step[1])[:TOP]
                shown = ", ".join(f"{name} {s:.2f}" for name, s in big)
                load = (
                    f"  {result['requests']} requests, {failed(result)} failed"
                    if "requests" in result
                    else ""
                )
                print(
                    f"  round {round_no + 1}/{runs}  {alt:<11} {result['seconds']:.2f} s  ({shown}){load}",
                    flush=True,
                )
        return raw
    finally:
        if project.exists():
            stopped = stop(project)
            print(f"  make stop: {stopped} processes of the bake stopped, none left", flush=True)
        shutil.rmtree(out_dir, ignore_errors=True)


def failed(result):
    return result.get("non_2xx", 0) + result.get("socket_errors", 0)


def median_steps(runs):
    """{step: median seconds over runs} in the order steps first appear (a step missing in a run: 0)."""
    per_run = []
    for r in runs:
        sums = collections.defaultdict(float)
        for name, seconds in r["steps"]:
            sums[name] += seconds
        per_run.append(sums)
    names = list(dict.fromkeys(name for r in runs for name, _ in r["steps"]))
    return {name: statistics.median(s.get(name, 0.0) for s in per_run) for name in names}


def summarize(raw):
    """One row per alternative: totals' median/min/max, target, failed (summed), median steps."""
    rows = []
    for alt, runs in raw.items():
        totals = [r["seconds"] for r in runs]
        median, target = statistics.median(totals), TARGETS.get(alt)
        steps = median_steps(runs)
        row = dict(alternative=alt, runs=len(runs), median=median, min=min(totals), max=max(totals))
        row["target"] = f"<= {target:g} s" if target else "0 failed"
        if alt.endswith("-load"):
            row["requests"] = statistics.median(r["requests"] for r in runs)
            row["failed"] = sum(failed(r) for r in runs)
            row["failures"] = dict(
                sum((collections.Counter(r["failures"]) for r in runs), collections.Counter())
            )
            row["meets"] = "yes" if row["failed"] == 0 else "NO"
        else:
            row["meets"] = "yes" if median <= target else "NO"
        row["top_steps"] = sorted(steps.items(), key=lambda item: -item[1])[:TOP]
        rows.append({**row, "steps_median": steps})
    return rows


def table(rows, markdown=False):
    """The rows as an aligned text table, or as a Markdown table."""
    head = ["alternative", "runs", "median s", "min s", "max s", "target", "meets", "requests", "failed"]
    body = []
    for r in rows:
        row = [r["alternative"], str(r["runs"])] + [f"{r[k]:.2f}" for k in ("median", "min", "max")]
        row += [r["target"], r["meets"], f"{r['requests']:.0f}" if "requests" in r else "-"]
        row.append(str(r["failed"]) if "failed" in r else "-")
        body.append([*row, ", ".join(f"{name} {s:.2f}" for name, s in r["top_steps"])])
    return render([*head, f"top {TOP} steps (median s)"], body, markdown)


def step_tables(rows, markdown=False):
    """Per command (make reload, make deploy): every step's median s idle and under load, and its share
    of the idle median total."""
    by_alt = {r["alternative"]: r for r in rows}
    out = []
    for kind in ("reload", "deploy"):
        idle, loaded = by_alt.get(f"{kind}-idle"), by_alt.get(f"{kind}-load")
        if idle is None or loaded is None:
            continue
        names = list(dict.fromkeys([*idle["steps_median"], *loaded["steps_median"]]))
        body = []
        for name in names:
            a, b = idle["steps_median"].get(name, 0.0), loaded["steps_median"].get(name, 0.0)
            body.append([name, f"{a:.2f}", f"{100 * a / idle['median']:.0f} %", f"{b:.2f}"])
        body.append(["(median total)", f"{idle['median']:.2f}", "", f"{loaded['median']:.2f}"])
        head = [f"make {kind}: step", "idle median s", "of idle total", "under load median s"]
        out.append(render(head, body, markdown))
    return "\n\n".join(out) + "\n"


def plot(rows, facts, path):
    """Stacked horizontal bars: the median steps of each alternative in the order they run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    leaves = list(dict.fromkeys(name.split("/")[-1] for r in rows for name in r["steps_median"]))
    palette = [plt.get_cmap("tab20")(i) for i in range(20)] + [plt.get_cmap("tab20b")(i) for i in range(20)]
    colour = {leaf: palette[i % len(palette)] for i, leaf in enumerate(leaves)}
    widest = max(max(r["median"], sum(r["steps_median"].values())) for r in rows)
    fig, ax = plt.subplots(figsize=(12, 1.2 * len(rows) + 2.6))
    labels, seen = [], set()
    for y, r in enumerate(reversed(rows)):
        left = 0.0
        for name, seconds in r["steps_median"].items():
            leaf = name.split("/")[-1]
            label = None if leaf in seen else leaf
            seen.add(leaf)
            ax.barh(y, seconds, left=left, color=colour[leaf], edgecolor="white", lw=0.5, label=label)
            if seconds >= 0.05 * widest:  # named inside the bar when there is room, else in the legend
                ax.text(
                    left + seconds / 2, y, leaf.replace("_", "_\n", 1), ha="center", va="center", fontsize=6
                )
            left += seconds
        ax.plot([r["median"]] * 2, [y - 0.45, y + 0.45], color="black", lw=2)
        target = TARGETS.get(r["alternative"])
        if target:
            ax.plot([target] * 2, [y - 0.5, y + 0.5], color="tab:red", ls="--", lw=1.5)
        extra = f", {r['failed']} failed of {r['requests']:.0f}" if "failed" in r else ""
        labels.append(f"{r['alternative']}\n{r['median']:.1f} s{extra}")
    ax.set_yticks(range(len(rows)), labels, fontsize=9)
    ax.plot([], [], color="black", lw=2, label="median total")
    ax.plot([], [], color="tab:red", ls="--", lw=1.5, label="target (idle)")
    ax.set_xlabel(
        f"seconds: median of each step over runs, stacked in the order they run (load: {CONNECTIONS} "
        "keep-alive connections, GET / back to back)"
    )
    ax.grid(axis="x", alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=7, fontsize=7, frameon=False)
    ax.set_title("Where `make reload` and a local `make deploy` spend their time", fontsize=10)
    fig.tight_layout(rect=(0, 1.0 / fig.get_figheight(), 1, 1))
    provenance.mark_figure(fig, facts)
    fig.savefig(path, dpi=100)


def write_results(facts, rows, raw, runs):
    """Write bench/results/durations.json (facts, summary, per-run steps), .md and .png."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {
        **facts,
        "loadavg_end": os.getloadavg(),
        "runs": runs,
        "targets_s": TARGETS,
        "summary": rows,
        "raw": raw,
    }
    (RESULTS / "durations.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(rows, facts, RESULTS / "durations.png")
    text = (
        f"# Durations of make reload and a local make deploy\n\n{facts['date']}, "
        f"{provenance.describe(facts)}, {facts['nproc']} cores, Python {facts['python']}, {facts['nginx']}, "
        f"{facts['uv']}; {runs} interleaved runs per alternative after an untimed reload and deploy; "
        f"load: {facts['load']}; loadavg {facts['loadavg_start'][0]:.1f} at the start, "
        f"{report['loadavg_end'][0]:.1f} at the end. Targets: make reload <= {TARGETS['reload-idle']:g} s "
        f"and make deploy <= {TARGETS['deploy-idle']:g} s idle, 0 failed requests under load. See "
        f"bench/durations.py for how to read the columns.\n\n{table(rows, markdown=True)}\n"
        f"Median seconds per step (`start`: until the first `==>` line; `parent/step`: a step of the "
        f"child a deploy step runs):\n\n{step_tables(rows, markdown=True)}\n"
        "![median steps per alternative](durations.png)\n"
    )
    (RESULTS / "durations.md").write_text(provenance.with_banner(text, facts))
    print(f"\nwrote {RESULTS / 'durations.json'}, {RESULTS / 'durations.md'} and {RESULTS / 'durations.png'}")


def interrupt(signum, frame):
    """Ctrl-C or SIGTERM: unwind through the finally blocks, which stop every process started."""
    raise KeyboardInterrupt


def main():
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per alternative (default 3)")
    parser.add_argument(
        "--load",
        choices=["wrk", "threads"],
        default="wrk" if shutil.which("wrk") else "threads",
        help="load client (default wrk when installed, else threads)",
    )
    provenance.add_option(parser)
    args = parser.parse_args()
    commit = provenance.check(args.allow_dirty)
    if args.runs < 1:
        sys.exit(f"error: --runs={args.runs}: at least 1")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        sys.exit("matplotlib is missing: .tools/bin/python -m pip install -r bench/requirements.txt")
    for tool, hint in (("nginx", "apt-get install nginx"), ("make", "apt-get install make"), ("git", "")):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: {hint or 'install it'}")
    if args.load == "wrk" and shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk (or make system-packages), or --load threads")
    run([REPO / "scripts/wheelhouse"], 600)
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    if args.load == "wrk":
        wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split(" [")[0]
        load = f"{wrk}, -c {CONNECTIONS} -t {WRK_THREADS}, GET / back to back"
    else:
        load = (
            f"{CONNECTIONS} strict keep-alive clients (testkit/load.py) in this process, GET / back to back"
        )
    facts = {
        **commit,
        **{k: v for k, v in machine_facts().items() if k != "warm_up"},  # bake.py's own note
        "warm_up": "the first make deploy (starts the deployed service), then one make reload and one "
        "make deploy, all untimed",
        "nginx": nginx,
        "load": load,
        "connections": CONNECTIONS,
        "lead_s": LEAD,
        "tail_s": TAIL,
        "settle_s": SETTLE,
        "timeouts_s": TIMEOUTS,
    }
    print(f"baking the default service; {args.runs} rounds of {', '.join(ALTERNATIVES)} ...", flush=True)
    try:
        raw = measure(args.runs, WrkLoad if args.load == "wrk" else ThreadLoad)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: every process started was stopped; no results written", file=sys.stderr)
        return 130
    rows = summarize(raw)
    provenance.recheck(facts)
    print("\n" + provenance.with_banner(table(rows), facts))
    print("\n" + step_tables(rows))
    write_results(facts, rows, raw, args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
