"""Write and read a run directory (docs/run-directory.md is the contract)."""

import json
import os
import struct
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from .analysis import stats
from .analysis.availability import add_over_limits
from .analysis.digest import (
    ChartSpan,
    LatencyChunk,
    LatencyDigest,
    choose_window_s,
    digest_latency,
)
from .analysis.kpi import judged_window_of
from .errors import ReportError
from .kpi_file import JOB_NAMES
from .result import LATENCY_COLUMNS, RunMeta, RunResult, json_safe, meta_from_json

RUN_JSON = "run.json"
LATENCY = "latency.bin"
LATENCY_JSONL = "latency.jsonl"  # the format before latency.bin, still read
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
    return os.fdopen(_open_append_fd(path), "a", encoding="utf-8")


def _open_append_fd(path: Path) -> int:
    # 0666: the umask decides, as for every file perfkit writes (write_text).
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)


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
    return _parse_jsonl(path.read_text("utf-8", errors="replace").splitlines(), fields)


def _parse_jsonl(lines: list[str], fields: dict[str, type | tuple[type, ...]] | None = None
                 ) -> tuple[list[dict[str, Any]], int]:
    records, skipped = [], 0
    for line in lines:
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


# latency.bin: a sequence of blocks, each b"PKLB", the length and CRC-32 of its payload
# (uint32, little-endian), then the payload, zlib-compressed; docs/run-directory.md.
BLOCK_MAGIC = b"PKLB"
_BLOCK_HEADER = struct.Struct("<4sII")
_BLOCK_VERSION = 1


@dataclass
class LatencyRecord:
    """One bucket as latency.bin stores it: its histogram's non-empty cells (indices into
    new_histogram()'s counts array, ascending) and their counts."""

    t: int
    name: str
    count: int
    failures: int
    cells: np.ndarray
    counts: np.ndarray


def encode_latency_block(records: list[LatencyRecord]) -> bytes:
    """One block of latency.bin. Columnar: the buckets' t, name, count, failures and cell
    counts as arrays, then every cell as its distance from the previous cell of its bucket
    and its count, both LEB128 — small numbers, so deflate packs a day of 500 rps into ~35 MB
    (HdrHistogram's own base64 payloads in JSON lines took 136 MB)."""
    names = sorted({record.name for record in records})
    name_id = {name: i for i, name in enumerate(names)}
    cells = [record.cells.astype(np.int64) for record in records]
    gaps = np.concatenate([np.diff(c, prepend=-1) for c in cells]) if cells else np.empty(0)
    gap_bytes = stats.encode_leb128(gaps)
    count_bytes = stats.encode_leb128(
        np.concatenate([record.counts for record in records]) if records else np.empty(0))
    header = {"version": _BLOCK_VERSION, "names": names, "records": len(records),
              "gap_bytes": len(gap_bytes), "count_bytes": len(count_bytes)}
    columns = [np.array([record.t for record in records], "<i8"),
               np.array([name_id[record.name] for record in records], "<u4"),
               np.array([record.count for record in records], "<i8"),
               np.array([record.failures for record in records], "<i8"),
               np.array([c.size for c in cells], "<u4")]
    payload = zlib.compress(b"".join([json.dumps(header).encode() + b"\n",
                                      *(column.tobytes() for column in columns),
                                      gap_bytes, count_bytes]), 9)
    return _BLOCK_HEADER.pack(BLOCK_MAGIC, len(payload), zlib.crc32(payload)) + payload


def append_latency(path: Path, records: list[LatencyRecord]) -> None:
    if records:
        with os.fdopen(_open_append_fd(path), "ab") as f:
            f.write(encode_latency_block(records))


def _decode_latency_block(payload: bytes) -> LatencyChunk:
    raw = zlib.decompress(payload)
    line_end = raw.index(b"\n")
    header = json.loads(raw[:line_end])
    if header.get("version") != _BLOCK_VERSION:
        raise ValueError(f"latency block version {header.get('version')!r}")
    n, offset = int(header["records"]), line_end + 1
    columns = []
    for dtype in ("<i8", "<u4", "<i8", "<i8", "<u4"):
        column = np.frombuffer(raw, dtype, n, offset)
        columns.append(column.astype(np.int64))
        offset += column.nbytes
    t, name_id, count, failures, per_record = columns
    gap_end = offset + int(header["gap_bytes"])
    gaps, _ = stats.decode_leb128(np.frombuffer(raw[offset:gap_end], np.uint8))
    counts, _ = stats.decode_leb128(np.frombuffer(
        raw[gap_end:gap_end + int(header["count_bytes"])], np.uint8))
    if gaps.size != per_record.sum() or counts.size != gaps.size:
        raise ValueError("latency block cells do not add up")
    row = np.repeat(np.arange(n), per_record)
    # Each record's cells count from -1: the running sum less its value before the record.
    running = np.cumsum(gaps.astype(np.int64))
    before = np.r_[0, running][np.cumsum(per_record) - per_record]
    cell = running - np.repeat(before, per_record) - 1
    names = np.array(header["names"], dtype=object)
    frame = pd.DataFrame({"t": t, "name": names[name_id] if n else [], "count": count,
                          "failures": failures})
    return LatencyChunk(frame, row, cell, counts.astype(np.int64))


def _read_latency_bin(path: Path) -> Iterator[LatencyChunk | None]:
    """The blocks of latency.bin; None for one that cannot be read (cut short by a killed
    run, damaged), which is skipped."""
    with path.open("rb") as f:
        while True:
            head = f.read(_BLOCK_HEADER.size)
            if not head:
                return
            if len(head) < _BLOCK_HEADER.size:
                yield None
                return
            magic, length, crc = _BLOCK_HEADER.unpack(head)
            if magic != BLOCK_MAGIC:
                # Not a block boundary: nothing after it can be found again.
                yield None
                return
            payload = f.read(length)
            if len(payload) < length or zlib.crc32(payload) != crc:
                yield None
                continue
            try:
                yield _decode_latency_block(payload)
            except (ValueError, KeyError, TypeError, zlib.error):
                yield None


# latency.jsonl lines read at a time: bounded memory whatever the file's size (decoding
# 20,000 at once took ~250 MB of numpy temporaries).
JSONL_CHUNK_LINES = 2_000


def _read_latency_jsonl(path: Path) -> Iterator[LatencyChunk | None]:
    """latency.jsonl (the format before latency.bin) in chunks; None per line skipped."""
    names: dict[str, str] = {}
    with path.open(encoding="utf-8", errors="replace") as f:
        while True:
            lines = [line for _, line in zip(range(JSONL_CHUNK_LINES), f, strict=False)]
            if not lines:
                return
            records, skipped = _parse_jsonl(lines, LATENCY_FIELDS)
            yield from [None] * skipped
            try:
                row, cell, count = stats.decode_cells([record["hist"] for record in records])
            except stats.HistogramError as exc:
                raise ReportError(f"{path} holds a damaged histogram: {exc}") from exc
            # Without the encoded histograms, which a frame's column would keep alive (136 MB
            # for a day), and with one string per name, not one per line.
            frame = pd.DataFrame(
                [(record["t"], names.setdefault(record["name"], record["name"]),
                  record["count"], record["failures"]) for record in records],
                columns=LATENCY_COLUMNS[:-1])
            yield LatencyChunk(frame, row, cell, count)


def read_latency(run_dir: Path) -> Iterator[LatencyChunk | None]:
    """The run's latency buckets chunk by chunk, from latency.bin or, in a run directory of
    an older perfkit, latency.jsonl (both when both exist, which no perfkit writes)."""
    for name, reader in ((LATENCY, _read_latency_bin), (LATENCY_JSONL, _read_latency_jsonl)):
        if (run_dir / name).exists():
            yield from reader(run_dir / name)


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


def load_meta(path: Path | str) -> RunMeta:
    """The run directory's run.json."""
    meta_path = Path(path) / RUN_JSON
    if not meta_path.exists():
        raise ReportError(f"{path} is not a run directory (no {RUN_JSON})")
    try:
        return meta_from_json(json.loads(meta_path.read_text("utf-8")))
    except (OSError, ValueError, TypeError, RecursionError) as exc:
        raise ReportError(f"cannot read run directory {path}: {exc}") from exc


def load_run(path: Path | str, meta: RunMeta | None = None, histograms: bool = True,
             latency_limits: Iterable[tuple[str, float]] = ()) -> RunResult:
    """The run directory at `path` as a RunResult (not judged: verdict None). `meta`: the
    run's metadata when the caller has it in memory (the runner), instead of run.json.

    The latency buckets are read in one streaming pass that also computes the run's latency
    digest (analysis.digest: the report's summaries and chart lines). `histograms`: keep each
    bucket's histogram in `latency["hist"]` (an HDR body, see stats.decode_cells) for
    analyses beyond the report (compare, endurance drift); without, `latency` holds t, name,
    count and failures only, and a day-long run loads in seconds and in little memory.
    `latency_limits`: (endpoint, limit_ms) whose requests over the limit are counted per
    second in the same pass (`over_limits`, for the availability KPIs)."""
    path = Path(path)
    meta = meta if meta is not None else load_meta(path)
    over: dict[tuple[str, float], dict[int, int]] = {key: {} for key in latency_limits}
    try:
        latency, skipped, digest = _load_latency(path, meta, histograms, over)
        alarms, _ = _read_jsonl(path / ALARMS)
        return RunResult(
            run_dir=path,
            meta=meta,
            latency=latency,
            digest=digest,
            read_latency=lambda: read_latency(path),
            over_limits=over if over else None,
            skipped_lines=skipped,
            latency_file=LATENCY_JSONL if (path / LATENCY_JSONL).exists() else LATENCY,
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


def _load_latency(path: Path, meta: RunMeta, histograms: bool,
                  over: dict[tuple[str, float], dict[int, int]]
                  ) -> tuple[pd.DataFrame, int, LatencyDigest]:
    frames: list[pd.DataFrame] = []
    skipped = 0

    def chunks() -> Iterator[LatencyChunk]:
        nonlocal skipped
        for chunk in read_latency(path):
            if chunk is None:
                skipped += 1
                continue
            frame = chunk.frame
            if histograms:
                frame = frame.assign(hist=stats.encode_bodies(chunk.row, chunk.cell,
                                                              chunk.count, len(frame)))
            frames.append(frame)
            add_over_limits(over, chunk)
            yield chunk

    started_at = float(meta.started_at)
    ended_at = float(meta.ended_at or meta.started_at)
    bucket_s = float(meta.settings.bucket_s or 1.0)
    span = ChartSpan(started_at, ended_at,
                     choose_window_s(max(ended_at - started_at, 0.0), bucket_s), bucket_s)
    digest = digest_latency(chunks(), judged_window_of(meta), span, JOB_NAMES)
    columns = LATENCY_COLUMNS if histograms else LATENCY_COLUMNS[:-1]
    latency = (pd.concat(frames, ignore_index=True)[columns] if frames
               else pd.DataFrame(columns=columns))
    return latency, skipped, digest
