"""Availability and recovery: the guide's third KPI row, from the per-second timeline and the
run's faults (run.json "faults", run/faults.py). Pure functions on data in memory.

A second of the judged window is **good** when the target served in it (requests completed
in it; latency.jsonl buckets requests by the second they completed) with an error rate and a
latency inside their KPIs: the run's error-rate KPI (the guide's 0.1 % without one), each
endpoint's error-rate KPI, and each endpoint latency KPI (p50 … p99.9, max, mean), against
the KPI's failing level (allowed, else target). A second holds few requests, so it is judged
as a sample, not as a run: it is bad when its failures (or its requests over a percentile's
limit: 1 % of them may be over a p99's) are more than the KPI allows with a chance under
ALPHA (a binomial tail). One failed request among 50 in a second under a 0.1 % KPI is noise
(a 5 % chance), and a run of a healthy target stays available; a second in which most
requests fail or are slow is down. Slowness counts only from a fault's start to its
recovery (summarize_availability): elsewhere a slow second without errors stays up, the
latency KPIs judging slowness over the run with their own budget. A max KPI allows none over
it; a mean KPI is not judged
per second (it is not a share of requests), only over the run. A second
without requests is judged only between a fault's start and its recovery, and is down there
(the target answered nothing: a blackhole, a hang); elsewhere a quiet second of a sparse load
says nothing, and is not judged.

A fault has **recovered** at the first of GOOD_RUN_S consecutive good seconds that begins at
or after its start and ends after its end (fewer where the next fault starts before them).
The recovery happened inside the last bad second before them, so it is placed in that
second's middle (± 0.5 s, the timeline's resolution): `recovery_s` counts from the fault's
end (what the recovery KPI judges: the guide's "recovery time"), `recovery_from_start_s` from
its start; a fault without for= or undo= ends when its command returns, so both are about
equal. `errors` and `requests`: those completed from the fault's start to its recovery.

**availability_percent** = (judged seconds − down time) / judged seconds, the down time being
the bad seconds less, for each fault, the part of its first bad second before it began and
the half of its last bad second after the recovery estimate: a 3 s outage begun mid-second
touches four 1 s buckets but is down about 3 s, as its recovery says.
"""

import functools
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binom

from ..kpi_file import KpiTarget, is_job
from ..units import format_value
from . import stats
from .digest import LatencyChunk

# Consecutive good seconds that make a recovery: one good second between bad ones is not.
GOOD_RUN_S = 5
# The guide's error-rate KPI, for a KPI file without one.
GUIDE_ERROR_RATE_PERCENT = 0.1
# A second is bad when what went wrong in it is this unlikely under its KPIs.
ALPHA = 0.001

_PERCENTILES = {"p50_ms": 50.0, "p90_ms": 90.0, "p95_ms": 95.0, "p99_ms": 99.0,
                "p999_ms": 99.9, "max_ms": 100.0}


def _limit(kpi: KpiTarget) -> float | None:
    return kpi.allowed if kpi.allowed is not None else kpi.target


def judge_seconds(latency: pd.DataFrame, targets: list[KpiTarget], start: float, end: float,
                  over: dict[tuple[str, float], dict[int, int]] | None = None) -> pd.DataFrame:
    """One row per second of [start, end] with requests: t, count, failures, good, why (the
    first KPI the second broke, "" when good), slow_only (it broke latency KPIs only).
    `over`: count_over_limits of the run's buckets for latency_limits(targets); computed from
    latency["hist"] when not given."""
    requests = latency[~latency["name"].map(is_job).astype(bool)]
    requests = requests[(requests["t"] >= math.floor(start)) & (requests["t"] <= end)]
    if requests.empty:
        return pd.DataFrame({"t": pd.Series(dtype=int), "count": pd.Series(dtype=int),
                             "failures": pd.Series(dtype=int), "good": pd.Series(dtype=bool),
                             "why": pd.Series(dtype=str), "slow_only": pd.Series(dtype=bool)})
    if over is None:
        over = count_over_limits([chunk_of(requests)], latency_limits(targets))
    totals = requests.groupby("t")[["count", "failures"]].sum().sort_index()
    seconds = totals.index.to_numpy()
    why = np.full(seconds.size, "", dtype=object)
    erred = np.zeros(seconds.size, dtype=bool)

    def mark(broken: np.ndarray, text: Any, errors: bool = True) -> None:
        nonlocal erred
        if errors:
            erred = erred | broken
        for i in np.flatnonzero(broken & (why == "")):
            why[i] = text(i)

    overall = [kpi for kpi in targets
               if kpi.metric == "error_rate_percent" and kpi.endpoint is None]
    limit = _limit(overall[0]) if overall else GUIDE_ERROR_RATE_PERCENT
    failures, counts = totals["failures"].to_numpy(), totals["count"].to_numpy()
    rate = 100.0 * failures / counts
    mark(_beyond(failures, counts, limit if limit is not None else GUIDE_ERROR_RATE_PERCENT),
         lambda i: f"error rate {format_value(rate[i], '%')}")
    for kpi in targets:
        kpi_limit = _limit(kpi)
        if kpi.endpoint is None or kpi_limit is None:
            continue
        rows = requests[requests["name"] == kpi.endpoint]
        if rows.empty:
            continue
        sums = rows.groupby("t")[["count", "failures"]].sum().reindex(seconds, fill_value=0)
        own_counts = sums["count"].to_numpy()
        if kpi.metric == "error_rate_percent":
            own_failures = sums["failures"].to_numpy()
            with np.errstate(invalid="ignore", divide="ignore"):
                own = 100.0 * own_failures / own_counts
            mark(_beyond(own_failures, own_counts, kpi_limit),
                 lambda i, own=own, kpi=kpi: f"{kpi.endpoint} error rate "
                                             f"{format_value(own[i], '%')}")
        elif kpi.metric in _PERCENTILES:
            by_second = over.get((kpi.endpoint, kpi_limit), {})
            slow = np.array([by_second.get(int(t), 0) for t in seconds], dtype=np.int64)
            mark(_beyond(slow, own_counts, 100.0 - _PERCENTILES[kpi.metric]),
                 lambda i, slow=slow, n=own_counts, kpi=kpi, kpi_limit=kpi_limit:
                 f"{kpi.endpoint} {kpi.metric.removesuffix('_ms')}: {slow[i]} of {n[i]} "
                 f"over {format_value(kpi_limit, 'ms')}", errors=False)
    return pd.DataFrame({"t": seconds.astype(int), "count": totals["count"].to_numpy(),
                         "failures": totals["failures"].to_numpy(), "good": why == "",
                         "why": why.astype(str), "slow_only": (why != "") & ~erred})


def latency_limits(targets: list[KpiTarget]) -> set[tuple[str, float]]:
    """(endpoint, limit_ms) of the percentile KPIs a second is judged on (a mean is not a
    sample's: it is judged over the run only)."""
    return {(kpi.endpoint, limit) for kpi in targets
            if kpi.endpoint is not None and kpi.metric in _PERCENTILES
            and (limit := _limit(kpi)) is not None}


def count_over_limits(chunks: Iterable[LatencyChunk], limits: set[tuple[str, float]]
                      ) -> dict[tuple[str, float], dict[int, int]]:
    """Per (endpoint, limit_ms): how many of its requests took longer, per second t. One pass
    over the buckets (a day-long run's in a few seconds), kept as a few integers a second."""
    result: dict[tuple[str, float], dict[int, int]] = {key: {} for key in limits}
    for chunk in chunks:
        add_over_limits(result, chunk)
    return result


def add_over_limits(over: dict[tuple[str, float], dict[int, int]], chunk: LatencyChunk) -> None:
    """count_over_limits, one chunk at a time (rundir.load_run counts while it reads)."""
    if not over:
        return
    names = chunk.frame["name"].to_numpy()
    times = chunk.frame["t"].to_numpy()
    upper_us = _cell_upper_us()[chunk.cell]
    for (name, limit_ms), by_second in over.items():
        mask = (upper_us > limit_ms * 1000.0) & (names == name)[chunk.row]
        slow = np.bincount(chunk.row[mask], weights=chunk.count[mask], minlength=len(names))
        for row in np.flatnonzero(slow):
            t = int(times[row])
            by_second[t] = by_second.get(t, 0) + int(slow[row])


@functools.cache
def _cell_upper_us() -> np.ndarray:
    """The highest value (µs) of every cell of new_histogram()'s counts array."""
    return stats.cell_values_us(np.arange(stats.CELLS))


def chunk_of(latency: pd.DataFrame) -> LatencyChunk:
    """Buckets held in memory with their histograms, as one chunk."""
    row, cell, count = stats.decode_cells(latency["hist"].tolist())
    return LatencyChunk(latency.drop(columns="hist").reset_index(drop=True), row, cell, count)


def _beyond(observed: np.ndarray, counts: np.ndarray, allowed_percent: float) -> np.ndarray:
    """Per second: are `observed` of `counts` requests (failures, or requests over a limit)
    more than `allowed_percent` of them with a chance under ALPHA? (None allowed: any.)"""
    chance = binom.sf(observed - 1, counts, allowed_percent / 100.0)
    return (observed > 0) & (chance < ALPHA)


def summarize_availability(seconds: pd.DataFrame, faults: list[dict[str, Any]] | None,
                           started_at: float, start: float, end: float,
                           good_run_s: int = GOOD_RUN_S) -> dict[str, Any]:
    """summary.json's "availability" and "faults" from judge_seconds' rows and run.json's
    faults: {"availability": {...}, "faults": [...]}. Times in the faults are offsets from
    `started_at` (the load's start); [start, end] is the judged window."""
    good = dict(zip(seconds["t"].tolist(), seconds["good"].tolist(), strict=True))
    counts = dict(zip(seconds["t"].tolist(),
                      zip(seconds["count"].tolist(), seconds["failures"].tolist(),
                          strict=True), strict=True))
    last_second = int(math.floor(end))
    entries = []
    silent: set[int] = set()  # empty seconds inside a fault and its recovery: judged, down
    in_faults: set[int] = set()  # seconds from a fault's start to its recovery
    # Parts of bad seconds a fault's start and its recovery estimate leave out (the second
    # the fault began in, before it began; the recovery's second, after it): not down time.
    credit_s = 0.0
    starts = sorted(float(f["started_at"]) for f in faults or []
                    if f.get("started_at") is not None)
    for fault in faults or []:
        entry = _fault_entry(fault, started_at)
        entries.append(entry)
        if fault.get("started_at") is None:
            continue
        fault_start = float(fault["started_at"])
        fault_end = float(fault.get("ended_at") or fault_start)
        first = int(math.floor(fault_start))
        # The next fault cuts the good run short: good up to its start is recovered.
        next_start = next((math.floor(s) for s in starts if s > fault_end), None)
        recovered_second = None
        for t in range(first, last_second + 1):
            needed = good_run_s if next_start is None else min(good_run_s, next_start - t)
            if needed >= 1 and t + needed > fault_end and all(
                    good.get(s, False) for s in range(t, t + needed)) \
                    and t + needed - 1 <= last_second:
                recovered_second = t
                break
        span = range(first, recovered_second if recovered_second is not None
                     else last_second + 1)
        silent.update(t for t in span if t not in good and start <= t <= end)
        in_faults.update(span)
        entry["requests"] = sum(counts.get(t, (0, 0))[0] for t in span)
        entry["errors"] = sum(counts.get(t, (0, 0))[1] for t in span)
        entry["bad_s"] = sum(1 for t in span if not good.get(t, False))
        entry["recovered"] = recovered_second is not None
        if span and not good.get(first, False) and start <= first:
            credit_s += fault_start - first
        if recovered_second is None:
            # Not recovered by the end of the run: at least this long (a lower bound).
            entry["recovery_s"] = max(0.0, end - fault_end)
            entry["recovery_from_start_s"] = max(0.0, end - fault_start)
            continue
        recovered_at = float(recovered_second)
        if span and not good.get(recovered_second - 1, False) and start <= recovered_second - 1:
            recovered_at -= 0.5  # inside the last bad second: its middle
            credit_s += 0.5
        recovered_at = max(recovered_at, fault_start)
        entry["recovered_at_s"] = recovered_at - started_at
        entry["recovery_s"] = max(0.0, recovered_at - fault_end)
        entry["recovery_from_start_s"] = recovered_at - fault_start
    judged = seconds[(seconds["t"] >= start) & (seconds["t"] <= end)]
    # Outside a fault and its recovery, a second slow but without errors stays up: the latency
    # KPIs judge slowness over the run with their own budget (a p99 lets 1 % through), and a
    # run's first second or a pause of the machine is not downtime (a 3 s run with warm-up 0
    # lost its first second, 2 of 2 requests over 200 ms, and failed 99.9 % while its p99
    # passed). Inside, latency counts: a latency fault is an outage of its own.
    up = judged["good"] | (judged["slow_only"] & ~judged["t"].isin(in_faults))
    judged = judged.assign(good=up)
    judged_s = len(judged) + len(silent)
    good_s = int(judged["good"].sum())
    down_s = max(0.0, judged_s - good_s - credit_s)
    availability = {
        "percent": 100.0 * (judged_s - down_s) / judged_s if judged_s else None,
        "judged_s": judged_s, "good_s": good_s, "bad_s": judged_s - good_s,
        "down_s": down_s, "silent_s": len(silent), "good_run_s": good_run_s,
        "errors_during_faults": sum(e.get("errors") or 0 for e in entries),
        "worst": _worst_seconds(judged),
    }
    return {"availability": availability, "faults": entries}


def _fault_entry(fault: dict[str, Any], started_at: float) -> dict[str, Any]:
    def offset(t: Any) -> float | None:
        return None if t is None else float(t) - started_at

    do, undo = fault.get("do") or {}, fault.get("undo") or {}
    return {"index": fault.get("index"), "spec": fault.get("spec"), "what": fault.get("what"),
            "at_s": fault.get("at_s"), "for_s": fault.get("for_s"),
            "status": fault.get("status"), "started_at_s": offset(fault.get("started_at")),
            "ended_at_s": offset(fault.get("ended_at")),
            "do_exit_code": do.get("exit_code"), "undo_exit_code": undo.get("exit_code"),
            "problem": describe_command_failure(fault),
            "recovered": None, "recovered_at_s": None, "recovery_s": None,
            "recovery_from_start_s": None, "errors": None, "requests": None, "bad_s": None}


def describe_command_failure(fault: dict[str, Any]) -> str:
    """Why a fault's command failed ("" when none did), with the last line it printed."""
    for which in ("do", "undo"):
        record = fault.get(which)
        if record is None or record.get("exit_code") == 0:
            continue
        how = (f"exited {record['exit_code']}" if record.get("exit_code") is not None
               else record.get("error") or "did not finish")
        lines = str(record.get("output") or "").strip().splitlines()
        said = f": {lines[-1][:200]}" if lines else ""
        return f"{which} command `{record.get('command')}` {how}{said}"
    return ""


def _worst_seconds(judged: pd.DataFrame, limit: int = 5) -> list[dict[str, Any]]:
    """The first few bad seconds and why, for the report."""
    bad = judged[~judged["good"]].head(limit)
    return [{"t": int(t), "why": str(why)} for t, why in zip(bad["t"], bad["why"], strict=True)]


def describe_fault(fault: dict[str, Any]) -> str:
    """One line: what the fault did, how long the target took to recover."""
    when = (f"at {format_value(fault['started_at_s'], 's')}" if fault.get("started_at_s")
            is not None else f"due at {format_value(fault.get('at_s'), 's')}")
    head = f"fault {fault.get('index')} {when} (`{fault.get('what')}`"
    head += f", for {format_value(fault['for_s'], 's')})" if fault.get("for_s") else ")"
    if fault.get("status") == "not_reached":
        return f"{head}: not reached, the run ended first"
    problem = f"; {fault['problem']}" if fault.get("problem") else ""
    if fault.get("recovered") is None:
        return f"{head}: did not run{problem}"
    errors = f"{fault['errors']} of {fault['requests']} requests failed"
    if not fault["recovered"]:
        return (f"{head}: not recovered by the end of the run (over "
                f"{format_value(fault['recovery_s'], 's')} after it ended); {errors}{problem}")
    return (f"{head}: {fault['bad_s']} s bad, recovered "
            f"{format_value(fault['recovery_s'], 's')} after its end "
            f"({format_value(fault['recovery_from_start_s'], 's')} after its start); "
            f"{errors}{problem}")


def describe_lost_work(lost_work: dict[str, Any] | None) -> str:
    """One line on the research jobs accepted and never finished (run/jobs.py)."""
    if not lost_work:
        return ("Lost work not measured: no research job was accepted (or the users ran in "
                "other processes)")
    line = (f"Lost work: {lost_work['lost']} of {lost_work['accepted']} research jobs accepted "
            f"(201) never reached a final state ({lost_work['ended_after_stop']} ended after "
            f"the stop, checked for {format_value(lost_work['checked_s'], 's')})")
    ids = lost_work.get("lost_ids") or []
    return line + (f"; e.g. {', '.join(ids[:3])}" if ids else "")
