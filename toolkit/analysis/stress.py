"""perfkit stress: a stepwise ramp until the target breaks; its capacity and how it broke.

The ramp (plan_steps): `--users` (closed) or `--rate` (open) is the peak, where the ramp
stops; it starts at `--start-users` / `--start-rate` (default: one step) and adds
`--step-users` / `--step-rate` (default: what reaches the peak in `--max-steps` steps). An open
load's users are only its concurrency cap: each step's are sized from its rate and the latency
the previous step showed (size_open_users: Little's law with headroom), never fewer than the
step before (stopping users would cut their requests off), at most an explicit `--users`.

Each step is judged live at its end, on its own window with the first SETTLE part left out
(users spawning, the previous step's queue draining), and breaks on the first of:
- a KPI that fails on that window (alarms.judge_window: the report's own KPI definitions,
  upper bounds only: a step's throughput is what the ramp asked for, not a verdict);
- the error rate of all requests above `max_error_rate_percent`;
- latency growing without bound: the median of the step's last third at least GROWTH_RATIO ×
  that of its first third while the per-second medians rise steadily (Kendall's tau at least
  GROWTH_TAU: a queue that grows all through the step, as an open load past capacity shows,
  not one pause of the machine at the end); or, against the previous step, throughput grew
  by less than half as much as the offered load while the median grew by at least half as
  much (a closed load past capacity: more users, the same throughput, waits growing with the
  load instead: "latency doubled while throughput did not grow" when the load doubles).
  The median, not a tail percentile: a growing queue delays every request, while a pause of
  a busy machine moves only the tail. Both rules need the increase to be at least
  GROWTH_FLOOR_MS, so millisecond jitter never counts.
The run stops at the broken step, at the peak (`max_steps`), or at --duration, whichever comes
first.

The capacity (summarize_stress) respects every KPI, resource ones included, and is never
"none" or 0 when a step served requests and broke on a resource that grows with the load:
- measured: the last step before the first broken one (every KPI held there);
- estimated where the broken step broke a CPU, disk or network KPI: by the utilisation law
  the resource's demand per request is D = utilisation / throughput (fitted through the origin
  over the steps so far, weighted towards the heavier ones), so the throughput at the KPI's
  limit is limit / D, and Little's law (N = X × R) gives the concurrency there. Where the
  broken step broke only such KPIs, the estimate (between the held and the broken step) is the
  capacity; where even the first step broke, the estimate is all there is (the verdict warns),
  with what that step served and a lower start or an open load to try. Memory is a level, not
  a per-request demand: a step that breaks it (or latency, or errors) gets no estimate.
A knee estimate fits the Universal Scalability Law to the steps (fit_usl). The run's verdict
is the capacity result (judge_stress); the KPIs over the whole ramp, breaking step included,
are shown as information. The result goes to run.json "stress", the chart to stress.svg.
"""

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import OptimizeWarning, curve_fit

from ..errors import ConfigError
from ..kpi_file import KpiTarget, is_job
from ..result import LATENCY_COLUMNS, KpiResult, Step
from ..settings import StressSettings
from ..units import format_percent, format_value
from . import stats
from .kpi import judge_kpi, judge_window, kpi_limit

SETTLE_FRACTION = 0.2
SETTLE_MAX_S = 5.0
GROWTH_RATIO = 2.0
GROWTH_FLOOR_MS = 20.0
GROWTH_TAU = 0.6

# Open-load users (the concurrency cap): rate × latency × OPEN_HEADROOM, at least
# OPEN_USERS_FLOOR; the first step assumes FIRST_LATENCY_S. Without --users, at most
# OPEN_USERS_MAX (a load generator's sane limit). A step whose generator started LATE_PERCENT
# of its iterations late by its own doing (a flow that sleeps or makes several requests per
# iteration: longer than one request's latency) doubles the users of the next.
OPEN_HEADROOM = 2.0
OPEN_USERS_FLOOR = 2
FIRST_LATENCY_S = 0.5
OPEN_USERS_MAX = 1000
LATE_PERCENT = 10.0

# Metrics a resource KPI judges that grow in proportion to the throughput (utilisation law):
# their limit can be turned into a throughput. Memory (rss_mb_*) is a level, not a demand.
DEMAND_METRICS = ("cpu_busiest_percent_mean", "cpu_busiest_percent_peak",
                  "cpu_machine_percent_mean", "cpu_machine_percent_peak",
                  "disk_mb_s_mean", "disk_mb_s_peak", "net_mb_s_mean", "net_mb_s_peak")
RESOURCE_PREFIXES = ("cpu_", "rss_", "disk_", "net_")

# The knee: a USL fit below this R² is poor; a peak further than KNEE_EXTRAPOLATION × the
# largest measured concurrency is an extrapolation; kappa below KAPPA_MIN is no retrograde.
KNEE_MIN_R2 = 0.9
KNEE_EXTRAPOLATION = 2.0
KAPPA_MIN = 1e-9


def settle_s(step_duration_s: float) -> float:
    """The first part of every step left out of its judgement."""
    return min(SETTLE_MAX_S, SETTLE_FRACTION * step_duration_s)


def plan_steps(settings: StressSettings) -> list[Step]:
    """(start offset s, users, rate) of every step. An open load's users here are the first
    step's: the run sizes each later step's from what the one before showed."""
    load = settings.load
    if settings.step_duration_s <= 0 or settings.max_steps < 1:
        raise ConfigError("--step-duration must be positive and --max-steps at least 1")
    if load.rate is None:
        if settings.step_rate is not None or settings.start_rate is not None:
            raise ConfigError("--start-rate and --step-rate need an open load: give --rate "
                              "(the peak) too")
        levels = ramp_levels(float(load.users), settings.start_users, settings.step_users,
                             settings.max_steps, whole=True, names=("--start-users", "--users"))
        return [(k * settings.step_duration_s, int(level), None) for k, level in enumerate(levels)]
    if settings.step_users is not None or settings.start_users is not None:
        raise ConfigError("with --rate the ramp is --start-rate and --step-rate; --users caps "
                          "each step's users")
    rates = ramp_levels(load.rate, settings.start_rate, settings.step_rate, settings.max_steps,
                        whole=False, names=("--start-rate", "--rate"))
    users = size_open_users(rates[0], None, 0, open_users_cap(settings))
    return [(k * settings.step_duration_s, users, rate) for k, rate in enumerate(rates)]


def ramp_levels(peak: float, start: float | None, step: float | None, max_steps: int,
                whole: bool, names: tuple[str, str]) -> list[float]:
    """start, start + step, ... up to `peak` (the last level is the peak itself), at most
    `max_steps` of them. The default step reaches the peak in `max_steps` steps."""
    if start is not None and start > peak:
        raise ConfigError(f"{names[0]} {start:g} is above {names[1]} {peak:g}, the peak "
                          f"where the ramp stops")
    if step is None:
        span = peak if start is None else peak - start
        parts = max_steps if start is None else max(1, max_steps - 1)
        step = math.ceil(span / parts) if whole else span / parts
    first = step if start is None else start
    levels: list[float] = []
    for k in range(max_steps):
        level = round(first + k * step, 6)
        # Float steps (0.1 + 0.2 ...) land a hair below the peak; a step of 0 is the peak.
        if level >= peak * (1 - 1e-9) or step <= 0:
            levels.append(float(peak))
            break
        levels.append(float(level))
    return levels


def open_users_cap(settings: StressSettings) -> int:
    return settings.load.users if settings.users_given else OPEN_USERS_MAX


def size_open_users(rate: float, previous: dict[str, Any] | None, users_before: int,
                    cap: int) -> int:
    """Users (concurrency slots) for an open-load step at `rate`: Little's law on the previous
    step's p95 latency with OPEN_HEADROOM (FIRST_LATENCY_S before any step), doubled when the
    previous step's generator was late by itself, never fewer than before, at most `cap`."""
    p95_ms = None if previous is None else previous.get("p95_ms")
    latency_s = FIRST_LATENCY_S if p95_ms is None else p95_ms / 1000.0
    needed = math.ceil(rate * latency_s * OPEN_HEADROOM)
    if previous is not None and (previous.get("late_iterations_percent") or 0) >= LATE_PERCENT:
        needed = max(needed, 2 * users_before)
    return max(1, min(cap, max(OPEN_USERS_FLOOR, users_before, needed)))


def summarize_requests(records: list[dict[str, Any]], duration_s: float) -> dict[str, Any]:
    """Count, failures, rps, error rate, mean and percentiles of all HTTP requests together."""
    requests = [r for r in records if not is_job(r["name"])]
    count = sum(int(r["count"]) for r in requests)
    failures = sum(int(r["failures"]) for r in requests)
    hist = stats.merge_histograms(r["hist"] for r in requests)
    return {"count": count, "failures": failures,
            **stats.request_rates(count, failures, duration_s),
            "mean_ms": stats.mean_ms(hist),
            "p50_ms": stats.percentile_ms(hist, 50), "p95_ms": stats.percentile_ms(hist, 95),
            "p99_ms": stats.percentile_ms(hist, 99)}


def _p50_ms(records: list[dict[str, Any]]) -> float | None:
    requests = [r["hist"] for r in records if not is_job(r["name"])]
    return stats.percentile_ms(stats.merge_histograms(requests), 50)


def kendall_tau(values: list[float]) -> float | None:
    """Kendall's tau-a of `values` against their order: 1 when every value is above all
    before it; None with fewer than 4 values."""
    n = len(values)
    if n < 4:
        return None
    score = sum((values[j] > values[i]) - (values[j] < values[i])
                for i in range(n) for j in range(i + 1, n))
    return score / (n * (n - 1) / 2)


def _grew(before: float | None, after: float | None) -> bool:
    return (before is not None and after is not None and after >= GROWTH_RATIO * before
            and after - before >= GROWTH_FLOOR_MS)


def _busiest_cpu(resources: pd.DataFrame | None) -> tuple[float | None, float | None]:
    """(mean, peak) CPU of the target's busiest process in the window, % of one core."""
    if resources is None or "cpu_busiest_percent" not in resources.columns:
        return None, None
    series = pd.to_numeric(resources["cpu_busiest_percent"], errors="coerce").dropna()
    if series.empty:
        return None, None
    return float(series.mean()), float(series.max())


def judge_step(step: int, users: int, rate: float | None, records: list[dict[str, Any]],
               resources: pd.DataFrame | None, start: float, end: float,
               targets: list[KpiTarget], previous: dict[str, Any] | None,
               max_error_rate_percent: float) -> dict[str, Any]:
    """The result of one step (1-based `step`) from its window's latency records and resource
    samples: its throughput and latency, the resource values its KPIs judged, the service
    demand, and whether it held."""
    duration_s = end - start
    total = summarize_requests(records, duration_s)
    third = duration_s / 3
    first = _p50_ms([r for r in records if r["t"] < start + third])
    last = _p50_ms([r for r in records if r["t"] >= end - third])
    breaches: list[dict[str, Any]] = []
    judged = judge_window(records, resources, start, end, targets)
    for result in judged:
        if result.verdict == "fail":
            breaches.append({"kind": "kpi", "kpi": result.kpi.name, "metric": result.kpi.metric,
                             "endpoint": result.kpi.endpoint, "value": result.value,
                             "limit": kpi_limit(result.kpi), "reason": result.reason})
    error_rate = total["error_rate_percent"]
    if error_rate is not None and error_rate > max_error_rate_percent:
        breaches.append({"kind": "error_rate", "kpi": "error rate (--max-error-rate)",
                         "endpoint": None, "value": error_rate, "limit": max_error_rate_percent,
                         "reason": f"error rate {format_value(error_rate, '%')} is over the "
                                   f"{format_value(max_error_rate_percent, '%')} limit"})
    seconds = sorted({r["t"] for r in records if not is_job(r["name"])})
    per_second = [_p50_ms([r for r in records if r["t"] == t]) for t in seconds]
    tau = kendall_tau([m for m in per_second if m is not None])
    if _grew(first, last) and tau is not None and tau >= GROWTH_TAU:
        breaches.append({"kind": "latency_growth", "kpi": "latency growth within the step",
                         "endpoint": None, "value": last, "limit": first,
                         "reason": f"the median rose from {format_value(first, 'ms')} in "
                                   f"the first third of the step to "
                                   f"{format_value(last, 'ms')} in the last, rising second "
                                   f"by second (tau {tau:.2f}): a queue that keeps growing"})
    breaches += _growth_across_steps(total, users, rate, previous)
    cpu_mean, cpu_peak = _busiest_cpu(resources)
    rps, mean_ms = total["rps"], total["mean_ms"]
    return {"step": step, "users": users, "rate": rate, "started_at": start, "ended_at": end,
            **total, "p50_first_third_ms": first, "p50_last_third_ms": last, "p50_tau": tau,
            # Little's law: requests in flight on average.
            "concurrency": rps * mean_ms / 1000.0 if rps and mean_ms is not None else None,
            "cpu_busiest_mean_percent": cpu_mean, "cpu_busiest_peak_percent": cpu_peak,
            # Utilisation law: % of one core × 10 ms per request per rps.
            "cpu_ms_per_request": 10.0 * cpu_mean / rps if rps and cpu_mean is not None
            else None,
            "resources": {r.kpi.metric: r.value for r in judged
                          if r.kpi.metric.startswith(RESOURCE_PREFIXES)},
            "endpoints": {name: {key: s[key] for key in ("count", "rps", "error_rate_percent",
                                                         "p50_ms", "p95_ms", "p99_ms")}
                          for name, s in stats.summarize_endpoints(
                              pd.DataFrame(records, columns=LATENCY_COLUMNS),
                              duration_s).items()},
            "held": not breaches, "breaches": breaches}


def _growth_across_steps(total: dict[str, Any], users: int, rate: float | None,
                         previous: dict[str, Any] | None) -> list[dict[str, Any]]:
    before, now_ms = (previous or {}).get("p50_ms"), total["p50_ms"]
    if previous is None or not before or now_ms is None or now_ms - before < GROWTH_FLOOR_MS:
        return []
    offered = rate if rate is not None else float(users)
    offered_before = (previous["rate"] if previous["rate"] is not None
                      else float(previous["users"]))
    offered_growth = offered / offered_before - 1 if offered_before else 0.0
    rps_growth = (total["rps"] / previous["rps"] - 1
                  if total["rps"] is not None and previous["rps"] else 0.0)
    if rps_growth >= offered_growth / 2 or now_ms / before - 1 < offered_growth / 2:
        return []
    return [{"kind": "latency_growth", "kpi": "latency growth across steps", "endpoint": None,
             "value": now_ms, "limit": before,
             "reason": f"the median went from {format_value(before, 'ms')} to "
                       f"{format_value(now_ms, 'ms')} while throughput grew "
                       f"{100 * rps_growth:.0f} % for {100 * offered_growth:.0f} % more "
                       f"load: the target is saturated"}]


def estimate_at_limit(steps: list[dict[str, Any]], broken: dict[str, Any]) -> dict[str, Any] | None:
    """The throughput at which the first resource KPI the broken step failed reaches its limit
    (utilisation law, from the demand measured in the steps up to it), with the concurrency
    there (Little's law, at the broken step's mean latency: an upper bound, latency being
    lower at the lower load). None where it broke no resource KPI that grows with the load."""
    upto = [s for s in steps if s["step"] <= broken["step"]]
    found = []
    for breach in broken["breaches"]:
        metric = breach.get("metric")
        if breach["kind"] != "kpi" or metric not in DEMAND_METRICS or not breach["limit"]:
            continue
        points = [(s["rps"], s["resources"].get(metric)) for s in upto]
        points = [(x, v) for x, v in points if x and v is not None]
        if not points:
            continue
        # Least squares through the origin: v = D × X, the heavier steps weighing most.
        demand = sum(x * v for x, v in points) / sum(x * x for x, _ in points)
        if demand <= 0:
            continue
        found.append((breach["limit"] / demand, demand, breach, [s["step"] for s in upto
                                                                 if s["rps"]]))
    if not found:
        return None
    rps, demand, breach, used = min(found, key=lambda f: f[0])
    mean_ms = broken.get("mean_ms")
    concurrency = rps * mean_ms / 1000.0 if mean_ms is not None else None
    others = [b["kpi"] for b in broken["breaches"] if b.get("metric") not in DEMAND_METRICS]
    return {"kpi": breach["kpi"], "metric": breach["metric"], "limit": breach["limit"],
            "demand_per_request": demand, "rps": rps, "concurrency": concurrency,
            "steps": used, "other_breaches": others,
            "text": _describe_demand(breach["kpi"], breach["metric"], breach["limit"], demand,
                                     rps, used)}


def _describe_demand(kpi: str, metric: str, limit: float, demand: float, rps: float,
                     steps: list[int]) -> str:
    """'32 ms of CPU per request (target CPU mean, steps 1–3): ~25 rps at 80 % of one core'."""
    span = f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}–{steps[-1]}"
    if metric.startswith("cpu_"):
        per = f"{format_value(10.0 * demand, 'ms')} of CPU per request"
        where = "of one core" if metric.startswith("cpu_busiest") else "of all cores"
        at = f"{format_value(limit, '%')} {where}"
    else:
        per = f"{format_value(1024.0 * demand, 'kB')} of {metric.split('_')[0]} I/O per request"
        at = format_value(limit, "MB/s")
    return f"{per} ({kpi}, {span}): ~{format_value(rps, 'rps')} at {at}"


def _usl(n: np.ndarray, lam: float, sigma: float, kappa: float) -> np.ndarray:
    return lam * n / (1 + sigma * (n - 1) + kappa * n * (n - 1))


def fit_usl(points: Sequence[tuple[float | None, float | None]]) -> dict[str, Any]:
    """The Universal Scalability Law X(N) = λN / (1 + σ(N−1) + κN(N−1)) fitted to (concurrency,
    throughput) points: the predicted peak throughput and the concurrency N* = sqrt((1−σ)/κ)
    where it is reached, with R²; "too_few_steps" under 3 distinct loads, "poor_fit" under
    KNEE_MIN_R2, "no_fit" when the fit does not converge."""
    usable = [(float(n), float(x)) for n, x in points if n and x and n > 0 and x > 0]
    result: dict[str, Any] = {"status": "too_few_steps", "points": len(usable), "lambda": None,
                              "sigma": None, "kappa": None, "r2": None, "peak_rps": None,
                              "peak_concurrency": None}
    distinct = len({round(n, 6) for n, _ in usable})
    if distinct < 3:
        return {**result, "note": f"too few steps for a knee estimate ({distinct} distinct "
                                  f"loads; 3 or more needed)"}
    n = np.array([p[0] for p in usable])
    x = np.array([p[1] for p in usable])
    try:
        # curve_fit warns when it cannot estimate the covariance, which we do not use; pytest
        # and users running with -W error would see a warning as a failure.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            params, _ = curve_fit(_usl, n, x, p0=[float(np.max(x / n)), 0.05, 1e-4],
                                  bounds=([0.0, 0.0, 0.0], [np.inf, 1.0, 1.0]), maxfev=20000)
    except (RuntimeError, ValueError) as exc:
        return {**result, "status": "no_fit", "note": f"the USL fit did not converge ({exc})"}
    lam, sigma, kappa = (float(p) for p in params)
    ss_res = float(np.sum((x - _usl(n, lam, sigma, kappa)) ** 2))
    ss_tot = float(np.sum((x - np.mean(x)) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else None
    result.update({"lambda": lam, "sigma": sigma, "kappa": kappa, "r2": r2})
    if kappa > KAPPA_MIN:
        n_star = max(1.0, math.sqrt((1 - sigma) / kappa))
        result["peak_concurrency"] = n_star
        result["peak_rps"] = float(_usl(np.array([n_star]), lam, sigma, kappa)[0])
        shape = (f"throughput peaks at ~{format_value(result['peak_rps'], 'rps')} at a "
                 f"concurrency of ~{n_star:.0f}")
        if n_star > KNEE_EXTRAPOLATION * float(np.max(n)):
            shape = (f"no knee within reach of the steps (concurrency up to "
                     f"{float(np.max(n)):.0f}); the fit's peak, ~"
                     f"{format_value(result['peak_rps'], 'rps')} at ~{n_star:.0f}, is an "
                     f"extrapolation")
    elif sigma > 0:
        result["peak_rps"] = lam / sigma
        shape = (f"no retrograde term: throughput levels off towards "
                 f"~{format_value(lam / sigma, 'rps')}")
    else:
        shape = "throughput still grows linearly: no knee in reach of the steps"
    good = r2 is not None and r2 >= KNEE_MIN_R2
    result["status"] = "fit" if good else "poor_fit"
    quality = f"R² {r2:.2f}" if r2 is not None else "R² undefined: flat throughput"
    result["note"] = (f"USL fit over {len(usable)} steps ({quality}): {shape}" if good else
                      f"poor fit ({quality}) over {len(usable)} steps, not to be relied on: "
                      f"{shape}")
    return result


def summarize_stress(settings: StressSettings, steps: list[dict[str, Any]],
                     stopped: str) -> dict[str, Any]:
    """run.json "stress": the steps, the capacity (measured, or estimated at a resource limit),
    the last step that held, where and how it broke, the knee, and what to try next."""
    broken = next((s for s in steps if not s["held"]), None)
    held = [s for s in steps if s["held"] and (broken is None or s["step"] < broken["step"])]
    measured = held[-1] if held else None
    estimate = estimate_at_limit(steps, broken) if broken is not None else None
    capacity: dict[str, Any] | None = None
    if measured is not None:
        capacity = {"basis": "measured", **{key: measured[key] for key in (
            "step", "users", "rate", "rps", "p95_ms", "p99_ms", "concurrency")}}
    if estimate is not None and broken is not None and (measured is None or (
            not estimate["other_breaches"]
            and (measured["rps"] or 0) < estimate["rps"] < (broken["rps"] or 0))):
        # Between a held step and one that broke only on a resource limit, the limit itself
        # is the capacity: every other KPI held even at the heavier step.
        capacity = {"basis": "estimated", "step": None, "users": None, "rate": None,
                    "rps": estimate["rps"], "p95_ms": None, "p99_ms": None,
                    "concurrency": estimate["concurrency"], "how": estimate["text"]}
    mode = "rate" if settings.load.rate is not None else "users"
    knee = fit_usl([(s["users"] if mode == "users" else s["concurrency"], s["rps"])
                    for s in steps])
    return {
        "mode": mode,
        "step_duration_s": settings.step_duration_s, "max_steps": settings.max_steps,
        "max_error_rate_percent": settings.max_error_rate_percent,
        "stopped": stopped,
        "capacity": capacity,
        "measured": None if measured is None else {
            key: measured[key] for key in ("step", "users", "rate", "rps", "p95_ms", "p99_ms")},
        "estimate": estimate,
        "broke": None if broken is None else {
            "step": broken["step"], "users": broken["users"], "rate": broken["rate"],
            "rps": broken["rps"], "p95_ms": broken["p95_ms"],
            "how": describe_breach(broken["breaches"][0]), "breaches": broken["breaches"]},
        "knee": knee,
        "suggestion": _suggest(mode, measured, broken, estimate),
        "steps": steps,
    }


def _suggest(mode: str, measured: dict[str, Any] | None, broken: dict[str, Any] | None,
             estimate: dict[str, Any] | None) -> str | None:
    """What to run next when even the first step broke: a lower start, or an open load, whose
    steps can stop below a limit that one user of a closed load already reaches."""
    if broken is None or measured is not None:
        return None
    around = estimate["rps"] if estimate is not None else broken["rps"]
    if not around:
        return None
    if mode == "rate":
        return f"start lower (--start-rate {round(around / 4, 1):g})"
    open_load = f"an open load (--rate {max(1, round(1.5 * around))})"
    if broken["users"] > 1:
        return f"start lower (--start-users {broken['users'] // 2}) or use {open_load}"
    return f"use {open_load}"


def describe_breach(breach: dict[str, Any]) -> str:
    return f"{breach['kpi']}: {breach['reason']}"


def describe_load(step: dict[str, Any]) -> str:
    return (f"{step['rate']:g} req/s offered, {step['users']} users"
            if step["rate"] is not None else f"{step['users']} users")


def describe_step(step: dict[str, Any]) -> str:
    return (f"step {step['step']}: {describe_load(step)}, {format_value(step['rps'], 'rps')}, "
            f"p95 {format_value(step['p95_ms'], 'ms')}")


def describe_capacity(stress: dict[str, Any]) -> str:
    """'capacity 40.2 rps at step 3 (…)', '~25 rps, estimated (…)', or, where the first step
    broke on what no demand explains (latency, errors, memory), that the capacity is below
    its load and what it served."""
    capacity, broke = stress.get("capacity"), stress.get("broke")
    steps = {s.get("step"): s for s in stress.get("steps") or []}
    if capacity is None:
        first = steps.get(broke["step"]) if broke else None
        if first is None:
            return "capacity not found"
        return (f"capacity below the first step's load: step {first['step']} "
                f"({describe_load(first)}) served {format_value(first['rps'], 'rps')} at p95 "
                f"{format_value(first['p95_ms'], 'ms')} and already broke")
    if capacity["basis"] == "measured":
        step = steps.get(capacity["step"])
        load = f" ({describe_load(step)}, p95 {format_value(step['p95_ms'], 'ms')})" \
            if step else ""
        return f"capacity {format_value(capacity['rps'], 'rps')} at step {capacity['step']}{load}"
    measured = stress.get("measured")
    if measured is not None and broke is not None:
        return (f"capacity ~{format_value(capacity['rps'], 'rps')}, estimated at the limit "
                f"between step {measured['step']} (held, "
                f"{format_value(measured['rps'], 'rps')}) and step {broke['step']}: "
                f"{capacity['how']}")
    others = (stress.get("estimate") or {}).get("other_breaches") or []
    assuming = f" (if {', '.join(others)} also holds at that lower load)" if others else ""
    return (f"capacity ~{format_value(capacity['rps'], 'rps')}, estimated: "
            f"{capacity['how']}{assuming}")


def describe_end(stress: dict[str, Any]) -> str:
    """Where and how the ramp broke, what the first step served if it was the one, or that it
    never broke."""
    broke, steps = stress.get("broke"), stress.get("steps") or []
    if broke is None:
        last = steps[-1] if steps else None
        peak = f", up to {describe_load(last)}" if last else ""
        return f"never broke within {len(steps)} steps{peak}"
    text = f"broke at step {broke['step']}: {broke['how']}"
    if stress.get("measured") is None and stress.get("capacity") is not None:
        text = (f"step {broke['step']} served {format_value(broke['rps'], 'rps')} at p95 "
                f"{format_value(broke.get('p95_ms'), 'ms')} and already broke: {broke['how']}")
    return text


def describe_stress(stress: dict[str, Any]) -> list[str]:
    """The lines that say what a ramp found: its capacity, where and how it broke, the knee,
    what to try next."""
    steps = stress.get("steps") or []
    if not steps:
        return [f"no step was completed ({stress.get('stopped')})"]
    lines = [describe_capacity(stress), describe_end(stress)]
    estimate, capacity = stress.get("estimate"), stress.get("capacity")
    if estimate is not None and capacity is not None and capacity["basis"] == "measured":
        others = estimate["other_breaches"]
        why = (f"{', '.join(others)} broke too" if others else
               "outside the held and the broken step: the demand did not grow with the load")
        lines.append(f"at the {estimate['kpi']} limit, for information ({why}): "
                     f"{estimate['text']}")
    knee = stress.get("knee") or {}
    if knee.get("note"):
        lines.append(f"knee: {knee['note']}")
    if stress.get("suggestion"):
        lines.append(f"to find the capacity below step 1: {stress['suggestion']}")
    return lines


def capacity_rps(stress: dict[str, Any]) -> tuple[float | None, str]:
    """The throughput KPI's value in a stress run (measured or estimated), or why it has none."""
    capacity = stress.get("capacity")
    if capacity is None or capacity.get("rps") is None:
        return None, describe_capacity(stress)
    return float(capacity["rps"]), ""


def judge_throughput(kpi: KpiTarget, stress: dict[str, Any]) -> KpiResult:
    """The throughput KPI of a stress run, judged on its capacity. A ramp that never broke
    only shows the capacity is at least its peak: below the target that is missing (the ramp
    did not offer enough), not a failure."""
    value, why = capacity_rps(stress)
    result = judge_kpi(kpi, value, why)
    basis = (stress.get("capacity") or {}).get("basis")
    if result.verdict in ("warn", "fail") and stress.get("broke") is None:
        return KpiResult(kpi, None, "missing", None,
                         f"the ramp never broke: the capacity is at least "
                         f"{format_value(value, 'rps')}, below the target; raise the peak "
                         f"(--users or --rate) to measure it")
    if result.verdict == "missing":
        return result
    return KpiResult(kpi, value, result.verdict, result.margin_percent,
                     f"{result.reason} (the stress capacity, {basis})")


def judge_stress(stress: dict[str, Any], status: str, message: str,
                 targets: list[KpiTarget]) -> tuple[str, str]:
    """(verdict, reason) of a stress run: its capacity result, the deciding reason first.
    error: no step completed or nothing was measured (or the run failed); fail: the target
    died, the run did not complete, the capacity is below the first step (no estimate), or below the
    throughput KPI; warn: the capacity is only estimated (the first step broke) or the
    throughput KPI warns; pass: a capacity was measured and meets the throughput KPI (or none
    applies: missing never decides)."""
    steps = stress.get("steps") or []
    said = f": {message}" if message else ""
    if status in ("failed", "running"):
        what = "never finished (no end was recorded)" if status == "running" else "failed"
        return "error", f"the run {what}{said}"
    if not steps:
        return "error", f"no step of the ramp was completed ({stress.get('stopped')}){said}"
    if not any(s.get("count") for s in steps):
        return "error", ("no requests were recorded in any step: the target never answered, "
                         "or the scenario sent nothing")
    found = describe_capacity(stress)
    end = describe_end(stress)
    if status == "target_died":
        return "fail", f"the target died during the ramp{said}; {found}; {end}"
    if status not in ("completed", "interrupted"):
        return "fail", f"the run ended with status {status}{said}; {found}; {end}"
    if stress.get("capacity") is None:
        hint = f"; {stress['suggestion']}" if stress.get("suggestion") else ""
        return "fail", f"{found}: {(stress.get('broke') or {}).get('how')}{hint}"
    throughput = next((k for k in targets if k.metric == "rps" and k.endpoint is None), None)
    judged = judge_throughput(throughput, stress) if throughput is not None else None
    against = "" if judged is None else _against_throughput(judged)
    if judged is not None and judged.verdict == "fail":
        return "fail", f"{found}, {against}; {end}"
    if stress.get("measured") is None:
        hint = f"; {stress['suggestion']}" if stress.get("suggestion") else ""
        against = f", {against}" if against else ""
        return "warn", f"{found}{against}; only estimated: {end}{hint}"
    if judged is None or judged.verdict == "missing":
        return "pass", f"{found}; {end}" + (f" (throughput KPI missing: {judged.reason})"
                                            if judged is not None else "")
    return ("warn" if judged.verdict == "warn" else "pass"), f"{found}, {against}; {end}"


def _against_throughput(judged: KpiResult) -> str:
    """'98 % under the 1000 rps throughput target', 'meeting the 50 rps throughput target'."""
    kpi, margin = judged.kpi, judged.margin_percent
    if judged.verdict == "missing":
        return ""
    reference = kpi.target if kpi.target is not None else kpi.allowed
    name = "target" if kpi.target is not None else "allowed level"
    level = f"the {format_value(reference, 'rps')} throughput {name}"
    if judged.verdict == "pass":
        return f"meeting {level}"
    under = f"{format_percent(margin)} under {level}" if margin is not None else f"under {level}"
    if judged.verdict == "warn":
        return f"{under}, within the {format_value(kpi.allowed, 'rps')} allowed"
    return under
