"""perfkit stress: drive the ramp step by step and judge each step live (analysis.stress has
the rules), then hand the steps to the report."""

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import pandas as pd

from ..analysis.stress import (
    SETTLE_FRACTION,
    SETTLE_MAX_S,
    describe_breach,
    describe_step,
    describe_stress,
    judge_step,
    plan_steps,
    summarize_stress,
)
from ..config import KpiTarget, StressSettings
from ..result import RunResult
from . import runner


def run_stress(settings: StressSettings, say: Callable[[str], None]) -> RunResult:
    """The `perfkit stress` command: the run, with its steps, capacity and breaking step in
    `meta.stress`."""
    steps = plan_steps(settings)
    load = dataclasses.replace(settings.load, command="stress", duration_s=min(
        settings.load.duration_s, settings.max_steps * settings.step_duration_s))
    targets = load.targets
    results: list[dict[str, Any]] = []
    stopped = ["max_steps"]

    def on_step_end(index: int, state: runner.RunState) -> bool:
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

    def on_run_end(run: RunResult, state: runner.RunState) -> None:
        if state.status != "completed":
            stopped[0] = state.status
        run.meta.stress = summarize_stress(settings, results, stopped[0])

    say(f"perfkit stress: up to {len(steps)} steps of {settings.step_duration_s:g} s, "
        + ", ".join(f"{rate:g}/s" if rate is not None else f"{users}" for _, users, rate in steps)
        + (" arrivals" if load.rate is not None else " users"))
    run = runner.run_load(load, say, runner.Plan(
        steps=steps, on_step_end=on_step_end, on_run_end=on_run_end,
        window_s=settings.step_duration_s))
    for line in describe_stress(run.meta.stress or {}):
        say(f"perfkit stress: {line}")
    return run


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
