"""What does a schema migration on PostgreSQL cost the requests being served meanwhile?

One baked service serves through nginx (`make serve`, 4 workers) from a PostgreSQL database of its
own on 127.0.0.1:5432, created for the run and dropped after it. The notes table is seeded with
500,000 rows (SEED_ROWS; 59 MB with its index): enough that rewriting it takes PostgreSQL 1 to 2 s on this
machine, far above a request's latency, while seeding stays a few seconds. 12 keep-alive clients
(one asyncio process, each request timed; every exception and every non-2xx counts as failed) send
GET /notes, POST /notes and GET / in turn. A POST clears its worker's cached notes, so the next GET
/notes in that worker reads the table: reads and writes both meet the migration's locks.
After 5 s of untimed load (every worker's first requests are slow), every run has three windows:
`base` (--baseline s, the first second not counted), `during` (requests in flight while the
migration command runs, start to exit) and `after` (--after s). Alternatives, interleaved in every
round (order rotated per round):
  expand    `bin/migrate --before-switch` with a revision that adds a nullable column and a column
            with a constant default (NOT NULL DEFAULT false): PostgreSQL 11+ does both without
            touching the rows, under bin/migrate's lock_timeout 2 s.
  rewrite   `ALTER TABLE notes ALTER COLUMN id TYPE bigint` run directly (psycopg, no lock_timeout,
            as someone bypassing bin/migrate would): a full rewrite of table and index under an
            ACCESS EXCLUSIVE lock. bin/migrate would refuse it before the switch (squawk's
            changing-column-type).
  blocked   the expand revision through bin/migrate while a long transaction (another session that
            read notes and stays idle in its transaction) holds the table: bin/migrate waits at most
            lock_timeout per attempt, gives up after 4 attempts (1, 2, 4 s apart) naming the blocker,
            and leaves the schema as it was; the holder is ended once bin/migrate exits.
Between runs the schema is put back (columns dropped, id back to integer, alembic_version reset),
outside the windows. CREATE INDEX CONCURRENTLY is left out: it cannot run inside a transaction, and
bin/migrate runs every pending migration in one transaction (so that a failed attempt changes
nothing); it would need a migration run outside bin/migrate's guarantees.

Reading the result: p50/p99/max per window are medians over the runs; `failed` sums failed requests
over all windows and runs; `migration s` is the median wall time of the migration command (for
bin/migrate: interpreter start, squawk and the lock included); `upgrade s` the part of it from
bin/migrate's first `==> upgrade` line (its DDL, lock waits and retries) to its exit; `exit` lists
the command's exit codes (blocked: 1, bin/migrate gave up). A run
meets the target with p99 during <= 2 x p99 base and no failed request; `meets` counts those runs.
With few requests in a short `during` window, its p99 is close to its max. The PNG plots the median
run (by p99 during) of each alternative, per 100 ms of request starts; a gap means no request
started: every client was waiting on one blocked behind the lock (each client's cycle has a POST).
The machine is shared: loadavg per run is in the JSON; compare alternatives within one run. Every
result names the commit it measured (bench/provenance.py): a tree with uncommitted changes is
refused unless --allow-dirty, and then the results are marked DIRTY.

    .tools/bin/python bench/migrate.py [--runs N] [--baseline S] [--after S] [--allow-dirty]
    # writes bench/results/migrate.{json,md,png}
"""

import argparse
import asyncio
import collections
import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from math import nan
from pathlib import Path

import provenance
from bake import RESULTS, bake, free_port, machine_facts, render, run, stop
from reload import read_response, wait_healthy

ALTERNATIVES = ["expand", "rewrite", "blocked"]
SEED_ROWS = 500_000
CONNECTIONS = 12
# s idle before a run; s of each run's load not counted; s of untimed load after seeding; request
# timeout in s; the target's factor (p99 during <= FACTOR x p99 base)
SETTLE, WARMUP, WARM_UP, TIMEOUT, FACTOR = 2.0, 1.0, 5.0, 30.0, 2.0
TIMELINE_COLUMNS = ["t_since_migration_start_s", "requests", "failed", "median_s", "max_s", "max_of"]
SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
FIRST = "af6f780d13df"  # the template's first revision: create notes
BODY = b'{"text": "written under load"}'
REQUESTS = {
    "GET /notes": b"GET /notes HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "POST /notes": b"POST /notes HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    + f"Content-Length: {len(BODY)}\r\n\r\n".encode()
    + BODY,
    "GET /": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
}
EXPAND = '''"""bench: expand notes with a nullable column and a column with a constant default."""

import sqlalchemy as sa
from alembic import op

revision = "bench0expand"
down_revision = "af6f780d13df"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("notes", sa.Column("tag", sa.String(50), nullable=True))
    op.add_column("notes", sa.Column("flag", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    op.drop_column("notes", "flag")
    op.drop_column("notes", "tag")
'''
# Runs statements (argv[2:]) on the database argv[1] with the baked venv's psycopg, autocommit;
# prints the seconds they took.
SQL = """
import sys, time, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as connection:
    started = time.monotonic()
    for statement in sys.argv[2:]:
        connection.execute(statement)
    print(time.monotonic() - started)
"""
# Reads notes in a transaction and stays idle in it (holding ACCESS SHARE) until killed.
HOLDER = """
import sys, time, psycopg
connection = psycopg.connect(sys.argv[1])
connection.execute("SELECT count(*) FROM notes").fetchall()
print("holding", flush=True)
time.sleep(600)
"""


def sql(project, url, *statements, timeout=120):
    """Run statements on url (autocommit); return the seconds they took."""
    return float(run([project / ".venv/bin/python", "-c", SQL, url, *statements], timeout).split()[-1])


async def client(port, names, stop_at, records):
    """One keep-alive connection cycling through names until stop_at() is set; records
    (start, latency, request, status or the exception's name)."""
    reader = writer = None
    turn = 0
    while not stop_at.is_set():
        name = names[turn % len(names)]
        turn += 1
        start = time.monotonic()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(REQUESTS[name])
            outcome, close = await asyncio.wait_for(read_response(reader), TIMEOUT)
        except Exception as error:  # every exception is a failed request
            outcome, close = type(error).__name__, True
        records.append((start, time.monotonic() - start, name, outcome))
        if close and writer is not None:
            writer.close()
            writer = None
        if isinstance(outcome, str):
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


def load_process(port, t_start, stop_at, queue):
    """Run the CONNECTIONS clients from t_start until stop_at is set (own process); queue the records."""
    records, names = [], list(REQUESTS)
    time.sleep(max(0.0, t_start - time.monotonic()))

    async def clients():
        # Each connection starts at another request of the cycle, so all three run at every moment.
        await asyncio.gather(
            *(client(port, names[i % 3 :] + names[: i % 3], stop_at, records) for i in range(CONNECTIONS))
        )

    asyncio.run(clients())
    queue.put(records)


def migrate_command(alternative, project, url):
    """The command of the migration window."""
    if alternative == "rewrite":
        return [project / ".venv/bin/python", "-c", SQL, url, "ALTER TABLE notes ALTER COLUMN id TYPE bigint"]
    return [project / "bin/migrate", "--before-switch"]


def reset(alternative, project, url):
    """Put the schema back as the run found it (outside the windows)."""
    if alternative == "rewrite":
        sql(project, url, "ALTER TABLE notes ALTER COLUMN id TYPE integer")
    else:
        sql(
            project,
            url,
            "ALTER TABLE notes DROP COLUMN IF EXISTS tag, DROP COLUMN IF EXISTS flag",
            f"UPDATE alembic_version SET version_num = '{FIRST}'",
        )
    (project / "migrations/versions/bench_expand.py").unlink(missing_ok=True)


def one_run(alternative, project, port, url, baseline, after):
    """Load, migrate after `baseline` s, load `after` s more; return the records and the times."""
    env = {**os.environ, "DATABASE_URL": url}
    holder = migration = None
    context = multiprocessing.get_context("spawn")
    stop_at, queue = context.Event(), context.Queue()
    if alternative != "rewrite":
        (project / "migrations/versions/bench_expand.py").write_text(EXPAND)
    if alternative == "blocked":
        holder = subprocess.Popen(
            [project / ".venv/bin/python", "-c", HOLDER, url],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        if holder.stdout.readline().strip() != "holding":
            raise RuntimeError("the long transaction did not start")
    t0 = time.monotonic() + 1.5
    loader = context.Process(target=load_process, args=(port, t0, stop_at, queue))
    loader.start()
    try:
        time.sleep(max(0.0, t0 + baseline - time.monotonic()))
        t_start = time.monotonic()
        migration = subprocess.Popen(
            migrate_command(alternative, project, url),
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        # Each output line with the time it came: bin/migrate's `==> upgrade` step marks its first DDL.
        lines = [(time.monotonic(), line.rstrip()) for line in migration.stdout]
        migration.wait(timeout=120)
        t_end = time.monotonic()
        if holder is not None:
            os.killpg(holder.pid, signal.SIGTERM)
            holder.wait(timeout=30)
        time.sleep(after)
        stop_at.set()
        records = queue.get(timeout=TIMEOUT + 30)
        loader.join(timeout=30)
    finally:
        stop_at.set()
        for process in (holder, migration):
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if loader.is_alive():
            loader.kill()
            loader.join()
    upgrade = next((t for t, line in lines if line.startswith("==> upgrade")), None)
    times = {"t0": t0, "start": t_start, "end": t_end, "stop": time.monotonic()}
    return (
        records,
        times,
        {
            "exit": migration.returncode,
            "output": [line for _, line in lines if line][-1:],
            "upgrade_from_s": None if upgrade is None else upgrade - t_start,
        },
    )


def failed(outcome):
    """A socket error (the exception's name) or a status other than 2xx."""
    return isinstance(outcome, str) or not 200 <= outcome < 300


def stats(latencies):
    """p50, p99 and max of latencies (NaN-free: None for an empty window)."""
    if not latencies:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(latencies)
    return {
        "n": len(ordered),
        "p50": statistics.median(ordered),
        "p99": ordered[int(0.99 * (len(ordered) - 1))],
        "max": ordered[-1],
    }


def analyse(records, times, migration):
    """Per-window figures; every request as (start since the migration's, latency, request, failed)."""
    t0, start, end = times["t0"], times["start"], times["end"]
    timed = [r for r in records if r[0] >= t0 + WARMUP]
    windows = {
        "base": [r for r in timed if r[0] + r[1] <= start],
        "during": [r for r in timed if r[0] <= end and r[0] + r[1] >= start],
        "after": [r for r in timed if r[0] > end],
    }
    figures = {name: stats([r[1] for r in rows]) for name, rows in windows.items()}
    failures = [r for r in records if failed(r[3])]
    base, during = figures["base"]["p99"], figures["during"]["p99"]
    meets = not failures and base is not None and during is not None and during <= FACTOR * base
    return {
        "requests": len(records),
        "failed": len(failures),
        "failures": sorted({f"{r[2]}: {r[3]}" for r in failures})[:10],
        "windows": figures,
        "migration_s": end - start,
        **migration,
        "meets": meets,
        "timeline": timeline(records, start),
    }


def timeline(records, start):
    """Per 100 ms of request starts (seconds since the migration's start): requests, failed, median and
    max latency, and the request of that max."""
    buckets = collections.defaultdict(list)
    for s, lat, name, outcome in records:
        buckets[round(s - start, 1)].append((lat, name, failed(outcome)))
    return [
        [
            t,
            len(b),
            sum(f for *_, f in b),
            round(statistics.median(lat for lat, *_ in b), 4),
            *[round(x, 4) if isinstance(x, float) else x for x in max(b)[:2]],
        ]
        for t, b in sorted(buckets.items())
    ]


def median_of(runs, window, key):
    values = [r["windows"][window][key] for r in runs if r["windows"][window][key] is not None]
    return statistics.median(values) if values else None


def summarize(raw):
    """One row per alternative: failures summed, the rest medians over runs."""
    rows = []
    for alt, runs in raw.items():
        row = {"alternative": alt, "runs": len(runs)}
        row["requests"] = statistics.median(r["requests"] for r in runs)
        for window in ("base", "during", "after"):
            for key in ("p50", "p99", "max"):
                row[f"{window}_{key}"] = median_of(runs, window, key)
        row["failed"] = sum(r["failed"] for r in runs)
        row["migration_s"] = statistics.median(r["migration_s"] for r in runs)
        upgrades = [r["migration_s"] - r["upgrade_from_s"] for r in runs if r["upgrade_from_s"] is not None]
        row["upgrade_s"] = statistics.median(upgrades) if upgrades else None
        row["exit"] = ",".join(str(r["exit"]) for r in runs)
        rows.append({**row, "meets": f"{sum(r['meets'] for r in runs)}/{len(runs)}"})
    return rows


def cell(value, digits):
    """value with digits decimals, or - for none."""
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows, markdown=False):
    """The rows as an aligned text table, or as a Markdown table."""
    head = ["alternative", "runs", "requests", "failed", "migration s", "upgrade s", "exit"]
    head += [f"{w} {k} s" for w in ("base", "during", "after") for k in ("p50", "p99", "max")]
    body = []
    for r in rows:
        row = [r["alternative"], str(r["runs"]), f"{r['requests']:.0f}", str(r["failed"])]
        row += [cell(r["migration_s"], 2), cell(r["upgrade_s"], 2), r["exit"]]
        row += [cell(r[f"{w}_{k}"], 3) for w in ("base", "during", "after") for k in ("p50", "p99", "max")]
        body.append([*row, r["meets"]])
    return render([*head, "meets"], body, markdown)


def plot(raw, facts, path):
    """Every request of the median run (by p99 during) of each alternative; the migration shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(raw), 1, figsize=(11, 3 * len(raw) + 0.6), sharex=True, sharey=True)
    for ax, (alt, runs) in zip(axes, raw.items(), strict=True):
        r = sorted(runs, key=lambda r: r["windows"]["during"]["p99"] or 0)[len(runs) // 2]
        ax.axvspan(0, r["migration_s"], color="tab:olive", alpha=0.15, label="migration command running")
        if r["upgrade_from_s"] is not None:
            label = "bin/migrate's upgrade step"
            ax.axvline(r["upgrade_from_s"], color="tab:olive", ls="--", lw=1, label=label)
        # One point per 100 ms of request starts; NaN where none started (all clients waiting): a gap.
        rows = {row[0]: row for row in r["timeline"]}
        first, last = round(min(rows) * 10), round(max(rows) * 10)
        grid = [rows.get(round(i / 10, 1), [i / 10, 0, 0, nan, nan, ""]) for i in range(first, last + 1)]
        t, _, failures, p50, worst, _ = zip(*grid, strict=True)
        label = "max latency of requests started in 100 ms"
        ax.plot(t, worst, ".-", ms=2, lw=0.8, color="tab:red", label=label)
        ax.plot(t, p50, ".-", ms=2, lw=0.8, color="tab:blue", label="median of the same")
        bad = [(x, w) for x, f, w in zip(t, failures, worst, strict=True) if f]
        if bad:
            ax.scatter(*zip(*bad, strict=True), marker="x", color="black", s=18, label="failed requests")
        base = r["windows"]["base"]["p99"]
        if base:
            ax.axhline(FACTOR * base, color="tab:orange", ls="-.", lw=0.9, label="target: 2 x base p99")
        ax.set_yscale("log")
        ax.set_ylabel("latency (s)")
        during = r["windows"]["during"]
        ax.set_title(
            f"{alt}: migration {r['migration_s']:.2f} s (exit {r['exit']}), p99 base {base or 0:.3f} s, "
            f"during {during['p99'] or 0:.3f} s (max {during['max'] or 0:.2f} s), "
            f"{r['failed']} failed of {r['requests']}",
            fontsize=10,
        )
        ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=3, fontsize=8, frameon=False)
    axes[-1].set_xlabel(f"seconds since the migration started (request start; {facts['load']})")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    provenance.mark_figure(fig, facts)
    fig.savefig(path, dpi=100)


def write_results(facts, rows, raw, runs):
    """Write bench/results/migrate.json (facts, summary, runs with every request), .md and .png."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {
        **facts,
        "loadavg_end": os.getloadavg(),
        "runs": runs,
        "summary": rows,
        "timeline_columns": TIMELINE_COLUMNS,
    }
    (RESULTS / "migrate.json").write_text(json.dumps({**report, "raw": raw}, indent=1) + "\n")
    plot(raw, facts, RESULTS / "migrate.png")
    text = (
        f"# A migration under load\n\n{facts['date']}, {provenance.describe(facts)}, {facts['nproc']} cores, "
        f"Python {facts['python']}, {facts['postgresql']}, {facts['nginx']}; {runs} interleaved runs per "
        f"alternative; notes seeded with {SEED_ROWS:,} rows; {facts['baseline_s']:g} s base, the "
        f"migration, {facts['after_s']:g} s after ({facts['load']}). Target: p99 during <= {FACTOR:g} x "
        f"p99 base and 0 failed. See bench/migrate.py for the alternatives and how to read the "
        f"columns.\n\n{table(rows, markdown=True)}\n![latency over time](migrate.png)\n"
    )
    (RESULTS / "migrate.md").write_text(provenance.with_banner(text, facts))
    print(f"\nwrote {RESULTS / 'migrate.json'}, {RESULTS / 'migrate.md'} and {RESULTS / 'migrate.png'}")


def serve(out_dir, port, url):
    """Bake with a venv, point DATABASE_URL at url, `make serve`, seed notes; return the project."""
    bake(out_dir, venv=True, http_port=port)
    project = out_dir / "my_service"
    with open(project / ".env", "a") as env:
        env.write(f"DATABASE_URL={url}\n")
    run(["make", "serve"], 180, cwd=project)
    wait_healthy(port)
    seconds = sql(
        project,
        url,
        "INSERT INTO notes (text) SELECT 'seeded note ' || g || ' ' || md5(g::text)"
        f" FROM generate_series(1, {SEED_ROWS}) g",
        "VACUUM ANALYZE notes",
    )
    print(f"seeded notes with {SEED_ROWS:,} rows in {seconds:.1f} s", flush=True)
    warm_up(port)
    return project


def warm_up(port, seconds=WARM_UP):
    """Send the load for a few untimed seconds: every worker's first requests (imports, the database
    connection) are slow, and would otherwise land in the first run."""
    context = multiprocessing.get_context("spawn")
    stop_at, queue = context.Event(), context.Queue()
    loader = context.Process(target=load_process, args=(port, time.monotonic(), stop_at, queue))
    loader.start()
    time.sleep(seconds)
    stop_at.set()
    records = queue.get(timeout=TIMEOUT + 30)
    loader.join(timeout=30)
    print(f"warm-up: {len(records)} untimed requests in {seconds:g} s", flush=True)


def measure(args, facts):
    """Bake, serve, run the rounds, and always stop everything and drop the database; return raw."""
    out_dir, port = Path(tempfile.mkdtemp(prefix="bench-migrate-")), free_port()
    name = f"bench_migrate_{uuid.uuid4().hex[:10]}"
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    project, created = out_dir / "my_service", False
    raw = {alt: [] for alt in ALTERNATIVES}
    try:
        run(["psql", SERVER, "-qc", f"CREATE DATABASE {name}"], 60)
        created = True
        project = serve(out_dir, port, url)
        for round_no in range(args.runs):
            shift = round_no % len(ALTERNATIVES)
            for alt in ALTERNATIVES[shift:] + ALTERNATIVES[:shift]:
                time.sleep(SETTLE)
                loadavg = os.getloadavg()[0]
                records, times, migration = one_run(alt, project, port, url, args.baseline, args.after)
                reset(alt, project, url)
                result = {**analyse(records, times, migration), "loadavg": loadavg}
                raw[alt].append(result)
                w = result["windows"]
                print(
                    f"  round {round_no + 1}/{args.runs}  {alt:<8} migration {result['migration_s']:.2f} s"
                    f" exit {result['exit']}  p99 base/during/after {w['base']['p99']}/"
                    f"{w['during']['p99']}/{w['after']['p99']}  max during {w['during']['max']}"
                    f"  failed {result['failed']} of {result['requests']}  {result['output']}",
                    flush=True,
                )
    finally:
        try:
            if project.exists():
                stop(project)
        finally:
            if created:
                run(["psql", SERVER, "-qc", f"DROP DATABASE {name} WITH (FORCE)"], 60)
            shutil.rmtree(out_dir, ignore_errors=True)
    return raw


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per alternative (default 3)")
    parser.add_argument("--baseline", type=float, default=10.0, help="s of load before the migration (10)")
    parser.add_argument("--after", type=float, default=10.0, help="s of load after the migration (10)")
    provenance.add_option(parser)
    args = parser.parse_args()
    commit = provenance.check(args.allow_dirty)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        sys.exit("matplotlib is missing: .tools/bin/python -m pip install -r bench/requirements.txt")
    for tool, hint in (("nginx", "apt-get install nginx"), ("psql", "apt-get install postgresql-client")):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: {hint}")
    try:
        version = run(["psql", SERVER, "-tAc", "SHOW server_version"], 30).strip()
    except RuntimeError:
        sys.exit("no PostgreSQL on 127.0.0.1:5432 (trust auth for postgres): apt-get install postgresql")
    # SIGTERM unwinds like Ctrl-C: the finally blocks stop the service and drop the database.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run([provenance.REPO / "scripts/wheelhouse"], 600)
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    facts = {
        **commit,
        **{k: v for k, v in machine_facts().items() if k != "warm_up"},
        "nginx": nginx,
        "postgresql": f"PostgreSQL {version}",
        "load": f"1 process, {CONNECTIONS} asyncio keep-alive connections, GET /notes, POST /notes, GET /",
        "seed_rows": SEED_ROWS,
        "baseline_s": args.baseline,
        "after_s": args.after,
        "target": f"p99 during <= {FACTOR:g} x p99 base, 0 failed",
    }
    try:
        raw = measure(args, facts)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    rows = summarize(raw)
    provenance.recheck(facts)
    print("\n" + provenance.with_banner(table(rows), facts))
    write_results(facts, rows, raw, args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
