"""A run in memory: what `perfkit.load` (and stress, endurance) return, and what reading a run
directory back gives (docs/run-directory.md is the file contract).

`RunMeta` is run.json, `RunSettings` its "settings"; `RunResult` adds the data files as pandas
frames and, once judged, the verdict. Plain data: no I/O here (perfkit.rundir reads and
writes it), so importing it never imports Locust or gevent.
"""

import dataclasses
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .analysis.digest import LatencyChunk, LatencyDigest
from .kpi_file import JOB_NAMES, KpiTarget

__all__ = ["JOB_NAMES", "LATENCY_COLUMNS", "KpiResult", "RunMeta", "RunResult", "RunSettings"]

LATENCY_COLUMNS = ["t", "name", "count", "failures", "hist"]

# A run that could not be carried to its end cannot pass, whatever its KPIs say.
FAILED_STATUSES = ("target_died", "failed")
# A distributed run that lost a worker and went on with the others: judged on what it measured,
# but it did not apply the planned load, so it is not a clean pass (exit code 1).
DEGRADED = "degraded"

Step = tuple[float, int, float | None]  # (start offset s, users, arrival rate or None)


@dataclass(frozen=True)
class RunSettings:
    """The load a run applied (run.json "settings")."""

    users: int = 0
    spawn_rate: float = 0.0
    duration_s: float = 0.0
    rate: float | None = None
    workers: int = 0
    warmup_s: float = 0.0
    bucket_s: float = 1.0
    steps: tuple[Step, ...] = ()
    arrivals: str | None = None  # an open load's: "even" or "poisson"
    stop_timeout_s: float | None = None  # None: a run from before the graceful stop


@dataclass
class RunMeta:
    """run.json: what ran, where, how it ended. Sections a run adds when they apply (alarms,
    profile, stress, endurance) are None otherwise."""

    run_id: str = ""
    command: str = "load"
    argv: list[str] = field(default_factory=list)
    scenario: str = ""
    scenario_path: str | None = None
    target: str | None = None
    target_managed: bool = False
    target_pid: int | None = None
    variants: list[str] = field(default_factory=list)
    extra_latency: list[str] = field(default_factory=list)  # serve --extra-latency, as given
    latency_profile: str | None = None
    settings: RunSettings = field(default_factory=RunSettings)
    kpi_file: str | None = None
    git_revision: str | None = None
    machine: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    started_at: float = 0.0
    ended_at: float | None = None
    status: str = "running"
    message: str = ""
    simulated: bool = False
    collectors: dict[str, Any] = field(default_factory=dict)
    loadgen: dict[str, Any] | None = None
    load: dict[str, Any] | None = None
    locust_counts: dict[str, int] = field(default_factory=dict)
    # Distributed runs: {"expected": N, "workers": [{id, host, addresses, pid, perfkit,
    # joined_at, lost_at, lost_after_s, reason}]}; None for a single process.
    distributed: dict[str, Any] | None = None
    alarms: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    stress: dict[str, Any] | None = None
    endurance: dict[str, Any] | None = None
    baseline: dict[str, Any] | None = None
    export: dict[str, Any] | None = None  # --prometheus-port / --otlp-endpoint, when given
    # What else the machine was doing (perfkit.analysis.environment); None for runs recorded
    # before resources.csv had the machine-load columns.
    environment: dict[str, Any] | None = None
    # --fault: one entry per occurrence (run/faults.py: spec, what, at_s, for_s, status,
    # started_at, ended_at, do and undo {command, exit_code, duration_s, timed_out, output,
    # error}); None for a run without faults.
    faults: list[dict[str, Any]] | None = None
    # Research jobs accepted (201) during the run and how many never reached a final state
    # (run/jobs.py: accepted, ended_in_run, ended_after_stop, lost, lost_ids, checked_s); None
    # where none were accepted or they were not seen (--workers).
    lost_work: dict[str, Any] | None = None
    verdict: str | None = None

    def collector_note(self, name: str) -> str:
        return str((self.collectors.get(name) or {}).get("note") or "")


@dataclass(frozen=True)
class KpiResult:
    kpi: KpiTarget
    value: float | None
    verdict: str
    margin_percent: float | None
    reason: str


@dataclass
class RunResult:
    """A run: its metadata, its data and (once judged) its verdict.

    `endpoints` and `jobs` summarise the judged window per request name and per job metric
    (count, failures, rps, error_rate_percent, p50_ms … max_ms, mean_ms); `kpis` are the KPI
    verdicts in the order of the KPI file; `verdict` is pass, warn, fail, or None before
    judging.
    """

    run_dir: Path
    meta: RunMeta
    latency: pd.DataFrame
    # What the report reads from the latency histograms, computed while they were read
    # (rundir.load_run); None for a result built in memory (a live window).
    digest: LatencyDigest | None = None
    # The run's latency buckets read again chunk by chunk (rundir.read_latency), for an
    # analysis that needs their histograms when `latency` was loaded without them.
    read_latency: Callable[[], Iterable[LatencyChunk | None]] | None = None
    # Per (endpoint, limit_ms), its requests over the limit per second, counted while the
    # buckets were read (rundir.load_run's latency_limits: analysis.availability).
    over_limits: dict[tuple[str, float], dict[int, int]] | None = None
    timeline: pd.DataFrame | None = None
    resources: pd.DataFrame | None = None
    app: pd.DataFrame | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)
    slow_queries: list[dict[str, Any]] = field(default_factory=list)
    alarms: list[dict[str, Any]] = field(default_factory=list)
    # Parts of the latency file that could not be read (cut short, corrupt): blocks of
    # latency.bin, lines of an older run's latency.jsonl; `latency_file` says which it read.
    skipped_lines: int = 0
    latency_file: str = "latency.bin"
    # What perfkit read from the target's own Prometheus endpoint and its data stores
    # (docs/observability.md); None / [] where not collected.
    target_metrics: pd.DataFrame | None = None
    server_latency: list[dict[str, Any]] = field(default_factory=list)
    postgres: pd.DataFrame | None = None
    pg_statements: list[dict[str, Any]] = field(default_factory=list)
    redis: pd.DataFrame | None = None
    verdict: str | None = None
    verdict_reason: str = ""
    kpis: list[KpiResult] = field(default_factory=list)
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    # Locust's --exit-code-on-error, set by the run when a request failed or the scenario
    # raised (as Locust counts errors): the exit code then, interrupted and error aside.
    exit_code_on_error: int | None = None

    @property
    def run_id(self) -> str:
        return self.meta.run_id or self.run_dir.name

    @property
    def exit_code(self) -> int:
        """perfkit's exit code for this run, from its status and verdict alone: 130
        interrupted, 3 not judged (verdict error), 1 verdict fail or a run that did not
        complete, else 0 (pass or warn)."""
        if self.meta.status == "interrupted":
            return 130
        if self.verdict == "error":
            return 3
        if self.exit_code_on_error is not None:
            return self.exit_code_on_error
        if self.verdict == "fail" or self.meta.status != "completed":
            return 1
        return 0


def empty_latency() -> pd.DataFrame:
    return pd.DataFrame([], columns=LATENCY_COLUMNS)


def json_safe(value: Any) -> Any:
    """JSON has no NaN or infinity and no numpy scalars: what was not measured is null."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_safe(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()  # numpy scalars
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


_NUMBER = (int, float)
_OPTIONAL_TEXT = (str, type(None))
_OPTIONAL_OBJECT = (dict, type(None))
# What each run.json key may hold: anything else is a run directory that was damaged or
# written by hand, rejected with one line rather than a traceback later.
_META_TYPES: dict[str, tuple[type, ...]] = {
    "run_id": (str,), "command": (str,), "argv": (list,), "scenario": (str,),
    "scenario_path": _OPTIONAL_TEXT, "target": _OPTIONAL_TEXT, "target_managed": (bool,),
    "target_pid": (int, type(None)), "variants": (list,), "extra_latency": (list,),
    "latency_profile": _OPTIONAL_TEXT,
    "settings": (dict,), "kpi_file": _OPTIONAL_TEXT, "git_revision": _OPTIONAL_TEXT,
    "machine": (dict,), "versions": (dict,), "started_at": _NUMBER,
    "ended_at": (*_NUMBER, type(None)), "status": (str,), "message": (str,),
    "simulated": (bool,), "collectors": (dict,), "loadgen": _OPTIONAL_OBJECT,
    "load": _OPTIONAL_OBJECT, "locust_counts": (dict,), "alarms": _OPTIONAL_OBJECT,
    "profile": _OPTIONAL_OBJECT, "stress": _OPTIONAL_OBJECT, "endurance": _OPTIONAL_OBJECT,
    "baseline": _OPTIONAL_OBJECT, "verdict": _OPTIONAL_TEXT, "distributed": _OPTIONAL_OBJECT,
    "environment": _OPTIONAL_OBJECT, "faults": (list, type(None)),
    "lost_work": _OPTIONAL_OBJECT,
}
_SETTINGS_TYPES: dict[str, tuple[type, ...]] = {
    "users": (int,), "spawn_rate": _NUMBER, "duration_s": _NUMBER,
    "rate": (*_NUMBER, type(None)), "workers": (int,), "warmup_s": _NUMBER,
    "bucket_s": _NUMBER, "steps": (list,), "arrivals": _OPTIONAL_TEXT,
    "stop_timeout_s": (*_NUMBER, type(None)),
}
# A run id names a directory and appears in Markdown and XML: one line of plain characters.
_RUN_ID = re.compile(r"[\w.+-]{1,200}")


def meta_from_json(data: Any) -> RunMeta:
    """RunMeta from run.json's content; unknown keys are ignored, missing ones take defaults.
    Raises ValueError naming the first key of the wrong type (NaN and infinities included)."""
    if not isinstance(data, dict):
        raise ValueError(f"run.json holds {type(data).__name__}, not an object")
    known = {key: value for key, value in data.items() if key in _META_TYPES}
    _check_types(known, _META_TYPES, "")
    if "run_id" in known and not _RUN_ID.fullmatch(known["run_id"]):
        raise ValueError(f"run_id {known['run_id'][:40]!r} is not a plain name")
    if "settings" in known:
        settings = {key: value for key, value in known["settings"].items()
                    if key in _SETTINGS_TYPES}
        _check_types(settings, _SETTINGS_TYPES, "settings.")
        settings["steps"] = tuple(tuple(step) for step in settings.get("steps") or ())
        known["settings"] = RunSettings(**settings)
    return RunMeta(**known)


def _check_types(values: dict[str, Any], types: dict[str, tuple[type, ...]],
                 prefix: str) -> None:
    for key, value in values.items():
        kinds = types[key]
        wrong = not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)
        if wrong or (isinstance(value, float) and not math.isfinite(value)):
            names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            raise ValueError(f"{prefix}{key} must be {names}, not {value!r:.40}")
