"""perfkit stress: drive the ramp step by step and judge each step live (analysis.stress has
the rules), then hand the steps to the report."""

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import pandas as pd

from ..analysis.stress import (
    describe_breach,
    describe_step,
    describe_stress,
    judge_step,
    open_users_cap,
    plan_steps,
    settle_s,
    size_open_users,
    summarize_stress,
)
from ..kpi_file import KpiTarget
from ..result import RunResult
from ..settings import StressSettings
from . import runner

# Locust's advice: spawning faster than this "is known to sometimes cause issues".
MAX_SPAWN_RATE = 100.0


def run_stress(settings: StressSettings, say: Callable[[str], None]) -> RunResult:
    """The `perfkit stress` command: the run, with its steps, capacity and breaking step in
    `meta.stress`."""
    steps = plan_steps(settings)
    settle = settle_s(settings.step_duration_s)
    load = settings.load
    open_load = load.rate is not None
    # A step's new users start within its settle time, so its judged window runs at its
    # load: a closed ramp's largest increment per settle time; an open load's users are only
    # concurrency slots, sized as the ramp goes: as fast as Locust allows.
    added = [steps[0][1]] + [b[1] - a[1] for a, b in zip(steps, steps[1:], strict=False)]
    spawn_rate = max(load.spawn_rate,
                     MAX_SPAWN_RATE if open_load else min(MAX_SPAWN_RATE, max(added) / settle))
    load = dataclasses.replace(
        load, command="stress", users=steps[0][1] if open_load else load.users,
        spawn_rate=spawn_rate,
        duration_s=min(load.duration_s, len(steps) * settings.step_duration_s),
        # The whole-ramp KPIs leave out what the steps leave out of the first one; a tenth
        # of the planned ramp would cut off most of a ramp that broke early.
        warmup_s=settle if load.warmup_s is None else load.warmup_s)
    targets = load.targets
    results: list[dict[str, Any]] = []
    stopped = ["max_steps"]
    late_seen = [0, 0]  # (iterations, late iterations) of the open load at the last step end

    def on_step_end(index: int, state: runner.RunState) -> bool:
        now = time.time()
        offset_s, users, rate = steps[index]
        # Buckets hold the requests completed within their second: the window starts on a
        # whole one (a bucket cut in two would count only part of its requests against its
        # share of the duration) and ends now, with the current bucket as filled so far.
        start = math.ceil(state.started_at + offset_s + settle)
        if now - start < 1:
            start = math.floor(state.started_at + offset_s)
        end = now
        records = state.recorder.window_records(start, end)
        # In gevent's thread pool: Locust's users go on while the step's histograms merge.
        result = gevent.get_hub().threadpool.apply(judge_step_file, (
            index + 1, users, rate, records, state.system.out_csv, start, end, targets,
            results[-1] if results else None, settings.max_error_rate_percent))
        lateness = state.recorder.lateness
        iterations = lateness.iterations - late_seen[0]
        late = lateness.late_iterations - late_seen[1]
        late_seen[:] = [lateness.iterations, lateness.late_iterations]
        result["late_iterations_percent"] = (100.0 * late / iterations
                                             if open_load and iterations else None)
        results.append(result)
        if result["held"]:
            say(f"perfkit stress: {describe_step(result)} held")
            if open_load and index + 1 < len(steps):
                next_offset, _, next_rate = steps[index + 1]
                steps[index + 1] = (next_offset, size_open_users(
                    next_rate or 0.0, result, users, open_users_cap(settings)), next_rate)
            return False
        stopped[0] = "broke"
        how = describe_breach(result["breaches"][0])
        say(f"perfkit stress: {describe_step(result)} BROKE: {how}")
        state.message = f"stopped at step {index + 1}, which broke: {how}"
        return True

    def on_run_end(run: RunResult, state: runner.RunState) -> None:
        if state.status != "completed":
            stopped[0] = state.status
        elif stopped[0] != "broke" and len(results) < len(steps):
            stopped[0] = "duration"
        run.meta.stress = summarize_stress(settings, results, stopped[0])
        # run.json's plan with each open-load step's users as they were sized.
        run.meta.settings = dataclasses.replace(run.meta.settings, steps=tuple(steps))

    ramp = ", ".join(f"{rate:g}/s" if rate is not None else f"{users}"
                     for _, users, rate in steps)
    users_note = (f" arrivals (users sized per step from the latency, at most "
                  f"{open_users_cap(settings)})" if open_load else " users")
    say(f"perfkit stress: up to {len(steps)} steps of {settings.step_duration_s:g} s, "
        f"{ramp}{users_note}")
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
