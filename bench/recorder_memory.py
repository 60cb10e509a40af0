"""perfkit's recorder over a SIMULATED day: its memory stays flat (issue 24).

    .venv/bin/python bench/recorder_memory.py [--duration-s 86400] [--every-s 7200]

The recorder of a master (or standalone run) is fed a day of per-second input on a simulated
clock, as fast as it takes: every second a worker report with the last second's histograms of
4 endpoints (500 rps in total, the mix of bench/report_time.py; SIMULATED latencies drawn once
from log-normal distributions and reused), plus 20 requests recorded in this process
(`on_request`, a standalone run's path), then `flush` as the runner calls it every second —
closed buckets go to latency.bin a block a minute, and the last 60 s stay in memory for alarms
(keep_s). Prints this process's RSS, latency.bin's size and what the recorder holds, every
`--every-s` simulated seconds, then checks that latency.bin holds every request fed.
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perfkit import rundir  # noqa: E402
from perfkit.analysis import stats  # noqa: E402
from perfkit.run import recorder as recorder_module  # noqa: E402
from perfkit.run.recorder import REPORT_KEY, Recorder  # noqa: E402

# name: (rps, median ms), as bench/report_time.py
ENDPOINTS = {"GET /api/v1/health": (150, 3.0), "POST /api/v1/research/products": (50, 40.0),
             "GET /api/v1/research/products/{id}/status": (250, 8.0),
             "GET /api/v1/research/products/{id}": (50, 30.0)}
POOL = 30  # distinct simulated histograms per endpoint, reused
LOCAL_PER_S = 20
START_T = 1_764_130_000


class SimulatedClock:
    """Stands in for the recorder module's `time`: the day passes as fast as it is fed."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def simulated_histograms(rng: np.random.Generator) -> dict[str, list[tuple[str, int]]]:
    pool: dict[str, list[tuple[str, int]]] = {}
    for name, (rps, median_ms) in ENDPOINTS.items():
        for _ in range(POOL):
            hist = stats.new_histogram()
            values = rng.lognormal(np.log(median_ms), 0.4, rng.poisson(rps))
            for value in values:
                stats.record_ms(hist, float(value))
            pool.setdefault(name, []).append((stats.encode_histogram(hist), values.size))
    return pool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=int, default=86400)
    parser.add_argument("--every-s", type=int, default=7200)
    args = parser.parse_args()
    rng = np.random.default_rng(24)
    pool = simulated_histograms(rng)
    clock = SimulatedClock(START_T)
    recorder_module.time = clock  # type: ignore[assignment]
    base = Path(tempfile.mkdtemp(prefix="perfkit-recorder-bench-"))
    process = psutil.Process()
    try:
        recorder = Recorder(base / rundir.LATENCY, keep_s=60.0)
        fed = 0
        started, started_cpu = time.perf_counter(), time.process_time()
        print("recorder memory benchmark — SIMULATED day of input on a simulated clock")
        print(f"  {'simulated':>9} {'RSS MB':>7} {'latency.bin MB':>14} {'buckets':>7} "
              f"{'pending':>7} {'kept':>5} {'recent':>6}")
        rss_mb = []
        for second in range(args.duration_s):
            clock.now = START_T + second + 0.5
            records = []
            for name in ENDPOINTS:
                hist, count = pool[name][rng.integers(POOL)]
                records.append({"t": START_T + second - 1, "name": name, "count": count,
                                "failures": 0, "hist": hist})
                fed += count
            recorder.on_worker_report("worker-1", {REPORT_KEY: records})
            for _ in range(LOCAL_PER_S):
                recorder.on_request("GET", "/local", float(rng.lognormal(1.0, 0.3)), None)
            fed += LOCAL_PER_S
            recorder.flush()
            if (second + 1) % args.every_s == 0:
                rss = process.memory_info().rss / 2**20
                rss_mb.append(rss)
                size_mb = (base / rundir.LATENCY).stat().st_size / 1e6
                print(f"  {(second + 1) / 3600:8.1f}h {rss:7.1f} {size_mb:14.1f} "
                      f"{len(recorder.buckets):7} {len(recorder.pending):7} "
                      f"{len(recorder.kept):5} {len(recorder.recent):6}")
        recorder.flush(final=True)
        cpu_s = time.process_time() - started_cpu
        read = sum(int(chunk.frame["count"].sum())
                   for chunk in rundir.read_latency(base) if chunk is not None)
        print()
        print(f"fed {fed:,} requests in {time.perf_counter() - started:.0f} s wall, "
              f"{cpu_s:.0f} s CPU ({cpu_s / args.duration_s * 1000:.2f} ms per simulated s); "
              f"latency.bin holds {read:,} -> {'exact' if read == fed else 'MISMATCH'}")
        if len(rss_mb) >= 2:
            print(f"RSS from the first to the last sample: {rss_mb[0]:.1f} -> {rss_mb[-1]:.1f} "
                  f"MB ({rss_mb[-1] - rss_mb[0]:+.1f} MB)")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
