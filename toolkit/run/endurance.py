"""perfkit endurance: one long steady run, then analysis.endurance's leak, drift and
error-budget judgement of it."""

import dataclasses
import math
from collections.abc import Callable

from ..analysis.endurance import DRIFT_FRACTION, analyze_endurance, describe_memory
from ..config import EnduranceSettings
from ..result import RunResult
from ..units import format_value
from . import runner


def run_endurance(settings: EnduranceSettings, say: Callable[[str], None]) -> RunResult:
    """The `perfkit endurance` command: the run, judged for leaks, drift and the error budget
    in `meta.endurance` (a leak exits 1, as a failed KPI does)."""
    load = dataclasses.replace(settings.load, command="endurance")

    def on_run_end(run: RunResult, state: runner.RunState) -> None:
        run.meta.endurance = analyze_endurance(run, load.targets, settings.leak_threshold_mb_h)

    run = runner.run_load(load, say, runner.Plan(
        steps=[(0.0, load.users, load.rate)], on_run_end=on_run_end))
    endurance = run.meta.endurance
    assert endurance is not None
    say(f"perfkit endurance: {describe_memory(endurance['memory'])}")
    if endurance["memory"]["note"]:
        say(f"perfkit endurance: note: {endurance['memory']['note']}")
    overall = endurance["drift"]["endpoints"]["all"]
    say(f"perfkit endurance: p95 {format_value(overall['p95_first_ms'], 'ms')} in the first "
        f"{100 * DRIFT_FRACTION:.0f} % -> {format_value(overall['p95_last_ms'], 'ms')} in the "
        f"last" + (f" (x{overall['ratio']:.2f})" if overall["ratio"] is not None else ""))
    budget = endurance["error_budget"]
    say("perfkit endurance: error budget " + (
        f"{budget['used_percent']:.0f} % used ({budget['failures']} failures of "
        f"{budget['allowed_failures']:.1f} allowed)" if budget["used_percent"] is not None
        and math.isfinite(budget["used_percent"]) else budget["note"] or "not measurable"))
    return run
