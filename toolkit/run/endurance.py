"""perfkit endurance: one long steady run, then analysis.endurance's leak, drift and
error-budget judgement of it, which is part of the run's one verdict (analysis.kpi)."""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from ..analysis.endurance import DRIFT_FRACTION, analyze_endurance, describe_memory
from ..result import RunResult
from ..settings import EnduranceSettings
from ..units import format_value
from . import runner


def run_endurance(settings: EnduranceSettings, say: Callable[[str], None]) -> RunResult:
    """The `perfkit endurance` command: the run, judged for leaks, drift and the error budget
    in `meta.endurance` before the run's verdict is (a leak fails the run, as a failed KPI
    does; inconclusive memory growth warns). The findings are printed before the verdict."""
    load = dataclasses.replace(settings.load, command="endurance")

    def on_run_end(run: RunResult, state: runner.RunState) -> None:
        run.meta.endurance = analyze_endurance(run, load.targets, settings.leak_threshold_mb_h)
        for line in describe_endurance(run.meta.endurance):
            say(f"perfkit endurance: {line}")

    return runner.run_load(load, say, runner.Plan(
        steps=[(0.0, load.users, load.rate)], on_run_end=on_run_end))


def describe_endurance(endurance: dict[str, Any]) -> list[str]:
    """The terminal lines: memory growth, latency drift, error budget."""
    lines = [describe_memory(endurance["memory"])]
    if endurance["memory"].get("note"):
        lines.append(f"note: {endurance['memory']['note']}")
    overall = endurance["drift"]["endpoints"]["all"]
    lines.append(f"p95 {format_value(overall['p95_first_ms'], 'ms')} in the first "
                 f"{100 * DRIFT_FRACTION:.0f} % -> {format_value(overall['p95_last_ms'], 'ms')} "
                 f"in the last" + (f" (x{overall['ratio']:.2f})" if overall["ratio"] is not None
                                   else ""))
    budget = endurance["error_budget"]
    used = budget["used_percent"]
    lines.append("error budget " + (
        f"{used:.0f} % used ({budget['failures']} failures of "
        f"{budget['allowed_failures'] or 0:.1f} allowed)" if used is not None
        and math.isfinite(used) else budget["note"] or "not measurable"))
    return lines
