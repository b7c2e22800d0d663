"""What does a uWSGI log line per request cost under systemd, where every line goes to journald?

One lab host (scripts/lab, Debian 12, booted systemd) runs the baked service installed by the
service README's "On a server" steps (testkit/lab.py's, as tests/test_server_unit.py installs it),
behind the distro's nginx. wrk on this machine loads the host's port 80 (GET /) for DURATION s per run.
Alternatives, interleaved in every round (order rotated per round), the unit restarted between:
  errors-only   as shipped: `disable-logging = true`, uWSGI logs 4xx, 5xx and requests over 1 s
  every-request the line removed: uWSGI's default, one log line per request to the journal
Both keep nginx's access log, the one access log the template intends.

Reading the result: `req/s` is wrk's rate; `journald cpu` is the CPU seconds systemd-journald spent
during the run (from /proc), `per 10k` the same per 10,000 answered requests; `journal lines` is
how many lines the unit wrote in the run. Medians over runs. The host shares this machine's two
cores with wrk and with everything else running here: compare the alternatives within one run of
this script, not across days. loadavg per run is in the JSON.

    .tools/bin/python bench/request_logging.py [--runs N] [--duration S]
    # writes bench/results/request_logging.{json,md}; run as root (the lab), from a clean commit
"""

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))  # the checkout's root: benchmarks import testkit
from testkit.env import ROOT
from testkit.lab import INSTALL, RELEASE, installed_host

RESULTS = ROOT / "bench" / "results"
INI = f"{RELEASE}/deploy/uwsgi.ini"
ALTERNATIVES = {
    "errors-only": f"sed -i 's/^#disable-logging = true$/disable-logging = true/' {INI}",
    "every-request": f"sed -i 's/^disable-logging = true$/#disable-logging = true/' {INI}",
}


def out(*command):
    return subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT).stdout.strip()


def machine_facts():
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_rev": out("git", "rev-parse", "--short", "HEAD"),
        "git_dirty": bool(out("git", "status", "--porcelain", "--untracked-files=no")),
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "wrk": out("wrk", "--version").split(" [")[0] if shutil.which("wrk") else None,
    }


def journald_cpu(host):
    """CPU seconds systemd-journald has used since it started."""
    fields = host.sh("cat /proc/$(pidof systemd-journald)/stat").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(host, alternative, duration):
    host.sh(f"{ALTERNATIVES[alternative]} && systemctl restart my_service")
    subprocess.run(["wrk", "-t2", "-c20", "-d2s", f"http://{host.address}/"], capture_output=True, check=True)
    since = host.sh("date +%s.%N")
    cpu = journald_cpu(host)
    wrk = subprocess.run(
        ["wrk", "-t2", "-c20", f"-d{duration}s", f"http://{host.address}/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu = journald_cpu(host) - cpu
    lines = int(host.sh(f"journalctl -u my_service -o cat --since=@{since} --no-pager | wc -l"))
    requests = int(re.search(r"(\d+) requests in", wrk).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", wrk)
    return {
        "alternative": alternative,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", wrk).group(1)),
        "requests": requests,
        "non_2xx": int(errors.group(1)) if errors else 0,
        "journald_cpu_s": round(cpu, 2),
        "journald_cpu_per_10k": round(cpu / requests * 10000, 3),
        "journal_lines": lines,
        "loadavg": os.getloadavg()[0],
    }


def table(runs):
    rows = [
        "| alternative | req/s | journald cpu (s) | per 10k requests (s) | journal lines | non-2xx |",
        "|---|---|---|---|---|---|",
    ]
    for alternative in ALTERNATIVES:
        mine = [run for run in runs if run["alternative"] == alternative]
        median = {key: statistics.median(run[key] for run in mine) for key in mine[0] if key != "alternative"}
        rows.append(
            f"| {alternative} | {median['rps']:.0f} | {median['journald_cpu_s']:.2f} | "
            f"{median['journald_cpu_per_10k']:.3f} | {median['journal_lines']:.0f} | "
            f"{sum(run['non_2xx'] for run in mine)} |"
        )
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    args = parser.parse_args()
    facts = machine_facts()
    base = Path(tempfile.mkdtemp(prefix="bench-logging-"))
    try:
        with installed_host(base, INSTALL, prefix="b") as (host, installed):
            if host.sh("systemctl is-active my_service", check=False) != "active":
                raise SystemExit(f"error: the service did not start on the lab host:\n{installed}")
            runs = []
            for round_number in range(args.runs):
                order = list(ALTERNATIVES)[round_number % 2 :] + list(ALTERNATIVES)[: round_number % 2]
                for alternative in order:
                    runs.append(one_run(host, alternative, args.duration))
                    print(json.dumps(runs[-1]), flush=True)
                    time.sleep(1)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    text = (
        f"# One log line per request under systemd\n\n{facts['date']}, template {facts['git_rev']}"
        f"{' (dirty)' if facts['git_dirty'] else ''}, {facts['nproc']} cores shared by the lab host and wrk, "
        f"{facts['wrk']}; {args.runs} interleaved runs of {args.duration} s per alternative, "
        "wrk -t2 -c20 GET / to a lab host's nginx. See bench/request_logging.py for the columns.\n\n"
        f"{table(runs)}\n"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "request_logging.md").write_text(text)
    (RESULTS / "request_logging.json").write_text(json.dumps({"facts": facts, "runs": runs}, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
