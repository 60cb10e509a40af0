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

import base64
import dataclasses
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
import pandas as pd
from matplotlib.figure import Figure

from . import rundir, stats
from .alarms import judge_window, kpi_limit
from .config import LoadSettings
from .errors import ConfigError
from .kpi import JOB_NAMES, KpiTarget, format_value, load_kpi_targets

SETTLE_FRACTION = 0.2
SETTLE_MAX_S = 5.0
GROWTH_RATIO = 2.0
GROWTH_FLOOR_MS = 20.0
GROWTH_TAU = 0.6
CHART_SVG = "stress.svg"


@dataclass(frozen=True)
class StressSettings:
    load: LoadSettings
    step_users: int | None = None    # closed load; default: the starting --users
    step_rate: float | None = None   # open load; default: the starting --rate
    step_duration_s: float = 30.0
    max_steps: int = 10
    max_error_rate_percent: float = 1.0


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
            "rps": count / duration_s if duration_s > 0 else None,
            "error_rate_percent": 100.0 * failures / count if count else None,
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
                              pd.DataFrame(records, columns=rundir.LATENCY_COLUMNS),
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


def draw_stress_chart(stress: dict[str, Any]) -> str:
    """SVG of throughput (x) against p95 and p99 latency (y, log scale) per step; held steps
    in green, the broken one in red, each labelled with its step number."""
    steps = [s for s in stress["steps"] if s["rps"] is not None]
    fig = Figure(figsize=(7.0, 3.6), dpi=100)
    ax = fig.add_subplot()
    xs = [s["rps"] for s in steps]
    for key, style in (("p95_ms", "o-"), ("p99_ms", "s--")):
        ys = [s[key] if s[key] is not None else math.nan for s in steps]
        ax.plot(xs, ys, style, color="#555555", label=key.replace("_ms", ""), markersize=4,
                zorder=1)
        ax.scatter(xs, ys, c=["#2e7d32" if s["held"] else "#c62828" for s in steps], zorder=2,
                   s=30)
    for s in steps:
        if s["p95_ms"] is not None:
            ax.annotate(f"{s['step']}", (s["rps"], s["p95_ms"]), textcoords="offset points",
                        xytext=(4, -12), fontsize=8)
    if any(s["p95_ms"] for s in steps):
        ax.set_yscale("log")
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title("stress: throughput against latency per step (green held, red broke)",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    out = io.StringIO()
    fig.savefig(out, format="svg")
    return out.getvalue()


def run_stress(settings: StressSettings, say: Callable[[str], None]) -> tuple[Path, int]:
    """The `perfkit stress` command; returns the run directory and the exit code (0: a
    capacity was found, 1: not even the first step held or the run did not complete)."""
    from . import runner

    targets = load_kpi_targets(settings.load.kpi_file)
    steps = plan_steps(settings)
    load = dataclasses.replace(settings.load, command="stress", duration_s=min(
        settings.load.duration_s, settings.max_steps * settings.step_duration_s))
    results: list[dict[str, Any]] = []
    stopped = ["max_steps"]

    def on_step_end(index: int, state: Any) -> bool:
        now = time.time()
        offset_s, users, rate = steps[index]
        settle_s = min(SETTLE_MAX_S, SETTLE_FRACTION * settings.step_duration_s)
        start = state.started_at + offset_s + settle_s
        records = state.recorder.window_records(start, now)
        # In gevent's thread pool: Locust's users go on while the step's histograms merge.
        result = gevent.get_hub().threadpool.apply(judge_step_file, (
            index + 1, users, rate, records, state.system.out_csv, start, now, targets,
            results[-1] if results else None, settings.max_error_rate_percent))
        results.append(result)
        if result["held"]:
            say(f"perfkit stress: {describe_step(result)} held")
            return False
        stopped[0] = "broke"
        how = describe_breach(result["breaches"][0])
        say(f"perfkit stress: {describe_step(result)} BROKE: {how}")
        state.message = f"stopped at step {index + 1}, which broke: {how}"
        return True

    def on_run_end(run_dir: Path, state: Any) -> None:
        if state.status != "completed":
            stopped[0] = state.status
        stress = summarize_stress(settings, results, stopped[0])
        meta = rundir.load_run(run_dir).meta
        meta["stress"] = stress
        rundir.write_json(run_dir / rundir.RUN_JSON, meta)
        (run_dir / CHART_SVG).write_text(draw_stress_chart(stress), "utf-8")

    say(f"perfkit stress: up to {len(steps)} steps of {settings.step_duration_s:g} s, "
        + ", ".join(f"{rate:g}/s" if rate is not None else f"{users}" for _, users, rate in steps)
        + (" arrivals" if load.rate is not None else " users"))
    run_dir, code = runner.run_load(load, say, runner.Plan(
        steps=steps, on_step_end=on_step_end, on_run_end=on_run_end,
        window_s=settings.step_duration_s))
    stress = rundir.load_run(run_dir).meta["stress"]
    capacity, broke = stress["capacity"], stress["broke"]
    if not stress["steps"]:
        say(f"perfkit stress: no step was completed ({stress['stopped']})")
        return run_dir, code if code else 1
    say("perfkit stress: capacity " + (describe_step(
        next(s for s in stress["steps"] if s["step"] == capacity["step"]))
        if capacity else "none: not even the first step held"))
    if broke:
        say(f"perfkit stress: broke at step {broke['step']}: {broke['how']}")
    else:
        say(f"perfkit stress: never broke within {len(stress['steps'])} steps")
    say("perfkit stress: the KPI verdict above judges the whole ramp, breaking step included; "
        "the capacity is the stress result")
    if code == 130 or stress["stopped"] not in ("broke", "max_steps"):
        return run_dir, code
    return run_dir, 0 if capacity else 1


def judge_step_file(step: int, users: int, rate: float | None, records: list[dict[str, Any]],
                    resources_csv: Path, start: float, end: float, targets: list[KpiTarget],
                    previous: dict[str, Any] | None,
                    max_error_rate_percent: float) -> dict[str, Any]:
    """judge_step with the step's resource samples read from resources.csv."""
    return judge_step(step, users, rate, records, _read_resources(resources_csv, start, end),
                      start, end, targets, previous, max_error_rate_percent)


def _read_resources(path: Path, start: float, end: float) -> pd.DataFrame | None:
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError):
        return None  # no samples yet: resource KPIs are missing for this step, not failed
    if "t" not in frame.columns:
        return None
    return frame[(frame["t"] >= start) & (frame["t"] <= end)]


def report_section(meta: dict[str, Any]) -> dict[str, Any] | None:
    """What report.html shows of run.json "stress" (None for other runs): the verdict lines,
    one row per step and the chart, redrawn from run.json."""
    stress = meta.get("stress")
    if not stress:
        return None
    capacity, broke = stress.get("capacity"), stress.get("broke")
    by_step = {s["step"]: s for s in stress["steps"]}
    chart = base64.b64encode(draw_stress_chart(stress).encode("utf-8")).decode("ascii")
    return {
        "capacity": (describe_step(by_step[capacity["step"]]) if capacity
                     else "none: not even the first step held"),
        "broke": (f"step {broke['step']}: {broke['how']}" if broke
                  else f"never, within {len(stress['steps'])} steps"),
        "rows": [{"step": s["step"], "users": s["users"],
                  "rate": format_value(s["rate"], "/s") if s["rate"] is not None else "—",
                  "rps": format_value(s["rps"], ""), "p50": format_value(s["p50_ms"], ""),
                  "p95": format_value(s["p95_ms"], ""), "p99": format_value(s["p99_ms"], ""),
                  "errors": format_value(s["error_rate_percent"], "%"), "held": s["held"],
                  "why": "; ".join(describe_breach(b) for b in s["breaches"])}
                 for s in stress["steps"]],
        "chart_src": f"data:image/svg+xml;base64,{chart}",
    }
