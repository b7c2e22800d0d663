"""Does the service hold up under sustained load with a reload every minute: errors, latency, memory?

One run: the default service is baked with its venv and served through nginx by `make serve`
(4 workers, uWSGI settings as shipped: reload-on-rss 512, no max-requests). CONNECTIONS keep-alive
clients send GET / back to back for MINUTES, and every RELOAD_EVERY s the template's own reload runs
(`bin/reload`, i.e. `make reload`: chain reload of the web workers, SIGTERM to Celery, which uWSGI
starts again). Every SAMPLE s the RSS (VmRSS in /proc) of each process is read: the uWSGI master,
each worker (the master's children named "uWSGI worker"), the Celery worker (var/run/celery.pid),
nginx (master and workers); cron jobs running at that moment are recorded apart, outside the total.
There are no alternatives to interleave: the question is about one configuration over time, and
bench/reload.py already compares reload methods. Load: one process, asyncio connections timing every
request, as in bench/reload.py (wrk's Lua hooks cannot time single requests).

Reading the result: the table has one row per minute of load: requests, errors (non-2xx answers
and socket errors), p50/p99/max latency of the requests started in that minute, and the median of the
minute's RSS samples (total = master + workers + Celery + nginx). The target is 0 errors and flat
RSS, here: the median total RSS of the last reload interval is at most RSS_SLACK (10 %) above that of
the second interval (the first after the warm-up interval, which has no reload before it). Each
interval starts with a reload, so both hold freshly started workers: the comparison shows growth that
survives reloads (the master, nginx, a leak in shared state), not a worker's normal warm-up. In the
PNG: latency per SAMPLE s with the reloads as vertical lines, errors and throughput, RSS per process
kind. The RSS dips after each reload are the chain reload (one worker at a time is gone or still
importing the app); the gaps in the Celery line are Celery between bin/reload's SIGTERM and uWSGI's
respawn. replaced_workers_s in the JSON: per reload, when a sample first saw none of the workers from
before it (None: not before the run's end). The machine is shared (loadavg per sample in the JSON)
and the load generator uses the same 2 cores, so latency is noisy; errors and RSS are the figures
to judge.

Every result names the commit it measured (bench/provenance.py): a tree with uncommitted changes is
refused unless --allow-dirty, and then the results are marked DIRTY.

    .tools/bin/python bench/soak.py [--minutes M] [--connections C] [--reload-every S] [--allow-dirty]
    # smoke run: --minutes 1 --reload-every 20; writes bench/results/soak.{json,md,png}
"""

import argparse
import array
import asyncio
import collections
import contextlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from math import nan
from pathlib import Path

import provenance
from bake import REPO, RESULTS, bake, free_port, machine_facts, render, run, stop
from reload import client, describe_ini, failed, ini_settings, log_facts, log_sizes, wait_healthy

SAMPLE = 5.0  # s between RSS samples, and the width of the latency buckets
RSS_SLACK = 0.10  # last interval's median total RSS may exceed the second interval's by this much
KINDS = ["master", "workers", "celery", "nginx"]  # summed into the total; cron jobs are apart


class Buckets:
    """A list-like sink for reload.client: latencies and failures per SAMPLE s of request start."""

    def __init__(self, t0):
        self.t0 = t0
        self.latencies = collections.defaultdict(lambda: array.array("d"))
        self.failures = collections.defaultdict(collections.Counter)

    def append(self, record):
        start, latency, outcome = record
        index = int((start - self.t0) // SAMPLE)
        self.latencies[index].append(latency)
        if failed(outcome):
            self.failures[index][str(outcome)] += 1


def stats(latencies, failures, t):
    """One row: start s, requests, errors, p50, p99, max (s); NaN latencies where none started."""
    ordered = sorted(latencies)
    n = len(ordered)
    if not n:
        return [t, 0, 0, nan, nan, nan]
    p50, p99 = ordered[int(0.5 * (n - 1))], ordered[int(0.99 * (n - 1))]
    return [t, n, sum(failures.values()), round(p50, 4), round(p99, 4), round(ordered[-1], 4)]


def load_process(port, t0, t_end, connections, conn):
    """Run the clients from t0 to t_end (in a process of its own); send per-bucket and per-minute rows."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops this process and cleans up
    buckets = Buckets(t0)
    time.sleep(max(0.0, t0 - time.monotonic()))

    async def clients():
        await asyncio.gather(*(client(port, t_end, buckets) for _ in range(connections)))

    asyncio.run(clients())
    count = int(-(-(t_end - t0) // SAMPLE))  # buckets that start before t_end
    rows = [
        stats(buckets.latencies.get(i, ()), buckets.failures.get(i, {}), i * SAMPLE) for i in range(count)
    ]
    per_minute, failures = [], collections.Counter()
    for minute in range(int(-(-(t_end - t0) // 60))):
        indices = [i for i in buckets.latencies if minute * 60 <= i * SAMPLE < (minute + 1) * 60]
        lat = [x for i in indices for x in buckets.latencies[i]]
        fails = sum((buckets.failures[i] for i in indices), collections.Counter())
        per_minute.append(stats(lat, fails, minute + 1))
        failures += fails
    conn.send({"buckets": rows, "minutes": per_minute, "failures": dict(failures)})
    conn.close()


def rss_kib(pid):
    """VmRSS of pid in KiB, or None if it is gone (or a zombie, which has no VmRSS line)."""
    with contextlib.suppress(OSError):
        found = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
        return int(found[1]) if found else None
    return None


def children(pid):
    """The pids of pid's children (/proc/<pid>/task/<pid>/children), empty if it is gone."""
    with contextlib.suppress(OSError, ValueError):
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def read_pid(path):
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text())
    return None


def cmdline(pid):
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return ""


def sample(project, t):
    """RSS per process kind (KiB) and per worker pid, found through the pidfiles in var/run."""
    run_dir = project / "var/run"
    master, celery, nginx = (read_pid(run_dir / f"{n}.pid") for n in ("uwsgi", "celery", "nginx"))
    kib = dict.fromkeys([*KINDS, "cron"], 0)
    workers = {}
    if master:
        kib["master"] = rss_kib(master) or 0
        for pid in children(master):
            rss = rss_kib(pid) or 0
            if pid == celery:
                continue
            if "uWSGI worker" in cmdline(pid):
                workers[pid] = rss
            else:
                kib["cron"] += rss
    kib["workers"] = sum(workers.values())
    kib["celery"] = (rss_kib(celery) or 0) if celery else 0
    if nginx:
        kib["nginx"] = sum(rss_kib(pid) or 0 for pid in [nginx, *children(nginx)])
    total = sum(kib[k] for k in KINDS)
    return {
        "t": round(t, 2),
        "total_kib": total,
        "kib": kib,
        "workers": workers,
        "celery_pid": celery,
        "loadavg": os.getloadavg()[0],
    }


def fire_reload(project, t):
    """Run bin/reload (what `make reload` runs); return when, how long it took and what it said."""
    started = time.monotonic()
    result = subprocess.run([project / "bin/reload"], capture_output=True, text=True, timeout=60, cwd=project)
    return {
        "t": round(t, 2),
        "seconds": round(time.monotonic() - started, 3),
        "exit": result.returncode,
        "output": (result.stdout + result.stderr).strip().splitlines(),
    }


def drive(project, port, duration, connections, every):
    """Load for `duration` s, reload every `every` s, sample every SAMPLE s; return what was seen."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    t0 = time.monotonic() + 1.5
    t_end = t0 + duration
    loader = context.Process(target=load_process, args=(port, t0, t_end, connections, send))
    loader.start()
    samples, reloads = [], []
    try:
        next_sample, next_reload = t0, t0 + every
        while (now := time.monotonic()) < t_end:
            if now >= next_reload and next_reload < t_end:
                reloads.append(fire_reload(project, now - t0))
                next_reload += every
            if now >= next_sample:
                samples.append(sample(project, now - t0))
                next_sample += SAMPLE
            if not loader.is_alive():
                raise RuntimeError(f"the load process exited early (exit code {loader.exitcode})")
            pause = min(next_sample, next_reload if next_reload < t_end else t_end, t_end) - time.monotonic()
            time.sleep(max(0.0, pause))
        samples.append(sample(project, time.monotonic() - t0))
        if not receive.poll(120):
            raise RuntimeError("the load process sent no results within 120 s of the load's end")
        load = receive.recv()
        loader.join(30)
        return load, samples, reloads, t0
    finally:
        if loader.is_alive():
            loader.terminate()
            loader.join(10)


def replaced_after(samples, reloads):
    """Per reload: seconds until a sample saw none of the workers that served before it, and whether
    the Celery worker's pid changed (None: not within the run)."""
    out = []
    for r in reloads:
        before = [s for s in samples if s["t"] <= r["t"]]
        after = [s for s in samples if s["t"] > r["t"]]
        if not before:
            out.append({"workers_s": None, "celery_restarted": None})
            continue
        old, old_celery = set(before[-1]["workers"]), before[-1]["celery_pid"]
        done = next((s["t"] for s in after if old.isdisjoint(s["workers"]) and s["workers"]), None)
        restarted = any(s["celery_pid"] not in (old_celery, None) for s in after)
        out.append(
            {"workers_s": None if done is None else round(done - r["t"], 1), "celery_restarted": restarted}
        )
    return out


def median(values):
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else nan


def verdict(load, samples, duration, every):
    """The figures the target is about: errors, and total RSS of the second vs the last interval."""
    errors = sum(row[2] for row in load["minutes"])
    second = [s["total_kib"] for s in samples if every <= s["t"] < 2 * every]
    last = [s["total_kib"] for s in samples if duration - every <= s["t"] <= duration]
    rss_second, rss_last = median(second), median(last)
    growth = rss_last / rss_second - 1
    return {
        "requests": sum(row[1] for row in load["minutes"]),
        "errors": errors,
        "failures": load["failures"],
        "rss_second_interval_mib": round(rss_second / 1024, 1),
        "rss_last_interval_mib": round(rss_last / 1024, 1),
        "rss_growth": round(growth, 4),
        "rss_peak_mib": round(max(s["total_kib"] for s in samples) / 1024, 1),
        "meets_errors": errors == 0,
        "meets_rss": growth <= RSS_SLACK,
    }


def minute_rows(load, samples):
    """Per minute: requests, errors, p50/p99/max latency (s), median total/workers/Celery RSS (MiB)."""
    rows = []
    for minute, n, errors, p50, p99, worst in load["minutes"]:
        inside = [s for s in samples if (minute - 1) * 60 <= s["t"] < minute * 60]
        rss = {
            k: median(s[k] if k == "total_kib" else s["kib"][k] for s in inside) / 1024
            for k in ("total_kib", "workers", "celery")
        }
        rows.append(
            {
                "minute": minute,
                "requests": n,
                "errors": errors,
                "p50": p50,
                "p99": p99,
                "max": worst,
                "total_mib": rss["total_kib"],
                "workers_mib": rss["workers"],
                "celery_mib": rss["celery"],
            }
        )
    return rows


def table(rows, markdown=False):
    """The rows as an aligned text table, or as a Markdown table."""
    head = ["minute", "requests", "errors", "p50 ms", "p99 ms", "max ms", "total RSS MiB", "workers MiB"]
    head += ["Celery MiB"]
    body = [
        [str(r["minute"]), str(r["requests"]), str(r["errors"])]
        + [f"{r[k] * 1000:.0f}" for k in ("p50", "p99", "max")]
        + [f"{r[k]:.0f}" for k in ("total_mib", "workers_mib", "celery_mib")]
        for r in rows
    ]
    return render(head, body, markdown)


def summary_text(v, every):
    """Two sentences: the run's figures against the target."""
    errors = "meets" if v["meets_errors"] else "MISSES"
    rss = "meets" if v["meets_rss"] else "MISSES"
    return (
        f"Errors: {v['errors']} of {v['requests']} requests (target 0: {errors}"
        + (f"; {v['failures']}" if v["failures"] else "")
        + f"). RSS: median total {v['rss_last_interval_mib']:.0f} MiB in the last {every:g} s vs "
        f"{v['rss_second_interval_mib']:.0f} MiB in the second {every:g} s, {v['rss_growth']:+.1%} "
        f"(target <= +{RSS_SLACK:.0%}: {rss}); peak {v['rss_peak_mib']:.0f} MiB."
    )


def plot(load, samples, reloads, facts, path):
    """Three panels over the run: latency (reloads marked), errors and throughput, RSS per kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, err, mem) = plt.subplots(3, 1, figsize=(11, 10), sharex=True)
    t, n, errors, p50, p99, worst = zip(*load["buckets"], strict=True)
    mid = [x + SAMPLE / 2 for x in t]
    lat.plot(mid, worst, ".-", ms=3, lw=0.8, color="tab:red", label="max")
    lat.plot(mid, p99, ".-", ms=3, lw=0.8, color="tab:orange", label="p99")
    lat.plot(mid, p50, ".-", ms=3, lw=0.8, color="tab:blue", label="p50")
    lat.set_yscale("log")
    lat.set_ylabel(f"latency (s) per {SAMPLE:g} s")
    total = sum(n)
    lat.set_title(
        f"GET / through nginx, {facts['connections']} keep-alive clients, bin/reload every "
        f"{facts['reload_every_s']:g} s: {total} requests, {sum(errors)} errors",
        fontsize=10,
    )
    err.bar(mid, errors, width=SAMPLE * 0.8, color="tab:red", label=f"errors per {SAMPLE:g} s")
    err.set_ylabel("errors")
    err.set_title(
        f"1-min loadavg of the shared {facts['nproc']}-core machine: {samples[0]['loadavg']:.1f} at the "
        f"start, {samples[-1]['loadavg']:.1f} at the end (the load generator is part of it)",
        fontsize=9,
    )
    err.set_ylim(0, max(1, *errors) * 1.2)
    rate = err.twinx()
    rate.plot(mid, [x / SAMPLE for x in n], lw=0.8, color="tab:gray", label="requests/s (right)")
    rate.set_ylabel("requests/s")
    rate.set_ylim(0, max(x / SAMPLE for x in n) * 1.15)
    ts = [s["t"] for s in samples]
    series = {
        "total": [s["total_kib"] for s in samples],
        "workers (4, sum)": [s["kib"]["workers"] for s in samples],
        "largest worker": [max(s["workers"].values(), default=0) for s in samples],
        # A gap where no Celery worker ran: bin/reload stopped it and uWSGI had not started it yet.
        "Celery worker": [s["kib"]["celery"] or nan for s in samples],
        "uWSGI master": [s["kib"]["master"] for s in samples],
        "nginx": [s["kib"]["nginx"] for s in samples],
    }
    for (label, values), style in zip(series.items(), ["k-", "-", "--", "-", "-", "-"], strict=True):
        mem.plot(ts, [v / 1024 for v in values], style, lw=1.5 if label == "total" else 1, label=label)
    mem.set_ylabel("RSS (MiB)")
    mem.set_ylim(0, max(series["total"]) / 1024 * 1.35)  # room for the legend
    mem.set_xlabel("seconds since the load started")
    for ax in (lat, err, mem):
        for i, r in enumerate(reloads):
            ax.axvline(r["t"], color="black", lw=0.8, ls=":", label="bin/reload" if i == 0 else None)
        ax.grid(alpha=0.3, which="both")
    for ax, extra in ((lat, None), (err, rate), (mem, None)):
        handles, labels = ax.get_legend_handles_labels()
        if extra is not None:
            more = extra.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        ax.legend(handles, labels, loc="upper left", fontsize=8, ncol=4, framealpha=0.8)
    fig.tight_layout()
    provenance.mark_figure(fig, facts)
    fig.savefig(path, dpi=100)


def write_results(facts, rows, verdict_, load, samples, reloads):
    """Write bench/results/soak.json (facts, verdict, minutes, buckets, samples, reloads), .md, .png."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {
        **facts,
        "loadavg_end": os.getloadavg(),
        "verdict": verdict_,
        "minutes": rows,
        "bucket_columns": ["t_s", "requests", "errors", "p50_s", "p99_s", "max_s"],
        "buckets": load["buckets"],
        "reloads": reloads,
        "samples": samples,
    }
    (RESULTS / "soak.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(load, samples, reloads, facts, RESULTS / "soak.png")
    text = (
        f"# Soak: sustained load with a reload every {facts['reload_every_s']:g} s\n\n"
        f"{facts['date']}, {provenance.describe(facts)}, {facts['nproc']} cores shared with other jobs "
        f"(loadavg {facts['loadavg_start'][0]:.1f} at the start, {report['loadavg_end'][0]:.1f} at the "
        f"end; the load generator runs on the same cores), Python {facts['python']}, {facts['nginx']}; "
        f"{facts['minutes']:g} min of load ({facts['load']}), `bin/reload` every "
        f"{facts['reload_every_s']:g} s, uWSGI as baked: {describe_ini(facts['uwsgi_ini'])}. Target: 0 "
        f"errors, and the last interval's median total RSS at most {RSS_SLACK:.0%} above the second's. "
        "See bench/soak.py for how to read the columns.\n\n"
        f"{table(rows, markdown=True)}\n{summary_text(verdict_, facts['reload_every_s'])} "
        f"{facts['log']['recycles']} reload-on-rss recycles, {facts['log']['nginx_errors']} nginx "
        f"[error] lines, {facts['log']['uwsgi_alerts']} uWSGI alerts (DAMN/HARAKIRI/Traceback). "
        f"Workers all replaced after each reload within (s): {facts['replaced_workers_s']}; Celery "
        f"restarted by every reload: {facts['celery_restarted_every_time']}.\n\n"
        "![latency, errors and RSS over time](soak.png)\n"
    )
    (RESULTS / "soak.md").write_text(provenance.with_banner(text, facts))
    print(f"\nwrote {RESULTS / 'soak.json'}, {RESULTS / 'soak.md'} and {RESULTS / 'soak.png'}")


def uwsgi_alerts(project, start):
    """uWSGI log lines after byte `start` that signal trouble (a worker died, harakiri, a traceback)."""
    log = project / "var/log/uwsgi.log"
    if not log.exists():
        return []
    with open(log, "rb") as f:
        text = f.read()[start:].decode(errors="replace")
    return [line for line in text.splitlines() if re.search(r"DAMN|HARAKIRI|Traceback", line)]


def soak(args, facts):
    """Bake, serve, soak, stop (also on failure or Ctrl-C); return the figures for the report."""
    out_dir, port = Path(tempfile.mkdtemp(prefix="bench-soak-")), free_port()
    project = out_dir / "my_service"
    try:
        print(f"baking and serving on 127.0.0.1:{port} ...", flush=True)
        bake(out_dir, venv=True, http_port=port)
        facts["uwsgi_ini"] = ini_settings(project / "deploy/uwsgi.ini")
        run(["make", "serve"], 180, cwd=project)
        wait_healthy(port)
        time.sleep(3)
        sizes = log_sizes(project)
        print(
            f"load: {args.minutes:g} min at c={args.connections}, bin/reload every {args.reload_every:g} s",
            flush=True,
        )
        load, samples, reloads, t0 = drive(
            project, port, args.minutes * 60, args.connections, args.reload_every
        )
        log = log_facts(project, sizes, t0)
        alerts = uwsgi_alerts(project, sizes.get("uwsgi.log", 0))
        log.update(uwsgi_alerts=len(alerts), uwsgi_alert=alerts[:3])
        return load, samples, reloads, log
    finally:
        if project.exists():
            stop(project)
        shutil.rmtree(out_dir, ignore_errors=True)


def interrupt(signum, frame):
    """Ctrl-C or SIGTERM: unwind through the finally blocks, which stop every process started."""
    raise KeyboardInterrupt


def main():
    # Also when started in the background, where a shell ignores SIGINT, and under `timeout`.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of load (default 10)")
    parser.add_argument("--connections", type=int, default=100, help="keep-alive clients (default 100)")
    parser.add_argument("--reload-every", type=float, default=60.0, help="s between reloads (default 60)")
    provenance.add_option(parser)
    args = parser.parse_args()
    commit = provenance.check(args.allow_dirty)
    if args.connections < 1:
        sys.exit(f"error: --connections={args.connections}: at least 1")
    if args.reload_every < 2 * SAMPLE:
        sys.exit(f"error: --reload-every={args.reload_every:g}: at least {2 * SAMPLE:g} s")
    if args.minutes * 60 < 3 * args.reload_every:
        sys.exit(
            f"error: --minutes={args.minutes:g}: at least 3 reload intervals ({3 * args.reload_every:g} s)"
        )
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        sys.exit("matplotlib is missing: .tools/bin/python -m pip install -r bench/requirements.txt")
    if shutil.which("nginx") is None:
        sys.exit("nginx not found: apt-get install nginx (or make system-packages)")
    run([REPO / "scripts/wheelhouse"], 600)
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    facts = {
        **commit,
        **{k: v for k, v in machine_facts().items() if k != "warm_up"},  # bake.py's own note
        "nginx": nginx,
        "load": f"1 process, {args.connections} asyncio keep-alive connections, GET /",
        "minutes": args.minutes,
        "connections": args.connections,
        "reload_every_s": args.reload_every,
        "sample_s": SAMPLE,
        "rss_slack": RSS_SLACK,
    }
    try:
        load, samples, reloads, log = soak(args, facts)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: every process started was stopped; no results written", file=sys.stderr)
        return 130
    replaced = replaced_after(samples, reloads)
    facts.update(
        log=log,
        replaced_workers_s=[r["workers_s"] for r in replaced],
        celery_restarted_every_time=all(r["celery_restarted"] for r in replaced),
        reload_failures=sum(r["exit"] != 0 for r in reloads),
    )
    rows = minute_rows(load, samples)
    verdict_ = verdict(load, samples, args.minutes * 60, args.reload_every)
    provenance.recheck(facts)
    print("\n" + provenance.with_banner(table(rows), facts))
    print("\n" + summary_text(verdict_, args.reload_every))
    write_results(facts, rows, verdict_, load, samples, reloads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
