"""`perfkit monitor`: a live, top-like view of one process tree, optionally recorded as CSV.

Per sample: the tree's CPU (% of one core, summed over its processes), RSS, threads, disk
read/write rates, open inet connections, and the machine's network rates (psutil's counters
are per interface, not per process, so those are labelled machine-wide).
"""

import csv
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import psutil

from .collectors.system import MB, TreeSample, rate_baseline, rate_of_field, sample_tree
from .errors import ConfigError, TargetError

log = logging.getLogger(__name__)

CSV_COLUMNS = ["t", "procs", "cpu_percent", "rss_mb", "threads", "read_mb_s", "write_mb_s",
               "connections", "sys_net_sent_mb_s", "sys_net_recv_mb_s"]
TOP_PROCESSES = 10
_CLEAR_SCREEN = "\x1b[H\x1b[2J"


@dataclass(frozen=True)
class MonitorSettings:
    pid: int
    interval_s: float = 1.0
    duration_s: float | None = None
    csv_path: Path | None = None
    live: bool = False  # refresh one screen in place (a TTY) instead of printing a line a sample


@dataclass
class TreeState:
    """What the next sample is diffed against: CPU, I/O and network are differences of
    cumulative counters between two samples, as in the run's system collector."""

    root: psutil.Process
    previous: TreeSample | None = None
    sampled_at: float = 0.0  # time.monotonic() of `previous`
    net_bytes: tuple[int, int] | None = None


def open_tree(pid: int) -> TreeState:
    """The tree under `pid`, with a first sample taken (and not shown) to diff against."""
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess as exc:
        raise TargetError(f"no process with pid {pid}") from exc
    except psutil.AccessDenied as exc:
        raise TargetError(f"not allowed to watch pid {pid}") from exc
    state = TreeState(root=root)
    sample_process_tree(state)
    return state


def _count_connections(proc: psutil.Process) -> int:
    return len(proc.net_connections(kind="inet"))


def _value_or_none(read: Callable[[], Any]) -> Any:
    try:
        return read()
    except (psutil.AccessDenied, psutil.ZombieProcess, NotImplementedError):
        return None


def _name_and_connections(proc: psutil.Process) -> tuple[str, int | None]:
    """What the top view reads beyond the collector's counters; a process that exited since
    it was sampled has no connections left."""
    try:
        with proc.oneshot():
            return proc.name(), _value_or_none(partial(_count_connections, proc))
    except psutil.NoSuchProcess:
        return "(exited)", 0


def _times(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def sample_process_tree(state: TreeState) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """One row for the whole tree (CSV_COLUMNS) and one per process; None once the root is
    gone. The tree is sampled by the system collector's functions, so CPU %, RSS, threads and
    I/O mean what they mean in resources.csv; a value psutil may not read is None, never 0."""
    tree = sample_tree(state.root)
    if tree is None:
        return None
    now = time.monotonic()
    elapsed_s = now - state.sampled_at if state.previous is not None else None
    net = psutil.net_io_counters()
    net_now = (net.bytes_sent, net.bytes_recv) if net is not None else None
    baseline = rate_baseline(tree, state.previous) if state.previous is not None else {}
    per_process: list[dict[str, Any]] = []
    connections: int | None = 0
    for key, sample in tree.samples.items():
        before = baseline.get(key)
        name, conns = _name_and_connections(tree.processes[key])
        connections = None if conns is None or connections is None else connections + conns
        per_process.append({
            "pid": key[0], "name": name,
            # A process seen for the first time (and not born since) has no baseline yet.
            "cpu_percent": 100.0 * (sample.cpu_s - before.cpu_s) / elapsed_s
            if before is not None and elapsed_s else None,
            "rss_mb": sample.rss_bytes / MB, "threads": sample.threads})
    row: dict[str, Any] = {
        "t": round(time.time(), 3),
        "procs": len(per_process),
        "cpu_percent": None, "rss_mb": sum(p["rss_mb"] for p in per_process),
        "threads": sum(p["threads"] for p in per_process),
        "read_mb_s": None, "write_mb_s": None,
        "connections": connections,
        "sys_net_sent_mb_s": None, "sys_net_recv_mb_s": None,
    }
    if elapsed_s:
        row["cpu_percent"] = _times(rate_of_field(tree.samples, baseline, "cpu_s", elapsed_s),
                                    100.0)
        for column, field_name in (("read_mb_s", "read_bytes"), ("write_mb_s", "write_bytes")):
            row[column] = _times(rate_of_field(tree.samples, baseline, field_name, elapsed_s),
                                 1.0 / MB)
        if net_now is not None and state.net_bytes is not None:
            row["sys_net_sent_mb_s"] = (net_now[0] - state.net_bytes[0]) / MB / elapsed_s
            row["sys_net_recv_mb_s"] = (net_now[1] - state.net_bytes[1]) / MB / elapsed_s
    state.previous, state.sampled_at, state.net_bytes = tree, now, net_now
    return row, per_process


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_line(row: dict[str, Any]) -> str:
    return (f"{time.strftime('%H:%M:%S', time.localtime(row['t']))}  procs {row['procs']}  "
            f"cpu {_fmt(row['cpu_percent'])} %  rss {_fmt(row['rss_mb'])} MB  "
            f"threads {row['threads']}  read {_fmt(row['read_mb_s'], 2)} MB/s  "
            f"write {_fmt(row['write_mb_s'], 2)} MB/s  conns {_fmt(row['connections'], 0)}  "
            f"machine net sent {_fmt(row['sys_net_sent_mb_s'], 2)} MB/s "
            f"recv {_fmt(row['sys_net_recv_mb_s'], 2)} MB/s")


def format_screen(settings: MonitorSettings, row: dict[str, Any],
                  per_process: list[dict[str, Any]]) -> str:
    lines = [
        f"perfkit monitor  pid {settings.pid}  every {settings.interval_s:g} s  (Ctrl-C stops)",
        "",
        f"tree      {row['procs']} processes, {row['threads']} threads, "
        f"{_fmt(row['connections'], 0)} inet connections",
        f"cpu       {_fmt(row['cpu_percent'])} % of one core",
        f"rss       {_fmt(row['rss_mb'])} MB",
        f"disk      read {_fmt(row['read_mb_s'], 2)} MB/s  write {_fmt(row['write_mb_s'], 2)} MB/s",
        f"network   sent {_fmt(row['sys_net_sent_mb_s'], 2)} MB/s  "
        f"recv {_fmt(row['sys_net_recv_mb_s'], 2)} MB/s  (machine-wide)",
        "",
        f"{'pid':>8}  {'cpu %':>7}  {'rss MB':>8}  {'thr':>4}  name",
    ]
    ranked = sorted(per_process, key=lambda p: p["cpu_percent"] or 0.0, reverse=True)
    for proc in ranked[:TOP_PROCESSES]:
        lines.append(f"{proc['pid']:>8}  {_fmt(proc['cpu_percent']):>7}  "
                     f"{proc['rss_mb']:>8.1f}  {proc['threads']:>4}  {proc['name']}")
    if len(ranked) > TOP_PROCESSES:
        lines.append(f"   ... {len(ranked) - TOP_PROCESSES} more")
    return "\n".join(lines)


def _write_csv_row(writer: Any, out: TextIO, row: dict[str, Any]) -> None:
    writer.writerow({k: "" if row[k] is None else round(row[k], 3) for k in CSV_COLUMNS})
    # Flushed every sample, so Ctrl-C or a killed monitor leaves every row taken so far.
    out.flush()


def run_monitor(settings: MonitorSettings, say: Callable[[str], None]) -> int:
    """The `perfkit monitor` command; returns the number of samples shown."""
    if settings.interval_s <= 0:
        raise ConfigError("--interval must be more than 0")
    state = open_tree(settings.pid)
    started = time.monotonic()
    samples = 0
    out = settings.csv_path.open("w", newline="", encoding="utf-8") if settings.csv_path else None
    writer = csv.DictWriter(out, CSV_COLUMNS) if out else None
    if writer is not None:
        writer.writeheader()
    reason = ""
    try:
        next_due = started + settings.interval_s
        while True:
            if settings.duration_s is not None and next_due - started > settings.duration_s:
                reason = f"duration {settings.duration_s:g} s reached"
                break
            time.sleep(max(0.0, next_due - time.monotonic()))
            next_due = max(next_due + settings.interval_s, time.monotonic())
            sample = sample_process_tree(state)
            if sample is None:
                reason = f"process {settings.pid} exited"
                break
            row, per_process = sample
            samples += 1
            if writer is not None and out is not None:
                _write_csv_row(writer, out, row)
            if settings.live:
                say(_CLEAR_SCREEN + format_screen(settings, row, per_process))
            else:
                say(format_line(row))
    except KeyboardInterrupt:
        reason = "interrupted"
    finally:
        if out is not None:
            out.close()
    say(f"monitor stopped: {reason}, {samples} samples"
        + (f", written to {settings.csv_path}" if settings.csv_path else ""))
    return samples
