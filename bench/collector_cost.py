"""What the collectors cost: CPU seconds per sample in the collector's own thread, and the CPU
the target spends answering the app collector's scrapes.

    .venv/bin/python bench/collector_cost.py [--seconds 10] [--children 8] [--gevent]
        [--db-url postgresql://postgres@127.0.0.1/postgres] [--redis-url redis://127.0.0.1:6379/0]

Targets (all real processes on 127.0.0.1): the bundled reference service (`perfkit serve
--fast`, its own process tree), and a synthetic tree of --children idle Python processes
holding 20 MiB each, to show how the system collector's cost grows with the tree. Each
collector samples at --interval (default 0.1 s, so a short run has many samples); its cost at
the run's real interval (1 s system, 5 s app) is the per-sample cost over that interval.
`--gevent` monkey-patches first, as Locust does in the runner's process, and also measures
what the native sampler thread costs Locust's event loop: the lag of a greenlet that sleeps
1 ms in a loop (how late it wakes), without and with the system collector sampling every
--interval, since the thread must hold the GIL for the Python parts of each sample.
The Prometheus scraper reads the reference service's /metrics (its server histogram); the
PostgreSQL (pg_stat_statements, pg_stat_activity, pg_stat_database) and Redis (INFO) samplers
run where --db-url / --redis-url say, at their run interval of 2 s.
"""

import argparse
import sys

if "--gevent" in sys.argv:
    from gevent import monkey

    monkey.patch_all()

import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

import psutil  # noqa: E402

from perfkit.collectors.app import AppCollector  # noqa: E402
from perfkit.collectors.postgres import PostgresCollector  # noqa: E402
from perfkit.collectors.prometheus import PrometheusCollector  # noqa: E402
from perfkit.collectors.redis_info import RedisCollector  # noqa: E402
from perfkit.collectors.sampling import Sampler  # noqa: E402
from perfkit.collectors.system import SystemCollector  # noqa: E402

IDLE_CHILD = "import time\nx = bytearray(20 * 1024 * 1024)\ntime.sleep(600)"
TREE = (
    "import subprocess, sys, time\n"
    "n = int(sys.argv[1])\n"
    "kids = [subprocess.Popen([sys.executable, '-c', sys.argv[2]]) for _ in range(n)]\n"
    "print('ready', flush=True)\n"
    "time.sleep(600)\n"
)


def tree_cpu_s(pid: int) -> float:
    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def measure(collector: Sampler, seconds: float) -> dict:
    collector.start()
    time.sleep(seconds)
    entry = collector.stop()
    return entry


def measure_loop_lag_ms(seconds: float) -> list[float]:
    import gevent

    lags_ms = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t = time.perf_counter()
        gevent.sleep(0.001)
        lags_ms.append((time.perf_counter() - t - 0.001) * 1000.0)
    return lags_ms


def lag_line(label: str, lags_ms: list[float]) -> str:
    ordered = sorted(lags_ms)
    p99 = ordered[int(0.99 * (len(ordered) - 1))]
    p999 = ordered[int(0.999 * (len(ordered) - 1))]
    return (f"{label:<44} wake-ups {len(ordered):6d}  p50 {ordered[len(ordered) // 2]:5.2f} ms"
            f"  p99 {p99:5.2f} ms  p99.9 {p999:5.2f} ms  max {ordered[-1]:5.2f} ms")


def start_reference() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "perfkit", "serve", "--port", "0", "--fast"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    match = re.search(r"http://127\.0\.0\.1:\d+", proc.stdout.readline())
    if not match:
        proc.kill()
        raise SystemExit("reference service did not start")
    return proc, match.group(0)


def load_reference(url: str, jobs: int) -> None:
    body = json.dumps({"items": [{"product_name": f"상품 {i}", "category": "식품",
                                  "price_exact": 1000 + i} for i in range(10)]}).encode()
    for _ in range(jobs):
        request = urllib.request.Request(url + "/api/v1/research/products", data=body,
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).read()


def stop(proc: subprocess.Popen) -> None:
    for child in psutil.Process(proc.pid).children(recursive=True):
        child.kill()
    proc.kill()
    proc.wait()


def line(label: str, entry: dict, real_interval_s: float) -> str:
    per_sample_ms = 1000.0 * entry["cpu_s"] / max(entry["samples"], 1)
    core_percent = 100.0 * per_sample_ms / 1000.0 / real_interval_s
    return (f"{label:<44} samples {entry['samples']:4d}  cpu {entry['cpu_s']:6.3f} s  "
            f"{per_sample_ms:6.2f} ms/sample  = {core_percent:5.2f} % of one core "
            f"at {real_interval_s:g} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--children", type=int, default=8)
    parser.add_argument("--gevent", action="store_true")
    parser.add_argument("--db-url", help="PostgreSQL to sample (skipped without)")
    parser.add_argument("--redis-url", help="Redis to sample (skipped without)")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="collector-cost-"))
    print(f"collector cost, {args.seconds:g} s per measurement, sampling every "
          f"{args.interval:g} s, {'gevent-patched' if args.gevent else 'plain threads'}, "
          f"{psutil.cpu_count()} cores, {len(psutil.pids())} processes on the machine")

    service, url = start_reference()
    tree = subprocess.Popen([sys.executable, "-c", TREE, str(args.children), IDLE_CHILD],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert tree.stdout is not None and tree.stdout.readline().strip() == "ready"
        load_reference(url, 3)
        service_procs = 1 + len(psutil.Process(service.pid).children(recursive=True))
        for label, pid in [("system: machine only (pid None)", None),
                           (f"system: reference service ({service_procs} procs)", service.pid),
                           (f"system: synthetic tree ({args.children + 1} procs)", tree.pid)]:
            entry = measure(SystemCollector(pid, out / "resources.csv", args.interval),
                            args.seconds)
            print(line(label, entry, 1.0))

        idle_before = tree_cpu_s(service.pid)
        time.sleep(args.seconds)
        idle_s = tree_cpu_s(service.pid) - idle_before
        before = tree_cpu_s(service.pid)
        entry = measure(AppCollector(url, out, args.interval), args.seconds)
        scraped_s = tree_cpu_s(service.pid) - before
        print(line("app: reference service", entry, 5.0))
        per_scrape_ms = 1000.0 * (scraped_s - idle_s) / max(entry["samples"], 1)
        print(f"{'app: target CPU per scrape':<44} {per_scrape_ms:6.2f} ms "
              f"(target tree {scraped_s:.3f} s while scraped, {idle_s:.3f} s idle, "
              f"same length) = {per_scrape_ms / 50.0:5.3f} % of one core at 5 s")
        before = tree_cpu_s(service.pid)
        entry = measure(PrometheusCollector(url + "/metrics", out, args.interval), args.seconds)
        scraped_s = tree_cpu_s(service.pid) - before
        print(line("prometheus: reference service /metrics", entry, 2.0))
        per_scrape_ms = 1000.0 * (scraped_s - idle_s) / max(entry["samples"], 1)
        print(f"{'prometheus: target CPU per scrape':<44} {per_scrape_ms:6.2f} ms "
              f"= {per_scrape_ms / 20.0:5.3f} % of one core at 2 s")
        if args.db_url:
            entry = measure(PostgresCollector(args.db_url, out, args.interval), args.seconds)
            print(line(f"postgres: pg_stat_statements {entry['pg_stat_statements']}", entry,
                       2.0))
        if args.redis_url:
            entry = measure(RedisCollector(args.redis_url, out, args.interval), args.seconds)
            print(line("redis: INFO", entry, 2.0))
        if args.gevent:
            print(lag_line("event-loop lag: no collector", measure_loop_lag_ms(args.seconds)))
            collector = SystemCollector(service.pid, out / "resources.csv", args.interval)
            collector.start()
            lags_ms = measure_loop_lag_ms(args.seconds)
            collector.stop()
            print(lag_line(f"event-loop lag: system every {args.interval:g} s", lags_ms))
    finally:
        stop(service)
        stop(tree)


if __name__ == "__main__":
    main()
