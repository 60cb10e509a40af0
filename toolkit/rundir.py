"""Write and read a run directory (docs/run-directory.md is the contract)."""

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import ReportError
from .result import LATENCY_COLUMNS, RunMeta, RunResult, json_safe, meta_from_json

RUN_JSON = "run.json"
LATENCY = "latency.jsonl"
FAILURES = "failures.json"
TIMELINE = "timeline.csv"
RESOURCES = "resources.csv"
APP = "app.csv"
SLOW_QUERIES = "slow_queries.json"
ALARMS = "alarms.jsonl"


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


def write_meta(run_dir: Path, meta: RunMeta) -> None:
    """run.json: once when a run starts, once when it ends (and when a report is rebuilt)."""
    write_json(run_dir / RUN_JSON, json_safe(meta))


def load_run(path: Path | str, meta: RunMeta | None = None) -> RunResult:
    """The run directory at `path` as a RunResult (not judged: verdict None). `meta`: the
    run's metadata when the caller has it in memory (the runner), instead of run.json."""
    path = Path(path)
    meta_path = path / RUN_JSON
    if meta is None and not meta_path.exists():
        raise ReportError(f"{path} is not a run directory (no {RUN_JSON})")
    try:
        if meta is None:
            data = json.loads(meta_path.read_text("utf-8"))
            if not isinstance(data, dict):
                raise ValueError(f"{RUN_JSON} holds {type(data).__name__}, not an object")
            meta = meta_from_json(data)
        return RunResult(
            run_dir=path,
            meta=meta,
            latency=pd.DataFrame(_read_jsonl(path / LATENCY), columns=LATENCY_COLUMNS),
            timeline=_read_csv(path / TIMELINE),
            resources=_read_csv(path / RESOURCES),
            app=_read_csv(path / APP),
            failures=_read_json(path / FAILURES, []),
            slow_queries=_read_json(path / SLOW_QUERIES, []),
            alarms=_read_jsonl(path / ALARMS),
        )
    except (OSError, ValueError, TypeError) as exc:
        raise ReportError(f"cannot read run directory {path}: {exc}") from exc
