"""Interleaved A/B trials on one machine: `perfkit ab`.

A and B runs alternate in the order A B B A A B B A …, each on a freshly started target, so
a drift of the machine's load hits both arms alike and each adjacent (A, B) pair shares its
moment. The runs are the samples: perfkit.analysis.history.judge_trials compares them pair by
pair against their spread, which holds the run-to-run noise a single pair cannot see.

With `simultaneous`, each trial starts fresh A and B targets together and loads both at once
from one load generator (LoadSettings.arms: each user class once per arm, their users
spawned alternately, the arm first in the trial's order first), so one trial is one pair.
What made successive runs differ (the load generator's own scheduling, the machine's moment)
then hits both arms alike: on the 2-core machine of docs/regression.md the spread of
log(B/A) fell from 0.17 per pair of runs to 0.04 per trial. The arms' order alternates from
trial to trial (A B, B A, ...), and with it whatever being first does (docs/regression.md:
the bias it once caused). The trials are still the samples: a fresh pair of targets each
time keeps what differs between instances in the verdict's noise.
"""

import contextlib
import dataclasses
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..analysis.history import TrialSettings, TrialVerdict, judge_trials, trial_order
from ..errors import ConfigError, TargetError
from ..report.ab_html import write_ab_report
from ..result import RunResult
from ..settings import LoadSettings
from . import runner, target
from .processes import start_child, stop_child

Say = Callable[[str], None]
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
# `perfkit serve` options that take no value (the rest take one)
_SERVE_FLAGS = ("--fast",)


@dataclass(frozen=True)
class Arm:
    """One side: options of the bundled service, or a command starting a target on {port}."""

    label: str
    serve_options: tuple[str, ...] = ()
    command: str | None = None

    @classmethod
    def parse(cls, label: str, options: str, command: str | None) -> "Arm":
        if command:
            if options:
                raise ConfigError(f"--{label.lower()} and --{label.lower()}-cmd exclude each "
                                  "other")
            if "{port}" not in command:
                raise ConfigError(f"--{label.lower()}-cmd must contain {{port}}: {command!r}")
            return cls(label, command=command)
        return cls(label, serve_options=tuple(shlex.split(options)))

    def describe(self) -> str:
        if self.command:
            return self.command
        return "bundled service " + (" ".join(self.serve_options) or "(guide profile)")


@dataclass(frozen=True)
class AbSettings:
    load: LoadSettings
    a: Arm
    b: Arm
    repeat: int = 5
    trial: TrialSettings = dataclasses.field(default_factory=TrialSettings)
    simultaneous: bool = False


@dataclass
class AbResult:
    out: Path
    order: list[str]
    runs: list[RunResult]
    verdict: TrialVerdict
    notes: list[str]
    duration_s: float
    # Which arm came first in each judged pair ("AB" or "BA"): what being first does shows
    # as a difference between the two (the report splits B/A by it).
    pair_orders: list[str] = dataclasses.field(default_factory=list)


def run_ab(settings: AbSettings, say: Say) -> AbResult:
    load = settings.load
    if load.target or load.variants or load.extra_latency:
        raise ConfigError("perfkit ab starts its own targets: give --variant, --extra-latency "
                          "and the like in --a/--b, and a target with --a-cmd/--b-cmd")
    out = load.out or load.reports_dir / f"ab-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    arms = {"A": settings.a, "B": settings.b}
    started = time.monotonic()
    runs: list[RunResult] = []
    if settings.simultaneous:
        order = ["AB" if i % 2 == 0 else "BA" for i in range(settings.repeat)]
        for i, labels in enumerate(order):
            say(f"perfkit ab: trial {i + 1}/{len(order)}: A and B at once")
            runs.append(run_together([(label, arms[label]) for label in labels], load,
                                     out / f"{i + 1:02d}-{labels}", say))
        pairs, notes, pair_orders = _simultaneous_pairs(runs, order)
    else:
        order = trial_order(settings.repeat)
        for i, label in enumerate(order):
            say(f"perfkit ab: run {i + 1}/{len(order)}: {label} = {arms[label].describe()}")
            runs.append(_run_arm(arms[label], load, out / f"{i + 1:02d}-{label}", say))
        pairs, notes, pair_orders = _pairs(order, runs)
    verdict = judge_trials(pairs, settings.trial)
    result = AbResult(out, order, runs, verdict, notes, time.monotonic() - started,
                      pair_orders)
    paths = write_ab_report(result_record(result, settings), out)
    for m in verdict.regressed:
        say(f"  regressed: {m.endpoint} {m.metric} x{m.ratio:.3f} "
            f"(CI {m.ci_low:.3f}..{m.ci_high:.3f}, p={m.p_value:.2g})")
    for note in notes:
        say(f"  note: {note}")
    say(f"ab: {headline(verdict)}")
    if verdict.outcome == "inconclusive":
        say("ab: INCONCLUSIVE - the runs were too noisy to tell; exit 0 unless "
            "--fail-on-inconclusive (more --repeat, longer runs or a quieter machine help)")
    if verdict.outcome == "not judged":
        say("ab: NOT JUDGED - no run measured both arms (see the notes); exit 3")
    say(f"report: {paths[0]} ({result.duration_s:.0f} s for {len(runs)} runs)")
    return result


def headline(verdict: TrialVerdict) -> str:
    if verdict.outcome == "regression":
        return (f"REGRESSION in {', '.join(verdict.regressed_endpoints)} "
                f"({verdict.pairs} pairs, threshold {verdict.threshold:.0%}, "
                f"confidence {verdict.confidence:.0%})")
    return (f"{verdict.outcome.upper()} ({verdict.pairs} pairs, threshold "
            f"{verdict.threshold:.0%}, confidence {verdict.confidence:.0%})")


def _pairs(order: list[str], runs: list[RunResult]) -> tuple[list[Any], list[str], list[str]]:
    """Adjacent (A, B) pairs whose runs both completed with requests measured, the notes on
    those left out, and each pair's order."""
    pairs, notes, orders = [], [], []
    for k in range(0, len(runs) - 1, 2):
        first, second = runs[k], runs[k + 1]
        a, b = (first, second) if order[k] == "A" else (second, first)
        broken = [r for r in (a, b) if r.meta.status != "completed" or not r.endpoints]
        if broken:
            notes.append(f"pair {k // 2 + 1} left out: {broken[0].run_dir} "
                         f"{broken[0].meta.status} {broken[0].meta.message}".strip())
            continue
        pairs.append((a.endpoints, b.endpoints))
        orders.append(order[k] + order[k + 1])
    return pairs, notes, orders


def split_arms(run: RunResult) -> dict[str, dict[str, dict[str, Any]]]:
    """A simultaneous trial's endpoints by arm: "[A] GET /x" is A's "GET /x"."""
    by_arm: dict[str, dict[str, dict[str, Any]]] = {}
    for name, summary in run.endpoints.items():
        label, _, endpoint = name.partition("] ")
        if label.startswith("[") and endpoint:
            by_arm.setdefault(label[1:], {})[endpoint] = summary
    return by_arm


def _simultaneous_pairs(runs: list[RunResult],
                        order: list[str]) -> tuple[list[Any], list[str], list[str]]:
    """(A, B) of each trial whose run completed with requests of both arms measured, the
    notes on those left out, and each pair's order."""
    pairs, notes, orders = [], [], []
    for i, run in enumerate(runs):
        by_arm = split_arms(run)
        if run.meta.status != "completed" or not {"A", "B"} <= by_arm.keys():
            notes.append(f"trial {i + 1} left out: {run.run_dir} {run.meta.status} "
                         f"{run.meta.message}".strip())
            continue
        pairs.append((by_arm["A"], by_arm["B"]))
        orders.append(order[i])
    return pairs, notes, orders


def run_together(arms: list[tuple[str, Arm]], load: LoadSettings, out: Path,
                 say: Say) -> RunResult:
    """One run loading every arm's freshly started target at once (LoadSettings.arms), each
    with `load`'s users and rate. The resource sampler watches the first arm's target (psutil
    reads it from outside, at no cost to it); no metrics endpoint is scraped, which would
    have that target alone answer extra requests."""
    out.mkdir(parents=True, exist_ok=True)
    started: list[tuple[str, subprocess.Popen, str]] = []
    try:
        # All started before any is waited for: no arm's target starts while another's is
        # already up (and it halves the time a trial waits for its targets).
        for (label, arm), port in zip(arms, _free_ports(len(arms)), strict=True):
            started.append((label, *_launch_target(arm, out / f"target-{label}.log", port)))
        for (label, process, url), (_, arm) in zip(started, arms, strict=True):
            _await_target(arm, process, url, out / f"target-{label}.log")
        n = len(arms)
        settings = dataclasses.replace(
            load, target=started[0][2], target_pid=started[0][1].pid, out=out,
            users=load.users * n, rate=None if load.rate is None else load.rate * n,
            arms=tuple((label, url) for label, _, url in started))
        return runner.run_load(settings, _quiet(say))
    finally:
        for _, process, _ in started:
            stop_child(process, signal.SIGINT, STOP_TIMEOUT_S)


def _run_arm(arm: Arm, load: LoadSettings, out: Path, say: Say) -> RunResult:
    out.mkdir(parents=True, exist_ok=True)
    process, url = _start_target(arm, out / "target.log")
    try:
        settings = dataclasses.replace(load, target=url, target_pid=process.pid, out=out)
        return runner.run_load(settings, _quiet(say))
    finally:
        stop_child(process, signal.SIGINT, STOP_TIMEOUT_S)


def _quiet(say: Say) -> Say:
    """A trial's own verdict lines would read as the A/B verdict: keep only its problems."""
    def filtered(message: str) -> None:
        if message.startswith("perfkit: run ") or "raised" in message:
            say(message)
    return filtered


def _free_ports(n: int) -> list[int]:
    """`n` distinct free ports (held at once while they are picked)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


def _start_target(arm: Arm, log_path: Path) -> tuple[subprocess.Popen, str]:
    process, url = _launch_target(arm, log_path, _free_ports(1)[0])
    _await_target(arm, process, url, log_path)
    return process, url


def _launch_target(arm: Arm, log_path: Path, port: int) -> tuple[subprocess.Popen, str]:
    if arm.command:
        command: list[str] | str = arm.command.replace("{port}", str(port))
    else:
        command = [sys.executable, "-m", "perfkit", "serve", "--host", "127.0.0.1",
                   "--port", str(port), *arm.serve_options]
    process = start_child(command, log_path)  # a killed `perfkit ab` leaves none running
    return process, f"http://127.0.0.1:{port}"


def _await_target(arm: Arm, process: subprocess.Popen, url: str, log_path: Path) -> None:
    try:
        target.wait_until_healthy(url, START_TIMEOUT_S, process)
    except TargetError as exc:
        stop_child(process, signal.SIGINT, STOP_TIMEOUT_S)
        tail = log_path.read_text("utf-8", errors="replace").strip().splitlines()[-3:]
        raise TargetError(f"{arm.label}: {exc}; its output ends: {' | '.join(tail)}") from exc


def result_record(result: AbResult, settings: AbSettings) -> dict[str, Any]:
    """compare.json of a trial: the verdict, every metric with its per-run values, the runs."""
    verdict = result.verdict
    return {
        "kind": "ab",
        "outcome": verdict.outcome,
        "regression": verdict.outcome == "regression",
        "regressed_endpoints": verdict.regressed_endpoints,
        "headline": headline(verdict),
        "a": settings.a.describe(),
        "b": settings.b.describe(),
        "pairs": verdict.pairs,
        "threshold": verdict.threshold,
        "confidence": verdict.confidence,
        "order": result.order,
        "pair_orders": result.pair_orders,
        "design": (f"simultaneous trials (arms loaded at once, in the order "
                   f"{' '.join(result.order)}), each on freshly started targets"
                   if settings.simultaneous else
                   f"interleaved runs (order {' '.join(result.order)}), each on a freshly "
                   "started target"),
        "runs": [str(run.run_dir) for run in result.runs],
        "scenario": settings.load.scenario,
        "duration_s_per_run": settings.load.duration_s,
        "wall_time_s": result.duration_s,
        "notes": result.notes,
        "metrics": [dataclasses.asdict(m) for m in verdict.metrics],
    }
