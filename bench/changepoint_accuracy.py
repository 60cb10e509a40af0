"""Precision and recall of `perfkit history analyze`'s change points on synthetic histories
with known shifts, and its time on a large history.

Each series: `--length` runs of log-normal noise (σ = 1 % or 3 %) around a level that steps
by ±5 %, ±10 % or ±20 % at known runs (at least 15 runs apart). A found change point is a hit
when it lies within 2 runs of a true one (each true one matched once).

    .venv/bin/python bench/changepoint_accuracy.py
    .venv/bin/python bench/changepoint_accuracy.py --scale-runs 10000 --scale-metrics 20
"""

import argparse
import time

import numpy as np

from perfkit.analysis.history import ChangePointSettings, detect_change_points

TOLERANCE = 2


def synthetic(rng: np.random.Generator, length: int, shift: float, noise: float,
              changes: int) -> tuple[np.ndarray, list[int]]:
    positions = sorted(rng.choice(np.arange(15, length - 15, 15), size=changes, replace=False))
    level = np.ones(length)
    for at in positions:
        level[at:] *= 1.0 + shift * rng.choice([-1.0, 1.0])
    return 100.0 * level * np.exp(rng.normal(0, noise, length)), [int(p) for p in positions]


def score(found: list[int], truth: list[int]) -> tuple[int, int]:
    hits, unmatched = 0, list(truth)
    for f in found:
        match = next((t for t in unmatched if abs(t - f) <= TOLERANCE), None)
        if match is not None:
            hits += 1
            unmatched.remove(match)
    return hits, len(found) - hits


def accuracy(args: argparse.Namespace) -> None:
    print("| shift | noise σ | min change | series × runs | true | found | precision | recall |")
    print("|---|---|---|---|---|---|---|---|")
    for noise in (0.01, 0.03):
        for shift in (0.05, 0.10, 0.20):
            min_change = min(0.10, shift / 2)
            settings = ChangePointSettings(min_change=min_change, metrics=("p50_ms",))
            rng = np.random.default_rng(int(shift * 100 + noise * 1000))
            true_total = hits_total = false_total = 0
            for s in range(args.series):
                values, truth = synthetic(rng, args.length, shift, noise, args.changes)
                runs = [{"run_id": str(i), "git_revision": None} for i in range(args.length)]
                series = {("s", f"e{s}", "p50_ms"): list(enumerate(values.tolist()))}
                found = [cp.index for cp in detect_change_points(runs, series, settings)]
                hits, false = score(found, truth)
                true_total += len(truth)
                hits_total += hits
                false_total += false
            precision = hits_total / max(hits_total + false_total, 1)
            print(f"| {shift:.0%} | {noise:.0%} | {min_change:.1%} | {args.series} × "
                  f"{args.length} | {true_total} | {hits_total + false_total} | "
                  f"{precision:.2f} | {hits_total / true_total:.2f} |")


def scale(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    runs = [{"run_id": str(i), "git_revision": None} for i in range(args.scale_runs)]
    series = {}
    for m in range(args.scale_metrics):
        values, _ = synthetic(rng, args.scale_runs, 0.10, 0.03, 20)
        series[("s", f"endpoint{m}", "p50_ms")] = list(enumerate(values.tolist()))
    started = time.perf_counter()
    found = detect_change_points(runs, series, ChangePointSettings(min_change=0.05))
    took = time.perf_counter() - started
    print(f"\n{args.scale_runs} runs × {args.scale_metrics} series (20 true 10 % shifts each, "
          f"σ 3 %): {len(found)} change points in {took:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=50)
    parser.add_argument("--length", type=int, default=100)
    parser.add_argument("--changes", type=int, default=3)
    parser.add_argument("--scale-runs", type=int, default=10_000)
    parser.add_argument("--scale-metrics", type=int, default=20)
    args = parser.parse_args()
    accuracy(args)
    scale(args)


if __name__ == "__main__":
    main()
