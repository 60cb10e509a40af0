"""Throughput of `perfkit bench` against `wrk` on the same fast target, same concurrency.

    .venv/bin/python bench/bench_vs_wrk.py [--concurrency 10] [--duration-s 5] [--rounds 3]

The target is tests/targets/fixed_delay.py with no delay on 127.0.0.1. Both clients share the
machine with the target, so the RPS figures are of this machine; the client CPU per request shows
what each client spends on one request, which is what differs between an event loop in Python
and wrk's C. Rounds alternate wrk and perfkit so drifting background load hits both alike.
Needs `wrk` (apt-get install -y wrk).
"""

import argparse
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from perfkit import bench  # noqa: E402
from tests.targets import FIXED_DELAY, start_target, stop_target  # noqa: E402


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(url: str, concurrency: int, duration_s: int) -> tuple[float, float]:
    """RPS and client CPU seconds of one wrk run (one thread: one core, like perfkit bench)."""
    before = children_cpu_s()
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{duration_s}s", url],
                         capture_output=True, text=True, check=True,
                         timeout=duration_s + 60).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise SystemExit(f"unexpected wrk output:\n{out}")
    return float(match.group(1)), children_cpu_s() - before


def run_perfkit(url: str, concurrency: int, duration_s: int) -> tuple[float, float]:
    """RPS and CPU seconds of `perfkit bench`'s measurement, in this process (the CPU of
    starting Python and importing perfkit is left out, as wrk's start-up is negligible)."""
    before = time.process_time()
    result = bench.measure_bench(bench.BenchSettings(url=url, concurrency=concurrency,
                                                     duration_s=duration_s))
    cpu_s = time.process_time() - before
    if result.failures:
        raise SystemExit(f"perfkit bench saw {result.failures} failures")
    return result.count / result.elapsed_s, cpu_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--duration-s", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")

    proc, base_url = start_target(FIXED_DELAY, "--delay-ms", "0", "--port", "0")
    url = f"{base_url}/api/v1/health"
    wrk_rps: list[float] = []
    perfkit_rps: list[float] = []
    wrk_cpu: list[float] = []
    perfkit_cpu: list[float] = []
    try:
        for _ in range(args.rounds):
            rps, cpu_s = run_wrk(url, args.concurrency, args.duration_s)
            wrk_rps.append(rps)
            wrk_cpu.append(cpu_s / (rps * args.duration_s) * 1e6)
            time.sleep(1)
            rps, cpu_s = run_perfkit(url, args.concurrency, args.duration_s)
            perfkit_rps.append(rps)
            perfkit_cpu.append(cpu_s / (rps * args.duration_s) * 1e6)
            time.sleep(1)
    finally:
        stop_target(proc)

    wrk_median = statistics.median(wrk_rps)
    perfkit_median = statistics.median(perfkit_rps)
    print(f"target: fixed_delay.py (aiohttp, no delay) at {url}")
    print(f"concurrency {args.concurrency}, {args.duration_s} s per run, {args.rounds} rounds, "
          f"wrk -t1")
    print(f"{'client':<14}{'median rps':>12}{'runs':>30}{'client CPU µs/req':>20}")
    for name, rps_list, cpu_list in [("wrk", wrk_rps, wrk_cpu),
                                     ("perfkit bench", perfkit_rps, perfkit_cpu)]:
        runs = " ".join(f"{r:.0f}" for r in rps_list)
        print(f"{name:<14}{statistics.median(rps_list):>12.0f}{runs:>30}"
              f"{statistics.median(cpu_list):>20.1f}")
    print(f"ratio perfkit/wrk (rps): {perfkit_median / wrk_median:.2f}")
    print(f"ratio perfkit/wrk (client CPU per request): "
          f"{statistics.median(perfkit_cpu) / statistics.median(wrk_cpu):.1f}x")


if __name__ == "__main__":
    main()
