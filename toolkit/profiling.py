"""CPU profiles with py-spy and allocation profiles with memray, of a running Python process.

py-spy writes one format per recording, so a CPU profile is two py-spy processes over the same
window: a flamegraph SVG (`profile.svg`, embedded in the report) and a speedscope file
(`profile.speedscope.json`). Both run `--nonblocking`: py-spy then reads the target's memory
without pausing it at each sample, which costs the target less during a load run and lets two
samplers read one process at once (two pausing samplers fight over ptrace and lose about a
sixth of their samples). The price is an occasional torn stack, harmless in a flamegraph.

Memory: memray (maintained by Bloomberg) attaches to the live process through gdb, records
every allocation for a window, and `memray stats` gives the top allocation sites.
"""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

from .errors import ConfigError, RunError

log = logging.getLogger(__name__)

SVG = "profile.svg"
SPEEDSCOPE = "profile.speedscope.json"
MEMORY_BIN = "memory.memray.bin"
MEMORY_JSON = "memory.json"
MAX_DURATION_S = 3600.0
MB = 1024 * 1024
_SAMPLES = re.compile(r"Samples: (\d+) Errors: (\d+)")
# What py-spy says when it cannot read the target, mapped to what the user can do about it.
_ATTACH_HINTS = [
    ("Permission denied", "py-spy may not attach: run as root or allow ptrace "
                          "(kernel.yama.ptrace_scope=0, or CAP_SYS_PTRACE in a container)"),
    ("Operation not permitted", "py-spy may not attach: run as root or allow ptrace "
                                "(kernel.yama.ptrace_scope=0, or CAP_SYS_PTRACE in a container)"),
    ("Failed to find python version", "the process is not running Python"),
    ("No python processes found", "no Python process in that process tree"),
    ("Cannot find a supported lldb or gdb", "memray attach needs gdb (apt-get install gdb)"),
    ("Couldn't write extended state", "memray may not attach here: gdb cannot set the target's "
                                      "registers on this machine's kernel or CPU (\"Couldn't "
                                      "write extended state status\")"),
    ("No such file or directory", "the process exited"),
]


@dataclass(frozen=True)
class ProfileSettings:
    pid: int
    duration_s: float = 30.0
    out_dir: Path = Path(".")
    rate_hz: int = 100
    memory: bool = False


def find_tool(name: str) -> str:
    """A console script installed with perfkit: next to this interpreter first (a venv that is
    not activated is not on PATH), then on PATH."""
    for directory in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        found = shutil.which(name, path=directory)
        if found:
            return found
    found = shutil.which(name)
    if found is None:
        raise ConfigError(f"{name} is not installed (pip install {name})")
    return found


def check_process(pid: int) -> None:
    if not psutil.pid_exists(pid):
        raise ConfigError(f"no process with pid {pid}")


def explain_attach_failure(output: str) -> str:
    """One line from py-spy's or memray's output that says why recording failed."""
    for needle, hint in _ATTACH_HINTS:
        if needle in output:
            return hint
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line.removeprefix("Error:").strip() for line in lines if line.startswith("Error:")]
    return (errors or lines or ["no output"])[0][:300]


class CpuRecording:
    """A py-spy recording in progress; `stop()` ends it early, `wait()` lets it run out."""

    def __init__(self, pid: int, duration_s: float, out_dir: Path, rate_hz: int) -> None:
        self.pid = pid
        self.duration_s = duration_s
        self.out_dir = out_dir
        self.rate_hz = rate_hz
        self.started_at = time.time()
        self._result: dict[str, Any] | None = None
        py_spy = find_tool("py-spy")
        out_dir.mkdir(parents=True, exist_ok=True)
        self._recordings: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []
        for file_name, py_spy_format in [(SVG, "flamegraph"), (SPEEDSCOPE, "speedscope")]:
            (out_dir / file_name).unlink(missing_ok=True)
            log_file = tempfile.TemporaryFile()
            command = [py_spy, "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
                       "--rate", str(rate_hz), "--duration", str(max(1, round(duration_s))),
                       "--format", py_spy_format, "-o", str(out_dir / file_name)]
            log.debug("starting %s", command)
            # Without RUST_BACKTRACE py-spy's errors are one line, not a Rust backtrace.
            env = {k: v for k, v in os.environ.items() if k != "RUST_BACKTRACE"}
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file,
                                    stderr=subprocess.STDOUT, env=env)
            self._recordings.append((file_name, proc, log_file))

    def stop(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """End the recording now; py-spy writes what it has on SIGINT, like on Ctrl-C."""
        for _, proc, _ in self._recordings:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        return self.wait(timeout_s)

    def wait(self, timeout_s: float | None = None) -> dict[str, Any]:
        """Wait for the end (py-spy stops by itself after the duration or when the target
        exits) and return what was written, as a run.json entry."""
        if self._result is not None:
            return self._result
        limit_s = timeout_s if timeout_s is not None else self.duration_s + 60.0
        deadline = time.monotonic() + limit_s
        outputs: list[str] = []
        samples: list[int] = []
        written: dict[str, str | None] = {}
        for file_name, proc, log_file in self._recordings:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log_file.seek(0)
            output = log_file.read().decode("utf-8", "replace")
            log_file.close()
            outputs.append(output)
            match = _SAMPLES.search(output)
            if match:
                samples.append(int(match.group(1)))
            path = self.out_dir / file_name
            ok = path.exists() and path.stat().st_size > 0
            written[file_name] = file_name if ok else None
            if not ok:
                log.debug("py-spy for %s ended with %s: %s", file_name, proc.returncode, output)
        svg_ok = written[SVG] is not None
        note = "" if svg_ok else explain_attach_failure("\n".join(outputs))
        self._result = {
            "available": svg_ok,
            "pid": self.pid,
            "svg": written[SVG],
            "speedscope": written[SPEEDSCOPE],
            "samples": min(samples) if samples else None,
            "rate_hz": self.rate_hz,
            "started_at": self.started_at,
            "duration_s": round(time.time() - self.started_at, 3),
            "note": note,
        }
        return self._result


def start_profile(pid: int, duration_s: float, out_dir: Path,
                  rate_hz: int = 100) -> CpuRecording:
    """Start recording `pid` and its children for at most `duration_s`; returns at once."""
    check_process(pid)
    if not 0 < duration_s <= MAX_DURATION_S:
        raise ConfigError(f"profile duration must be more than 0 and at most "
                          f"{MAX_DURATION_S:.0f} s")
    if not 1 <= rate_hz <= 1000:
        raise ConfigError("profile rate must be between 1 and 1000 Hz")
    return CpuRecording(pid, duration_s, out_dir, rate_hz)


def profile_process(pid: int, duration_s: float, out_dir: Path,
                    rate_hz: int = 100) -> dict[str, Any]:
    """Record for `duration_s` (blocking). Never raises for a target py-spy cannot read: the
    entry says `available: false` and why, so a load run goes on without its profile."""
    try:
        return start_profile(pid, duration_s, out_dir, rate_hz).wait()
    except ConfigError as exc:
        return {"available": False, "pid": pid, "svg": None, "speedscope": None,
                "samples": None, "rate_hz": rate_hz, "note": str(exc)}


def run_profile(settings: ProfileSettings, say: Callable[[str], None]) -> dict[str, Any]:
    """The `perfkit profile` command."""
    if settings.memory:
        return run_memory_profile(settings, say)
    recording = start_profile(settings.pid, settings.duration_s, settings.out_dir,
                              settings.rate_hz)
    say(f"recording pid {settings.pid} and its children with py-spy for "
        f"{settings.duration_s:g} s at {settings.rate_hz} Hz (Ctrl-C stops early)")
    try:
        result = recording.wait()
    except KeyboardInterrupt:
        result = recording.stop()
    if not result["available"]:
        raise RunError(f"cannot profile pid {settings.pid}: {result['note']}")
    say(f"wrote {settings.out_dir / SVG} and {settings.out_dir / SPEEDSCOPE} "
        f"({result['samples']} samples)")
    return result


def _read_peak_sites(path: Path, top_n: int) -> tuple[float, list[dict[str, Any]]]:
    """Peak memory (MB) of the window and the allocation sites live at that peak, largest
    first. A site is the innermost Python frame; its heaviest full stack is kept as example."""
    import memray

    reader = memray.FileReader(str(path))
    try:
        peak_mb = reader.metadata.peak_memory / MB
        sites: dict[tuple[str, str, int], dict[str, Any]] = {}
        for record in reader.get_high_watermark_allocation_records(merge_threads=True):
            stack = [(function, file, line) for function, file, line in record.stack_trace()]
            if any(file.endswith("_memray_attach_hook.py") for _, file, _ in stack):
                continue  # memray's own thread in the target, not the target's memory
            function, file, line = stack[0] if stack else ("(no Python frame)", "", 0)
            site = sites.setdefault((function, file, line), {
                "function": function, "file": file, "line": line, "size_mb": 0.0,
                "allocations": 0, "stack": [], "_heaviest_b": -1})
            site["size_mb"] += record.size / MB
            site["allocations"] += record.n_allocations
            if record.size > site["_heaviest_b"]:
                site["_heaviest_b"] = record.size
                site["stack"] = [f"{f} ({path_}:{n})" for f, path_, n in stack]
    finally:
        reader.close()
    ranked = sorted(sites.values(), key=lambda site: site["size_mb"], reverse=True)[:top_n]
    for site in ranked:
        del site["_heaviest_b"]
    return peak_mb, ranked


def profile_memory(pid: int, duration_s: float, out_dir: Path,
                   top_n: int = 10) -> dict[str, Any]:
    """Track the allocations of `pid` (that process only) for `duration_s` with memray and
    write the top allocation sites at the window's peak to memory.json. Like
    `profile_process`, a target memray cannot attach to gives `available: false` and why."""
    entry: dict[str, Any] = {"available": False, "pid": pid, "file": None,
                             "duration_s": duration_s, "peak_mb": None, "sites": [], "note": ""}
    try:
        check_process(pid)
        memray_cli = find_tool("memray")
    except ConfigError as exc:
        entry["note"] = str(exc)
        return entry
    out_dir.mkdir(parents=True, exist_ok=True)
    # A new name each time: memray refuses to overwrite, and a failed attempt must not
    # remove the capture of an earlier one.
    capture = out_dir / f"{MEMORY_BIN}.{pid}.{int(time.time())}.part"
    capture.unlink(missing_ok=True)
    # --aggregate keeps only what the peak needs (a few kB), not every allocation event.
    command = [memray_cli, "attach", "--aggregate", "--duration", str(max(1, round(duration_s))),
               "-o", str(capture), str(pid)]
    attach = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            timeout=120)
    if attach.returncode != 0:
        output = attach.stdout + attach.stderr
        if "unexpected error" in output:
            # memray says why only with --verbose (gdb's own message): ask once more.
            verbose = subprocess.run([*command[:2], "--verbose", *command[2:]],
                                     capture_output=True, text=True,
                                     stdin=subprocess.DEVNULL, timeout=120)
            output = (verbose.stdout + verbose.stderr)[-4000:] + output
        entry["note"] = explain_attach_failure(output)
        return entry
    # memray tracks in a thread inside the target and writes the file when it stops.
    deadline = time.monotonic() + duration_s + 30.0
    try:
        while time.monotonic() < deadline and not _capture_complete(capture):
            if not psutil.pid_exists(pid):
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        subprocess.run([memray_cli, "detach", str(pid)], capture_output=True, timeout=60)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and not _capture_complete(capture):
            time.sleep(0.2)
    if not _capture_complete(capture):
        capture.unlink(missing_ok=True)
        entry["note"] = f"memray wrote no complete capture for pid {pid}"
        return entry
    capture = capture.replace(out_dir / MEMORY_BIN)
    peak_mb, sites = _read_peak_sites(capture, top_n)
    entry.update(available=True, file=MEMORY_BIN, peak_mb=peak_mb, sites=sites)
    _write_json(out_dir / MEMORY_JSON, entry)
    return entry


def _capture_complete(path: Path) -> bool:
    if not path.exists() or path.stat().st_size == 0:
        return False
    import memray

    try:
        memray.FileReader(str(path)).close()
    except (OSError, ValueError, RuntimeError):
        return False
    return True


def format_memory_sites(entry: dict[str, Any]) -> str:
    lines = [f"peak {entry['peak_mb']:.1f} MB allocated during the window and live at its "
             f"peak; top allocation sites:",
             f"{'MB':>9}  {'allocs':>8}  site"]
    for site in entry["sites"]:
        if site["size_mb"] < entry["peak_mb"] / 1000:
            break  # the rest is below 0.1 % of the peak (sites are sorted largest first)
        where = f"{site['file']}:{site['line']}" if site["file"] else ""
        lines.append(f"{site['size_mb']:>9.2f}  {site['allocations']:>8}  "
                     f"{site['function']} {where}")
        for frame in site["stack"][1:4]:
            lines.append(f"{'':>21}  from {frame}")
    return "\n".join(lines)


def run_memory_profile(settings: ProfileSettings, say: Callable[[str], None]) -> dict[str, Any]:
    check_process(settings.pid)
    say(f"tracking allocations of pid {settings.pid} with memray for "
        f"{settings.duration_s:g} s")
    entry = profile_memory(settings.pid, settings.duration_s, settings.out_dir)
    if not entry["available"]:
        raise RunError(f"cannot profile memory of pid {settings.pid}: {entry['note']}")
    say(format_memory_sites(entry))
    say(f"wrote {settings.out_dir / MEMORY_JSON} and {settings.out_dir / MEMORY_BIN} "
        f"(open with: memray flamegraph {settings.out_dir / MEMORY_BIN})")
    return entry


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2), "utf-8")
