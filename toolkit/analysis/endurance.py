"""perfkit endurance: a long steady run judged for leaks, drift and the error budget.

Computed from the run directory after the run (so `analyze_endurance` can be re-run on any run
directory) over the judged window (warm-up left out), stored in run.json "endurance":
- memory growth of the target's process tree (RSS), judged on whether it continues, not on one
  slope over the whole window (`measure_memory`): memory that grows while caches, pools and
  stored data warm up and then stays flat is normal. The RSS samples are averaged in at most
  60 time blocks; when the whole window's slope (stats.trend_interval: OLS on the block
  means, autocorrelation-widened t-interval) is not clearly below the threshold, a
  two-segment least-squares fit (one breakpoint, the later segment at least a third of the
  window) finds where the growth changed, and the later segment's slope with its interval
  decides (a breakpoint counts where the segments depart from one straight line by more than
  growth at the threshold adds over the window; else the whole window's slope decides). The
  verdict, against --leak-threshold T:
  - "leak": the later slope's whole interval lies above T, and the later segment lasts at
    least MIN_SETTLED_S — or, in a shorter run, its lower bound is above
    SHORT_RUN_LEAK_FACTOR × T (growth that large is no warm-up a short run could show);
  - "no_leak": the interval lies below T and the memory has been flat (since the breakpoint,
    or over the whole window) for at least MIN_SETTLED_S; early growth that stopped is
    reported as warm-up ("plateau");
  - "inconclusive": anything else — the run is too short to tell (flat, but for less than
    MIN_SETTLED_S; growing, but a short run cannot tell a leak from a long warm-up), too
    noisy (the interval straddles T), or too few samples for a trend;
  - "missing": no RSS samples (the target's process is not known: --target-pid).
  The projection to 24 h is the end level plus 24 h of the deciding slope, with its interval.
- latency drift: p95 of the first and of the last DRIFT_FRACTION of the window, per endpoint
  and for all requests, with their ratio; the drift of all requests warns when the last part's
  p95 is at least DRIFT_WARN_RATIO times the first's and DRIFT_WARN_MS slower;
- error budget: the failures against what the error-rate KPI allows for this many requests;
- resource trends: the whole window's slope and interval for RSS, USS, CPU, threads and open
  descriptors. A series that bends (descriptors opened during a warm-up, then steady) can have
  a slope but no finite interval (too few independent blocks): stored as null, shown as "no
  interval".
The run's verdict includes these (analysis.kpi): a leak or an exhausted error budget fails the
run, inconclusive memory growth or a drift warns.
"""

import math
from typing import Any

import numpy as np

from ..kpi_file import KpiTarget, is_job
from ..result import RunResult, json_safe
from . import stats
from .kpi import judged_window

# A no-leak verdict needs the memory to have been flat for this long (after any warm-up
# growth): slow steps (a cache's TTL cycle, a pool filling at its limit, a GC generation)
# take minutes to show, and a shorter flat stretch proves little. Runs with less are
# inconclusive; the interval of the slope, not this, deals with noise.
MIN_SETTLED_S = 120.0
# A shorter run still proves a leak when even the lower bound of the later slope is this many
# times the threshold: 10 MB/h → 100 MB/h, growth no warm-up keeps up for the whole later part.
SHORT_RUN_LEAK_FACTOR = 10.0
# The later segment of the two-segment fit spans at least this share of the window, so a
# breakpoint near the end cannot leave a handful of noisy blocks to decide.
LATER_MIN_SHARE = 1 / 3
PROJECTION_H = 24.0
DRIFT_FRACTION = 0.2
DRIFT_WARN_RATIO = 1.5
DRIFT_WARN_MS = 10.0
CONFIDENCE = 0.95
TREND_COLUMNS = {"rss_mb": "MB", "uss_mb": "MB", "cpu_percent": "%", "threads": "threads",
                 "open_files": "fds"}


def _trend(t: np.ndarray, y: np.ndarray) -> dict[str, Any] | None:
    """Slope per hour with its interval (±inf where it has none), or None (too few blocks)."""
    trend = stats.trend_interval(t, y, CONFIDENCE)
    if trend is None:
        return None
    slope, low, high, blocks = trend
    return {"per_h": slope * 3600, "ci_low_per_h": low * 3600, "ci_high_per_h": high * 3600,
            "blocks": blocks}


def measure_trend(run: RunResult, column: str, start: float, end: float) -> dict[str, Any]:
    """Slope per hour of one resources.csv column over [start, end], with its interval."""
    frame = run.resources
    missing = {"per_h": None, "ci_low_per_h": None, "ci_high_per_h": None, "first": None,
               "last": None, "blocks": 0}
    if frame is None or column not in frame.columns:
        return missing
    window = frame[(frame["t"] >= start) & (frame["t"] <= end)].dropna(subset=[column])
    trend = _trend(window["t"].to_numpy(float), window[column].to_numpy(float))
    if trend is None:
        return missing
    edge = max(1, len(window) // 10)  # means of the first and last tenth of the samples
    return {**trend, "first": float(window[column].iloc[:edge].mean()),
            "last": float(window[column].iloc[-edge:].mean())}


def judge_leak(trend: dict[str, Any], threshold_mb_h: float, settled_s: float) -> str:
    """leak / no_leak / inconclusive / missing for the deciding slope of `trend`, judged after
    `settled_s` seconds of run since the breakpoint (the whole window without one)."""
    if trend.get("per_h") is None:
        return "missing"
    low, high = trend["ci_low_per_h"], trend["ci_high_per_h"]
    long_enough = settled_s >= MIN_SETTLED_S
    if low is not None and low > threshold_mb_h and (
            long_enough or low > SHORT_RUN_LEAK_FACTOR * threshold_mb_h):
        return "leak"
    if high is not None and high < threshold_mb_h and long_enough:
        return "no_leak"
    return "inconclusive"


def measure_memory(run: RunResult, start: float, end: float,
                   threshold_mb_h: float) -> dict[str, Any]:
    """run.json "endurance"."memory": the leak verdict of the RSS series (module docstring)."""
    memory: dict[str, Any] = {
        "per_h": None, "ci_low_per_h": None, "ci_high_per_h": None, "first": None,
        "last": None, "blocks": 0, "unit": "MB/h", "confidence": CONFIDENCE,
        "threshold_mb_h": threshold_mb_h, "min_settled_s": MIN_SETTLED_S, "verdict": "missing",
        "reason": "", "whole": None, "breakpoint_s": None, "settled_s": None, "segments": [],
        "plateau": None, "projection_24h_mb": None, "note": ""}
    frame = run.resources
    window = None
    if frame is not None and "rss_mb" in frame.columns:
        window = frame[(frame["t"] >= start) & (frame["t"] <= end)].dropna(subset=["rss_mb"])
    if window is None or window.empty:
        memory["reason"] = ("no RSS samples of the target in the judged window (a target "
                            "perfkit did not start needs --target-pid)")
        return memory
    t, y = window["t"].to_numpy(float), window["rss_mb"].to_numpy(float)
    edge = max(1, t.size // 10)
    memory.update(first=float(y[:edge].mean()), last=float(y[-edge:].mean()))
    whole = _trend(t, y)
    if whole is None:
        memory.update(verdict="inconclusive", reason=(
            f"{t.size} RSS samples in {end - start:.0f} s judged are too few for a trend (at "
            f"least 5 are needed)"))
        return memory
    memory["whole"] = whole
    means = stats.block_means(t, y)
    assert means is not None  # there is a trend
    deciding, settled_from = whole, start
    segments = [_segment(*means, start, float(t[0]), float(t[-1]))]
    if whole["ci_high_per_h"] >= threshold_mb_h:
        # Not clearly flat over the whole window: does the growth continue, or did it stop?
        later = _fit_later_segment(t, y, means, start, threshold_mb_h)
        if later is not None:
            deciding, settled_from, segments = later["trend"], later["from_t"], later["segments"]
            memory["breakpoint_s"] = later["from_t"] - start
    memory["segments"] = segments
    settled_s = end - settled_from
    verdict = judge_leak(deciding, threshold_mb_h, settled_s)
    memory.update({key: deciding[key] for key in ("per_h", "ci_low_per_h", "ci_high_per_h",
                                                  "blocks")})
    memory.update(verdict=verdict, settled_s=settled_s)
    if len(segments) == 2 and deciding["ci_high_per_h"] < threshold_mb_h:
        early, later = segments
        grew_mb = later["start_mb"] - early["start_mb"]  # a step at the breakpoint included
        # Warm-up growth is growth a leak could have shown: faster than the threshold.
        if grew_mb / memory["breakpoint_s"] * 3600 > threshold_mb_h:
            memory["plateau"] = {"grew_mb": grew_mb, "over_s": memory["breakpoint_s"]}
    level = segments[-1]["end_mb"]
    memory["projection_24h_mb"] = {
        "hours": PROJECTION_H, "from_mb": level,
        "mb": level + deciding["per_h"] * PROJECTION_H,
        "low": level + deciding["ci_low_per_h"] * PROJECTION_H,
        "high": level + deciding["ci_high_per_h"] * PROJECTION_H}
    memory["reason"] = _memory_reason(memory, end - start)
    return memory


def _fit_later_segment(t: np.ndarray, y: np.ndarray, means: tuple[np.ndarray, np.ndarray],
                       start: float, threshold_mb_h: float) -> dict[str, Any] | None:
    """The two-segment fit of the block means: the later segment's trend (on the samples
    after the breakpoint) and both fitted segments, in seconds since `start`; None when
    there is no breakpoint that matters.

    A breakpoint matters when the two segments depart from the single straight line by more
    than growth at the threshold adds over the window: a smaller change (a steady leak's
    segments differ only by noise) could not change the verdict, and the whole window then
    judges the growth with all of its data."""
    block_t, block_y = means
    min_later = max(5, math.ceil(block_t.size * LATER_MIN_SHARE))
    k = stats.fit_two_segments(block_t, block_y, min_first=3, min_second=min_later)
    if k is None:
        return None
    fitted = np.concatenate([np.polyval(np.polyfit(part_t, part_y, 1), part_t)
                             for part_t, part_y in ((block_t[:k], block_y[:k]),
                                                    (block_t[k:], block_y[k:]))])
    line = np.polyval(np.polyfit(block_t, block_y, 1), block_t)
    span_h = float(block_t[-1] - block_t[0]) / 3600
    if float(np.abs(fitted - line).max()) <= threshold_mb_h * span_h:
        return None
    from_t = float(block_t[k - 1] + block_t[k]) / 2  # between the last early and first later block
    later = _trend(t[t >= from_t], y[t >= from_t])
    if later is None:
        return None
    segments = [_segment(block_t[:k], block_y[:k], start, float(t[0]), from_t),
                _segment(block_t[k:], block_y[k:], start, from_t, float(t[-1]))]
    return {"trend": later, "from_t": from_t, "segments": segments}


def _segment(t: np.ndarray, y: np.ndarray, start: float, from_t: float,
             to_t: float) -> dict[str, float]:
    """The least-squares line through (t, y) from `from_t` to `to_t`, in seconds since
    `start`: what the report draws."""
    slope, intercept = np.polyfit(t - start, y, 1) if t.size > 1 else (0.0, float(y.mean()))
    return {"start_s": from_t - start, "end_s": to_t - start,
            "start_mb": float(intercept + slope * (from_t - start)),
            "end_mb": float(intercept + slope * (to_t - start)), "per_h": float(slope) * 3600}


def signed(value: float) -> str:
    """'+1.2', and '+0.0' rather than '-0.0' for a slope that rounds to nothing."""
    return f"{round(value, 1) + 0.0:+,.1f}"


def _interval(memory: dict[str, Any]) -> str:
    low, high = memory["ci_low_per_h"], memory["ci_high_per_h"]
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return "no interval: too few independent blocks"
    return f"{100 * memory['confidence']:.0f} % CI {signed(low)} .. {signed(high)}"


def _memory_reason(memory: dict[str, Any], window_s: float) -> str:
    """The sentence that says why the memory verdict is what it is."""
    threshold = memory["threshold_mb_h"]
    settled_s, verdict = memory["settled_s"], memory["verdict"]
    where = (f"since {memory['breakpoint_s']:.0f} s into the judged window"
             if memory["breakpoint_s"] is not None else f"over the {window_s:.0f} s judged")
    slope = f"{signed(memory['per_h'])} MB/h ({_interval(memory)}) {where}"
    plateau = memory["plateau"]
    warmup = (f"grew {plateau['grew_mb']:.1f} MB in the first {plateau['over_s']:.0f} s "
              f"(warm-up), flat since; " if plateau else "")
    needs = f"{MIN_SETTLED_S / 60:g} min"
    if verdict == "leak":
        return f"keeps growing {slope}, above the {threshold:g} MB/h threshold"
    if verdict == "no_leak":
        return f"{warmup}{slope}, below the {threshold:g} MB/h threshold"
    high, low = memory["ci_high_per_h"], memory["ci_low_per_h"]
    if high is not None and high < threshold:
        return (f"{warmup}the run is too short to tell: flat for only {settled_s:.0f} s "
                f"({slope}); no leak needs ≥ {needs} of flat memory after any warm-up growth")
    if low is not None and low > threshold:
        return (f"the run is too short to tell: growing {slope} for only {settled_s:.0f} s, "
                f"which a warm-up can do; a run this short proves a leak only above "
                f"{SHORT_RUN_LEAK_FACTOR * threshold:g} MB/h, one with ≥ {needs} after any "
                f"warm-up above {threshold:g} MB/h")
    return (f"{slope} straddles the {threshold:g} MB/h threshold: the run is too short or too "
            f"noisy to tell (a longer run narrows the interval; no leak needs it below the "
            f"threshold and ≥ {needs} of flat memory)")


def measure_drift(run: RunResult, start: float, end: float) -> dict[str, Any]:
    """p95 of the first and last DRIFT_FRACTION of [start, end], per request name and for
    all requests ("all"), and last / first; "verdict" warn when all requests drifted."""
    part_s = (end - start) * DRIFT_FRACTION
    latency = run.latency[~run.latency["name"].map(is_job).astype(bool)]
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
    overall = drift["all"]
    verdict = "missing"
    if overall["ratio"] is not None:
        drifted = (overall["ratio"] >= DRIFT_WARN_RATIO
                   and overall["p95_last_ms"] - overall["p95_first_ms"] >= DRIFT_WARN_MS)
        verdict = "warn" if drifted else "pass"
    return {"fraction": DRIFT_FRACTION, "part_s": part_s, "endpoints": drift,
            "verdict": verdict, "warn_ratio": DRIFT_WARN_RATIO, "warn_ms": DRIFT_WARN_MS}


def measure_error_budget(run: RunResult, targets: list[KpiTarget], start: float,
                         end: float) -> dict[str, Any]:
    """Failures against what the run-wide error-rate KPI allows for the requests made."""
    latency = run.latency[(run.latency["t"] >= start) & (run.latency["t"] <= end)]
    requests = latency[~latency["name"].map(is_job).astype(bool)]
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
    return json_safe({
        "window": {"start": start, "end": end, "duration_s": end - start},
        "memory": measure_memory(run, start, end, leak_threshold_mb_h),
        "drift": measure_drift(run, start, end),
        "error_budget": measure_error_budget(run, targets, start, end),
        "trends": {column: {**trend, "unit": f"{TREND_COLUMNS[column]}/h"}
                   for column, trend in trends.items()},
    })


def describe_memory(memory: dict[str, Any]) -> str:
    """One line for the terminal and the report: the verdict in capitals where it decides."""
    words = {"leak": "LEAK", "no_leak": "no leak", "inconclusive": "inconclusive",
             "missing": "not measured"}
    verdict = memory.get("verdict") or "missing"
    reason = memory.get("reason")
    if not reason:  # a run directory written before the reason was stored
        reason = (f"{signed(memory['per_h'])} MB/h ({_interval(memory)})"
                  if memory.get("per_h") is not None else "no RSS samples of the target")
    return f"memory growth {words.get(verdict, verdict)}: {reason}"
