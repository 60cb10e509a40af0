"""The thread a collector samples in: a real OS thread, also where gevent has patched threading.

Locust monkey-patches the stdlib when it is imported, so in the runner's process
`threading.Thread` starts a greenlet. A sampler greenlet would block Locust's event loop for
the whole of each sample (adding its duration to in-flight requests' latencies), would not run
at all while some greenlet computes without yielding, and `time.thread_time()` in it would
count Locust's CPU as the collector's. A native thread has none of these problems: the GIL is
handed over every switch interval and released in syscalls, and `time.thread_time()` measures
the sampler alone. Inside that thread nothing patched may be used (gevent's sleep, locks and
sockets belong to the hub of the thread that made them), hence `get_original` below.
"""

import csv
import importlib
import logging
import time
from pathlib import Path
from typing import IO, Any

from .. import rundir

try:
    from gevent import monkey as _gevent_monkey
except ImportError:  # gevent comes with Locust; without it nothing can have been patched
    _gevent_monkey = None

log = logging.getLogger(__name__)

# A sample this soon after the previous one is not taken at stop: rates over a few
# clock ticks (10 ms each) are mostly quantisation noise.
_MIN_FINAL_GAP_S = 0.25


def get_original(module: str, name: str) -> Any:
    """The stdlib object as it was before any gevent monkey-patching (itself if unpatched)."""
    if _gevent_monkey is None:
        return getattr(importlib.import_module(module), name)
    return _gevent_monkey.get_original(module, name)


class CsvRows:
    """A CSV file written row by row: created with its header by the first row (never
    through a symlink), flushed after each row so a crash loses at most one."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path, self.columns = path, columns
        self._file: IO[str] | None = None
        self._writer: Any = None

    @property
    def started(self) -> bool:
        return self._file is not None

    def write(self, row: dict[str, Any]) -> None:
        if self._file is None:
            self._file = rundir.open_for_append(self.path)
            self._writer = csv.writer(self._file)
            self._writer.writerow(self.columns)
        if self._file.closed:
            return
        self._writer.writerow([row.get(c) for c in self.columns])
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class Sampler:
    """Calls `take_sample()` every `interval_s` in a native daemon thread until `stop()`.

    Subclasses define `take_sample()` (returns the row taken, or None) and `describe()`
    (the run.json entry); `close()` runs once after the thread has ended.
    """

    def __init__(self, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, not {interval_s}")
        self.interval_s = interval_s
        self.samples = 0
        self.cpu_s = 0.0
        self.notes: list[str] = []
        self._latest: dict[str, Any] | None = None
        self._started = False
        self._stopped = False
        self._failures = 0
        allocate_lock = get_original("_thread", "allocate_lock")
        # Both locks start held. stop() releases _wake to end the wait between samples at once;
        # the thread releases _done as its last act. Plain native locks, because an Event made
        # after patching would be gevent's.
        self._wake = allocate_lock()
        self._wake.acquire()
        self._done = allocate_lock()
        self._done.acquire()

    def take_sample(self) -> dict[str, Any] | None:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        get_original("_thread", "start_new_thread")(self._run, ())

    def stop(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """Stop sampling (one last sample first) and return the run.json entry; idempotent."""
        if self._started and not self._stopped:
            self._stopped = True
            self._wake.release()
            deadline = time.monotonic() + timeout_s
            while not self._done.acquire(blocking=False):
                if time.monotonic() > deadline:
                    self.notes.append(f"sampler thread did not end within {timeout_s:g} s")
                    break
                # time.sleep is gevent's where patched, so Locust's greenlets run meanwhile.
                time.sleep(0.01)
            self.close()
        self._stopped = True
        return self.describe()

    def entry(self, notes: list[str]) -> dict[str, Any]:
        """The run.json fields every collector has: its cost and `notes` with its own."""
        notes = [*notes, *self.notes, self.failure_note()]
        return {"available": self.samples > 0, "cpu_s": round(self.cpu_s, 4),
                "samples": self.samples, "interval_s": self.interval_s,
                "note": "; ".join(n for n in notes if n)}

    def latest(self) -> dict[str, Any] | None:
        return None if self._latest is None else dict(self._latest)

    def _run(self) -> None:
        cpu_started_s = time.thread_time()
        try:
            next_due = time.monotonic()
            last_sample_at = next_due
            while True:
                last_sample_at = time.monotonic()
                self._sample_guarded()
                self.cpu_s = time.thread_time() - cpu_started_s
                next_due += self.interval_s
                now = time.monotonic()
                if next_due < now:  # fell behind (machine overloaded): skip, do not burst
                    next_due = now + self.interval_s
                if self._wake.acquire(timeout=next_due - now):
                    break
            if time.monotonic() - last_sample_at >= _MIN_FINAL_GAP_S:
                self._sample_guarded()
        finally:
            self.cpu_s = time.thread_time() - cpu_started_s
            self._done.release()

    def _sample_guarded(self) -> None:
        # The thread's boundary: a failed sample leaves a gap, never kills the run.
        try:
            row = self.take_sample()
        except Exception as exc:
            self._failures += 1
            if self._failures == 1:
                log.exception("%s sample failed", type(self).__name__)
                self.notes.append(f"sample failed: {type(exc).__name__}: {exc}")
            return
        if row is not None:
            self.samples += 1
            self._latest = row

    def failure_note(self) -> str:
        return f"{self._failures} samples failed" if self._failures > 1 else ""
