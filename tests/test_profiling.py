import json
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from perfkit import bench, profiling
from tests.targets import BUSY, start_process, start_target, stop_target


def run_perfkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "perfkit", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def busy_pid() -> Iterator[int]:
    proc, _ = start_target(BUSY, "--seconds", "90", "--children", "1")
    yield proc.pid
    stop_target(proc)


def skip_if_ptrace_denied(result: dict[str, object]) -> None:
    # The one legitimate reason for no profile: this machine forbids reading other processes.
    if not result["available"] and "may not attach" in str(result["note"]):
        pytest.skip(f"the profiler cannot attach here: {result['note']}")


def test_flamegraph_names_the_targets_functions(busy_pid: int, tmp_path: Path) -> None:
    result = profiling.profile_process(busy_pid, 2, tmp_path, rate_hz=50)
    skip_if_ptrace_denied(result)
    assert result["available"], result["note"]
    assert result["svg"] == "profile.svg"
    assert result["speedscope"] == "profile.speedscope.json"
    assert result["samples"] > 0
    svg = (tmp_path / "profile.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "</svg>" in svg
    assert "spin_perfkit_target" in svg
    # --subprocesses: the child busy.py (started with --seconds 90.0) is in the same profile.
    assert "--seconds 90.0" in svg
    speedscope = json.loads((tmp_path / "profile.speedscope.json").read_text())
    frames = {frame["name"] for frame in speedscope["shared"]["frames"]}
    assert "spin_perfkit_target" in frames


def test_a_started_profile_can_be_stopped_early(busy_pid: int, tmp_path: Path) -> None:
    recording = profiling.start_profile(busy_pid, 60, tmp_path, rate_hz=50)
    # Let py-spy attach and take samples before asking it to stop.
    psutil.Process(busy_pid).cpu_percent(1.5)
    result = recording.stop()
    skip_if_ptrace_denied(result)
    assert result["available"], result["note"]
    assert "spin_perfkit_target" in (tmp_path / "profile.svg").read_text()
    assert recording.wait() is result


def test_flamegraph_of_the_reference_service_names_its_functions(tmp_path: Path) -> None:
    proc, line = start_process([sys.executable, "-m", "perfkit", "serve", "--port", "0",
                                "--fast"], ready_timeout_s=60)
    try:
        match = re.search(r"http://[\d.]+:\d+", line)
        assert match, line
        url = match.group(0)
        load = threading.Thread(target=bench.measure_bench, args=(bench.BenchSettings(
            url=f"{url}/api/v1/health", concurrency=4, duration_s=3),))
        recording = profiling.start_profile(proc.pid, 3, tmp_path, rate_hz=200)
        load.start()
        result = recording.wait()
        load.join()
    finally:
        stop_target(proc)
    skip_if_ptrace_denied(result)
    assert result["available"], result["note"]
    svg = (tmp_path / "profile.svg").read_text()
    assert "reference/app.py" in svg


def test_a_process_that_is_not_python_is_a_one_line_error(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        result = profiling.profile_process(sleeper.pid, 1, tmp_path)
        assert not result["available"]
        assert result["note"]
        cli = run_perfkit("profile", "--pid", str(sleeper.pid), "--duration", "1s",
                          "--out", str(tmp_path))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert cli.returncode == 2
    assert cli.stderr.strip().count("\n") == 0
    assert f"cannot profile pid {sleeper.pid}" in cli.stderr
    assert "Traceback" not in cli.stderr


def test_unknown_pid_is_a_one_line_error_with_exit_code_2(tmp_path: Path) -> None:
    pid = max(psutil.pids()) + 100_000
    result = profiling.profile_process(pid, 1, tmp_path)
    assert not result["available"]
    cli = run_perfkit("profile", "--pid", str(pid), "--duration", "1s", "--out", str(tmp_path))
    assert cli.returncode == 2
    assert cli.stderr.strip().count("\n") == 0
    assert f"no process with pid {pid}" in cli.stderr


def test_attach_failures_are_explained_in_one_line() -> None:
    assert "ptrace" in profiling.explain_attach_failure(
        "Error: Failed to get process executable name.\n\nCaused by:\n"
        "    0: Permission denied (os error 13)\n")
    assert profiling.explain_attach_failure("Error: something new\nmore\n") == "something new"
    assert profiling.explain_attach_failure("") == "no output"


needs_debugger = pytest.mark.skipif(
    shutil.which("gdb") is None and shutil.which("lldb") is None,
    reason="memray attaches through gdb or lldb, and neither is installed (apt-get install gdb)")


@needs_debugger
def test_memory_profile_names_the_allocating_function(tmp_path: Path) -> None:
    proc, _ = start_target(BUSY, "--seconds", "60", "--allocate-kb-s", "2048")
    try:
        entry = profiling.profile_memory(proc.pid, 2, tmp_path)
    finally:
        stop_target(proc)
    skip_if_ptrace_denied(entry)
    assert entry["available"], entry["note"]
    assert entry["file"] == "memory.memray.bin"
    assert (tmp_path / "memory.memray.bin").stat().st_size > 0
    top = entry["sites"][0]
    assert any("grow_perfkit_cache" in frame for frame in top["stack"])
    # busy.py keeps every kilobyte it allocates: all of the window's allocation is live at its
    # peak, which is at least the first slice of 2048 // 10 kB.
    assert top["size_mb"] >= 0.2
    assert top["allocations"] >= 200
    assert entry["peak_mb"] >= top["size_mb"]
    assert json.loads((tmp_path / "memory.json").read_text())["sites"][0] == top


@needs_debugger
def test_memory_profile_of_a_process_that_is_not_python_is_a_one_line_error(
        tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        cli = run_perfkit("profile", "--memory", "--pid", str(sleeper.pid), "--duration", "1s",
                          "--out", str(tmp_path))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert cli.returncode == 2
    assert cli.stderr.strip().count("\n") == 0
    assert f"cannot profile memory of pid {sleeper.pid}" in cli.stderr
    assert list(tmp_path.iterdir()) == []
