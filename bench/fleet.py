"""Does a rolling deploy over 2 or 3 web hosts behind the load balancer go unnoticed by its clients,
and which way of taking a host out of rotation makes that true for clients that never resend?

One run boots two lab fleets side by side (scripts/lab, as tests/test_fleet.py does): N = 2 and N = 3
web hosts of Debian bookworm behind lb1, sharing the lab's PostgreSQL and Redis; each gets the default
service baked, `make provision` and a first deploy (untimed). lb1 then runs both alternatives of the
rotation choice over the same web hosts, side by side:
  haproxy  the template's load balancer (deploy/haproxy.cfg) on lb1:80: the deploy drains each batch
           through HAProxy's runtime API before it switches and puts it back after; no reload.
  nginx    an nginx load balancer on lb1:8080 (the template's earlier one: upstream keep-alive,
           passive checks, retries for idempotent requests) that is never reloaded: no rotation,
           each host's chain reload serves on while it replaces its workers.
(The third, nginx marking the batch `down` and reloading twice per batch, closed idle client
connections at every reload: 33 of 51,000 requests lost by browser-like clients in an earlier run,
40 of 51,656 failed for strict ones. It cannot run beside the first: the deploy reloads one lb1.)
Per round (--runs, the order of the two fleets rotated per round), a new release is committed and
`make deploy HOSTS=<inventory>` runs while CLIENTS keep-alive clients per alternative send GET /,
POST /notes {"text": ...} and GET /notes in turn. The deploy starts BASELINE s into the load (the
WARMUP s before that are not counted) and the load goes on AFTER s past its end. With N hosts each
batch (deploy_serial = 1) takes 1/N of the capacity out of rotation, and the roll lasts N batches.

Load: threads of http.client in this process, each paced to RATE / CLIENTS requests/s (a request
that is late is sent at once, with no catching up). Back to back (--rate 0) the clients alone fill
both cores, and every CPU second the deploy spends here (the artifact's build, ansible) would show
as latency; a paced load measures a service with headroom. Each request's start, latency and outcome
are recorded. The clients are strict, as wrk, `requests` without retries and most service-to-service
clients are: a request that a reused keep-alive connection lost before any byte of its answer is not
sent again (testkit/load.py, strict). Every exception, and any answer but 200 (201 for a POST), is a
failed request. A side thread per web host polls its own nginx (http://<host>/health with Host:
example.com, so not through lb1) at 1/POLL Hz for the release it serves; one ssh session to lb1 asks
HAProxy's `show stat` at the same rate: a host in DRAIN (or MAINT) there is out of rotation.

Reading the result: one row per fleet size, alternative and round, then a median row per size and
alternative (its failed column is a total). `deploy s` is the wall time of `make deploy` (the
artifact's build here, unpacking and preparing on every host, then the roll); `roll s` runs from the
first drain seen to the poll that saw no host drained again (if none was seen: the whole deploy).
Latencies (ms) are of requests started in the baseline window (the BASELINE s before the deploy)
and of requests in flight at any moment of the roll. `new on all s` is when, counted from the
deploy's start, every host's /health had shown the new release. Targets (from the issue): 0 failed
requests and roll p99 <= 2 x baseline p99; `meets` also asks that the deploy exited 0 and every
host serves the new release afterwards. The PNG shows, per fleet size and alternative, the round
with the median roll p99: every request's latency over time (log scale; failures as red crosses)
with the baseline, deploy and roll windows shaded, and below it the release each host's /health
answered (grey: the previous one, green: the new one, red: no answer) with its out-of-rotation
intervals hatched. Everything (lab hosts, PostgreSQL, Redis, ansible, the load) shares this
machine's cores: loadavg per round is in the JSON, and compare within a run.
Every result names the commit it measured (bench/provenance.py): a tree with uncommitted changes is
refused unless --allow-dirty, and then the results are marked DIRTY. The lab needs root.

    .tools/bin/python bench/fleet.py [--runs R] [--rate REQ_PER_S] [--clients C] [--allow-dirty]
    # writes bench/results/fleet.{json,md,png}
"""

import argparse
import base64
import collections
import contextlib
import http.client
import json
import os
import shlex
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
from bake import REPO, RESULTS, machine_facts, render

sys.path.append(str(REPO))  # the checkout's root: benchmarks import testkit, never tests/
from testkit.bake import build_wheelhouse, commit
from testkit.env import isolate_environment
from testkit.lab import REQUESTS, lab_fleet, lab_problems
from testkit.load import Load

SIZES = (2, 3)  # web hosts per fleet
CLIENTS, RATE = 10, 50.0  # keep-alive clients through lb1, requests/s in all (0: back to back)
WARMUP, BASELINE, AFTER = 2.0, 10.0, 3.0  # s: load not counted, baseline window, load after the deploy
POLL, TIMEOUT, DEPLOY_TIMEOUT = 0.2, 30.0, 900.0  # s: /health and upstream poll, request, deploy
TARGET_RATIO = 2.0  # roll p99 <= TARGET_RATIO x baseline p99
# The alternatives of the rotation choice: the port each listens on, on lb1.
ALTERNATIVES = {"haproxy": 80, "nginx": 8080}
# The nginx load balancer that is never reloaded (the template's earlier one, its upstream written
# from the fleet's web hosts): put on lb1 beside HAProxy before the first round.
NGINX_LB = """
upstream bench_web {{
{servers}
    keepalive 32;
    keepalive_timeout 20s;
}}
server {{
    listen 8080;
    location / {{
        proxy_pass http://bench_web;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_connect_timeout 2s;
        proxy_read_timeout 80s;
        proxy_next_upstream error timeout http_502 http_504;
        proxy_next_upstream_tries 2;
        proxy_next_upstream_timeout 10s;
    }}
}}
"""
# HAProxy's servers in DRAIN or MAINT, by name (`show stat`: field 1 the backend, 2 the server, 18 status).
DRAINED = (
    "echo 'show stat' | socat stdio /run/haproxy/admin.sock"
    ' | awk -F, \'$1 == "my_service_web" && $18 ~ /DRAIN|MAINT/ {printf "%s ", $2}\''
)
# The table's columns of each round (and of the median rows).
COLUMNS = ("requests", "failed", "deploy_s", "roll_s", "new_on_all_s", "base", "roll", "p99_ratio")


def poll_release(address, stopped, deadline, polls):
    """GET /health from the host's own nginx every POLL s; records (time, release or what failed)."""
    connection = http.client.HTTPConnection(address, 80, timeout=2)
    while not stopped.is_set() and (now := time.monotonic()) < deadline:
        try:
            connection.request("GET", "/health", headers={"Host": "example.com"})
            response = connection.getresponse()
            body = response.read()
            value = json.loads(body).get("release") or f"HTTP {response.status}"
        except Exception as error:  # an unanswered poll is a fact to plot
            value = f"error: {type(error).__name__}"
            connection.close()
        polls.append((time.monotonic(), value))
        stopped.wait(max(0.0, now + POLL - time.monotonic()))
    connection.close()


def watch_rotation(lb, seconds, marks):
    """An ssh session printing the web hosts HAProxy has drained on lb1 every POLL s for at most
    `seconds`, and a thread recording (time, {host names drained}); returns (Popen, thread)."""
    script = (
        f"end=$((SECONDS + {int(seconds)})); while [ $SECONDS -lt $end ]; do "
        f'echo "$EPOCHREALTIME $({DRAINED})"; sleep {POLL}; done'
    )
    ssh = subprocess.Popen(
        [*lb.ssh_command, "bash", "-c", shlex.quote(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    # The lab's hosts are containers on this machine's kernel: their clock is this one.
    offset = time.time() - time.monotonic()

    def read():
        for line in ssh.stdout:
            stamp, *drained = line.split()
            with contextlib.suppress(ValueError):
                marks.append((float(stamp) - offset, set(drained)))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return ssh, reader


def stop_process(process):
    """TERM the process (by its pid), KILL it if it is still there 10 s later."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def one_round(fleet, names, clients, rate):
    """Commit a release; deploy it under load through both alternatives on lb1; return (revision,
    {alternative: records}, polls, marks, times, result)."""
    revision = commit(fleet.project, f"release {time.time():.0f}")
    seconds = WARMUP + BASELINE + DEPLOY_TIMEOUT + AFTER + 30  # every load and poll stops by itself
    loads = {
        name: Load(
            port, clients, seconds, REQUESTS, fleet.lb.address, rate=rate, record=True, timeout=TIMEOUT
        )
        for name, port in ALTERNATIVES.items()
    }
    stopped, deadline = threading.Event(), time.monotonic() + seconds
    polls = {name: [] for name in names}
    pollers = [
        threading.Thread(target=poll_release, args=(host.address, stopped, deadline, polls[name]))
        for name, host in zip(names, fleet.hosts, strict=True)
    ]
    marks = []
    ssh, reader = watch_rotation(fleet.lb, seconds, marks)
    t_load = time.monotonic()
    try:
        for load in loads.values():
            load.start()
        for poller in pollers:
            poller.start()
        time.sleep(WARMUP + BASELINE)
        t_deploy = time.monotonic()
        result = fleet.make("deploy", check=False, timeout=DEPLOY_TIMEOUT)  # sh()'s timeout
        t_done = time.monotonic()
        time.sleep(AFTER)
    finally:
        stopped.set()
        for load in loads.values():
            load.stop()
        for poller in pollers:
            if poller.is_alive():
                poller.join(timeout=10)
        stop_process(ssh)
        reader.join(timeout=10)
    if stuck := [load.failures[-1] for load in loads.values() if load.stuck]:
        raise RuntimeError(stuck[0])
    times = {"load": t_load, "deploy": t_deploy, "done": t_done, "end": time.monotonic()}
    return revision, {name: load.records for name, load in loads.items()}, polls, marks, times, result


def percentiles(latencies):
    """p50, p99 and max in ms (None for no request)."""
    values = sorted(latencies)
    if not values:
        return {"p50": None, "p99": None, "max": None}
    at = [values[int(q * (len(values) - 1))] for q in (0.5, 0.99)] + [values[-1]]
    return {key: round(1000 * value, 1) for key, value in zip(("p50", "p99", "max"), at, strict=True)}


def segments(samples, end):
    """[(start, end, value)] of consecutive equal values in time-ordered samples."""
    found = []
    for (t, value), nxt in zip(samples, [*samples[1:], (end, None)], strict=True):
        if found and found[-1][2] == value:
            found[-1][1] = nxt[0]
        else:
            found.append([t, nxt[0], value])
    return found


def analyse(revision, previous, records, polls, marks, times, addresses):
    """The round's figures for one alternative's records; times in s since the deploy's start,
    latencies in ms."""
    t_deploy, t_done, t_end = times["deploy"], times["done"], times["end"]

    def rel(t):
        return round(t - t_deploy, 2)

    down_at = [t for t, down in marks if down]
    if down_at:
        roll_start = down_at[0]
        roll_end = next((t for t, down in marks if t > down_at[-1] and not down), t_done)
    else:
        roll_start, roll_end = t_deploy, t_done
    base = [lat for s, lat, *_ in records if t_deploy - BASELINE <= s < t_deploy]
    roll = [lat for s, lat, *_ in records if s < roll_end and s + lat > roll_start]
    deploy = [lat for s, lat, *_ in records if s < t_done and s + lat > t_deploy]
    errors = [(rel(s), error) for s, _, error in records if error]
    hosts = {}
    for name, samples in polls.items():
        down = [(t, name in drained) for t, drained in marks]
        seen_new = [t for t, value in samples if value == revision]
        hosts[name] = {
            "address": addresses[name],
            "releases": [[rel(a), rel(b), v] for a, b, v in segments(samples, t_end)],
            "out_of_rotation": [[rel(a), rel(b)] for a, b, v in segments(down, t_end) if v],
            "first_new_s": rel(seen_new[0]) if seen_new else None,
            "last_other_s": rel(max((t for t, v in samples if v != revision), default=t_deploy)),
        }
    firsts = [h["first_new_s"] for h in hosts.values()]
    figures = {
        "revision": revision,
        "previous": previous,
        "requests": len(records),
        "failed": len(errors),
        "failures": dict(collections.Counter(error for _, error in errors)),
        "failed_at_s": errors[:20],
        "deploy_s": round(t_done - t_deploy, 2),
        "roll_start_s": rel(roll_start),
        "roll_end_s": rel(roll_end),
        "roll_s": round(roll_end - roll_start, 2),
        "roll_from": "HAProxy's drains" if down_at else "the whole deploy (no drain seen)",
        "new_on_all_s": None if None in firsts else max(firsts),
        "base": percentiles(base),
        "roll": percentiles(roll),
        "deploy": percentiles(deploy),
        "base_requests": len(base),
        "roll_requests": len(roll),
        "hosts": hosts,
    }
    ratio = (figures["roll"]["p99"] or 0) / figures["base"]["p99"] if figures["base"]["p99"] else None
    figures["p99_ratio"] = None if ratio is None else round(ratio, 2)
    return figures


def timeline(records, t_deploy):
    """Per 100 ms of request starts since the deploy's start: [t, requests, failed, p50, max]."""
    buckets = collections.defaultdict(list)
    for s, lat, error in records:
        buckets[round(s - t_deploy, 1)].append((lat, error))
    return [
        [
            t,
            len(b),
            sum(1 for _, e in b if e),
            round(statistics.median(x for x, _ in b), 4),
            round(max(x for x, _ in b), 4),
        ]
        for t, b in sorted(buckets.items())
    ]


def prepare(fleet, size):
    """Provision a booted fleet and deploy a first release (untimed)."""
    print(f"  {size} web hosts + lb1 booted ({', '.join(h.address for h in fleet.hosts)})")
    fleet.make("provision")
    fleet.previous = commit(fleet.project, "first release")
    fleet.make("deploy")
    servers = "\n".join(f"    server {host.address}:80 max_fails=1 fail_timeout=5s;" for host in fleet.hosts)
    site = base64.b64encode(NGINX_LB.format(servers=servers).encode()).decode()
    fleet.lb.sh(
        f"echo {site} | base64 -d > /etc/nginx/sites-enabled/bench-nginx-lb"
        " && nginx -t -q && systemctl reload nginx"
    )
    print(f"  {size} web hosts: provisioned, first release {fleet.previous} deployed, nginx on lb1:8080")
    return fleet, [f"web{i + 1}" for i in range(size)]


def measure(runs, clients, rate, base):
    """Both fleets side by side, `runs` rounds each (order rotated per round), both alternatives in
    every round; returns the raw runs by "N=<size> <alternative>". Each lab is removed on the way out
    (lab_fleet's finally), also after an error."""
    raw = {label(size, name): [] for size in SIZES for name in ALTERNATIVES}
    with contextlib.ExitStack() as stack:
        fleets = {}
        for size in SIZES:
            (base / f"n{size}").mkdir()
            fleet = stack.enter_context(lab_fleet(base / f"n{size}", "bookworm", size, lb=True))
            fleets[size] = prepare(fleet, size)
        for round_no in range(runs):
            order = SIZES[round_no % len(SIZES) :] + SIZES[: round_no % len(SIZES)]
            for size in order:
                fleet, names = fleets[size]
                loadavg = os.getloadavg()
                revision, loads, polls, marks, times, result = one_round(fleet, names, clients, rate)
                addresses = {name: host.address for name, host in zip(names, fleet.hosts, strict=True)}
                final = fleet.revisions()
                for alternative, records in loads.items():
                    figures = analyse(revision, fleet.previous, records, polls, marks, times, addresses)
                    figures.update(
                        alternative=alternative,
                        size=size,
                        round=round_no + 1,
                        loadavg=loadavg,
                        deploy_rc=result.returncode,
                        serving_after=final,
                        converged=set(final.values()) == {revision},
                        timeline=timeline(records, times["deploy"]),
                    )
                    if result.returncode != 0:
                        figures["deploy_tail"] = (result.stdout + result.stderr)[-3000:]
                    figures["meets"] = meets(figures)
                    figures["_records"] = [(s - times["deploy"], lat, e) for s, lat, e in records]
                    raw[label(size, alternative)].append(figures)
                    shown = {k: figures[k] for k in ("deploy_s", "roll_s", "failed", "p99_ratio")}
                    base_roll = f"{figures['base']} -> {figures['roll']}"
                    where = f"round {round_no + 1}/{runs}  {label(size, alternative)}"
                    print(f"  {where}  {shown}  {base_roll}  meets={figures['meets']}")
                    for error, count in figures["failures"].items():
                        print(f"    failed {count}x: {error}")
                fleet.previous = revision
    return raw


def label(size, alternative):
    return f"N={size} {alternative}"


def meets(figures):
    base, roll = figures["base"]["p99"], figures["roll"]["p99"]
    fast = base is not None and roll is not None and roll <= TARGET_RATIO * base
    return figures["failed"] == 0 and fast and figures["deploy_rc"] == 0 and figures["converged"]


def summarize(raw):
    """A row per size, alternative and round, then a median row for each (failed: a total)."""
    rows = []
    for size, runs in raw.items():
        for r in runs:
            rows.append({"size": size, "round": str(r["round"]), **{k: r[k] for k in COLUMNS}})
            rows[-1]["meets"] = "yes" if r["meets"] else "no"
        median = {"size": size, "round": "median"}
        for key in COLUMNS:
            values = [r[key] for r in runs]
            if key in ("failed", "requests"):
                median[key] = sum(values) if key != "requests" else statistics.median(values)
            elif isinstance(values[0], dict):
                median[key] = {
                    q: statistics.median(v[q] for v in values if v[q] is not None)
                    if any(v[q] is not None for v in values)
                    else None
                    for q in values[0]
                }
            else:
                present = [v for v in values if v is not None]
                median[key] = statistics.median(present) if present else None
        median["meets"] = f"{sum(r['meets'] for r in runs)}/{len(runs)}"
        rows.append(median)
    return rows


def table(rows, markdown=False):
    """The rows as an aligned text table, or as a Markdown table."""
    head = ["fleet, load balancer", "round", "requests", "failed", "deploy s", "roll s", "new on all s"]
    head += ["base p50", "base p99", "base max", "roll p50", "roll p99", "roll max", "p99 ratio", "meets"]

    def show(value, form="{:.1f}"):
        return "-" if value is None else form.format(value)

    body = []
    for r in rows:
        row = [r["size"], r["round"], f"{r['requests']:.0f}", str(r["failed"])]
        row += [show(r["deploy_s"]), show(r["roll_s"]), show(r["new_on_all_s"])]
        row += [show(r[w][q]) for w in ("base", "roll") for q in ("p50", "p99", "max")]
        body.append([*row, show(r["p99_ratio"], "{:.2f}"), r["meets"]])
    return render(head, body, markdown)


def plot(raw, facts, path):
    """Per size, the round with the median roll p99: latency over time, and the release per host."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig = plt.figure(figsize=(7 * len(raw), 8.5))
    grid = fig.add_gridspec(2, len(raw), height_ratios=[3, 1.4])
    first = None
    for col, (size, runs) in enumerate(raw.items()):
        r = sorted(runs, key=lambda r: r["roll"]["p99"] or 0)[len(runs) // 2]
        ax = fig.add_subplot(grid[0, col], sharey=first)
        first = first or ax
        hosts_ax = fig.add_subplot(grid[1, col], sharex=ax)
        records = r["_records"]
        ok = [(s, lat) for s, lat, e in records if not e]
        bad = [(s, lat) for s, lat, e in records if e]
        ax.axvspan(-BASELINE, 0, color="tab:blue", alpha=0.07, label="baseline window")
        ax.axvspan(0, r["deploy_s"], color="tab:olive", alpha=0.08, label="make deploy")
        ax.axvspan(r["roll_start_s"], r["roll_end_s"], color="tab:olive", alpha=0.18, label="roll")
        if ok:
            ax.scatter(*zip(*ok, strict=True), s=2, color="tab:blue", alpha=0.4, lw=0, label="request")
        if bad:
            ax.scatter(*zip(*bad, strict=True), s=25, marker="x", color="red", label="failed")
        if r["base"]["p99"]:
            p99 = r["base"]["p99"] / 1000
            ax.axhline(p99, color="tab:gray", ls=":", lw=1, label="baseline p99")
            ax.axhline(TARGET_RATIO * p99, color="tab:red", ls="--", lw=0.8, label="target: 2 x baseline p99")
        ax.set_yscale("log")
        ax.set_ylabel("latency (s)")
        ax.grid(alpha=0.3, which="both")
        ax.tick_params(labelbottom=False)
        ax.set_title(
            f"{size}, round {r['round']}: deploy {r['deploy_s']:.0f} s, roll {r['roll_s']:.0f} s; "
            f"{r['failed']} failed of {r['requests']}\n"
            f"p99 {r['base']['p99']} ms before, {r['roll']['p99']} ms during the roll "
            f"(x{r['p99_ratio']})",
            fontsize=9,
        )
        names = list(r["hosts"])
        for i, name in enumerate(names):
            h = r["hosts"][name]
            for start, end, value in h["releases"]:
                color = {r["revision"]: "tab:green", r["previous"]: "silver"}.get(value, "tab:red")
                hosts_ax.broken_barh([(start, end - start)], (i - 0.35, 0.7), color=color)
            spans = [(a, b - a) for a, b in h["out_of_rotation"]]
            hosts_ax.broken_barh(spans, (i - 0.35, 0.7), facecolor="none", edgecolor="black", hatch="///")
        hosts_ax.set_yticks(range(len(names)), names)
        hosts_ax.set_ylim(len(names) - 0.5, -0.5)
        hosts_ax.axvline(0, color="black", lw=0.8)
        hosts_ax.axvline(r["deploy_s"], color="black", lw=0.8)
        hosts_ax.set_xlabel("seconds since `make deploy` started")
        hosts_ax.legend(
            handles=[
                Patch(color="silver", label=f"previous release {r['previous']}"),
                Patch(color="tab:green", label=f"new release {r['revision']}"),
                Patch(color="tab:red", label="/health unanswered"),
                Patch(facecolor="none", edgecolor="black", hatch="///", label="out of rotation (lb1)"),
            ],
            fontsize=7,
            loc="upper left",
            ncol=2,
        )
        ax.legend(fontsize=7, loc="upper left", ncol=2, markerscale=2)
    fig.tight_layout()
    provenance.mark_figure(fig, facts)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_results(facts, rows, raw, runs):
    """Write bench/results/fleet.json (facts, summary, per-round figures and timelines), .md, .png."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(raw, facts, RESULTS / "fleet.png")
    clean = {size: [{k: v for k, v in r.items() if k != "_records"} for r in rs] for size, rs in raw.items()}
    report = {
        **facts,
        "loadavg_end": os.getloadavg(),
        "runs": runs,
        "summary": rows,
        "timeline_columns": ["t_since_deploy_s", "requests", "failed", "median_s", "max_s"],
        "raw": clean,
    }
    (RESULTS / "fleet.json").write_text(json.dumps(report, indent=1) + "\n")
    all_runs = [r for rs in raw.values() for r in rs]
    failed = sum(r["failed"] for r in all_runs)
    fast = sum(1 for r in all_runs if r["p99_ratio"] is not None and r["p99_ratio"] <= TARGET_RATIO)
    met = (
        f"0 failed requests: {'met' if failed == 0 else f'NOT met ({failed} failed)'}; "
        f"roll p99 <= {TARGET_RATIO:g} x baseline p99: met in {fast} of {len(all_runs)} rounds; "
        f"all targets (and deploy exit 0, every host on the new release) in "
        f"{sum(r['meets'] for r in all_runs)} of {len(all_runs)} rounds."
    )
    errors = collections.Counter()
    for r in all_runs:
        errors.update(r["failures"])
    listed = "".join(f"- {count} x `{error}`\n" for error, count in errors.most_common(10))
    loads = ", ".join(f"{r['loadavg'][0]:.1f}" for r in all_runs)
    text = (
        f"# Rolling deploys through the load balancer\n\n{facts['date']}, {provenance.describe(facts)}, "
        f"{facts['nproc']} cores, Python {facts['python']}; lab hosts Debian bookworm, one fleet per "
        f"size booted side by side; {runs} rounds per size (order rotated), both load balancers on lb1 "
        f"in every round ({', '.join(f'{n} on {a}' for n, a in facts['alternatives'].items())}). Load: "
        f"{facts['load']}. Baseline: the {BASELINE:g} s before `make deploy`. Latencies in ms. Machine "
        f"load average (1 min) at each round's start: {loads}; at the start {facts['loadavg_start'][0]:.1f}, "
        f"at the end {report['loadavg_end'][0]:.1f}. See bench/fleet.py for how to read the columns.\n\n"
        f"{table(rows, markdown=True)}\nTargets: {met}\n\n"
        + (f"Failed requests:\n\n{listed}\n" if listed else "")
        + "![latency and releases over time](fleet.png)\n"
    )
    (RESULTS / "fleet.md").write_text(provenance.with_banner(text, facts))
    print(f"\nTargets: {met}")
    print(f"wrote {RESULTS / 'fleet.json'}, {RESULTS / 'fleet.md'} and {RESULTS / 'fleet.png'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="rounds per fleet size (default 2)")
    parser.add_argument(
        "--rate", type=float, default=RATE, help=f"requests/s in all, 0: back to back ({RATE:g})"
    )
    parser.add_argument(
        "--clients", type=int, default=CLIENTS, help=f"keep-alive clients (default {CLIENTS})"
    )
    provenance.add_option(parser)
    args = parser.parse_args()
    commit = provenance.check(args.allow_dirty)
    if problems := lab_problems():
        sys.exit(f"error: {problems}: bench/fleet.py boots lab hosts (scripts/lab), run it as root")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        sys.exit("matplotlib is missing: .tools/bin/python -m pip install -r bench/requirements.txt")
    sys.stdout.reconfigure(line_buffering=True)  # progress shows as it happens, also in a log file
    # A TERM ends the run through the finally clauses that remove the labs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("error: terminated"))
    build_wheelhouse(sys.executable)
    # As the test suite's session fixture: the bakes find uWSGI in the wheelhouse, nothing leaks in.
    isolate_environment()
    pace = f"paced to {args.rate:g} requests/s in all" if args.rate else "back to back"
    facts = {
        **commit,
        **{k: v for k, v in machine_facts().items() if k != "warm_up"},
        "load": f"{args.clients} strict keep-alive clients (testkit/load.py) per alternative ({pace}),"
        " GET /, POST /notes, GET /notes",
        "sizes": list(SIZES),
        "alternatives": {name: f"lb1:{port}" for name, port in ALTERNATIVES.items()},
        "target": f"0 failed, roll p99 <= {TARGET_RATIO:g} x baseline p99",
    }
    facts.update(warmup_s=WARMUP, baseline_s=BASELINE, after_s=AFTER, poll_s=POLL, rate=args.rate)
    base = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    try:
        raw = measure(args.runs, args.clients, args.rate, base)
    except (AssertionError, RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        print(f"error: {str(error)[-3000:]}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(base, ignore_errors=True)
    rows = summarize(raw)
    provenance.recheck(facts)
    print("\n" + provenance.with_banner(table(rows), facts))
    write_results(facts, rows, raw, args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
