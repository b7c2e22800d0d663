"""What does a reload under load cost: failed requests, latency, and time until the new revision serves?

The default service is baked afresh for every run and served through nginx with 4 workers while 50
keep-alive clients send GET / back to back. RELOAD_AT seconds into the load a new REVISION file is
written and the reload fired. Alternatives, interleaved in every round (order rotated per round):
  uwsgi-hup     SIGHUP to the uWSGI master: uWSGI's default (full) reload.
  chain         touch var/run/reload: this template's chain reload (lazy-apps, one worker at a time).
  gunicorn-hup  the same app under gunicorn 27.0.1 (4 sync workers, no preload, unix socket, nginx
                proxy_pass), SIGHUP to its master. No Celery or cron beside it; the uWSGI runs have
                the template's Celery worker and cron, which both uWSGI reloads restart too.
The load generator is Python (2 processes x 25 threads, http.client): wrk's Lua hooks cannot time
single requests. A side thread polls /health at 20 Hz (not counted in the load) for `release`.

Reading the result: `failed` sums non-2xx answers and socket errors over all runs; the other
columns are medians over runs. `base max` is the worst latency before the reload, `reload p50/p99/
max` cover requests in flight from the reload until 5 s after the last poll that saw the old
revision; `first new` is when /health first showed the new revision, `last old` when it last showed
the old one (after it, every worker is new). A run meets the target with 0 failed, reload max <=
base max + 0.5 s and the new revision served; `meets` counts such runs. `recycles` counts uWSGI
workers replaced by max-requests during the load: each such respawn re-imports the app.

    .tools/bin/python bench/reload.py [--runs N] [--duration S]   # bench/results/reload.{json,md,png}
"""

import argparse
import collections
import concurrent.futures
import grp
import http.client
import json
import multiprocessing
import os
import pwd
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bake import REPO, RESULTS, TOOLS, bake, free_port, machine_facts, run, stop

ALTERNATIVES = ["uwsgi-hup", "chain", "gunicorn-hup"]
GUNICORN = "gunicorn==27.0.1"
PROCESSES, THREADS = 2, 25
RELOAD_AT, SETTLE, WARMUP, AFTER, POLL, TIMEOUT = 5.0, 3.0, 1.0, 5.0, 0.05, 10.0
TARGET_EXTRA = 0.5
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
        server_tokens off;
        location / {{
            proxy_pass http://unix:{var}/run/gunicorn.sock:;
            proxy_set_header Host $host;
            proxy_read_timeout 75s;
        }}
    }}
}}
"""


def load_thread(port, t_start, t_end, records):
    """One keep-alive client: GET / back to back until t_end; records (start, latency, status|error)."""
    conn = None
    time.sleep(max(0.0, t_start - time.monotonic()))
    while (start := time.monotonic()) < t_end:
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
            conn.request("GET", "/")
            response = conn.getresponse()
            response.read()
            outcome, close = response.status, response.will_close
        except (OSError, http.client.HTTPException) as error:
            outcome, close = type(error).__name__, True
        records.append((start, time.monotonic() - start, outcome))
        if close and conn is not None:
            conn, _ = None, conn.close()
        if isinstance(outcome, str):
            time.sleep(0.01)
    if conn is not None:
        conn.close()


def load_process(port, t_start, t_end, threads):
    """Run `threads` clients in this process (one of PROCESSES); return all their records."""
    records = []
    workers = [threading.Thread(target=load_thread, args=(port, t_start, t_end, records)) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return records


def poll_release(port, t_end, polls):
    """Poll /health at 1/POLL Hz until t_end; records (time answered, release or None)."""
    while (now := time.monotonic()) < t_end:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=TIMEOUT) as response:
                release = json.load(response).get("release")
        except (OSError, ValueError):
            release = None
        polls.append((time.monotonic(), release))
        time.sleep(max(0.0, now + POLL - time.monotonic()))


def wait_healthy(port, seconds=60):
    """Wait until /health through nginx answers 200."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError as error:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no 200 from /health on port {port} within {seconds} s: {error}") from error
        time.sleep(0.2)


def start_gunicorn(project, port):
    """Install gunicorn, build static, start gunicorn (own session) and nginx; return gunicorn's Popen."""
    venv, var = project / ".venv/bin", project / "var"
    run([TOOLS / "uv", "pip", "install", "--quiet", "--python", venv / "python", GUNICORN], 300)
    env = {**os.environ, "STATE_DIR": str(var)}
    run([venv / "python", "-m", "my_service.assets"], 60, cwd=project, env=env)
    for sub in ("run", "log", "nginx"):
        (var / sub).mkdir(parents=True, exist_ok=True)
    cmd = [venv / "gunicorn", "--workers", "4", "--bind", f"unix:{var}/run/gunicorn.sock", "--no-control-socket"]
    log = open(var / "log/gunicorn.log", "ab")  # noqa: SIM115 (the child keeps writing to it)
    master = subprocess.Popen([*cmd, "my_service.wsgi:application"], cwd=project, env=env, stdout=log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    # As bin/serve: nginx as root runs workers as nobody, who cannot reach the socket: run them as us.
    me = f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};"
    user = me if os.getuid() == 0 else ""
    (var / "nginx/bench.conf").write_text(NGINX_CONF.format(user=user, var=var, port=port))
    run(["nginx", "-p", f"{var}/nginx/", "-c", "bench.conf", "-e", "stderr"], 30)
    return master


def stop_gunicorn(project, master):
    """Stop nginx (QUIT to its pid) and gunicorn's session (TERM, then KILL what is left)."""
    pidfile = project / "var/run/nginx.pid"
    if pidfile.exists():
        os.kill(int(pidfile.read_text()), signal.SIGQUIT)
    master.terminate()
    try:
        master.wait(timeout=40)
    finally:
        try:
            os.killpg(master.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def fire(alternative, project, master):
    """Fire the reload of `alternative`."""
    if alternative == "chain":
        (project / "var/run/reload").touch()
    elif alternative == "uwsgi-hup":
        os.kill(int((project / "var/run/uwsgi.pid").read_text()), signal.SIGHUP)
    else:
        os.kill(master.pid, signal.SIGHUP)


def drive(alternative, project, port, duration, tag, master):
    """Load for `duration` s, reload at RELOAD_AT; return records, polls and the key times."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(PROCESSES, mp_context=context) as pool:
        t0 = time.monotonic() + 1.5
        futures = [pool.submit(load_process, port, t0, t0 + duration, THREADS) for _ in range(PROCESSES)]
        polls = []
        poller = threading.Thread(target=poll_release, args=(port, t0 + duration, polls))
        poller.start()
        time.sleep(max(0.0, t0 + RELOAD_AT - time.monotonic()))
        (project / "REVISION").write_text(tag + "\n")
        t_reload = time.monotonic()
        fire(alternative, project, master)
        records = [r for future in futures for r in future.result(timeout=duration + 60)]
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
    failures = collections.Counter(str(o) for *_, o in records if failed(o))
    buckets = collections.defaultdict(list)
    for s, lat, outcome in records:
        buckets[round(s - t_reload, 1)].append((lat, outcome))
    timeline = [[t, len(b), sum(failed(o) for _, o in b), round(statistics.median(x for x, _ in b), 4),
                 round(max(x for x, _ in b), 4)] for t, b in sorted(buckets.items())]
    figures = {
        "requests": len(records),
        "non_2xx": sum(1 for *_, o in records if isinstance(o, int) and not 200 <= o < 300),
        "socket_errors": sum(1 for *_, o in records if isinstance(o, str)),
        "failures": dict(failures),
        "base_max": max(base),
        "reload_p50": statistics.median(window),
        "reload_p99": window[int(0.99 * (len(window) - 1))],
        "reload_max": window[-1],
        "first_new": None if first_new is None else first_new - t_reload,
        "last_old": last_old - t_reload,
        "window_s": window_end - t_reload,
    }
    figures["meets"] = (figures["non_2xx"] + figures["socket_errors"] == 0 and first_new is not None
                        and figures["reload_max"] <= figures["base_max"] + TARGET_EXTRA)
    return figures, timeline


def log_facts(project, size_at_end):
    """uWSGI max-requests recycles during the load, and nginx error lines (count, first one)."""
    uwsgi_log, nginx_log = project / "var/log/uwsgi.log", project / "var/log/nginx-error.log"
    head = uwsgi_log.read_bytes()[:size_at_end].decode(errors="replace") if uwsgi_log.exists() else ""
    errors = [line for line in nginx_log.read_text().splitlines() if "[error]" in line] if nginx_log.exists() else []
    return {"recycles": head.count("is done. Seeya!"), "nginx_errors": len(errors), "nginx_error_first": errors[:1]}


def one_run(alternative, duration, tag):
    """Bake, serve, load + reload, stop; return the run's figures and timeline."""
    out_dir, port = Path(tempfile.mkdtemp(prefix=f"bench-reload-{alternative}-")), free_port()
    project, master = out_dir / "my_service", None
    try:
        bake(out_dir, venv=True, http_port=port)
        if alternative == "gunicorn-hup":
            master = start_gunicorn(project, port)
        else:
            run(["make", "serve"], 180, cwd=project)
        wait_healthy(port)
        time.sleep(SETTLE)
        records, polls, times = drive(alternative, project, port, duration, tag, master)
        log = project / "var/log/uwsgi.log"
        facts = log_facts(project, log.stat().st_size if log.exists() else 0)
        figures, timeline = analyse(records, polls, times, tag)
        return {**figures, **facts, "timeline": timeline}
    finally:
        if master is not None:
            stop_gunicorn(project, master)
        if project.exists():
            stop(project)
        shutil.rmtree(out_dir, ignore_errors=True)


def summarize(raw):
    """One row per alternative: failures summed, the rest medians over runs."""
    rows = []
    for alt, runs in raw.items():
        med = lambda key: statistics.median(r[key] for r in runs if r[key] is not None)  # noqa: E731
        news = [r["first_new"] for r in runs if r["first_new"] is not None]
        rows.append({
            "alternative": alt, "runs": len(runs), "requests": med("requests"),
            "failed": sum(r["non_2xx"] + r["socket_errors"] for r in runs),
            **{k: med(k) for k in ("base_max", "reload_p50", "reload_p99", "reload_max", "last_old", "recycles")},
            "first_new": statistics.median(news) if news else None,
            "meets": f"{sum(r['meets'] for r in runs)}/{len(runs)}",
        })
    return rows


def table(rows, markdown=False):
    """The rows as an aligned text table, or as a Markdown table."""
    head = ["alternative", "runs", "requests", "failed", "base max s", "reload p50 s", "reload p99 s",
            "reload max s", "first new s", "last old s", "recycles", "meets"]
    body = [[r["alternative"], str(r["runs"]), f"{r['requests']:.0f}", str(r["failed"])]
            + [f"{r[k]:.3f}" for k in ("base_max", "reload_p50", "reload_p99", "reload_max")]
            + ["never" if r["first_new"] is None else f"{r['first_new']:.2f}", f"{r['last_old']:.2f}",
               f"{r['recycles']:g}", r["meets"]] for r in rows]
    if markdown:
        lines = [head, ["---"] * len(head), *body]
        return "\n".join("| " + " | ".join(cells) + " |" for cells in lines) + "\n"
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in [head, *body])


def plot(raw, path):
    """Latency over time for the median run (by reload max) of each alternative, reload at 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(raw), 1, figsize=(11, 3 * len(raw)), sharex=True, sharey=True)
    for ax, (alt, runs) in zip(axes, raw.items(), strict=True):
        r = sorted(runs, key=lambda r: r["reload_max"])[len(runs) // 2]
        t, _, failed, p50, worst = zip(*r["timeline"], strict=True)
        ax.plot(t, worst, lw=0.8, color="tab:red", label="max per 100 ms")
        ax.plot(t, p50, lw=0.8, color="tab:blue", label="median per 100 ms")
        ax.axvline(0, color="black", lw=1.2, label="reload")
        if r["first_new"] is not None:
            ax.axvline(r["first_new"], color="tab:green", ls="--", lw=1, label="new revision first seen")
        ax.axvline(r["last_old"], color="tab:gray", ls=":", lw=1, label="old revision last seen")
        ax.axhline(r["base_max"] + TARGET_EXTRA, color="tab:orange", lw=0.8, ls="-.", label="target: base max + 0.5 s")
        ax.set_yscale("log")
        ax.set_ylabel("latency (s)")
        ax.set_title(f"{alt}: reload max {r['reload_max']:.2f} s, base max {r['base_max']:.2f} s, "
                     f"{r['non_2xx'] + r['socket_errors']} failed, {r['requests']} requests", fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7, loc="upper left", ncol=3)
    axes[-1].set_xlabel("seconds since the reload (GET / through nginx, 50 clients)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per alternative (default 3)")
    parser.add_argument("--duration", type=float, default=20.0, help="load seconds per run (default 20)")
    args = parser.parse_args()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib missing: .tools/bin/python -m pip install -r bench/requirements.txt", file=sys.stderr)
        return 1
    if shutil.which("nginx") is None:
        print("nginx not found: apt-get install nginx (or make system-packages)", file=sys.stderr)
        return 1
    run([REPO / "scripts/wheelhouse"], 600)
    facts = {**machine_facts(), "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip(),
             "gunicorn": GUNICORN, "load": f"{PROCESSES} processes x {THREADS} threads, http.client keep-alive, GET /",
             "reload_at_s": RELOAD_AT, "settle_s": SETTLE, "after_s": AFTER, "poll_s": POLL, "duration_s": args.duration}
    raw = {alt: [] for alt in ALTERNATIVES}
    try:
        for round_no in range(args.runs):
            shift = round_no % len(ALTERNATIVES)
            for alt in ALTERNATIVES[shift:] + ALTERNATIVES[:shift]:
                result = one_run(alt, args.duration, f"rev-{round_no + 1}-{alt}")
                raw[alt].append(result)
                print(f"  round {round_no + 1}/{args.runs}  {alt:<12} " + ", ".join(
                    f"{k} {round(v, 3) if isinstance(v, float) else v}" for k, v in result.items()
                    if k not in ("timeline", "meets")), flush=True)
    except (RuntimeError, subprocess.TimeoutExpired, concurrent.futures.TimeoutError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    rows = summarize(raw)
    print("\n" + table(rows))
    write_results(facts, rows, raw, args.runs)
    return 0


def write_results(facts, rows, raw, runs):
    """Write bench/results/reload.json (facts, summary, per-run figures + timelines), .md and .png."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {**facts, "loadavg_end": os.getloadavg(), "runs": runs, "summary": rows, "raw": raw,
              "timeline_columns": ["t_since_reload_s", "requests", "failed", "median_s", "max_s"]}
    (RESULTS / "reload.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(raw, RESULTS / "reload.png")
    (RESULTS / "reload.md").write_text(
        f"# Reload under load\n\n{facts['date']}, template {facts['git_rev']}"
        f"{' (dirty)' if facts['git_dirty'] else ''}, {facts['nproc']} cores, Python {facts['python']}, "
        f"{facts['nginx']}, {GUNICORN}; {runs} interleaved runs per alternative, {facts['duration_s']:g} s of "
        f"load ({facts['load']}), reload at {RELOAD_AT:g} s. Target: 0 failed and reload max <= base max + "
        f"{TARGET_EXTRA} s.\n\n{table(rows, markdown=True)}\n![latency over time](reload.png)\n"
    )
    print(f"\nwrote {RESULTS / 'reload.json'}, {RESULTS / 'reload.md'} and {RESULTS / 'reload.png'}")


if __name__ == "__main__":
    raise SystemExit(main())
