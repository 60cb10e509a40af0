"""What one perfkit master can merge: N simulated workers × 20 endpoints (issue 24).

The master is the real one, started as a distributed run starts it: `perfkit load --target URL
--master-bind-host 127.0.0.1 --expect-workers N`, in its own process, against a trivial local
target (tests/targets/fixed_delay.py; the workers send it nothing). A process of its own rather
than perfkit's master set up in this one: its CPU is then the master's alone (psutil on its pid),
with everything a real master does beside the merge (Locust's own stats, heartbeats, the live
view, the KPI alarms, collectors, the flush to the run directory).

The N workers are simulated in one other process (tests/simulated_workers.py): each speaks
Locust's protocol on its own ZeroMQ connection, heartbeats every second and sends a report
every 3 s with Locust's stats and perfkit's encoded 1-s histograms for every endpoint, as
`perfkit worker` does.

Per N it prints the reports and histograms per second the master received, the master's CPU as
% of one core (its user+system time over the steady part: from FLUSH_DELAY_S + 3 s after the
load started, once the master flushes every second, to 2 s before it stops), its peak RSS, and
whether the run directory holds exactly what the workers sent (every bucket's count, failures
and histogram, cell by cell, and run.json's complete count).

    .venv/bin/python bench/master_scaling.py [--workers 10,50,200] [--endpoints 20]
        [--duration-s 40] [--requests-per-s 50] [--keep DIR]
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perfkit import rundir  # noqa: E402
from perfkit.run.recorder import FLUSH_DELAY_S  # noqa: E402
from tests.targets import FIXED_DELAY, start_target, stop_target  # noqa: E402
from tests.worker_ledger import Ledger, compare, make_pool, master_argv, simulator_argv  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def watch_master(master: psutil.Process, spawned: threading.Event, duration_s: int,
                 found: dict[str, Any]) -> None:
    """The master's CPU time over the steady part of the load, and its peak RSS."""
    if not spawned.wait(300):
        return
    started = found["spawned_at"]
    window = (started + FLUSH_DELAY_S + 3, started + duration_s - 2)
    found["peak_rss_mb"], before = 0.0, None
    try:
        while time.time() < window[1]:
            found["peak_rss_mb"] = max(found["peak_rss_mb"], master.memory_info().rss / 1e6)
            if before is None and time.time() >= window[0]:
                before, found["from"] = master.cpu_times(), time.time()
            time.sleep(0.25)
        after, found["to"] = master.cpu_times(), time.time()
    except psutil.NoSuchProcess:
        return
    if before is not None:
        used = (after.user + after.system) - (before.user + before.system)
        found["cpu_percent"] = 100.0 * used / (found["to"] - found["from"])


def measure(url: str, workers: int, endpoints: int, duration_s: int, requests_per_s: float,
            base: Path) -> dict[str, Any]:
    port, out, sent = free_port(), base / f"run-{workers}", base / f"sent-{workers}.json"
    found: dict[str, Any] = {}
    spawned = threading.Event()
    with (base / f"master-{workers}.log").open("wb") as log:
        master = subprocess.Popen(master_argv(url, port, workers, duration_s, out), cwd=ROOT,
                                  stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    simulator = subprocess.Popen(simulator_argv(port, workers, sent, endpoints, requests_per_s),
                                 cwd=ROOT, stdout=subprocess.PIPE, text=True)
    watcher = threading.Thread(target=watch_master, daemon=True,
                               args=(psutil.Process(master.pid), spawned, duration_s, found))
    watcher.start()
    try:
        assert simulator.stdout is not None
        for line in simulator.stdout:
            if line.startswith("spawned "):
                found["spawned_at"] = float(line.split()[1])
                spawned.set()
        simulator.wait(duration_s + 300)
        master.wait(120)
        watcher.join(10)
    finally:
        for process in (simulator, master):
            if process.poll() is None:
                process.kill()
                process.wait()
    ledger, pool = Ledger.load(sent), make_pool(requests_per_s=requests_per_s)
    differences = compare(rundir.load_run(out).latency, ledger, pool)
    complete = json.loads((out / rundir.RUN_JSON).read_text())["load"]["complete"]
    window = found.get("to", 0.0) - found.get("from", 0.0)
    reports_per_s = (sum(found.get("from", 0.0) <= t < found.get("to", 0.0)
                         for t in ledger.reports) / window) if window > 0 else float("nan")
    return {**found, "reports_per_s": reports_per_s,
            "histograms_per_s": reports_per_s * endpoints * 3,  # a report holds 3 seconds
            "requests": ledger.requests(pool), "complete": complete,
            "differences": differences,
            "exact": not differences and complete == ledger.requests(pool)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="10,50,200")
    parser.add_argument("--endpoints", type=int, default=20)
    parser.add_argument("--duration-s", type=int, default=40)
    parser.add_argument("--requests-per-s", type=float, default=50.0,
                        help="per endpoint and worker (how many cells a histogram has)")
    parser.add_argument("--keep", type=Path, help="keep the run directories here")
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=False)
    base = args.keep or Path(tempfile.mkdtemp(prefix="perfkit-master-bench-"))
    target, url = start_target(FIXED_DELAY, "--delay-ms", "0")
    print(f"perfkit master; N simulated workers x {args.endpoints} endpoints, "
          f"{args.requests_per_s:g} requests/s per endpoint and worker, {args.duration_s} s each; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    print(f"{'N':>4} {'endpoints':>9} {'reports/s':>9} {'hist/s':>7} {'master CPU %':>12} "
          f"{'exact':>5} {'peak RSS MB':>11}", flush=True)
    try:
        for workers in [int(n) for n in args.workers.split(",")]:
            row = measure(url, workers, args.endpoints, args.duration_s, args.requests_per_s,
                          base)
            print(f"{workers:>4} {args.endpoints:>9} {row['reports_per_s']:>9.1f} "
                  f"{row['histograms_per_s']:>7.0f} {row.get('cpu_percent', float('nan')):>12.1f} "
                  f"{'yes' if row['exact'] else 'NO':>5} "
                  f"{row.get('peak_rss_mb', float('nan')):>11.0f}", flush=True)
            if not row["exact"]:
                print(f"     complete {row['complete']} of {row['requests']} sent; "
                      + "; ".join(row["differences"][:5]), flush=True)
    finally:
        stop_target(target)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"run directories in {base}")


if __name__ == "__main__":
    main()
