"""The faults of a run (--fault, perfkit.faults): each occurrence a greenlet started with the
load, which runs the user's `do` command when it is due and its `undo` when the fault ends.

A command runs in a shell, in its own process group, bounded by the fault's timeout (the
whole group is killed then), its output captured (the last OUTPUT_CHARS). A command that
fails, times out or cannot start is recorded as failed, and the run's verdict and report say
so (analysis/availability.py). When the run ends first, a fault still due is recorded as not
reached, and a fault in progress is undone at once, so the system is left as it was found.
"""

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import Event

from ..faults import Fault, schedule_faults
from .proxy import FaultProxy

log = logging.getLogger(__name__)

OUTPUT_CHARS = 2000


def run_command(command: str, timeout_s: float) -> dict[str, Any]:
    """Run `command` in a shell: {command, exit_code, duration_s, timed_out, output, error}.
    exit_code None: it did not finish (timed out) or could not start (error says why)."""
    started = time.monotonic()
    record: dict[str, Any] = {"command": command, "exit_code": None, "duration_s": None,
                              "timed_out": False, "output": "", "error": ""}
    try:
        process = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    except OSError as exc:
        record["error"] = f"cannot start: {exc}"
        return record
    try:
        output, _ = process.communicate(timeout=timeout_s)
        record["exit_code"] = process.returncode
    except subprocess.TimeoutExpired:
        # The shell's children too (a `sleep` under `sh -c`): the whole process group.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except OSError:
            pass
        output, _ = process.communicate()
        record["timed_out"] = True
        record["error"] = f"timed out after {timeout_s:g} s (killed)"
    record["duration_s"] = round(time.monotonic() - started, 3)
    record["output"] = output.decode("utf-8", "replace")[-OUTPUT_CHARS:]
    return record


def command_failed(record: dict[str, Any] | None) -> bool:
    return record is not None and record.get("exit_code") != 0


class FaultSchedule:
    """The occurrences of the run's faults; `records()` is run.json's "faults"."""

    def __init__(self, faults: tuple[Fault, ...], duration_s: float,
                 say: Callable[[str], None], proxy: FaultProxy | None = None) -> None:
        self.occurrences = schedule_faults(faults, duration_s)
        self.say = say
        self.proxy = proxy  # the network faults' (net=), started by the runner
        self.stopping = Event()
        self.greenlets: list[gevent.Greenlet] = []
        self.entries: list[dict[str, Any]] = [
            {"index": i + 1, "spec": fault.text, "what": fault.what, "at_s": at_s,
             "for_s": fault.for_s, "status": "not_reached", "started_at": None,
             "ended_at": None, "do": None, "undo": None}
            for i, (at_s, fault) in enumerate(self.occurrences)]

    def start(self, started_at: float) -> None:
        """Start the greenlets; offsets count from `started_at` (the load's start)."""
        for entry, (at_s, fault) in zip(self.entries, self.occurrences, strict=True):
            self.greenlets.append(gevent.spawn(self._run, entry, fault, started_at + at_s))

    def _run(self, entry: dict[str, Any], fault: Fault, due_at: float) -> None:
        if self.stopping.wait(timeout=max(0.0, due_at - time.time())):
            return  # the run ended first: not reached
        entry["started_at"] = time.time()
        entry["status"] = "running"
        if fault.net is not None:
            assert self.proxy is not None and fault.for_s is not None  # the runner's, parse's
            self.proxy.fault = fault.net
            self.say(f"perfkit: fault {entry['index']}: {fault.what} for {fault.for_s:g} s")
            self.stopping.wait(timeout=fault.for_s)
            if self.proxy.fault is fault.net:  # not replaced by an overlapping one
                self.proxy.fault = None
            entry["ended_at"] = time.time()
            entry["status"] = "done"
            return
        assert fault.do is not None  # parse_fault: do= or net=
        entry["do"] = run_command(fault.do, fault.timeout_s)
        self._tell(entry, "do")
        if fault.undo is not None:
            assert fault.for_s is not None  # parse_fault requires it
            self.stopping.wait(timeout=max(0.0, entry["started_at"] + fault.for_s
                                           - time.time()))
            entry["ended_at"] = time.time()
            entry["undo"] = run_command(fault.undo, fault.timeout_s)
            self._tell(entry, "undo")
        elif fault.for_s is not None:
            entry["ended_at"] = entry["started_at"] + fault.for_s
        else:  # an instant fault (a restart, a kill): it ends when its command returns
            entry["ended_at"] = time.time()
        failed = command_failed(entry["do"]) or command_failed(entry["undo"])
        entry["status"] = "failed" if failed else "done"

    def _tell(self, entry: dict[str, Any], which: str) -> None:
        record = entry[which]
        how = (f"exit {record['exit_code']}" if record["exit_code"] is not None
               else record["error"])
        line = f"perfkit: fault {entry['index']} {which} ({how}): {record['command']}"
        if command_failed(record):
            tail = record["output"].strip().splitlines()[-1:] or [""]
            line += f" -- {tail[0][:200]}" if tail[0] else ""
            log.warning("%s", line)
        self.say(line)

    def stop(self) -> list[dict[str, Any]]:
        """End the faults: those still due are not reached, those in progress are undone now
        (each command still bounded by its timeout). Returns run.json's "faults"."""
        self.stopping.set()
        gevent.joinall(self.greenlets)
        return self.records()

    def records(self) -> list[dict[str, Any]]:
        return [dict(entry) for entry in self.entries]
