"""Write and read a run directory (docs/run-directory.md is the contract)."""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import ReportError

RUN_JSON = "run.json"
LATENCY = "latency.jsonl"
FAILURES = "failures.json"
TIMELINE = "timeline.csv"
RESOURCES = "resources.csv"
APP = "app.csv"
SLOW_QUERIES = "slow_queries.json"
ALARMS = "alarms.jsonl"

LATENCY_COLUMNS = ["t", "name", "count", "failures", "hist"]


@dataclass
class Run:
    path: Path
    meta: dict[str, Any]
    latency: pd.DataFrame
    timeline: pd.DataFrame | None = None
    resources: pd.DataFrame | None = None
    app: pd.DataFrame | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)
    slow_queries: list[dict[str, Any]] = field(default_factory=list)
    alarms: list[dict[str, Any]] = field(default_factory=list)


def write_json(path: Path, data: Any) -> None:
    """Write atomically, so a run killed mid-write never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str), "utf-8")
    os.replace(tmp, path)


def append_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    if not records:
        return
    with path.open("a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _read_json(path: Path, default: Any) -> Any:
    if not path.exists():
        return default
    return json.loads(path.read_text("utf-8"))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text("utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # the last line of an interrupted run may be cut short
    return records


def _read_csv(path: Path) -> pd.DataFrame | None:
    if not path.exists() or path.stat().st_size == 0:
        return None
    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return None


def load_run(path: Path | str) -> Run:
    path = Path(path)
    meta_path = path / RUN_JSON
    if not meta_path.exists():
        raise ReportError(f"{path} is not a run directory (no {RUN_JSON})")
    try:
        meta = json.loads(meta_path.read_text("utf-8"))
        latency = pd.DataFrame(_read_jsonl(path / LATENCY), columns=LATENCY_COLUMNS)
        return Run(
            path=path,
            meta=meta,
            latency=latency,
            timeline=_read_csv(path / TIMELINE),
            resources=_read_csv(path / RESOURCES),
            app=_read_csv(path / APP),
            failures=_read_json(path / FAILURES, []),
            slow_queries=_read_json(path / SLOW_QUERIES, []),
            alarms=_read_jsonl(path / ALARMS),
        )
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read run directory {path}: {exc}") from exc


def judged_window(run: Run) -> tuple[float, float]:
    """(start, end) of the part of the run that verdicts judge: the warm-up is left out."""
    started_at = float(run.meta["started_at"])
    ended_at = float(run.meta.get("ended_at") or started_at)
    warmup_s = float(run.meta.get("settings", {}).get("warmup_s") or 0.0)
    return min(started_at + warmup_s, ended_at), ended_at


def judged_latency(run: Run) -> pd.DataFrame:
    start, end = judged_window(run)
    return run.latency[(run.latency["t"] >= start) & (run.latency["t"] <= end)]
