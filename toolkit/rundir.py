"""Write and read a run directory (docs/run-directory.md is the contract)."""

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any

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
TARGET_METRICS = "target_metrics.csv"
SERVER_LATENCY = "server_latency.jsonl"
POSTGRES = "postgres.csv"
PG_STATEMENTS = "pg_statements.json"
REDIS = "redis.csv"
SERVER_LATENCY_FIELDS: dict[str, type | tuple[type, ...]] = {
    "t": (int, float), "name": str, "count": int, "sum_s": (int, float), "buckets": list}

LATENCY_FIELDS: dict[str, type | tuple[type, ...]] = {
    "t": (int, float), "name": str, "count": int, "failures": int, "hist": str}


def current_umask() -> int:
    """The process's file-creation mask, read without changing it. os.umask can only be read
    by setting it (then setting it back): process-global and not thread-safe, and a collector
    thread creating a file in between would get the wrong mode. Linux shows it in
    /proc/self/status (since 4.7); elsewhere the set-and-restore is the only way. Read where a
    file is written, not at import: a program may set its umask after importing perfkit."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str | bytes) -> None:
    """Write atomically and never through a symlink: into a temporary file created
    exclusively beside `path` (O_CREAT | O_EXCL never follows a link), then os.replace, which
    replaces a symlink at `path` itself instead of the file it points to. A run killed
    mid-write never leaves half a file. The file gets the mode any new file gets under the
    user's umask (0644 under 022), not mkstemp's private 0600: reports are made to be read by
    CI artefact servers and colleagues."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            f.write(text.encode("utf-8") if isinstance(text, str) else text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str))


def open_for_append(path: Path) -> IO[str]:
    """`path` opened to append text, refusing to follow a symlink (O_NOFOLLOW)."""
    # 0666: the umask decides, as for every file perfkit writes (write_text).
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    return os.fdopen(fd, "a", encoding="utf-8")


def append_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    if not records:
        return
    with open_for_append(path) as f:
        f.write("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))


def _read_list(path: Path) -> list[dict[str, Any]]:
    """A JSON list of objects (failures.json, slow_queries.json); [] when absent."""
    if not path.exists():
        return []
    data = json.loads(path.read_text("utf-8"))
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise ValueError(f"{path.name} must hold a list of objects")
    return data


def _read_jsonl(path: Path, fields: dict[str, type | tuple[type, ...]] | None = None
                ) -> tuple[list[dict[str, Any]], int]:
    """(records, lines skipped): a line cut short (an interrupted run, a full disk) or not an
    object with `fields` of their types is skipped and counted, never the end of the file."""
    if not path.exists():
        return [], 0
    records, skipped = [], 0
    for line in path.read_text("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if not isinstance(record, dict) or any(
                not isinstance(record.get(key), kind) or isinstance(record.get(key), bool)
                for key, kind in (fields or {}).items()):
            skipped += 1
            continue
        records.append(record)
    return records, skipped


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
            meta = meta_from_json(json.loads(meta_path.read_text("utf-8")))
        latency, skipped = _read_jsonl(path / LATENCY, LATENCY_FIELDS)
        alarms, _ = _read_jsonl(path / ALARMS)
        return RunResult(
            run_dir=path,
            meta=meta,
            latency=pd.DataFrame(latency, columns=LATENCY_COLUMNS),
            skipped_lines=skipped,
            timeline=_read_csv(path / TIMELINE),
            resources=_read_csv(path / RESOURCES),
            app=_read_csv(path / APP),
            failures=_read_list(path / FAILURES),
            slow_queries=_read_list(path / SLOW_QUERIES),
            alarms=alarms,
            target_metrics=_read_csv(path / TARGET_METRICS),
            server_latency=_read_jsonl(path / SERVER_LATENCY, SERVER_LATENCY_FIELDS)[0],
            postgres=_read_csv(path / POSTGRES),
            pg_statements=_read_list(path / PG_STATEMENTS),
            redis=_read_csv(path / REDIS),
        )
    except (OSError, ValueError, TypeError, RecursionError) as exc:
        raise ReportError(f"cannot read run directory {path}: {exc}") from exc
