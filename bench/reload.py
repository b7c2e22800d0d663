"""What does a reload under load cost: failed requests, latency, and time until the new revision serves?

Each run bakes the default service afresh and serves it through nginx with 4 workers while 50
keep-alive clients send GET / back to back. RELOAD_AT s into the load a new REVISION file is written
and the reload fired. Alternatives, interleaved in every round (order rotated per round):
  uwsgi-hup     SIGHUP to the uWSGI master (`make serve`): uWSGI's default, full reload. It also
                stops and restarts the template's Celery worker and re-fires its cron jobs.
  chain         touch var/run/reload (`make serve`): this template's chain reload, one web worker at
                a time (`make reload` also sends Celery SIGTERM; that part is not measured here).
  gunicorn-hup  the same app under gunicorn 27.0.1: 4 sync workers, no preload, a unix socket behind
                nginx proxy_pass; SIGHUP to its master. No Celery or cron runs beside it.
uWSGI serves the baked deploy/uwsgi.ini as shipped (lazy-apps, threads = 2, reload-on-rss = 512,
no max-requests, touch-chain-reload; the .md names the settings the baked ini had), gunicorn its
defaults (no max_requests either). Before the load starts, the new release's static manifest is
built, as bin/deploy does before its switch; at the reload only the REVISION file is written, so the
baseline window measures serving alone.
Load: one process, 50 asyncio connections timing every request (wrk's Lua hooks cannot time single
requests; threads with http.client cost the 2 cores more). A side thread polls /health at 20 Hz,
outside the load figures, for the `release` the answering worker reports.

Reading the result: `failed` sums non-2xx answers and socket errors over all runs; the other
columns are medians over runs. `base max` is the worst latency before the reload; `reload p50/p99/
max` cover requests in flight from the reload until AFTER s after the last /health that showed the old
revision (or the end of the load). `first new` is when /health first showed the new revision,
`last old` when it last showed the old one (then every worker is new; near the load's end: unfinished).
A run meets the target with 0 failed, reload max <= base max + 0.5 s and the new revision served;
`meets` counts those runs. `recycles` counts uWSGI workers replaced during the load other than by
the reload (reload-on-rss; grey ticks in the PNG). The machine is shared: loadavg per run is in the
JSON. Every result names the commit it measured (bench/provenance.py): a tree with uncommitted
changes is refused unless --allow-dirty, and then the results are marked DIRTY.

    .tools/bin/python bench/reload.py [--runs N] [--duration S] [--allow-dirty]
    # writes bench/results/reload.{json,md,png}
"""

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import grp
import json
import multiprocessing
import os
import pwd
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from math import nan
from pathlib import Path

import provenance
from bake import REPO, RESULTS, TOOLS, bake, free_port, machine_facts, render, run, stop

sys.path.append(str(REPO))  # the checkout's root: benchmarks import testkit, never tests/
from testkit.http import request

ALTERNATIVES = ["uwsgi-hup", "chain", "gunicorn-hup"]
GUNICORN = "gunicorn==27.0.1"
CONNECTIONS = 50  # keep-alive clients, each sending GET / back to back
RELOAD_AT, SETTLE, WARMUP, AFTER = 5.0, 3.0, 1.0, 5.0  # s: reload into the load, idle after start, ...
POLL, TIMEOUT, TARGET_EXTRA = 0.05, 30.0, 0.5  # s: /health poll interval, request timeout, target slack
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
# The baked ini's settings that shape a reload, named in the results (None: not set).
INI_KEYS = ("processes", "threads", "lazy-apps", "reload-on-rss", "max-requests", "touch-chain-reload")
# As bin/serve writes it, with proxy_pass to gunicorn instead of the site's uwsgi_pass.
NGINX_CONF = """{user}
worker_processes 1;
pid {var}/run/nginx.pid;
error_log {var}/log/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    access_log {var}/log/nginx-access.log;
    client_body_temp_path {var}/nginx/client_body;
    proxy_temp_path {var}/nginx/proxy;
    fastcgi_temp_path {var}/nginx/fastcgi;
    uwsgi_temp_path {var}/nginx/uwsgi;
    scgi_temp_path {var}/nginx/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://unix:{var}/run/gunicorn.sock:;
            proxy_set_header Host $host;
            proxy_read_timeout 75s;
        }}
    }}
}}
"""


async def read_response(reader):
    """Read one HTTP/1.1 response; return (status, whether the server closes the connection)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower().split("\r\n")
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in head[1:]) if v}
    if "content-length" in fields:
        await reader.readexactly(int(fields["content-length"]))
    elif fields.get("transfer-encoding") == "chunked":
        await reader.readuntil(b"0\r\n\r\n")
    return int(head[0].split()[1]), fields.get("connection") == "close"


async def client(port, t_end, records):
    """One keep-alive connection: GET / back to back until t_end; records (start, latency, status|error)."""
    reader = writer = None
    while (start := time.monotonic()) < t_end:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(REQUEST)
            outcome, close = await asyncio.wait_for(read_response(reader), TIMEOUT)
        except (OSError, EOFError, ValueError, asyncio.LimitOverrunError) as error:
            outcome, close = type(error).__name__, True
        records.append((start, time.monotonic() - start, outcome))
        if close and writer is not None:
            writer.close()
            writer = None
        if isinstance(outcome, str):
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


def load_process(port, t_start, t_end):
    """Run the CONNECTIONS clients from t_start to t_end (in a process of its own); return the records."""
    records = []
    time.sleep(max(0.0, t_start - time.monotonic()))

    async def clients():
        await asyncio.gather(*(client(port, t_end, records) for _ in range(CONNECTIONS)))

    asyncio.run(clients())
    return records


def health(port, timeout):
    """GET /health through nginx: (status, release), also for a 503 (a dependency down)."""
    status, _, body = request(f"http://127.0.0.1:{port}/health", timeout=timeout)
    with contextlib.suppress(ValueError):
        return status, json.loads(body).get("release")
    return status, None


def poll_release(port, t_end, polls):
    """Poll /health every POLL s until t_end; records (time answered, release or None)."""
    while (now := time.monotonic()) < t_end:
        try:
            release = health(port, TIMEOUT)[1]
        except OSError:
            release = None
        polls.append((time.monotonic(), release))
        time.sleep(max(0.0, now + POLL - time.monotonic()))


def wait_healthy(port, seconds=60):
    """Wait until /health through nginx answers 200."""
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(OSError):
            if health(port, 5)[0] == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"no 200 from /health on port {port} within {seconds} s")
        time.sleep(0.2)


def start_gunicorn(project, port):
    """Install gunicorn, build static, start gunicorn (own session) and nginx; return gunicorn's Popen."""
    venv, var = project / ".venv/bin", project / "var"
    run(
        [TOOLS / "uv", "pip", "install", "-q", "--compile-bytecode", "--python", venv / "python", GUNICORN],
        300,
    )
    env = {**os.environ, "STATE_DIR": str(var)}
    run([venv / "python", "-m", "my_service.assets"], 60, cwd=project, env=env)
    for sub in ("run", "log", "nginx"):
        (var / sub).mkdir(parents=True, exist_ok=True)
    cmd = [venv / "gunicorn", "--workers", "4", "--bind", f"unix:{var}/run/gunicorn.sock"]
    # gunicorn >= 25.1 opens a control socket in ~/.gunicorn unless told not to.
    cmd += ["--no-control-socket", "my_service.wsgi:application"]
    with open(var / "log/gunicorn.log", "ab") as log:
        master = subprocess.Popen(cmd, cwd=project, env=env, stdout=log, stderr=log, start_new_session=True)
    # As bin/serve: nginx as root runs workers as nobody; run them as us.
    user = (
        f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};"
        if os.getuid() == 0
        else ""
    )
    (var / "nginx/bench.conf").write_text(NGINX_CONF.format(user=user, var=var, port=port))
    run(["nginx", "-p", f"{var}/nginx/", "-c", "bench.conf", "-e", "stderr"], 30)
    return master


def stop_gunicorn(project, master):
    """Stop nginx (QUIT to its pid) and gunicorn's session (TERM, then KILL what is left)."""
    pidfile = project / "var/run/nginx.pid"
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGQUIT)
    master.terminate()
    try:
        master.wait(timeout=40)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(master.pid, signal.SIGKILL)


def ini_settings(ini):
    """INI_KEYS as the baked uwsgi.ini sets them (None where it does not)."""
    found = dict(re.findall(r"(?m)^([a-z-]+) = (.*)$", ini.read_text()))
    return {key: found.get(key) for key in INI_KEYS}


def describe_ini(settings):
    """`processes = 4, ..., no max-requests` for the .md."""
    return ", ".join(f"no {k}" if v is None else f"{k} = {v}" for k, v in settings.items())


def prepare_release(project, tag):
    """Build release `tag`'s static manifest, as bin/deploy does before its switch (the app refuses to
    start without it, and need-app would then stop the whole server). Before the load: not timed."""
    env = {**os.environ, "STATE_DIR": str(project / "var"), "RELEASE": tag}
    run([project / ".venv/bin/python", "-m", "my_service.assets"], 60, cwd=project, env=env)


def fire(alternative, project, master):
    """Fire the reload of `alternative`."""
    if alternative == "chain":
        (project / "var/run/reload").touch()
    elif alternative == "uwsgi-hup":
        os.kill(int((project / "var/run/uwsgi.pid").read_text()), signal.SIGHUP)
    else:
        os.kill(master.pid, signal.SIGHUP)


def drive(alternative, project, port, duration, tag, master):
    """Load for `duration` s, reload RELOAD_AT s in; return records, polls and the key times."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        t0 = time.monotonic() + 1.5
        future = pool.submit(load_process, port, t0, t0 + duration)
        polls = []
        poller = threading.Thread(target=poll_release, args=(port, t0 + duration, polls))
        poller.start()
        time.sleep(max(0.0, t0 + RELOAD_AT - time.monotonic()))
        # The release was prepared before the load (prepare_release): this write makes it current.
        (project / "REVISION").write_text(tag + "\n")
        t_reload = time.monotonic()
        fire(alternative, project, master)
        records = future.result(timeout=duration + 60)
        poller.join()
    return records, polls, {"t0": t0, "reload": t_reload, "end": t0 + duration}


def failed(outcome):
    """A socket error (the exception's name) or a status other than 2xx."""
    return isinstance(outcome, str) or not 200 <= outcome < 300


def analyse(records, polls, times, new):
    """Per-run figures (seconds), plus a 100 ms timeline (relative to the reload) for plots and JSON."""
    t0, t_reload, t_end = times["t0"], times["reload"], times["end"]
    after = [(t, r) for t, r in polls if t > t_reload]
    first_new = next((t for t, r in after if r == new), None)
    last_old = max((t for t, r in after if r not in (new, None)), default=t_reload)
    window_end = min(max(first_new or t_end, last_old) + AFTER, t_end)
    base = [lat for s, lat, _ in records if s >= t0 + WARMUP and s + lat <= t_reload]
    window = sorted(lat for s, lat, _ in records if s + lat > t_reload and s < window_end)
    buckets = collections.defaultdict(list)
    for s, lat, outcome in records:
        buckets[round(s - t_reload, 1)].append((lat, outcome))
    timeline = [
        [
            t,
            len(b),
            sum(failed(o) for _, o in b),
            round(statistics.median(x for x, _ in b), 4),
            round(max(x for x, _ in b), 4),
        ]
        for t, b in sorted(buckets.items())
    ]
    figures = {
        "requests": len(records),
        "non_2xx": sum(1 for *_, o in records if isinstance(o, int) and failed(o)),
        "socket_errors": sum(1 for *_, o in records if isinstance(o, str)),
        "failures": dict(collections.Counter(str(o) for *_, o in records if failed(o))),
        "base_max": max(base),
        "reload_p50": statistics.median(window),
        "reload_p99": window[int(0.99 * (len(window) - 1))],
        "reload_max": window[-1],
        "first_new": None if first_new is None else first_new - t_reload,
        "last_old": last_old - t_reload,
        "window_s": window_end - t_reload,
    }
    clean = figures["non_2xx"] + figures["socket_errors"] == 0 and first_new is not None
    figures["meets"] = clean and figures["reload_max"] <= figures["base_max"] + TARGET_EXTRA
    return figures, timeline


def log_facts(project, sizes, t_reload):
    """From the logs' sizes at the load's start to now: uWSGI workers recycled other than by a reload,
    i.e. by reload-on-rss (seconds since the reload, to 1 s), and nginx's [error] lines (count, first)."""
    texts = {}
    for name, start in sizes.items():
        with open(project / "var/log" / name, "rb") as log:
            texts[name] = log.read()[start:].decode(errors="replace").splitlines()
    uwsgi, wall_to_mono = texts.get("uwsgi.log", []), time.time() - time.monotonic()
    # A worker that a reload stops also says "Seeya"; a recycle (reload-on-rss) stops it unannounced.
    reloaded = set(re.findall(r"Gracefully killing worker \d+ \(pid: (\d+)\)", "\n".join(uwsgi)))
    recycles = [
        round(time.mktime(time.strptime(line[:24], "%a %b %d %H:%M:%S %Y")) - wall_to_mono - t_reload, 1)
        for line, m in ((x, re.search(r"process (\d+) is done. Seeya!$", x)) for x in uwsgi)
        if m and m[1] not in reloaded
    ]
    errors = [line for line in texts.get("nginx-error.log", []) if "[error]" in line]
    return {
        "recycles": len(recycles),
        "recycle_at": recycles,
        "nginx_errors": len(errors),
        "nginx_error": errors[:1],
    }


def log_sizes(project):
    """Current sizes of the logs log_facts reads."""
    logs = [project / "var/log" / name for name in ("uwsgi.log", "nginx-error.log")]
    return {log.name: log.stat().st_size for log in logs if log.exists()}


def one_run(alternative, duration, tag):
    """Bake, serve, prepare the new release, load + reload, stop; return the run's figures and timeline."""
    out_dir, port = Path(tempfile.mkdtemp(prefix=f"bench-reload-{alternative}-")), free_port()
    project, master, loadavg = out_dir / "my_service", None, os.getloadavg()[0]
    ini = {}
    try:
        bake(out_dir, venv=True, http_port=port)
        if alternative == "gunicorn-hup":
            master = start_gunicorn(project, port)
        else:
            ini = {"uwsgi_ini": ini_settings(project / "deploy/uwsgi.ini")}
            run(["make", "serve"], 180, cwd=project)
        wait_healthy(port)
        prepare_release(project, tag)
        time.sleep(SETTLE)
        sizes = log_sizes(project)
        records, polls, times = drive(alternative, project, port, duration, tag, master)
        facts = log_facts(project, sizes, times["reload"])
        figures, timeline = analyse(records, polls, times, tag)
        return {**figures, **facts, **ini, "loadavg": loadavg, "timeline": timeline}
    finally:
        if master is not None:
            stop_gunicorn(project, master)
        if project.exists():
            stop(project)
        shutil.rmtree(out_dir, ignore_errors=True)


def summarize(raw):
    """One row per alternative: failures summed over runs, the rest medians over runs."""
    rows = []
    for alt, runs in raw.items():
        news = [r["first_new"] for r in runs if r["first_new"] is not None]
        keys = ("requests", "base_max", "reload_p50", "reload_p99", "reload_max", "last_old", "recycles")
        row = {
            "alternative": alt,
            "runs": len(runs),
            **{k: statistics.median(r[k] for r in runs) for k in keys},
        }
        row["failed"] = sum(r["non_2xx"] + r["socket_errors"] for r in runs)
        row["first_new"] = statistics.median(news) if news else None
        rows.append({**row, "meets": f"{sum(r['meets'] for r in runs)}/{len(runs)}"})
    return rows


def table(rows, markdown=False):
    """The rows as an aligned text table, or as a Markdown table."""
    head = ["alternative", "runs", "requests", "failed", "base max s", "reload p50 s", "reload p99 s"]
    head += ["reload max s", "first new s", "last old s", "recycles", "meets"]
    body = []
    for r in rows:
        row = [r["alternative"], str(r["runs"]), f"{r['requests']:.0f}", str(r["failed"])]
        row += [f"{r[k]:.3f}" for k in ("base_max", "reload_p50", "reload_p99", "reload_max")]
        row += ["never" if r["first_new"] is None else f"{r['first_new']:.2f}", f"{r['last_old']:.2f}"]
        body.append([*row, f"{r['recycles']:g}", r["meets"]])
    return render(head, body, markdown)


def plot(raw, facts, path):
    """Latency over time in the median run (by reload max) of each alternative; the reload at 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(raw), 1, figsize=(11, 3 * len(raw) + 0.6), sharex=True, sharey=True)
    for ax, (alt, runs) in zip(axes, raw.items(), strict=True):
        r = sorted(runs, key=lambda r: r["reload_max"])[len(runs) // 2]
        # One point per 100 ms of request starts; NaN where none started (all clients waiting): a gap.
        rows = {row[0]: row for row in r["timeline"]}
        first, last = round(min(rows) * 10), round(max(rows) * 10)
        grid = [rows.get(round(i / 10, 1), [i / 10, 0, 0, nan, nan]) for i in range(first, last + 1)]
        t, _, failures, p50, worst = zip(*grid, strict=True)
        ax.axvspan(0, r["window_s"], color="tab:olive", alpha=0.08, label="reload window")
        ax.plot(
            t, worst, ".-", ms=2, lw=0.8, color="tab:red", label="max latency of requests started in 100 ms"
        )
        ax.plot(t, p50, ".-", ms=2, lw=0.8, color="tab:blue", label="median of the same")
        bad = [(x, w) for x, f, w in zip(t, failures, worst, strict=True) if f]
        if bad:
            ax.scatter(*zip(*bad, strict=True), marker="x", color="black", s=18, label="failed requests")
        ax.axvline(0, color="black", lw=1.5, label="reload fired")
        if r["first_new"] is not None:
            ax.axvline(r["first_new"], color="tab:green", ls="--", lw=1.2, label="new revision first seen")
        ax.axvline(r["last_old"], color="tab:gray", ls=":", lw=1.5, label="old revision last seen")
        base = r["base_max"] + TARGET_EXTRA
        ax.axhline(base, color="tab:orange", ls="-.", lw=0.8, label="target: base max + 0.5 s")
        for x in r["recycle_at"]:
            ax.axvline(x, ymin=0.9, color="gray", lw=3, alpha=0.6)
        ax.set_yscale("log")
        ax.set_ylabel("latency (s)")
        new = "never" if r["first_new"] is None else f"after {r['first_new']:.1f} s"
        ax.set_title(
            f"{alt}: reload max {r['reload_max']:.2f} s (base max {r['base_max']:.2f} s), "
            f"{r['non_2xx'] + r['socket_errors']} failed of {r['requests']}, new revision {new}"
            + (f", {r['recycles']} reload-on-rss recycles (grey ticks)" if r["recycles"] else ""),
            fontsize=10,
        )
        ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=4, fontsize=8, frameon=False)
    axes[-1].set_xlabel(f"seconds since the reload (GET / through nginx, {CONNECTIONS} keep-alive clients)")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    provenance.mark_figure(fig, facts)
    fig.savefig(path, dpi=100)


def write_results(facts, rows, raw, runs):
    """Write bench/results/reload.json (facts, summary, per-run figures + timelines), .md and .png."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    columns = ["t_since_reload_s", "requests", "failed", "median_s", "max_s"]
    report = {
        **facts,
        "loadavg_end": os.getloadavg(),
        "runs": runs,
        "summary": rows,
        "timeline_columns": columns,
    }
    (RESULTS / "reload.json").write_text(json.dumps({**report, "raw": raw}, indent=1) + "\n")
    plot(raw, facts, RESULTS / "reload.png")
    text = (
        f"# Reload under load\n\n{facts['date']}, {provenance.describe(facts)}, {facts['nproc']} cores, "
        f"Python {facts['python']}, {facts['nginx']}, {GUNICORN}; {runs} interleaved runs per alternative, "
        f"{facts['duration_s']:g} s of load ({facts['load']}), reload at {RELOAD_AT:g} s, the new "
        f"release's static built before the load. uWSGI as baked: {describe_ini(facts['uwsgi_ini'])}. "
        f"Target: 0 failed and reload max <= base max + {TARGET_EXTRA} s. See bench/reload.py for how to "
        f"read the columns.\n\n{table(rows, markdown=True)}\n![latency over time](reload.png)\n"
    )
    (RESULTS / "reload.md").write_text(provenance.with_banner(text, facts))
    print(f"\nwrote {RESULTS / 'reload.json'}, {RESULTS / 'reload.md'} and {RESULTS / 'reload.png'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per alternative (default 3)")
    parser.add_argument("--duration", type=float, default=20.0, help="load seconds per run (default 20)")
    provenance.add_option(parser)
    args = parser.parse_args()
    commit = provenance.check(args.allow_dirty)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        sys.exit("matplotlib is missing: .tools/bin/python -m pip install -r bench/requirements.txt")
    if shutil.which("nginx") is None:
        sys.exit("nginx not found: apt-get install nginx (or make system-packages)")
    if args.duration < RELOAD_AT + 2:
        sys.exit(f"--duration must be at least {RELOAD_AT + 2:g} s (the reload fires at {RELOAD_AT:g} s)")
    run([REPO / "scripts/wheelhouse"], 600)
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    load = f"1 process, {CONNECTIONS} asyncio keep-alive connections, GET /"
    facts = {
        **commit,
        **{k: v for k, v in machine_facts().items() if k != "warm_up"},  # bake.py's own note
        "nginx": nginx,
        "gunicorn": GUNICORN,
        "load": load,
        "duration_s": args.duration,
    }
    facts.update(reload_at_s=RELOAD_AT, settle_s=SETTLE, warmup_s=WARMUP, after_s=AFTER, poll_s=POLL)
    raw = {alt: [] for alt in ALTERNATIVES}
    try:
        for round_no in range(args.runs):
            shift = round_no % len(ALTERNATIVES)
            for alt in ALTERNATIVES[shift:] + ALTERNATIVES[:shift]:
                result = one_run(alt, args.duration, f"rev-{round_no + 1}-{alt}")
                raw[alt].append(result)
                shown = {
                    k: round(v, 3) if isinstance(v, float) else v
                    for k, v in result.items()
                    if k != "timeline"
                }
                print(f"  round {round_no + 1}/{args.runs}  {alt:<12} {shown}", flush=True)
    except (RuntimeError, subprocess.TimeoutExpired, concurrent.futures.TimeoutError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    rows = summarize(raw)
    facts["uwsgi_ini"] = raw["chain"][0]["uwsgi_ini"]
    provenance.recheck(facts)
    print("\n" + provenance.with_banner(table(rows), facts))
    write_results(facts, rows, raw, args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
