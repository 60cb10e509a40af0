"""perfkit's own memory over a long endurance run: does the toolkit stay flat?

Runs `perfkit endurance` (a real subprocess) against tests/targets/fixed_delay.py at a few
hundred requests per second and samples the RSS of the perfkit process every second. Reports
its RSS at the start (after the warm-up minute), at the end, and its slope in MB/h with a 95 %
interval (stats.trend_interval, the same statistics the endurance verdict uses on targets).
Per-bucket histograms are written out and dropped, so the slope should be ~0.

    .venv/bin/python bench/endurance_memory.py --duration 10m --rate 300

Not run by pytest: it takes as long as --duration.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from perfkit import rundir, stats
from perfkit.config import parse_duration

FIXED_DELAY = Path(__file__).resolve().parent.parent / "tests" / "targets" / "fixed_delay.py"
SETTLE_S = 60.0  # imports, first allocations, Locust's spawn: not growth


def rss_mb(process: psutil.Process) -> float | None:
    try:
        return process.memory_info().rss / 2**20
    except psutil.Error:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", default="10m")
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: temp)")
    args = parser.parse_args()
    duration_s = parse_duration(args.duration)
    out = args.out or Path(tempfile.mkdtemp(prefix="perfkit-endurance-memory-")) / "run"

    target = subprocess.Popen([sys.executable, str(FIXED_DELAY), "--delay-ms", "1"],
                              stdout=subprocess.PIPE, text=True)
    assert target.stdout is not None
    url = target.stdout.readline().strip()
    run = subprocess.Popen(
        [sys.executable, "-m", "perfkit", "endurance", "--target", url, "--target-pid",
         str(target.pid), "--scenario", "health", "--users", str(args.users), "--rate",
         str(args.rate), "--duration", f"{duration_s:g}s", "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    perfkit = psutil.Process(run.pid)
    samples: list[tuple[float, float]] = []
    started = time.time()
    try:
        while run.poll() is None:
            value = rss_mb(perfkit)
            if value is not None:
                samples.append((time.time() - started, value))
            time.sleep(1.0)
    finally:
        run.wait()
        target.kill()
        target.wait()
        target.stdout.close()

    t = np.array([s[0] for s in samples])
    rss = np.array([s[1] for s in samples])
    judged = t >= SETTLE_S
    trend = stats.trend_interval(t[judged], rss[judged])
    minute = 60.0
    start_mb = float(rss[judged & (t < SETTLE_S + minute)].mean()) if judged.any() else None
    end_mb = float(rss[t >= t.max() - minute].mean()) if t.size else None
    meta = rundir.load_run(out).meta if (out / rundir.RUN_JSON).exists() else {}
    latency = rundir.load_run(out).latency if meta else None
    requests = int(latency["count"].sum()) if latency is not None else None
    result = {
        "duration_s": duration_s, "rate": args.rate, "requests": requests,
        "run_status": meta.get("status"), "run_dir": str(out),
        "perfkit_rss_mb": {"peak": float(rss.max()) if rss.size else None,
                           "start_after_settle": start_mb, "end": end_mb},
        "slope_mb_per_h": None if trend is None else {
            "value": trend[0] * 3600, "ci_low": trend[1] * 3600, "ci_high": trend[2] * 3600},
    }
    print(json.dumps(result, indent=2))
    (out.parent / "endurance_memory.json").write_text(json.dumps(result, indent=2), "utf-8")


if __name__ == "__main__":
    main()
