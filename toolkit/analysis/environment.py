"""What else the machine was doing during a run, from the machine columns of resources.csv
(perfkit.collectors.system), and whether that explains a difference between runs.

run.json and summary.json carry the summary as "environment"; `perfkit compare` turns a
regression into "inconclusive" when the current run ran beside materially more other work than
the baseline (docs/regression.md gives the rule and why). Pure functions, no I/O.
"""

import math
from typing import Any

import pandas as pd

# Other work (other processes' CPU plus steal, % of one core) that must separate two runs
# before it is taken to explain a regression, and, where the machine is saturated, the rise in
# seconds waited for a CPU per second run: docs/regression.md, "What else the machine was
# doing", says why these.
BUSIER_CORE_PERCENT = 25.0
BUSIER_WAIT_RATIO = 0.5
# How much slower a busier machine can make a run, at most: its processes' time to get their
# CPU work done grows with (1 + seconds waited for a CPU per second run), so the ratio of that
# between the runs, with EXPLAINED_SLACK for the tail percentiles (which a crowded run queue
# moves more than the median: measured ×2.6 at p50 for ×2.2 of (1 + wait),
# docs/regression.md), and never less than EXPLAINED_MIN_RATIO. Where the wait was not
# recorded, EXPLAINED_DEFAULT_RATIO. A regression beyond that is the change's, busier
# machine or not: a gate must still fail a much slower change on a busy runner.
EXPLAINED_SLACK = 1.5
EXPLAINED_MIN_RATIO = 1.5
EXPLAINED_DEFAULT_RATIO = 2.0

_STATS = ("others_cpu_percent", "sys_steal_percent", "sys_perfkit_cpu_percent")


def summarize_environment(resources: pd.DataFrame | None, start: float, end: float,
                          cpu_count: int | None) -> dict[str, Any] | None:
    """run.json "environment": mean and max of other processes' CPU, steal and perfkit's own
    CPU (% of one core) over the judged window [start, end]; the one-minute load average at
    the first and last sample of the run and its mean and max over the window; the CPU wait
    ratio of the target's and perfkit's processes over the window. None for a run
    whose resources.csv has none of these columns (recorded before they existed); a column
    present but empty is a None value (not measured), never 0."""
    if resources is None or "sys_loadavg_1m" not in resources:
        return None
    judged = resources[(resources["t"] >= start) & (resources["t"] <= end)]
    summary: dict[str, Any] = {"cpu_count": cpu_count}
    for column in _STATS:
        values = _numbers(judged, column)
        summary[column] = {"mean": _round(values.mean()), "max": _round(values.max())}
    whole, values = _numbers(resources, "sys_loadavg_1m"), _numbers(judged, "sys_loadavg_1m")
    summary["sys_loadavg_1m"] = {
        "start": _round(whole.iloc[0]) if len(whole) else None,
        "end": _round(whole.iloc[-1]) if len(whole) else None,
        "mean": _round(values.mean()), "max": _round(values.max()),
        "mean_per_core": _round(values.mean() / cpu_count) if cpu_count else None,
    }
    summary["cpu_wait_ratio"] = _wait_ratio(judged)
    summary["samples"] = int(_numbers(judged, "others_cpu_percent").size)
    return summary


_WAIT_COLUMNS = ["wait_percent", "sys_perfkit_wait_percent", "cpu_percent",
                 "sys_perfkit_cpu_percent"]


def _wait_ratio(judged: pd.DataFrame) -> float | None:
    """Seconds the target's and perfkit's processes waited for a CPU per second they ran,
    over the seconds where all four are known: how crowded the run queue was for them. It
    keeps growing where the machine is saturated and other processes' CPU cannot."""
    if not set(_WAIT_COLUMNS) <= set(judged.columns):
        return None
    frame = judged[_WAIT_COLUMNS].apply(pd.to_numeric, errors="coerce").dropna()
    ran = frame["cpu_percent"].sum() + frame["sys_perfkit_cpu_percent"].sum()
    if frame.empty or ran <= 0:
        return None
    waited = frame["wait_percent"].sum() + frame["sys_perfkit_wait_percent"].sum()
    return _round(waited / ran)


def _numbers(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame:
        return pd.Series([], dtype=float)
    return pd.to_numeric(frame[column], errors="coerce").dropna()


def _round(value: Any) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else round(float(value), 2)


def other_work_percent(environment: dict[str, Any] | None) -> float | None:
    """Other work beside the run, % of one core: other processes' mean CPU plus the mean steal
    (0 where the OS reports no steal). None where other processes' CPU was not measured."""
    if not environment:
        return None
    others = (environment.get("others_cpu_percent") or {}).get("mean")
    if others is None:
        return None
    steal = (environment.get("sys_steal_percent") or {}).get("mean")
    return float(others) + float(steal or 0.0)


def check_environment(baselines: list[dict[str, Any] | None],
                      currents: list[dict[str, Any] | None],
                      labels: tuple[list[str], list[str]]) -> dict[str, Any]:
    """Was the machine materially busier during the current runs than during the baseline's?

    Each side is a list of run environments (summarize_environment), `labels` the runs' names.
    The current runs were busier when even the quietest of them ran beside more than
    BUSIER_CORE_PERCENT of a core of other work more than the busiest baseline run did; or,
    on a machine where other work took at least that much in every current run (saturated:
    its CPU cannot grow further), when the target's and perfkit's processes of every current
    run waited for a CPU more than BUSIER_WAIT_RATIO seconds per second run longer than in any
    baseline run. The mirror image makes the baseline the busier. Returns compare.json's
    "environment": each run's environment, other work and wait ratio, `busier` ("current",
    "baseline" or None), `difference_percent` (other work) and a `note` that names the
    difference (or says what was not recorded)."""
    base_work = [other_work_percent(env) for env in baselines]
    cur_work = [other_work_percent(env) for env in currents]
    base_wait = [(env or {}).get("cpu_wait_ratio") for env in baselines]
    cur_wait = [(env or {}).get("cpu_wait_ratio") for env in currents]
    record: dict[str, Any] = {
        "baseline": baselines, "current": currents,
        "baseline_other_work_percent": base_work, "current_other_work_percent": cur_work,
        "baseline_cpu_wait_ratio": base_wait, "current_cpu_wait_ratio": cur_wait,
        "threshold_percent": BUSIER_CORE_PERCENT, "threshold_wait_ratio": BUSIER_WAIT_RATIO,
        "busier": None, "difference_percent": None, "note": "", "explained": [],
        "explainable_ratio": None, "unexplained": [],
    }
    unknown = [label for label, work in zip([*labels[0], *labels[1]], [*base_work, *cur_work],
                                            strict=True) if work is None]
    if unknown:
        record["note"] = (f"the machine's other work was not recorded for {', '.join(unknown)} "
                          f"(a run directory from before perfkit recorded it, or no target "
                          f"process to tell apart from other work): judged without the "
                          f"environment check")
        return record
    base = [work for work in base_work if work is not None]
    cur = [work for work in cur_work if work is not None]
    for side, (busy, quiet, busy_wait, quiet_wait) in (
            ("current", (cur, base, cur_wait, base_wait)),
            ("baseline", (base, cur, base_wait, cur_wait))):
        waited = _wait_rise(busy_wait, quiet_wait)
        other = "the current run" if side == "baseline" else "the baseline"
        if min(busy) - max(quiet) > BUSIER_CORE_PERCENT:
            record["note"] = (f"the machine was busier in {_the(side)}: it ran beside "
                              f"{_share(busy)} of a core of other work, {other} beside "
                              f"{_share(quiet)}")
        elif min(busy) >= BUSIER_CORE_PERCENT and waited is not None \
                and waited > BUSIER_WAIT_RATIO:
            record["note"] = (f"the machine was busier in {_the(side)}: beside {_share(busy)} "
                              f"of a core of other work ({other}: {_share(quiet)}), its "
                              f"processes waited {_ratios(busy_wait)} s for a CPU per second "
                              f"they ran, {_ratios(quiet_wait)} s in {other}")
        else:
            continue
        record["busier"] = side
        record["difference_percent"] = round(min(busy) - max(quiet), 1)
        record["explainable_ratio"] = _explainable_ratio(busy_wait, quiet_wait)
        if side == "baseline":
            record["note"] += "; judged as usual (an improvement may be the machine's)"
        break
    return record


def _explainable_ratio(busy: list[float | None], quiet: list[float | None]) -> float:
    """The largest slowdown the busier side's CPU wait explains (EXPLAINED_SLACK)."""
    if None in busy or None in quiet or not busy or not quiet:
        return EXPLAINED_DEFAULT_RATIO
    slowdown = (1.0 + max(v for v in busy if v is not None)) / \
        (1.0 + min(v for v in quiet if v is not None))
    return round(max(EXPLAINED_MIN_RATIO, EXPLAINED_SLACK * slowdown), 2)


def _wait_rise(busy: list[float | None], quiet: list[float | None]) -> float | None:
    """How much longer the least-waiting busy run waited per second run than the
    most-waiting quiet run; None where a run has no wait ratio."""
    if None in busy or None in quiet or not busy or not quiet:
        return None
    return min(v for v in busy if v is not None) - max(v for v in quiet if v is not None)


def _the(side: str) -> str:
    return "the current run" if side == "current" else "the baseline"


def _ratios(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    return (f"{known[0]:.2f}" if len(known) == 1
            else f"{min(known):.2f}-{max(known):.2f}")


def _share(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.0f} %"
    return f"{min(values):.0f}-{max(values):.0f} %"


def describe_machine_load(environment: dict[str, Any] | None) -> str:
    """One line for a report: other work, steal, load average, perfkit's own CPU."""
    if not environment:
        return "not recorded (a run from before perfkit recorded the machine's load)"
    others, steal, own = (environment.get(key) or {} for key in _STATS)
    load = environment.get("sys_loadavg_1m") or {}
    parts = ["other processes not measured (no target process to tell apart)"
             if others.get("mean") is None else
             f"other processes {_percent(others.get('mean'))} of a core "
             f"(max {_percent(others.get('max'))})",
             f"steal {_percent(steal.get('mean'))}",
             f"load average {_number(load.get('start'))} at the start, "
             f"{_number(load.get('end'))} at the end (mean {_number(load.get('mean'))}, "
             f"{_number(load.get('mean_per_core'))} per core)",
             f"perfkit itself {_percent(own.get('mean'))} of a core",
             f"the target and perfkit waited {_number(environment.get('cpu_wait_ratio'))} s "
             f"for a CPU per second they ran"]
    return "; ".join(parts) + " (means and maxima over the judged window)"


def _percent(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.0f} %"


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"
