"""psutil samples of the target's process tree and of the machine, into resources.csv.

Measurement choices (each is a known pitfall):
- CPU, I/O and context-switch rates are differences of cumulative counters between two samples,
  computed here rather than with `Process.cpu_percent()`, whose first call returns a
  meaningless 0.0 and whose state lives in the Process object. A process seen for the first
  time has no previous value, so the tree's rate is missing for that sample, never 0 — unless
  the process was born after the previous sample: then all of its counters accrued within the
  interval and its rate is exact from zero. A process that lives and dies between two samples
  is not seen at all; one that dies takes its CPU since the previous sample with it.
- A tree rate is a sum over every process in the tree; if one process's counter cannot be read
  (AccessDenied) the sum is missing rather than a silent undercount. USS likewise.
- `open_files` counts open file descriptors (files, sockets, pipes; `num_fds`), which is what
  leaks; `Process.open_files()` lists regular files only and costs a readlink per descriptor.
- CPU is in percent of one core, as `top` shows a process: `cpu_percent` sums the tree,
  `cpu_busiest_percent` is its busiest process (what saturates first: a Python server is
  one process on one core), `cpu_machine_percent` is the tree's share of all cores.
- Machine CPU is computed from `psutil.cpu_times()` too: `psutil.cpu_percent()` keeps one
  module-global state, which any other caller in the process would disturb.
- MB are MiB (2**20 bytes), as `ps` and `top` count them. Network counters include loopback,
  where the load test's own traffic runs.
- What else the machine was doing, for comparisons (docs/regression.md): `others_cpu_percent`
  is the machine's busy CPU (steal left out) minus perfkit's own processes (the process that
  runs the load and its descendants: Locust workers, py-spy) minus the target's tree, in % of
  one core; it is missing without a target tree to subtract, since the target's own work
  would then count as other work. `sys_perfkit_cpu_percent` is perfkit's own share (the
  target left out where it is perfkit's child), `sys_steal_percent` the CPU the hypervisor
  gave to other guests (% of one core; missing where the OS does not report steal),
  `sys_loadavg_1m` the kernel's one-minute load average (runnable and uninterruptible tasks,
  the target's and perfkit's included).
"""

import csv
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

from .. import rundir
from ..errors import RunError
from .sampling import Sampler

log = logging.getLogger(__name__)

COLUMNS = [
    "t", "procs", "cpu_percent", "cpu_busiest_percent", "cpu_machine_percent", "rss_mb",
    "uss_mb", "threads", "open_files", "read_mb_s", "write_mb_s", "ctx_switches_s",
    "sys_cpu_percent", "sys_memory_percent", "sys_disk_read_mb_s", "sys_disk_write_mb_s",
    "sys_net_sent_mb_s", "sys_net_recv_mb_s",
    "sys_loadavg_1m", "sys_steal_percent", "others_cpu_percent", "sys_perfkit_cpu_percent",
    "wait_percent", "sys_perfkit_wait_percent",
]
MB = 1024 * 1024

# psutil's create_time rests on /proc/stat's btime, which is whole seconds, so a process's
# birth can appear up to a second earlier than it was.
_CREATE_TIME_SLACK_S = 1.0


@dataclass(frozen=True)
class ProcessSample:
    """Cumulative counters and gauges of one process; None where psutil was denied."""

    cpu_s: float
    rss_bytes: int
    uss_bytes: int | None
    threads: int
    fds: int | None
    read_bytes: int | None
    write_bytes: int | None
    ctx_switches: int
    wait_s: float | None = None  # runnable but waiting for a CPU (read_wait_s)


_BORN_AT_ZERO = ProcessSample(0.0, 0, 0, 0, 0, 0, 0, 0, 0.0)


def read_wait_s(pid: int) -> float | None:
    """Seconds the process's threads were runnable but waiting for a CPU, since it started
    (the scheduler's run delay, /proc/PID/schedstat); None where the kernel does not say.
    Unlike CPU time it does not saturate: the more tasks queue for the cores, the longer each
    waits per second it runs."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def sample_process(proc: psutil.Process) -> ProcessSample | None:
    """One process's counters, or None if it vanished (or is a zombie) meanwhile."""
    try:
        with proc.oneshot():
            # A zombie's memory reads as 0, which would be a false measurement.
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            cpu = proc.cpu_times()
            try:
                full = proc.memory_full_info()
                rss_bytes, uss_bytes = full.rss, full.uss
            except psutil.AccessDenied:
                rss_bytes, uss_bytes = proc.memory_info().rss, None
            try:
                fds = proc.num_fds()
            except psutil.AccessDenied:
                fds = None
            try:
                io = proc.io_counters()
                read_bytes, write_bytes = io.read_bytes, io.write_bytes
            except (psutil.AccessDenied, AttributeError):
                read_bytes = write_bytes = None
            ctx = proc.num_ctx_switches()
            return ProcessSample(
                cpu_s=cpu.user + cpu.system,
                rss_bytes=rss_bytes,
                uss_bytes=uss_bytes,
                threads=proc.num_threads(),
                fds=fds,
                read_bytes=read_bytes,
                write_bytes=write_bytes,
                ctx_switches=ctx.voluntary + ctx.involuntary,
                wait_s=read_wait_s(proc.pid),
            )
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def list_tree(root: psutil.Process) -> list[psutil.Process]:
    """root and all its descendants, found anew on every call.

    Reads /proc/PID/task/TID/children, one small file per thread of the tree, where psutil's
    children(recursive=True) reads /proc/*/stat of every process on the machine: ~0.1 ms
    instead of 5-10 ms per sample on a machine with a hundred processes. Falls back to psutil
    where the kernel has no such files. Raises NoSuchProcess if root has gone.
    """
    if not root.is_running():
        raise psutil.NoSuchProcess(root.pid)
    try:
        pids = [*_list_children_pids(root.pid)]
    except FileNotFoundError:
        return [root, *root.children(recursive=True)]
    tree = [root]
    while pids:
        pid = pids.pop()
        try:
            tree.append(psutil.Process(pid))
            pids.extend(_list_children_pids(pid))
        except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
            continue  # exited while we looked
    return tree


def _list_children_pids(pid: int) -> list[int]:
    children: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                children.extend(int(child) for child in f.read().split())
        except FileNotFoundError:
            if tid == str(pid):
                raise
    return children


@dataclass(frozen=True)
class TreeSample:
    """The live processes of a tree at one moment, keyed by (pid, create time): a pid the
    kernel hands to a new process is another key, never a continuation of the old one."""

    listed_at: float  # time.time() before the tree was listed
    samples: dict[tuple[int, float], ProcessSample]
    processes: dict[tuple[int, float], psutil.Process]  # for reads beyond the counters


def sample_tree(root: psutil.Process) -> TreeSample | None:
    """Counters of every process of the tree under `root`; None once root has gone (or is a
    zombie). A child that exits while it is sampled is left out."""
    listed_at = time.time()
    try:
        tree = list_tree(root)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    samples: dict[tuple[int, float], ProcessSample] = {}
    processes: dict[tuple[int, float], psutil.Process] = {}
    for proc in tree:
        sample = sample_process(proc)
        if sample is None:
            if proc is root:
                return None
            continue
        key = (proc.pid, proc.create_time())
        samples[key], processes[key] = sample, proc
    return TreeSample(listed_at, samples, processes)


def rate_baseline(current: TreeSample,
                  previous: TreeSample) -> dict[tuple[int, float], ProcessSample]:
    """What each process's counters are diffed against: its sample in `previous`, or zero
    for a process born after `previous` was listed (all of its counters accrued since)."""
    baseline = dict(previous.samples)
    for key in current.samples.keys() - previous.samples.keys():
        if key[1] >= previous.listed_at - _CREATE_TIME_SLACK_S:
            baseline[key] = _BORN_AT_ZERO
    return baseline


def sum_field(samples: list[ProcessSample], name: str) -> float | None:
    values = [getattr(s, name) for s in samples]
    return None if not values or any(v is None for v in values) else float(sum(values))


def rate_of_field(
    current: dict[tuple[int, float], ProcessSample],
    previous: dict[tuple[int, float], ProcessSample],
    name: str,
    dt_s: float,
) -> float | None:
    """Per-second increase of a counter summed over the tree; missing if any process lacks it."""
    total = 0.0
    for key, now in current.items():
        before = previous.get(key)
        now_value = getattr(now, name)
        before_value = None if before is None else getattr(before, name)
        if now_value is None or before_value is None:
            return None
        total += now_value - before_value
    return total / dt_s


def busiest_rate(current: dict[tuple[int, float], ProcessSample],
                 previous: dict[tuple[int, float], ProcessSample], name: str,
                 dt_s: float) -> float:
    """Per-second increase of a counter in the tree's busiest process (as `top` shows one
    process: a single-threaded server pinned at one core reads 100 % on any machine)."""
    return max((getattr(now, name) - getattr(previous[key], name) for key, now in current.items()
                if key in previous and getattr(previous[key], name) is not None
                and getattr(now, name) is not None), default=0.0) / dt_s


def _busy_and_total_s(times: Any) -> tuple[float, float]:
    # As psutil.cpu_percent counts: guest time is already inside user/nice, iowait is idle.
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    return total - times.idle - getattr(times, "iowait", 0.0), total


# (cpu_s, wait_s) of one process: what sample_cpu_s reads of perfkit's own processes
CpuWait = tuple[float, float | None]


def sample_cpu_s(root: psutil.Process,
                 leave_out: set[tuple[int, float]]) -> dict[tuple[int, float], CpuWait]:
    """CPU seconds (user + system) and seconds waited for a CPU (read_wait_s) of every
    process of the tree under `root` except the subtrees of those in `leave_out`, keyed as
    TreeSample keys. Only these are read, and a left-out subtree (the target's, when it is
    perfkit's child) is not walked: this runs every second over perfkit's own processes."""
    skip = {pid for pid, _ in leave_out}
    cpu: dict[tuple[int, float], CpuWait] = {}
    pids = [root.pid]
    while pids:
        pid = pids.pop()
        if pid in skip:
            continue
        try:
            proc = root if pid == root.pid else psutil.Process(pid)
            key = (pid, proc.create_time())
            if key in leave_out:
                continue
            times = proc.cpu_times()
            cpu[key] = (times.user + times.system, read_wait_s(pid))
            try:
                pids.extend(_list_children_pids(pid))
            except FileNotFoundError:  # no /proc/PID/task/TID/children (or gone): psutil's
                pids.extend(child.pid for child in proc.children())
        except (psutil.NoSuchProcess, psutil.ZombieProcess, ProcessLookupError):
            continue  # exited while we looked
    return cpu


def cpu_rate_s(current: dict[tuple[int, float], CpuWait],
               previous: dict[tuple[int, float], CpuWait], previous_at: float,
               dt_s: float, index: int = 0) -> float | None:
    """Seconds per second (CPU, or with index 1 waiting for a CPU) of a set of processes
    between two sample_cpu_s readings; a process born since `previous_at` counts from zero
    (as rate_baseline). None where a process's value is unknown."""
    total = 0.0
    for key, values in current.items():
        now = values[index]
        before = previous[key][index] if key in previous else (
            0.0 if key[1] >= previous_at - _CREATE_TIME_SLACK_S else now)
        if now is None or before is None:
            return None
        total += now - before
    return max(total, 0.0) / dt_s


def _in_mb(value_bytes: float | None, digits: int) -> float | None:
    return None if value_bytes is None else round(value_bytes / MB, digits)


class SystemCollector(Sampler):
    """Samples a process tree (psutil) every interval into resources.csv, in a daemon thread.

    `pid=None` samples the machine only; the target columns stay empty. A target that exits
    leaves its columns empty from then on, with a note; the collector itself keeps running.
    """

    def __init__(self, pid: int | None, out_csv: Path, interval_s: float = 1.0) -> None:
        super().__init__(interval_s)
        self.pid = pid
        self.out_csv = Path(out_csv)
        self.target_samples = 0
        self._cpu_count = psutil.cpu_count() or 1
        self._root: psutil.Process | None = None
        self._file: IO[str] | None = None
        self._writer: Any = None
        self._previous_t: float | None = None
        self._previous_tree: TreeSample | None = None
        self._previous_machine: dict[str, Any] | None = None
        # perfkit's own processes: the one sampling (which runs the load) and its descendants
        self._own = psutil.Process()
        self._previous_own: dict[tuple[int, float], CpuWait] | None = None
        self._previous_own_at = 0.0
        # CPU seconds per second of the last sample (None where not measured): the target's
        # tree, and the machine's busy cores.
        self._target_cpu_s: float | None = None
        self._busy_cores: float | None = None
        self._target_keys: set[tuple[int, float]] = set()

    def start(self) -> None:
        if self.pid is None:
            self.notes.append("no target pid: machine-wide columns only")
        else:
            try:
                self._root = psutil.Process(self.pid)
            except psutil.NoSuchProcess:
                self.notes.append(f"target pid {self.pid} not found: machine-wide columns only")
            except psutil.AccessDenied:
                self.notes.append(f"target pid {self.pid} not accessible")
        try:
            self._file = rundir.open_for_append(self.out_csv)
        except OSError as exc:
            raise RunError(f"cannot write {self.out_csv}: {exc}") from exc
        self._writer = csv.writer(self._file)
        self._writer.writerow(COLUMNS)
        self._file.flush()
        super().start()

    def take_sample(self) -> dict[str, Any] | None:
        t = time.time()
        row: dict[str, Any] = {"t": round(t, 3)}
        self._target_cpu_s = self._busy_cores = None
        row.update(self._sample_target(t))
        row.update(self._sample_machine(t))
        row.update(self._sample_others(t))
        self._previous_t = t
        if self._file is not None and not self._file.closed:
            self._writer.writerow([row.get(c) for c in COLUMNS])
            self._file.flush()
        if "procs" in row:
            self.target_samples += 1
        return row

    def _sample_target(self, t: float) -> dict[str, Any]:
        if self._root is None:
            return {}
        tree = sample_tree(self._root)
        if tree is None:
            self._note_target_gone(t)
            return {}
        samples = list(tree.samples.values())
        self._target_keys = set(tree.samples)
        fds = sum_field(samples, "fds")
        row: dict[str, Any] = {
            "procs": len(samples),
            "rss_mb": _in_mb(sum_field(samples, "rss_bytes"), 3),
            "uss_mb": _in_mb(sum_field(samples, "uss_bytes"), 3),
            "threads": sum(s.threads for s in samples),
            "open_files": None if fds is None else int(fds),
        }
        if self._previous_t is not None and self._previous_tree is not None:
            dt_s = t - self._previous_t
            baseline = rate_baseline(tree, self._previous_tree)
            cpu_s = rate_of_field(tree.samples, baseline, "cpu_s", dt_s)
            if cpu_s is not None:
                self._target_cpu_s = cpu_s
                row["cpu_percent"] = round(100.0 * cpu_s, 2)
                row["cpu_busiest_percent"] = round(
                    100.0 * busiest_rate(tree.samples, baseline, "cpu_s", dt_s), 2)
                row["cpu_machine_percent"] = round(100.0 * cpu_s / self._cpu_count, 2)
            wait = rate_of_field(tree.samples, baseline, "wait_s", dt_s)
            row["wait_percent"] = None if wait is None else round(100.0 * wait, 2)
            read = rate_of_field(tree.samples, baseline, "read_bytes", dt_s)
            write = rate_of_field(tree.samples, baseline, "write_bytes", dt_s)
            ctx = rate_of_field(tree.samples, baseline, "ctx_switches", dt_s)
            row["read_mb_s"] = _in_mb(read, 4)
            row["write_mb_s"] = _in_mb(write, 4)
            row["ctx_switches_s"] = None if ctx is None else round(ctx, 1)
        self._previous_tree = tree
        return row

    def follow(self, pid: int) -> None:
        """Sample `pid`'s tree from now on: the target restarted (a stack=service-restart
        fault); the seconds it was down are a gap."""
        try:
            root = psutil.Process(pid)
        except psutil.Error:
            self.notes.append(f"restarted target pid {pid} not found")
            return
        self._previous_tree = None
        self.pid, self._root = pid, root
        self.notes.append(f"target restarted as pid {pid}; sampled from then on")

    def _note_target_gone(self, t: float) -> None:
        stamp = time.strftime("%H:%M:%S", time.gmtime(t))
        self.notes.append(
            f"target pid {self.pid} exited at {stamp} UTC; target columns empty from then on"
        )
        log.info("target pid %s exited; sampling the machine only", self.pid)
        self._root = None
        self._previous_tree = None
        self._target_keys = set()

    def _sample_machine(self, t: float) -> dict[str, Any]:
        times = psutil.cpu_times()
        now: dict[str, Any] = {
            "cpu": _busy_and_total_s(times),
            "steal": getattr(times, "steal", None),  # Linux only
            "disk": psutil.disk_io_counters(),  # None where the kernel exposes no disks
            "net": psutil.net_io_counters(),
        }
        row: dict[str, Any] = {"sys_memory_percent": psutil.virtual_memory().percent,
                               "sys_loadavg_1m": round(psutil.getloadavg()[0], 2)}
        before = self._previous_machine
        self._previous_machine = now
        if before is None or self._previous_t is None:
            return row
        dt_s = t - self._previous_t
        busy_s = now["cpu"][0] - before["cpu"][0]
        total_s = now["cpu"][1] - before["cpu"][1]
        if total_s > 0:
            row["sys_cpu_percent"] = round(100.0 * max(busy_s, 0.0) / total_s, 2)
            # Cores' worth, in the kernel's own time (total_s / cores is the interval it saw).
            steal_s = None if now["steal"] is None else max(now["steal"] - before["steal"], 0.0)
            cores_s = total_s / self._cpu_count
            if steal_s is not None:
                row["sys_steal_percent"] = round(100.0 * steal_s / cores_s, 2)
            # Steal is CPU a process wanted and did not get: not work done on this machine.
            self._busy_cores = max(busy_s - (steal_s or 0.0), 0.0) / cores_s
        pairs = [
            ("sys_disk_read_mb_s", "disk", "read_bytes"),
            ("sys_disk_write_mb_s", "disk", "write_bytes"),
            ("sys_net_sent_mb_s", "net", "bytes_sent"),
            ("sys_net_recv_mb_s", "net", "bytes_recv"),
        ]
        for column, source, field in pairs:
            if now[source] is None or before[source] is None:
                continue
            delta = getattr(now[source], field) - getattr(before[source], field)
            if delta >= 0:  # a counter that went back (device reset) is not a rate
                row[column] = round(delta / MB / dt_s, 4)
        return row

    def _sample_others(self, t: float) -> dict[str, Any]:
        """perfkit's own CPU, and the machine's less perfkit's and the target's."""
        # Empty where the target's tree is all of perfkit's (a collector sampling its own
        # process): perfkit's share is then zero.
        own = sample_cpu_s(self._own, self._target_keys)
        before, before_at = self._previous_own, self._previous_own_at
        self._previous_own, self._previous_own_at = own, t
        if before is None or self._previous_t is None:
            return {}
        dt_s = t - self._previous_t
        perfkit_cpu_s = cpu_rate_s(own, before, before_at, dt_s)
        perfkit_wait_s = cpu_rate_s(own, before, before_at, dt_s, index=1)
        assert perfkit_cpu_s is not None  # CPU times are always known
        row: dict[str, Any] = {"sys_perfkit_cpu_percent": round(100.0 * perfkit_cpu_s, 2)}
        if perfkit_wait_s is not None:
            row["sys_perfkit_wait_percent"] = round(100.0 * perfkit_wait_s, 2)
        if self._busy_cores is not None and self._target_cpu_s is not None:
            # Counters are read a few hundred microseconds apart: a slightly negative
            # remainder is rounding, not work.
            others = self._busy_cores - perfkit_cpu_s - self._target_cpu_s
            row["others_cpu_percent"] = round(100.0 * max(others, 0.0), 2)
        return row

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def describe(self) -> dict[str, Any]:
        notes = [*self.notes, self.failure_note()]
        return {
            "available": True,
            "cpu_s": round(self.cpu_s, 4),
            "samples": self.samples,
            "interval_s": self.interval_s,
            "note": "; ".join(n for n in notes if n),
            "pid": self.pid,
            "target_samples": self.target_samples,
        }
