"""Exact per-request latency recording from Locust's `request` event into HDR histograms.

One histogram per (1 s bucket, request name). A standalone or master process appends closed
buckets to latency.bin, a block a minute (rundir.append_latency); a worker ships them to the
master in Locust's own worker reports, and the master merges them, so the same load split over
workers gives the same counts and the same percentiles as one process would.
"""

import logging
import math
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

from .. import rundir
from ..analysis import stats
from ..errors import RunError

log = logging.getLogger(__name__)

# A bucket is written once it is this old: late worker reports (Locust sends them every 3 s)
# still land in it. Anything later is written as an extra line for the same (t, name), which
# readers merge.
FLUSH_DELAY_S = 8
# Closed buckets are written to latency.bin in blocks this long: deflate needs some thousand
# cells to pack them well (bench/report_time.py's day: 37.6 MB in blocks of 60 s, 39.8 MB of
# 10 s, 56.6 MB of 1 s). A run that ends, or is interrupted, writes the rest; one killed
# (SIGKILL, power) loses at most this much beyond FLUSH_DELAY_S.
BLOCK_S = 60
REPORT_KEY = "perfkit_buckets"
LATENESS_KEY = "perfkit_lateness"
INTERRUPTED_KEY = "perfkit_interrupted"
JOB_REQUEST_TYPE = "JOB"


INTENDED_AT = "perfkit_intended_at"
# Context key of the running iteration's time spent waiting on responses ([seconds]), which
# the recorder adds to as the requests complete.
WAITED = "perfkit_waited"
# Context key of a simultaneous A/B trial's arm: its requests are named "[arm] name".
ARM = "perfkit_arm"
# Generator lateness below this share of the interval is scheduling jitter, not a late start.
LATE_SHARE = 0.1
# Context key of a JOB record: how its time was measured, JOB_TIMESTAMPS (the job's own, from
# the target's answers) or, for a time read by polling, its resolution in seconds (the
# recorded time is within ± this of the job's end).
JOB_TIMING = "perfkit_job_timing"
JOB_TIMESTAMPS = "timestamps"
JOB_TIMING_KEY = "perfkit_job_timing"
# Context key of a research job's id: on the create request that was answered 201 with it,
# and on its JOB record once the job reached a final state (run/jobs.py counts the lost).
JOB_ID = "perfkit_job_id"


@dataclass
class Lateness:
    """Iterations of an open load, and those the generator started late (a worker ships its
    counts to the master with its reports)."""

    iterations: int = 0
    late_iterations: int = 0
    generator_lateness_s: float = 0.0

    def take(self) -> dict[str, Any]:
        counts = asdict(self)
        self.iterations, self.late_iterations, self.generator_lateness_s = 0, 0, 0.0
        return counts

    def add(self, counts: dict[str, Any]) -> None:
        self.iterations += int(counts.get("iterations", 0))
        self.late_iterations += int(counts.get("late_iterations", 0))
        self.generator_lateness_s += float(counts.get("generator_lateness_s", 0.0))


@dataclass
class JobTiming:
    """How each job metric's times were measured: how many from the jobs' own timestamps, how
    many by polling, and the polling resolutions in 10-ms bins (so the tally stays small
    however long the run). A worker ships its tally to the master with its reports."""

    tallies: dict[str, dict[str, Any]] = field(default_factory=dict)

    def count(self, name: str, how: Any) -> None:
        tally = self._tally(name)
        if how == JOB_TIMESTAMPS:
            tally["timestamps"] += 1
        elif isinstance(how, int | float) and not isinstance(how, bool) and math.isfinite(how):
            tally["polling"] += 1
            # String keys: Locust's msgpack refuses others in a worker report. Rounded up, so
            # no stated resolution is finer than the measured one.
            key = str(10 * max(0, math.ceil(how * 100 - 1e-6)))
            tally["resolution_ms"][key] = tally["resolution_ms"].get(key, 0) + 1

    def _tally(self, name: str) -> dict[str, Any]:
        return self.tallies.setdefault(name, {"timestamps": 0, "polling": 0,
                                              "resolution_ms": {}})

    def take(self) -> dict[str, Any]:
        tallies, self.tallies = self.tallies, {}
        return tallies

    def add(self, tallies: dict[str, Any]) -> None:
        for name, counts in tallies.items():
            tally = self._tally(name)
            tally["timestamps"] += int(counts.get("timestamps", 0))
            tally["polling"] += int(counts.get("polling", 0))
            for key, count in (counts.get("resolution_ms") or {}).items():
                tally["resolution_ms"][key] = tally["resolution_ms"].get(key, 0) + int(count)

    def describe(self) -> dict[str, dict[str, Any]]:
        """run.json `load.job_timing`: per job metric, the jobs timed from their timestamps
        and by polling, with the median and largest polling resolution in seconds (None
        without polled jobs)."""
        described = {}
        for name, tally in sorted(self.tallies.items()):
            resolutions = sorted((int(key), count)
                                 for key, count in tally["resolution_ms"].items())
            median_ms = max_ms = None
            if resolutions:
                middle, seen = (sum(count for _, count in resolutions) - 1) // 2, 0
                for value, count in resolutions:
                    seen += count
                    if median_ms is None and seen > middle:
                        median_ms = value
                max_ms = resolutions[-1][0]
            described[name] = {
                "timestamps": tally["timestamps"], "polling": tally["polling"],
                "resolution_s_median": None if median_ms is None else median_ms / 1000.0,
                "resolution_s_max": None if max_ms is None else max_ms / 1000.0}
        return described


def request_name(request_type: str, name: str) -> str:
    """`GET /api/v1/health`; per-job metrics (request type JOB) and names that already start
    with their method (a locustfile's `name="GET /fast"`) keep their name as written."""
    if request_type == JOB_REQUEST_TYPE or name.startswith(f"{request_type} "):
        return name
    return f"{request_type} {name}"


@dataclass
class Tally:
    """Requests of one name (in one second, or in the whole run): latencies and counts."""

    hist: HdrHistogram = field(default_factory=stats.new_histogram)
    count: int = 0
    failures: int = 0

    def record(self, t: int, name: str) -> dict[str, Any]:
        """This tally as the bucket (t, name): t, name, count, failures and the encoded
        histogram (hist), as a worker ships it and alarms judge it."""
        return {"t": t, "name": name, "count": self.count, "failures": self.failures,
                "hist": stats.encode_histogram(self.hist)}

    def discard(self) -> None:
        """Free the histogram now. An hdrh histogram and its encoder (which holds the 92 KB
        counts array) refer to each other, so a dropped one waits for Python's cyclic
        garbage collector, and with perfkit's imports in memory that runs seldom: a master
        fed a simulated day by bench/recorder_memory.py held hundreds of dead 1 s
        histograms (RSS +90 MB in an hour) until the cycle was broken here."""
        self.hist.encoder = None

    def stored(self, t: int, name: str) -> rundir.LatencyRecord:
        """This tally as latency.bin stores the bucket (t, name)."""
        return rundir.LatencyRecord(t, name, self.count, self.failures,
                                    *stats.cells_of(self.hist))


class Recorder:
    """`keep_s` > 0 keeps the records written in the last `keep_s` seconds in memory (encoded,
    a few hundred bytes each), so alarms and stress steps can judge a recent window live;
    memory stays bounded by keep_s × request names."""

    def __init__(self, latency_path: Path | None, keep_s: float = 0.0) -> None:
        self.latency_path = latency_path  # None on a worker: buckets go to the master instead
        self.keep_s = keep_s
        self.kept: deque[dict[str, Any]] = deque()  # written records, oldest first
        self.pending: list[rundir.LatencyRecord] = []  # closed buckets of the next block
        self.pending_since = 0.0
        self.buckets: dict[tuple[int, str], Tally] = {}  # (t, name) -> that second's requests
        self.totals: dict[str, Tally] = {}  # name -> the whole run's requests
        self.recent: dict[int, int] = {}  # t -> requests, for the live RPS
        self.job_timing = JobTiming()  # how the JOB records' times were measured
        self.stopped = False
        self.lateness = Lateness()  # an open load's iterations (make_open_loop counts them)
        # Requests the stop cut off (locustfile.interruptions_counted counts them).
        self.interrupted = 0

    def attach(self, environment: Any) -> None:
        environment.events.request.add_listener(self.on_request)
        environment.events.worker_report.add_listener(self.on_worker_report)
        environment.events.report_to_master.add_listener(self.on_report_to_master)
        environment.events.test_start.add_listener(self.on_test_start)
        environment.events.test_stop.add_listener(self.on_test_stop)

    def on_request(self, request_type: str, name: str, response_time: float, exception: Any,
                   context: dict | None = None, start_time: float | None = None,
                   **_: Any) -> None:
        latency_ms = float(response_time or 0.0)
        waited = (context or {}).get(WAITED)
        if waited is not None and request_type != JOB_REQUEST_TYPE:
            waited[0] += latency_ms / 1000.0
        intended_at = (context or {}).get(INTENDED_AT)
        if intended_at is not None and start_time is not None:
            # Open load: count the time the request waited past its intended send time, so a
            # stalled target cannot hide its queue (coordinated omission).
            latency_ms += max(0.0, (start_time - intended_at) * 1000.0)
        t = int(time.time())
        key = request_name(request_type, name)
        arm = (context or {}).get(ARM)
        if arm is not None:
            key = f"[{arm}] {key}"
        self._add(self.buckets, (t, key), latency_ms, exception is not None)
        self._add(self.totals, key, latency_ms, exception is not None)
        if request_type != JOB_REQUEST_TYPE:
            self.recent[t] = self.recent.get(t, 0) + 1
        elif context and JOB_TIMING in context:
            self.job_timing.count(key, context[JOB_TIMING])

    @staticmethod
    def _add(table: dict[Any, Tally], key: Any, latency_ms: float, failed: bool) -> None:
        tally = table.get(key) or table.setdefault(key, Tally())
        stats.record_ms(tally.hist, latency_ms)
        tally.count += 1
        tally.failures += failed

    def _closed(self, older_than: float) -> list[tuple[int, str]]:
        """The buckets that started before `older_than`, oldest first."""
        for t in [t for t in self.recent if t < time.time() - 60]:
            del self.recent[t]
        return sorted(key for key in self.buckets if key[0] < older_than)

    def take_buckets(self, older_than: float) -> list[dict[str, Any]]:
        """Remove and return the buckets that started before `older_than`, encoded."""
        records = []
        for key in self._closed(older_than):
            tally = self.buckets.pop(key)
            records.append(tally.record(*key))
            tally.discard()
        return records

    def flush(self, final: bool = False) -> None:
        """Move closed buckets into the next block of latency.bin, and write it once it
        spans BLOCK_S (everything when the run is over)."""
        if self.latency_path is None:
            return
        now = time.time()
        older_than = float("inf") if final else now - FLUSH_DELAY_S
        closed = self._closed(older_than)
        if closed and not self.pending:
            self.pending_since = now
        self.pending.extend(self.buckets[key].stored(*key) for key in closed)
        records = [self.buckets[key].record(*key) for key in closed] if self.keep_s > 0 else []
        for key in closed:
            self.buckets.pop(key).discard()
        if self.pending and (final or now - self.pending_since >= BLOCK_S):
            # Written before they are dropped: a full disk keeps them in memory, not lost.
            try:
                rundir.append_latency(self.latency_path, self.pending)
            except OSError as exc:
                raise RunError(f"cannot write {self.latency_path.name}: "
                               f"{exc.strerror or exc}") from exc
            self.pending = []
        if self.keep_s > 0:
            self.kept.extend(records)
            while self.kept and self.kept[0]["t"] < time.time() - self.keep_s:
                self.kept.popleft()

    def window_records(self, start: float, end: float) -> list[dict[str, Any]]:
        """Records (Tally.record) of the buckets with start <= t <= end, from the kept
        ones and from those not yet written; a window older than `keep_s` comes back partial."""
        records = [r for r in self.kept if start <= r["t"] <= end]
        for (t, name), tally in sorted(self.buckets.items()):
            if start <= t <= end:
                records.append(tally.record(t, name))
        return records

    def on_report_to_master(self, client_id: str, data: dict[str, Any]) -> None:
        data[JOB_TIMING_KEY] = self.job_timing.take()
        # Workers ship every bucket closed so far; the current second stays until it ends,
        # except once the worker has stopped, when the report takes everything.
        data[REPORT_KEY] = self.take_buckets(float("inf") if self.stopped else int(time.time()))
        data[LATENESS_KEY] = self.lateness.take()
        data[INTERRUPTED_KEY], self.interrupted = self.interrupted, 0

    def on_test_stop(self, **_: Any) -> None:
        self.stopped = True

    def on_test_start(self, **_: Any) -> None:
        self.stopped = False

    def on_worker_report(self, client_id: str, data: dict[str, Any]) -> None:
        self.lateness.add(data.get(LATENESS_KEY) or {})
        self.interrupted += int(data.get(INTERRUPTED_KEY) or 0)
        records = data.get(REPORT_KEY) or []
        # One vectorised decode of the whole report, then each histogram's non-empty cells are
        # added where they belong. Decoding each into an HdrHistogram and adding it (twice: the
        # bucket and the run's total) walked all 23,552 cells every time: 200 workers x 20
        # endpoints took over half of the master's core (bench/master_scaling.py).
        rows, cells, counts = stats.decode_cells([record["hist"] for record in records])
        order = np.argsort(rows, kind="stable")
        rows, cells, counts = rows[order], cells[order], counts[order]
        bounds = np.searchsorted(rows, np.arange(len(records) + 1)).tolist()
        for row, record in enumerate(records):
            piece = slice(bounds[row], bounds[row + 1])
            self._merge(self.buckets, (record["t"], record["name"]), cells[piece],
                        counts[piece], record)
            self._merge(self.totals, record["name"], cells[piece], counts[piece], record)
            if " " in record["name"]:
                self.recent[record["t"]] = self.recent.get(record["t"], 0) + record["count"]
        self.job_timing.add(data.get(JOB_TIMING_KEY) or {})

    @staticmethod
    def _merge(table: dict[Any, Tally], key: Any, cells: np.ndarray, counts: np.ndarray,
               record: dict[str, Any]) -> None:
        tally = table.get(key) or table.setdefault(key, Tally())
        stats.add_cells(tally.hist, cells, counts)
        tally.count += record["count"]
        tally.failures += record["failures"]

    def rps(self, window_s: int = 5) -> float:
        now = int(time.time())
        return sum(self.recent.get(t, 0) for t in range(now - window_s, now)) / window_s
