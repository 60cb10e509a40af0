"""Where the noise of interleaved A/B trials comes from, on this machine: the spread of one
endpoint's p50 across runs of one build, each on a freshly started reference service, with
and without CPU pinning (the service on CPU 1, perfkit on CPU 0), and the spread of the p50 of
each second inside a run. Runs of the two modes alternate, so a drift of the machine hits
both.

    .venv/bin/python bench/ab_noise.py --runs 6                      # results scenario
    .venv/bin/python bench/ab_noise.py --runs 5 --scenario status
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from hdrh.histogram import HdrHistogram

from perfkit.options import parse_options
from perfkit.run import ab as ab_run
from perfkit.settings import build_load_settings

ENDPOINTS = {"results": "GET /api/v1/research/products/{id}",
             "status": "GET /api/v1/research/products/{id}/status"}


def per_second_p50_ms(run_dir: Path, endpoint: str) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "latency.jsonl").read_text().splitlines()]
    return [HdrHistogram.decode(row["hist"]).get_value_at_percentile(50) / 1000.0
            for row in rows if row["name"] == endpoint][1:]  # the first second is warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6, help="runs per mode")
    parser.add_argument("--scenario", choices=sorted(ENDPOINTS), default="results")
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--duration", default="8s")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.runs < 3:
        parser.error("--runs must be at least 3 (a spread of successive runs needs two)")
    root = args.out or Path(tempfile.mkdtemp(prefix="ab-noise-"))
    endpoint = ENDPOINTS[args.scenario]
    values, given = parse_options("ab", dict(
        scenario=args.scenario, users=5, spawn_rate=50, duration=args.duration,
        rate=args.rate, warmup="2s",
        kpi=Path(__file__).parent.parent / ".ci" / "regression-kpi.toml"))
    load = build_load_settings("ab", values, given=given)
    serve = f"{sys.executable} -m perfkit serve --fast --host 127.0.0.1 --port {{port}}"
    modes = {"free": (serve, {0, 1}), "pinned": (f"taskset -c 1 {serve}", {0})}
    p50s: dict[str, list[float]] = {mode: [] for mode in modes}
    for i in range(args.runs):
        for mode, (command, cpus) in modes.items():
            os.sched_setaffinity(0, cpus)
            out = root / f"{i:02d}-{mode}"
            run = ab_run._run_arm(ab_run.Arm("A", command=command), load, out, lambda _m: None)
            p50s[mode].append(float(run.endpoints[endpoint]["p50_ms"]))
            seconds = per_second_p50_ms(out, endpoint)
            print(f"{mode:6} run {i}: p50 {p50s[mode][-1]:.2f} ms; per second "
                  f"{min(seconds):.1f}-{max(seconds):.1f} ms", flush=True)
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    print(f"\n{args.scenario}, {args.rate}/s, {args.duration} runs, fresh service each run")
    for mode, values in p50s.items():
        logs = np.log(values)
        print(f"{mode:6}: p50 {min(values):.2f}-{max(values):.2f} ms, sd(log p50) "
              f"{np.std(logs, ddof=1):.3f}, sd of log ratios of successive runs "
              f"{np.std(np.diff(logs), ddof=1):.3f}")
    print(f"runs kept in {root}")


if __name__ == "__main__":
    main()
