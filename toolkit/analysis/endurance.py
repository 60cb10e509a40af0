"""perfkit endurance: a long steady run judged for leaks, drift and the error budget.

Computed from the run directory after the run (so `analyze_endurance` can be re-run on any run
directory) over the judged window (warm-up left out), stored in run.json "endurance":
- memory growth of the target's process tree (RSS, MB/h) as the OLS slope on block means with
  a 95 % interval (stats.trend_interval: autocorrelation-widened t-interval); the leak verdict
  is "leak" when the whole interval lies above --leak-threshold, "no_leak" when it lies below,
  "inconclusive" when it straddles it (the run is too short or too noisy to tell), "missing"
  without RSS samples;
- latency drift: p95 of the first and of the last DRIFT_FRACTION of the window, per endpoint
  and for all requests, with their ratio;
- error budget: the failures against what the error-rate KPI allows for this many requests;
- resource trends: the same slope and interval for USS, CPU, threads and open descriptors.
A leak verdict fails the command (exit 1) like a failed KPI does.
"""

import math
from typing import Any

from ..config import JOB_NAMES, KpiTarget
from ..result import RunResult, json_safe
from . import stats
from .kpi import judged_window

# Below this, a service still filling its caches, pools and tables grows like a leak would:
# the verdict stands (it is what the window shows) but says so.
SHORT_RUN_S = 600.0
DRIFT_FRACTION = 0.2
CONFIDENCE = 0.95
TREND_COLUMNS = {"rss_mb": "MB", "uss_mb": "MB", "cpu_percent": "%", "threads": "threads",
                 "open_files": "fds"}


def measure_trend(run: RunResult, column: str, start: float, end: float) -> dict[str, Any]:
    """Slope per hour of one resources.csv column over [start, end], with its interval."""
    frame = run.resources
    missing = {"per_h": None, "ci_low_per_h": None, "ci_high_per_h": None, "first": None,
               "last": None, "blocks": 0}
    if frame is None or column not in frame.columns:
        return missing
    window = frame[(frame["t"] >= start) & (frame["t"] <= end)].dropna(subset=[column])
    trend = stats.trend_interval(window["t"].to_numpy(), window[column].to_numpy(), CONFIDENCE)
    if trend is None:
        return missing
    slope, low, high, blocks = trend
    edge = max(1, len(window) // 10)  # means of the first and last tenth of the samples
    return {"per_h": slope * 3600, "ci_low_per_h": low * 3600, "ci_high_per_h": high * 3600,
            "first": float(window[column].iloc[:edge].mean()),
            "last": float(window[column].iloc[-edge:].mean()), "blocks": blocks}


def judge_leak(trend: dict[str, Any], threshold_mb_h: float) -> str:
    if trend["per_h"] is None:
        return "missing"
    if trend["ci_low_per_h"] > threshold_mb_h:
        return "leak"
    if trend["ci_high_per_h"] < threshold_mb_h:
        return "no_leak"
    return "inconclusive"


def measure_drift(run: RunResult, start: float, end: float) -> dict[str, Any]:
    """p95 of the first and last DRIFT_FRACTION of [start, end], per request name and for
    all requests ("all"), and last / first."""
    part_s = (end - start) * DRIFT_FRACTION
    latency = run.latency[~run.latency["name"].isin(JOB_NAMES)]
    first = latency[(latency["t"] >= start) & (latency["t"] < start + part_s)]
    last = latency[(latency["t"] > end - part_s) & (latency["t"] <= end)]
    drift: dict[str, Any] = {}
    names = ["all", *sorted(set(first["name"]) | set(last["name"]))]
    for name in names:
        p95 = []
        for part in (first, last):
            rows = part if name == "all" else part[part["name"] == name]
            p95.append(stats.percentile_ms(stats.merge_histograms(rows["hist"]), 95))
        ratio = p95[1] / p95[0] if p95[0] and p95[1] is not None else None
        drift[name] = {"p95_first_ms": p95[0], "p95_last_ms": p95[1], "ratio": ratio}
    return {"fraction": DRIFT_FRACTION, "part_s": part_s, "endpoints": drift}


def measure_error_budget(run: RunResult, targets: list[KpiTarget], start: float,
                         end: float) -> dict[str, Any]:
    """Failures against what the run-wide error-rate KPI allows for the requests made."""
    latency = run.latency[(run.latency["t"] >= start) & (run.latency["t"] <= end)]
    requests = latency[~latency["name"].isin(JOB_NAMES)]
    count, failures = int(requests["count"].sum()), int(requests["failures"].sum())
    kpi = next((k for k in targets if k.metric == "error_rate_percent" and k.endpoint is None),
               None)
    limit = None if kpi is None else (kpi.allowed if kpi.allowed is not None else kpi.target)
    budget = None if limit is None else limit / 100.0 * count
    used = None
    if budget:
        used = 100.0 * failures / budget
    elif budget == 0 and count:
        used = math.inf if failures else 0.0
    return {"requests": count, "failures": failures, "limit_percent": limit,
            "allowed_failures": budget, "used_percent": used,
            "note": "" if kpi is not None else "no error-rate KPI: no budget to use"}


def analyze_endurance(run: RunResult, targets: list[KpiTarget],
                      leak_threshold_mb_h: float) -> dict[str, Any]:
    """run.json "endurance" of a run directory."""
    start, end = judged_window(run)
    trends = {column: measure_trend(run, column, start, end) for column in TREND_COLUMNS}
    memory = trends["rss_mb"]
    note = ""
    if end - start < SHORT_RUN_S and memory["per_h"] is not None:
        note = (f"short run ({end - start:.0f} s judged): a working set still warming up (caches, "
                f"pools, stored data) grows like a leak; judge leaks on runs of "
                f"{SHORT_RUN_S / 60:.0f} min or more")
    return json_safe({
        "window": {"start": start, "end": end, "duration_s": end - start},
        "memory": {**memory, "unit": "MB/h", "confidence": CONFIDENCE,
                   "threshold_mb_h": leak_threshold_mb_h,
                   "verdict": judge_leak(memory, leak_threshold_mb_h), "note": note},
        "drift": measure_drift(run, start, end),
        "error_budget": measure_error_budget(run, targets, start, end),
        "trends": {column: {**trend, "unit": f"{TREND_COLUMNS[column]}/h"}
                   for column, trend in trends.items()},
    })


def describe_memory(memory: dict[str, Any]) -> str:
    if memory["verdict"] == "missing":
        return "memory growth not measured (no RSS samples of the target: use --target-pid)"
    words = {"leak": "LEAK", "no_leak": "no leak", "inconclusive": "inconclusive"}
    return (f"memory growth {memory['per_h']:+.1f} MB/h "
            f"({100 * memory['confidence']:.0f} % CI {memory['ci_low_per_h']:+.1f} .. "
            f"{memory['ci_high_per_h']:+.1f}), threshold {memory['threshold_mb_h']:g} MB/h: "
            f"{words[memory['verdict']]}")
