"""The verdict of a run against its KPI targets: pass / warn / fail / missing, with why.

Pure computation on a RunResult in memory (the KPI file is read by perfkit.kpi_file), so it is
tested on fixed data. The judged window leaves the warm-up out; alarms and stress steps judge
their own short windows with the same definitions (`judge_window`).
"""

import difflib
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from ..kpi_file import JOB_NAMES, METRICS, KpiTarget, is_job
from ..result import (
    LATENCY_COLUMNS,
    KpiResult,
    RunMeta,
    RunResult,
    RunSettings,
    json_safe,
)
from ..units import format_percent, format_value
from . import availability, observed, stats
from .environment import summarize_environment

# A start plus warm-up within float error of a whole second is that second.
_SAME_SECOND_S = 1e-6


def judged_window(run: RunResult, warmup_s: float | None = None) -> tuple[float, float]:
    """(start, end) of the part of the run that verdicts judge: the warm-up (the run's own,
    or `warmup_s`) is left out."""
    return judged_window_of(run.meta, warmup_s)


def judged_window_of(meta: RunMeta, warmup_s: float | None = None) -> tuple[float, float]:
    """judged_window of a run with metadata `meta`."""
    started_at = float(meta.started_at)
    ended_at = float(meta.ended_at or meta.started_at)
    warmup_s = meta.settings.warmup_s if warmup_s is None else warmup_s
    # Latency buckets start on whole seconds. Without a warm-up the window starts at the
    # floor of the run's start, or a short run would lose its first, partial second of
    # requests; with one, on the first whole second after it, so no part of the warm-up is
    # judged and the window's length is what its buckets cover (rates stay exact).
    # judged_warmup_s is that warm-up, the one every output shows.
    start = (math.floor(started_at) if warmup_s <= 0
             else math.ceil(started_at + warmup_s - _SAME_SECOND_S))
    return min(start, ended_at), ended_at


def judged_warmup_s(run: RunResult) -> float:
    """The warm-up left out of the verdict, from the run's start to its judged window: what
    summary.json, summary.md and the report all show (up to a second more than --warmup,
    to the next whole second)."""
    start, _ = judged_window(run)
    return max(0.0, start - float(run.meta.started_at))


def judged_latency(run: RunResult) -> pd.DataFrame:
    start, end = judged_window(run)
    return run.latency[(run.latency["t"] >= start) & (run.latency["t"] <= end)]


def overall_verdict(results: list[KpiResult]) -> str:
    """A failed KPI fails the run, a warning warns; missing data never decides either way."""
    verdicts = {result.verdict for result in results}
    if "fail" in verdicts:
        return "fail"
    if "warn" in verdicts:
        return "warn"
    return "pass"


def judge_kpi(kpi: KpiTarget, value: float | None, missing_reason: str = "") -> KpiResult:
    """The verdict of one measured value. Limits are inclusive: a value equal to the target
    passes and one equal to the allowed level warns (histograms resolve 0.1 %, so "< 100 ms"
    and "≤ 100 ms" cannot be told apart anyway)."""
    if value is None or math.isnan(value):
        return KpiResult(kpi, None, "missing", None, missing_reason or "no data")
    label = METRICS[kpi.metric].label
    shown = format_value(value, kpi.unit)
    target, allowed = kpi.target, kpi.allowed
    reference = target if target is not None else allowed
    assert reference is not None  # load_kpi_targets refuses a KPI without either
    ref_name = "target" if target is not None else "allowed"
    upper = kpi.bound == "upper"

    def within(limit: float) -> bool:
        return value <= limit if upper else value >= limit

    margin = None
    if reference > 0:
        margin = 100.0 * ((reference - value) if upper else (value - reference)) / reference
    ref_text = f"the {format_value(reference, kpi.unit)} {ref_name}"
    beyond = "over" if upper else "under"
    excess = f"{format_percent(margin)} {beyond}" if margin is not None else beyond

    if within(reference):
        headroom = f" ({format_percent(margin)} headroom)" if margin is not None else ""
        verb = "is within" if upper else "meets"
        return KpiResult(kpi, value, "pass", margin, f"{label} {shown} {verb} {ref_text}{headroom}")
    if target is not None and allowed is not None:
        allowed_text = f"the {format_value(allowed, kpi.unit)} allowed"
        if within(allowed):
            return KpiResult(kpi, value, "warn", margin,
                             f"{label} {shown} is {excess} {ref_text}, within {allowed_text}")
        return KpiResult(kpi, value, "fail", margin,
                         f"{label} {shown} is {excess} {ref_text} and beyond {allowed_text}")
    return KpiResult(kpi, value, "fail", margin, f"{label} {shown} is {excess} {ref_text}")


def summarize_judged(run: RunResult) -> dict[str, dict[str, Any]]:
    """stats.summarize_endpoints of the judged window, per request and per-job name. Merging
    an hour of 1 s histograms takes seconds: compute it once and pass it on."""
    start, end = judged_window(run)
    if run.digest is not None and run.digest.judged_window == (start, end):
        return run.digest.summaries
    return stats.summarize_endpoints(judged_latency(run), end - start)


def judged_availability(run: RunResult, targets: list[KpiTarget]) -> dict[str, Any]:
    """analysis/availability.py's {"availability", "faults"} of `run`: every second of the
    run is judged (a fault in the warm-up recovers in it too), availability on the judged
    window only."""
    start, end = judged_window(run)
    started_at = float(run.meta.started_at)
    over = None
    limits = availability.latency_limits(targets)
    if "hist" not in run.latency:
        # Loaded without each bucket's histogram (perfkit report): the requests over the
        # latency KPIs' limits, counted while they were read, else in one more pass.
        if run.over_limits is not None and limits <= run.over_limits.keys():
            over = run.over_limits
        elif run.read_latency is not None:
            over = availability.count_over_limits(filter(None, run.read_latency()), limits)
    seconds = availability.judge_seconds(run.latency, targets, started_at, end, over)
    return availability.summarize_availability(seconds, run.meta.faults, started_at, start,
                                               end)


_AVAILABILITY_METRICS = ("availability_percent", "recovery_s_max")


def evaluate_kpis(run: RunResult, targets: list[KpiTarget], *,
                  summaries: dict[str, dict[str, Any]] | None = None,
                  available: dict[str, Any] | None = None) -> list[KpiResult]:
    """Judge `run` on the judged window (warm-up left out) against each target, in order.
    `summaries`: summarize_judged(run), `available`: judged_availability(run, targets), when
    the caller already has them."""
    start, end = judged_window(run)
    duration_s = end - start
    latency = judged_latency(run)
    if summaries is None:
        summaries = summarize_judged(run)
    if available is None and any(kpi.metric in _AVAILABILITY_METRICS for kpi in targets):
        available = judged_availability(run, targets)
    requests = latency[~latency["name"].map(is_job).astype(bool)]
    context = _Context(run, start, end, duration_s, summaries, requests, available)
    results = [judge_kpi(kpi, *_measure(kpi, context)) for kpi in targets]
    return [_judge_capacity(result, run, results)
            if result.kpi.metric == "rps" and result.kpi.endpoint is None
            and result.verdict in ("warn", "fail") else
            _judge_recovery(result, available) if result.kpi.metric == "recovery_s_max"
            else result for result in results]


def _judge_recovery(result: KpiResult, available: dict[str, Any] | None) -> KpiResult:
    """A fault the target never recovered from fails, however short the run after it."""
    never = [f for f in (available or {}).get("faults") or [] if f.get("recovered") is False]
    if not never:
        return result
    worst = max(never, key=lambda f: f["recovery_s"])
    return replace(result, verdict="fail", reason=(
        f"fault {worst['index']} (`{worst['what']}`) not recovered by the end of the run "
        f"(over {format_value(worst['recovery_s'], 's')} after it ended)"))


# An open load "kept up" when it achieved at least this share of the rate it offered.
KEPT_UP_SHARE = 0.97


def _judge_capacity(result: KpiResult, run: RunResult, results: list[KpiResult]) -> KpiResult:
    """Throughput is a capacity: the target must be able to serve the target rate, not serve
    what one run happened to offer. Below the target it fails only when the load offered at
    least the target (or the ramp of a stress run found no more) and the target could not
    serve it; a run that offered less and was served in time did not measure capacity."""
    settings = run.meta.settings
    value = result.value or 0.0
    needed = result.kpi.target if result.kpi.target is not None else result.kpi.allowed
    if run.meta.stress is not None:
        from .stress import judge_throughput  # analysis.stress imports this module

        return judge_throughput(result.kpi, run.meta.stress)
    if settings.rate:
        offered = f"open load at {settings.rate:g} iterations/s"
        kept_up = value >= KEPT_UP_SHARE * settings.rate
        served_everything = kept_up or settings.rate < (needed or 0.0)
    else:
        offered = f"closed load of {settings.users} users"
        served_everything = not any(r.verdict == "fail" and r.kpi.unit == "ms" for r in results)
    if not served_everything:
        return replace(result, reason=f"{result.reason} ({offered}: the target could not "
                                      f"serve it)")
    return KpiResult(result.kpi, None, "missing", None,
                     f"this run offered only {format_value(value, 'rps')} ({offered}), and the "
                     f"target kept up; use --rate {format_value(needed, '')} or more, or "
                     f"perfkit stress, to measure capacity")


@dataclass
class _Context:
    run: RunResult
    start: float
    end: float
    duration_s: float
    summaries: dict[str, dict[str, Any]]
    requests: pd.DataFrame
    available: dict[str, Any] | None = None


def _measure(kpi: KpiTarget, ctx: _Context) -> tuple[float | None, str]:
    """(value, why it is missing): the value is None when the run cannot tell."""
    metric = kpi.metric
    if ctx.duration_s <= 0:
        return None, "the judged window is empty (the run ended within its warm-up)"
    if kpi.endpoint is not None:
        summary = ctx.summaries.get(kpi.endpoint)
        if summary is None or not summary["count"]:
            return None, _no_requests(kpi.endpoint, ctx)
        if metric == "rps":
            return summary["rps"], ""
        if metric == "error_rate_percent":
            return summary["error_rate_percent"], ""
        return summary[metric], ""
    if metric == "rps" and ctx.run.meta.stress is not None:
        from .stress import capacity_rps  # analysis.stress imports this module

        return capacity_rps(ctx.run.meta.stress)
    if metric == "rps":
        if ctx.run.latency.empty:
            # No records at all is a recorder that wrote nothing, not a target that served 0.
            return None, "no request records in this run (latency.bin empty or absent)"
        return float(ctx.requests["count"].sum()) / ctx.duration_s, ""
    if metric == "error_rate_percent":
        count = int(ctx.requests["count"].sum())
        if count == 0:
            return None, "no requests in the judged window"
        return 100.0 * float(ctx.requests["failures"].sum()) / count, ""
    for job in JOB_NAMES:
        if metric.startswith(f"{job}_s_"):
            return _measure_job(job, metric.removeprefix(f"{job}_s_"), ctx)
    if metric.startswith("db_"):
        return _measure_database(kpi, ctx)
    if metric in _AVAILABILITY_METRICS:
        return _measure_availability(metric, ctx.available or {})
    if metric == "lost_jobs":
        return _measure_lost_jobs(ctx.run.meta.lost_work)
    return _measure_resource(metric, ctx)


def _measure_availability(metric: str, available: dict[str, Any]) -> tuple[float | None, str]:
    if metric == "availability_percent":
        percent = (available.get("availability") or {}).get("percent")
        return (percent, "") if percent is not None else (None, "no requests in the judged "
                                                                "window")
    ran = [f for f in available.get("faults") or [] if f.get("recovery_s") is not None]
    if not ran:
        return None, ("no fault ran in this run (--fault)" if not available.get("faults")
                      else "no fault was reached before the run ended")
    return max(float(f["recovery_s"]) for f in ran), ""


def _measure_lost_jobs(jobs: dict[str, Any] | None) -> tuple[float | None, str]:
    if jobs is None:
        return None, ("no research job was accepted in this run (the scenario creates none), "
                      "or its users ran in other processes (--workers)")
    return float(jobs["lost"]), ""


def _no_requests(endpoint: str, ctx: _Context) -> str:
    in_run = ctx.run.latency[ctx.run.latency["name"] == endpoint]
    if len(in_run):
        return f"no requests in the judged window ({int(in_run['count'].sum())} during warm-up)"
    seen = sorted(n for n in set(ctx.run.latency["name"]) if not is_job(n))
    close = difflib.get_close_matches(endpoint, seen, n=1, cutoff=0.8)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"no requests: this run never called {endpoint}{hint}"


def _measure_job(job: str, stat: str, ctx: _Context) -> tuple[float | None, str]:
    summary = ctx.summaries.get(job)
    if summary is None or not summary["count"]:
        return None, f"no {job.replace('_', ' ')} records in the judged window"
    value_ms = summary["mean_ms" if stat == "mean" else f"{stat}_ms"]
    return (None if value_ms is None else value_ms / 1000.0), ""


RESOURCE_COLUMNS = {
    "rss_mb": ["rss_mb"],
    "cpu_busiest_percent": ["cpu_busiest_percent"],
    "cpu_machine_percent": ["cpu_machine_percent"],
    "disk_mb_s": ["read_mb_s", "write_mb_s"],
    "net_mb_s": ["sys_net_sent_mb_s", "sys_net_recv_mb_s"],
}


# The same figures from the target's own Prometheus process metrics (target_metrics.csv),
# for a target perfkit cannot sample with psutil: they describe the one process serving
# /metrics, so its CPU is the busiest process's.
_PROMETHEUS_COLUMNS = {"rss_mb": ["rss_mb"], "cpu_busiest_percent": ["cpu_percent"]}


def _measure_resource(metric: str, ctx: _Context) -> tuple[float | None, str]:
    base, _, stat = metric.rpartition("_")
    columns = RESOURCE_COLUMNS[base]
    frame = ctx.run.resources
    sampled = frame is not None and all(c in frame.columns for c in columns) \
        and frame[columns].notna().all(axis=1).any()
    scraped = ctx.run.target_metrics
    if not sampled and scraped is not None and base in _PROMETHEUS_COLUMNS \
            and all(c in scraped.columns for c in _PROMETHEUS_COLUMNS[base]):
        frame, columns = scraped, _PROMETHEUS_COLUMNS[base]
    if frame is None:
        note = ctx.run.meta.collector_note("system")
        return None, "no resource samples (resources.csv absent" + (f": {note})" if note else ")")
    if any(column not in frame.columns for column in columns):
        return None, f"resources.csv has no {' / '.join(columns)} column"
    window = frame[(frame["t"] >= ctx.start) & (frame["t"] <= ctx.end)]
    # A sample with any part missing is a gap, not a zero (docs/run-directory.md).
    series = window[columns].dropna().sum(axis=1)
    if series.empty:
        return None, f"no {' / '.join(columns)} samples in the judged window"
    return float(series.max() if stat == "peak" else series.mean()), ""


def judged_postgres(run: RunResult, start: float, end: float) -> dict[str, Any] | None:
    """PostgreSQL's own summary of [start, end] (observed.summarize_postgres) when the
    database KPIs are judged on it: --db-url gave statement timings, or the target reports
    no database metrics of its own; None when they come from the target's app.csv."""
    postgres = observed.summarize_postgres(
        run.postgres, start, end, (run.meta.collectors.get("postgres") or {}).get("interval_s"))
    if postgres is not None and (postgres["queries_s"] is not None or run.app is None):
        return postgres
    return None


def _measure_database(kpi: KpiTarget, ctx: _Context) -> tuple[float | None, str]:
    postgres = judged_postgres(ctx.run, ctx.start, ctx.end)
    if postgres is not None:
        return _measure_postgres(kpi, postgres)
    frame = ctx.run.app
    if frame is None:
        note = ctx.run.meta.collector_note("app")
        return None, "no database timings (app.csv absent" + (f": {note})" if note else ")")
    window = frame[(frame["t"] >= ctx.start) & (frame["t"] <= ctx.end)]
    window = window.dropna(subset=["db_total_queries", "db_average_ms"])
    if len(window) < 2:
        return None, "fewer than two database samples in the judged window"
    first, last = window.iloc[0], window.iloc[-1]
    queries = float(last["db_total_queries"] - first["db_total_queries"])
    elapsed_s = float(last["t"] - first["t"])
    # The target reports cumulative counts and a cumulative mean: the window's own mean
    # is the growth of total time over the growth of the count.
    total_ms = (float(last["db_total_queries"] * last["db_average_ms"])
                - float(first["db_total_queries"] * first["db_average_ms"]))
    mean_ms = total_ms / queries if queries > 0 else None
    if kpi.metric == "db_query_mean_ms":
        return (mean_ms, "") if mean_ms is not None else (None, "no queries in the judged window")
    observed_qps = queries / elapsed_s
    # Capacity is the most the database could serve; the run shows only what it was asked
    # for. Reaching the target proves it; falling short proves nothing either way.
    needed = kpi.target if kpi.target is not None else kpi.allowed
    if needed is not None and observed_qps >= needed:
        return observed_qps, ""
    estimate = ""
    if mean_ms:
        estimate = (f"; at {format_value(mean_ms, 'ms')} per query one connection would serve "
                    f"about {format_value(1000.0 / mean_ms, 'queries/s')} (an estimate, "
                    f"not judged)")
    return None, (f"capacity not measured: the run drove only "
                  f"{format_value(observed_qps, 'queries/s')}, a lower bound below the "
                  f"{format_value(needed, 'queries/s')} target{estimate}")


def _measure_postgres(kpi: KpiTarget, postgres: dict[str, Any]) -> tuple[float | None, str]:
    """The database KPIs from PostgreSQL's own statistics (--db-url): pg_stat_statements
    where loaded; without it, the transaction rate is the capacity's lower bound (every
    transaction holds a query at least) and the mean query time is missing."""
    if kpi.metric == "db_query_mean_ms":
        if postgres["queries_s"] is None:
            return None, ("no statement timings: pg_stat_statements is not loaded in the "
                          "target's database (docs/observability.md)")
        mean_ms = postgres["query_mean_ms"]
        return (mean_ms, "") if mean_ms is not None else (None, "no queries in the judged "
                                                                "window")
    observed_qps = postgres["queries_s"]
    what = "queries/s (pg_stat_statements)"
    if observed_qps is None:
        observed_qps, what = postgres["xacts_s"], "transactions/s (pg_stat_database)"
    if observed_qps is None:
        return None, "fewer than two PostgreSQL samples in the judged window"
    needed = kpi.target if kpi.target is not None else kpi.allowed
    if needed is not None and observed_qps >= needed:
        return observed_qps, ""
    return None, (f"capacity not measured: the run drove only "
                  f"{format_value(observed_qps, '')} {what}, a lower bound below the "
                  f"{format_value(needed, 'queries/s')} target")


def window_kpis(targets: list[KpiTarget]) -> list[KpiTarget]:
    """The KPIs a few seconds of a run can judge: upper bounds, not database timings (whose
    app.csv samples come every few seconds and are cumulative) nor the recovery of a fault
    (a whole run's)."""
    return [kpi for kpi in targets if kpi.bound == "upper" and not kpi.metric.startswith("db_")
            and kpi.metric not in _AVAILABILITY_METRICS]


def judge_window(records: list[dict[str, Any]], resources: pd.DataFrame | None, start: float,
                 end: float, targets: list[KpiTarget]) -> list[KpiResult]:
    """Judge the latency records (latency.jsonl lines) and resource samples of [start, end]
    against `targets`, exactly as evaluate_kpis judges a whole run."""
    run = RunResult(run_dir=Path("."), meta=RunMeta(started_at=start, ended_at=end,
                                                    settings=RunSettings(warmup_s=0.0)),
                    latency=pd.DataFrame(records, columns=LATENCY_COLUMNS), resources=resources)
    return evaluate_kpis(run, window_kpis(targets))


def kpi_limit(kpi: KpiTarget) -> float | None:
    """The level whose crossing fails the KPI: allowed if given, else the target."""
    return kpi.allowed if kpi.allowed is not None else kpi.target


def judge_run(run: RunResult, targets: list[KpiTarget]) -> RunResult:
    """Fill in `run`'s verdict, KPI results, endpoint and job summaries and summary.json's
    content (field names are a contract: add, never rename); returns `run`."""
    start, end = judged_window(run)
    summaries = summarize_judged(run)
    available = judged_availability(run, targets)
    results = evaluate_kpis(run, targets, summaries=summaries, available=available)
    run.kpis = results
    run.endpoints = {name: s for name, s in summaries.items() if not is_job(name)}
    # How the jobs were timed (over the whole run); None where run.json does not say (a run
    # directory from before it did, or a locustfile that records jobs itself).
    job_timing = (run.meta.load or {}).get("job_timing") or {}
    run.jobs = {name: {"count": s["count"],
                       **{key.replace("_ms", "_s"): (None if s[key] is None else s[key] / 1000.0)
                          for key in ("mean_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms")},
                       "timing": job_timing.get(name)}
                for name, s in summaries.items() if is_job(name)}
    run.verdict, run.verdict_reason = _verdict(run, results)
    if run.meta.stress is not None:
        from .stress import judge_stress  # analysis.stress imports this module

        # A stress run's verdict is its capacity result; the KPIs over the whole ramp,
        # breaking step included, are information.
        run.verdict, run.verdict_reason = judge_stress(
            run.meta.stress, run.meta.status, run.meta.message, targets)
    count = sum(ep["count"] for ep in run.endpoints.values())
    failures = sum(ep["failures"] for ep in run.endpoints.values())
    meta = run.meta
    meta.environment = summarize_environment(run.resources, start, end,
                                             (meta.machine or {}).get("cpu_count"))
    run.summary = json_safe({
        "run_id": run.run_id,
        "verdict": run.verdict,
        "verdict_reason": run.verdict_reason,
        "status": meta.status or "unknown",
        "message": meta.message,
        "command": meta.command,
        "scenario": meta.scenario,
        "target": meta.target,
        "simulated": meta.simulated,
        "window": {"start": start, "end": end, "duration_s": end - start,
                   "warmup_s": judged_warmup_s(run)},
        "totals": {"count": count, "failures": failures,
                   **stats.request_rates(count, failures, end - start)},
        "endpoints": run.endpoints,
        "jobs": run.jobs,
        "kpis": [kpi_record(result) for result in results],
        "counts": {v: sum(1 for r in results if r.verdict == v)
                   for v in ("pass", "warn", "fail", "missing")},
        "worst": _record_or_none(worst_offender(results)),
        "loadgen": meta.loadgen,
        "load": meta.load,
        "skipped_lines": run.skipped_lines,
        "kpi_file": meta.kpi_file,
        "stress": _stress_summary(meta.stress),
        "endurance": _endurance_summary(meta.endurance),
        "environment": meta.environment,
        "availability": available["availability"],
        "faults": available["faults"],
        "lost_work": meta.lost_work,
    })
    return run


def _stress_summary(stress: dict[str, Any] | None) -> dict[str, Any] | None:
    """summary.json "stress": the capacity (measured or estimated), the last step that held,
    the estimate at a resource limit, where it broke, the knee and every step, in brief."""
    if stress is None:
        return None
    capacity, broke, estimate = stress.get("capacity"), stress.get("broke"), stress.get("estimate")
    knee = stress.get("knee")
    return {
        "capacity": None if capacity is None else {
            key: capacity.get(key) for key in ("basis", "step", "users", "rate", "rps", "p95_ms",
                                               "concurrency")},
        "measured": stress.get("measured"),
        "estimate": None if estimate is None else {
            key: estimate.get(key) for key in ("kpi", "metric", "limit", "demand_per_request",
                                               "rps", "concurrency", "steps", "text")},
        "broke_at": None if broke is None else {
            "step": broke["step"], "rps": broke.get("rps"), "p95_ms": broke.get("p95_ms"),
            "reason": broke["how"]},
        "knee": None if knee is None else {
            key: knee.get(key) for key in ("status", "peak_rps", "peak_concurrency", "r2",
                                           "sigma", "kappa", "note")},
        "suggestion": stress.get("suggestion"),
        "stopped": stress.get("stopped"),
        "steps": [{key: step.get(key) for key in ("step", "users", "rate", "rps", "p95_ms",
                                                  "error_rate_percent", "concurrency",
                                                  "cpu_busiest_mean_percent",
                                                  "cpu_ms_per_request", "held")}
                  for step in stress.get("steps") or []],
    }


def _endurance_summary(endurance: dict[str, Any] | None) -> dict[str, Any] | None:
    """summary.json "endurance": the leak verdict with its slope and interval (the slope that
    decided: after the breakpoint where the growth changed), drift, budget."""
    if endurance is None:
        return None
    memory, drift = endurance["memory"], endurance["drift"]["endpoints"].get("all", {})
    return {
        "leak_verdict": memory["verdict"],
        "leak_reason": memory.get("reason") or "",
        "slope_mb_per_h": memory["per_h"],
        "ci_mb_per_h": [memory["ci_low_per_h"], memory["ci_high_per_h"]],
        "confidence": memory["confidence"],
        "threshold_mb_h": memory["threshold_mb_h"],
        "settled_s": memory.get("settled_s"),
        "min_settled_s": memory.get("min_settled_s"),
        "plateau": memory.get("plateau"),
        "projection_24h_mb": memory.get("projection_24h_mb"),
        "note": memory.get("note") or "",
        "drift": {key: drift.get(key) for key in ("p95_first_ms", "p95_last_ms", "ratio")},
        "drift_verdict": endurance["drift"].get("verdict"),
        "error_budget_used_percent": endurance["error_budget"].get("used_percent"),
    }


# A run that ended like this measured nothing that can be trusted: verdict "error".
UNJUDGED_STATUSES = ("failed", "running")


# How much each verdict weighs when the parts of a run's verdict are combined.
VERDICT_RANK = {"pass": 0, "warn": 1, "fail": 2, "error": 3}


def _verdict(run: RunResult, results: list[KpiResult]) -> tuple[str, str]:
    """(verdict, the sentence that says why): the most severe of the run's own state, the
    endurance results and the KPIs (error > fail > warn > pass), the reasons of the deciding
    parts first — the run's state, then endurance, then the KPIs — and then those of any
    lesser warning or failure. Every output (report banner, summary.json and .md, junit.xml,
    the exit code) shows this one verdict."""
    parts = [_run_part(run), *_endurance_parts(run.meta.endurance),
             *_fault_parts(run.meta.faults), _kpi_part(results)]
    judged = [part for part in parts if part is not None]
    rank = max(VERDICT_RANK[verdict] for verdict, _ in judged)
    verdict = next(v for v, _ in judged if VERDICT_RANK[v] == rank)
    reasons = [reason for v, reason in judged if VERDICT_RANK[v] == rank]
    if verdict != "error":  # beside an error, nothing else was judged on trustworthy data
        reasons += [reason for v, reason in judged if 0 < VERDICT_RANK[v] < rank]
    return verdict, "; ".join(reasons)


def _run_part(run: RunResult) -> tuple[str, str] | None:
    """error when nothing can be judged (the run failed or never ended, or no request was
    recorded in the judged window: no data is never a pass); fail when the run did not
    complete (the target died, a worker was lost, --abort-on-fail stopped it: exit code 1,
    so never a pass) or the scenario raised; None when the run itself is sound. An
    interrupted run is judged on what it measured (its exit code is 130 whatever it says)."""
    meta = run.meta
    if meta.status in UNJUDGED_STATUSES:
        what = "never finished (no end was recorded)" if meta.status == "running" else "failed"
        return "error", f"the run {what}" + (f": {meta.message}" if meta.message else "")
    if meta.status not in ("completed", "interrupted"):  # a verdict on the target or the run
        return "fail", f"the run ended with status {meta.status}" + (
            f": {meta.message}" if meta.message else "")
    if not sum(int(s["count"]) for s in run.endpoints.values()):
        recorded = int(run.latency["count"].sum()) if not run.latency.empty else 0
        return "error", ("no requests were recorded in the judged window" + (
            f" ({recorded} during the warm-up)" if recorded else
            ": the target never answered, or the scenario sent nothing"))
    raised = [f for f in run.failures if f.get("kind") == "scenario_error"]
    if raised:
        count = sum(int(f.get("count") or 0) for f in raised)
        return "fail", (f"the scenario raised {count} errors ({raised[0]['error']}); its "
                        f"requests are counted as failures")
    return None


def _kpi_part(results: list[KpiResult]) -> tuple[str, str]:
    worst = worst_offender(results)
    if worst is not None:
        return overall_verdict(results), f"{worst.kpi.name}: {worst.reason}"
    missing = sum(1 for result in results if result.verdict == "missing")
    return "pass", "every measured KPI met its target" + (
        f" ({missing} of {len(results)} could not be measured)" if missing else "")


def _endurance_parts(endurance: dict[str, Any] | None) -> list[tuple[str, str]]:
    """An endurance run's memory growth, error budget and latency drift as verdict parts:
    a leak or an exhausted error budget fails; inconclusive memory growth (a run too short
    or too noisy to tell) and a latency drift warn; no leak passes. Memory that was not
    measured decides nothing, like a missing KPI, and is said."""
    if endurance is None:
        return []
    memory = endurance["memory"]
    reason = memory.get("reason") or memory["verdict"]
    parts = [{"leak": ("fail", f"memory leak: {reason}"),
              "inconclusive": ("warn", f"memory growth inconclusive: {reason}"),
              "no_leak": ("pass", f"no memory leak: {reason}"),
              "missing": ("pass", f"memory growth not measured: {reason}")}[memory["verdict"]]]
    budget = endurance["error_budget"]
    used = budget.get("used_percent")
    if used is not None and used > 100.0:
        allowed = budget.get("allowed_failures") or 0.0
        parts.append(("fail", f"error budget exhausted: {budget['failures']} failures, "
                              f"{allowed:.1f} allowed ({budget['limit_percent']:g} % of "
                              f"{budget['requests']} requests)"))
    drift = endurance["drift"]
    if drift.get("verdict") == "warn":
        overall = drift["endpoints"]["all"]
        parts.append(("warn", f"latency drift: p95 {format_value(overall['p95_first_ms'], 'ms')}"
                              f" in the first {100 * drift['fraction']:.0f} % of the run, "
                              f"{format_value(overall['p95_last_ms'], 'ms')} in the last "
                              f"(×{overall['ratio']:.2f})"))
    return parts


def _fault_parts(faults: list[dict[str, Any]] | None) -> list[tuple[str, str]]:
    """A fault whose command failed fails the run (it may not have happened as planned, so
    what was measured is not what was asked for); one the run ended before warns."""
    parts = []
    for fault in faults or []:
        problem = availability.describe_command_failure(fault)
        if problem:
            parts.append(("fail", f"fault {fault.get('index')} failed: {problem}"))
        elif fault.get("status") == "not_reached":
            parts.append(("warn", f"fault {fault.get('index')} (`{fault.get('what')}`) was "
                                  f"not reached: the run ended first"))
    return parts


def _record_or_none(result: KpiResult | None) -> dict[str, Any] | None:
    return None if result is None else kpi_record(result)


def kpi_record(result: KpiResult) -> dict[str, Any]:
    kpi = result.kpi
    return {"name": kpi.name, "metric": kpi.metric, "endpoint": kpi.endpoint,
            "value": result.value, "target": kpi.target, "allowed": kpi.allowed,
            "unit": kpi.unit, "bound": kpi.bound, "verdict": result.verdict,
            "margin_percent": result.margin_percent, "reason": result.reason,
            "source": kpi.source}


def worst_offender(results: list[KpiResult]) -> KpiResult | None:
    """The failing KPI (else the warning one) furthest beyond its target, relatively."""
    for verdict in ("fail", "warn"):
        offenders = [result for result in results if result.verdict == verdict]
        if offenders:
            # No margin means a zero target: any excess over zero is infinitely relative.
            return max(offenders, key=lambda r: math.inf if r.margin_percent is None
                       else -r.margin_percent)
    return None
