"""perfkit's own memory over a long endurance run: does the toolkit stay flat?

Runs `perfkit endurance` (a real subprocess) against tests/targets/fixed_delay.py at a few
hundred requests per second and samples the RSS of the perfkit process every second. Reports
its RSS at the start (after the first minute), at the end of the load, and its slope in MB/h
with a 95 % interval (stats.trend_interval, the same statistics the endurance verdict uses on
targets), over the load only: the report stage that follows is a short, separate peak.
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

from perfkit import rundir
from perfkit.analysis import stats
from perfkit.units import parse_duration

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
    endurance = subprocess.Popen(
        [sys.executable, "-m", "perfkit", "endurance", "--target", url, "--target-pid",
         str(target.pid), "--scenario", "health", "--users", str(args.users), "--rate",
         str(args.rate), "--duration", f"{duration_s:g}s", "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    perfkit = psutil.Process(endurance.pid)
    samples: list[tuple[float, float]] = []
    try:
        while endurance.poll() is None:
            value = rss_mb(perfkit)
            if value is not None:
                samples.append((time.time(), value))
            time.sleep(1.0)
    finally:
        endurance.wait()
        target.kill()
        target.wait()
        target.stdout.close()

    run = rundir.load_run(out)
    t_abs = np.array([s[0] for s in samples])
    rss = np.array([s[1] for s in samples])
    t = t_abs - float(run.meta["started_at"])
    load_end_s = float(run.meta["ended_at"]) - float(run.meta["started_at"])
    judged = (t >= SETTLE_S) & (t <= load_end_s)
    trend = stats.trend_interval(t[judged], rss[judged])
    minute = 60.0
    start_mb = float(rss[judged & (t < SETTLE_S + minute)].mean())
    end_mb = float(rss[judged & (t >= load_end_s - minute)].mean())
    requests = int(run.latency["count"].sum())
    result = {
        "duration_s": duration_s, "rate": args.rate, "requests": requests,
        "achieved_rps": requests / load_end_s, "run_status": run.meta.get("status"),
        "run_dir": str(out),
        "perfkit_rss_mb": {"peak_during_load": float(rss[judged].max()),
                           "peak_with_report": float(rss.max()),
                           "start_after_settle": start_mb, "end_of_load": end_mb},
        "slope_mb_per_h": None if trend is None else {
            "value": trend[0] * 3600, "ci_low": trend[1] * 3600, "ci_high": trend[2] * 3600},
    }
    print(json.dumps(result, indent=2))
    (out.parent / "endurance_memory.json").write_text(json.dumps(result, indent=2), "utf-8")
    np.savetxt(out.parent / "perfkit_rss.csv", np.column_stack([t, rss]), delimiter=",",
               header="t_s,rss_mb", comments="", fmt="%.3f")


if __name__ == "__main__":
    main()
