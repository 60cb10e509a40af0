"""perfkit stress: a stepwise ramp until the target breaks; its capacity and how it broke.

The ramp: a closed load adds `step_users` users per step; an open load (--rate) adds
`step_rate` arrivals per second per step and keeps each user's pace (rate / users per user),
so step k runs round(rate_k × users / rate) users and the concurrency cap grows with the
rate: a fixed cap would measure the cap, not the target.

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
The capacity is the last step before the first broken one (every KPI held there); the run
stops at the broken step, at `max_steps`, or at --duration, whichever comes first. The result
goes to run.json "stress" and the throughput-latency chart to stress.svg.
"""

from typing import Any

import pandas as pd

from ..config import JOB_NAMES, KpiTarget, StressSettings
from ..errors import ConfigError
from ..result import LATENCY_COLUMNS
from ..units import format_value
from . import stats
from .kpi import judge_window, kpi_limit

SETTLE_FRACTION = 0.2
SETTLE_MAX_S = 5.0
GROWTH_RATIO = 2.0
GROWTH_FLOOR_MS = 20.0
GROWTH_TAU = 0.6


def plan_steps(settings: StressSettings) -> list[tuple[float, int, float | None]]:
    """(start offset s, users, rate) of every step."""
    load = settings.load
    if settings.step_duration_s <= 0 or settings.max_steps < 1:
        raise ConfigError("--step-duration must be positive and --max-steps at least 1")
    steps: list[tuple[float, int, float | None]] = []
    for k in range(settings.max_steps):
        offset_s = k * settings.step_duration_s
        if load.rate is None:
            if settings.step_rate is not None:
                raise ConfigError("--step-rate needs an open load: give --rate too")
            step_users = settings.step_users or load.users
            steps.append((offset_s, load.users + k * step_users, None))
        else:
            if settings.step_users is not None:
                raise ConfigError("with --rate the ramp is --step-rate, not --step-users")
            per_user_rate = load.rate / load.users
            rate = load.rate + k * (settings.step_rate or load.rate)
            users = max(1, round(rate / per_user_rate))
            steps.append((offset_s, users, users * per_user_rate))
    return steps


def summarize_requests(records: list[dict[str, Any]], duration_s: float) -> dict[str, Any]:
    """Count, failures, rps, error rate and percentiles of all HTTP requests together."""
    requests = [r for r in records if r["name"] not in JOB_NAMES]
    count = sum(int(r["count"]) for r in requests)
    failures = sum(int(r["failures"]) for r in requests)
    hist = stats.merge_histograms(r["hist"] for r in requests)
    return {"count": count, "failures": failures,
            **stats.request_rates(count, failures, duration_s),
            "p50_ms": stats.percentile_ms(hist, 50), "p95_ms": stats.percentile_ms(hist, 95),
            "p99_ms": stats.percentile_ms(hist, 99)}


def _p50_ms(records: list[dict[str, Any]]) -> float | None:
    requests = [r["hist"] for r in records if r["name"] not in JOB_NAMES]
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


def judge_step(step: int, users: int, rate: float | None, records: list[dict[str, Any]],
               resources: pd.DataFrame | None, start: float, end: float,
               targets: list[KpiTarget], previous: dict[str, Any] | None,
               max_error_rate_percent: float) -> dict[str, Any]:
    """The result of one step (1-based `step`) from its window's latency records."""
    duration_s = end - start
    total = summarize_requests(records, duration_s)
    third = duration_s / 3
    first = _p50_ms([r for r in records if r["t"] < start + third])
    last = _p50_ms([r for r in records if r["t"] >= end - third])
    breaches: list[dict[str, Any]] = []
    for result in judge_window(records, resources, start, end, targets):
        if result.verdict == "fail":
            breaches.append({"kind": "kpi", "kpi": result.kpi.name,
                             "endpoint": result.kpi.endpoint, "value": result.value,
                             "limit": kpi_limit(result.kpi), "reason": result.reason})
    error_rate = total["error_rate_percent"]
    if error_rate is not None and error_rate > max_error_rate_percent:
        breaches.append({"kind": "error_rate", "kpi": "error rate (--max-error-rate)",
                         "endpoint": None, "value": error_rate, "limit": max_error_rate_percent,
                         "reason": f"error rate {format_value(error_rate, '%')} is over the "
                                   f"{format_value(max_error_rate_percent, '%')} limit"})
    seconds = sorted({r["t"] for r in records if r["name"] not in JOB_NAMES})
    per_second = [_p50_ms([r for r in records if r["t"] == t]) for t in seconds]
    tau = kendall_tau([m for m in per_second if m is not None])
    if _grew(first, last) and tau is not None and tau >= GROWTH_TAU:
        breaches.append({"kind": "latency_growth", "kpi": "latency growth within the step",
                         "endpoint": None, "value": last, "limit": first,
                         "reason": f"the median rose from {format_value(first, 'ms')} in "
                                   f"the first third of the step to "
                                   f"{format_value(last, 'ms')} in the last, rising second "
                                   f"by second (tau {tau:.2f}): a queue that keeps growing"})
    before, now_ms = (previous or {}).get("p50_ms"), total["p50_ms"]
    if previous is not None and before and now_ms is not None \
            and now_ms - before >= GROWTH_FLOOR_MS:
        offered = rate if rate is not None else float(users)
        offered_before = (previous["rate"] if previous["rate"] is not None
                          else float(previous["users"]))
        offered_growth = offered / offered_before - 1 if offered_before else 0.0
        rps_growth = (total["rps"] / previous["rps"] - 1
                      if total["rps"] is not None and previous["rps"] else 0.0)
        if rps_growth < offered_growth / 2 and now_ms / before - 1 >= offered_growth / 2:
            breaches.append({
                "kind": "latency_growth", "kpi": "latency growth across steps", "endpoint": None,
                "value": total["p50_ms"], "limit": previous["p50_ms"],
                "reason": f"the median went from {format_value(previous['p50_ms'], 'ms')} to "
                          f"{format_value(total['p50_ms'], 'ms')} while throughput grew "
                          f"{100 * rps_growth:.0f} % for {100 * offered_growth:.0f} % more "
                          f"load: the target is saturated"})
    return {"step": step, "users": users, "rate": rate, "started_at": start, "ended_at": end,
            **total, "p50_first_third_ms": first, "p50_last_third_ms": last, "p50_tau": tau,
            "endpoints": {name: {key: s[key] for key in ("count", "rps", "error_rate_percent",
                                                         "p50_ms", "p95_ms", "p99_ms")}
                          for name, s in stats.summarize_endpoints(
                              pd.DataFrame(records, columns=LATENCY_COLUMNS),
                              duration_s).items()},
            "held": not breaches, "breaches": breaches}


def summarize_stress(settings: StressSettings, steps: list[dict[str, Any]],
                     stopped: str) -> dict[str, Any]:
    """run.json "stress": the steps, the capacity (last step that held before the first that
    broke) and where and how it broke."""
    broken = next((s for s in steps if not s["held"]), None)
    held = [s for s in steps if s["held"] and (broken is None or s["step"] < broken["step"])]
    capacity = held[-1] if held else None
    return {
        "mode": "rate" if settings.load.rate is not None else "users",
        "step_duration_s": settings.step_duration_s, "max_steps": settings.max_steps,
        "max_error_rate_percent": settings.max_error_rate_percent,
        "stopped": stopped,
        "capacity": None if capacity is None else {
            key: capacity[key] for key in ("step", "users", "rate", "rps", "p95_ms", "p99_ms")},
        "broke": None if broken is None else {
            "step": broken["step"], "users": broken["users"], "rate": broken["rate"],
            "rps": broken["rps"], "how": describe_breach(broken["breaches"][0]),
            "breaches": broken["breaches"]},
        "steps": steps,
    }


def describe_breach(breach: dict[str, Any]) -> str:
    where = f"{breach['kpi']}" if breach["kind"] == "kpi" else breach["kpi"]
    return f"{where}: {breach['reason']}"


def describe_step(step: dict[str, Any]) -> str:
    load = (f"{step['rate']:.0f} req/s offered ({step['users']} users)"
            if step["rate"] is not None else f"{step['users']} users")
    return (f"step {step['step']}: {load}, {format_value(step['rps'], 'rps')}, "
            f"p95 {format_value(step['p95_ms'], 'ms')}")


def describe_stress(stress: dict[str, Any]) -> list[str]:
    """The lines that say what a ramp found: its capacity and where and how it broke."""
    steps = stress.get("steps") or []
    if not steps:
        return [f"no step was completed ({stress.get('stopped')})"]
    capacity, broke = stress["capacity"], stress["broke"]
    lines = ["capacity " + (describe_step(next(s for s in steps if s["step"] == capacity["step"]))
                            if capacity else "none: not even the first step held")]
    if broke:
        lines.append(f"broke at step {broke['step']}: {broke['how']}")
    else:
        lines.append(f"never broke within {len(steps)} steps")
    lines.append("the KPI verdict above judges the whole ramp, breaking step included; "
                 "the capacity is the stress result")
    return lines
