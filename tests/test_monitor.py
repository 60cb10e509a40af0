import csv
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from perfkit import monitor
from perfkit.errors import TargetError
from tests.targets import BUSY, start_target, stop_target


@pytest.fixture(scope="module")
def busy_tree() -> Iterator[subprocess.Popen[str]]:
    # busy.py starts its child before it prints the ready line.
    proc, _ = start_target(BUSY, "--seconds", "60", "--children", "1")
    yield proc
    stop_target(proc)


def run_perfkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "perfkit", *args], capture_output=True,
                          text=True, timeout=120)


def test_monitor_records_the_tree_to_csv(busy_tree: subprocess.Popen[str],
                                         tmp_path: Path) -> None:
    out = tmp_path / "monitor.csv"
    result = run_perfkit("monitor", "--pid", str(busy_tree.pid), "--interval", "0.25s",
                         "--duration", "1s", "--csv", str(out))
    assert result.returncode == 0, result.stderr
    with out.open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == monitor.CSV_COLUMNS
        rows = list(reader)
    # Samples due at 0.25, 0.5, 0.75 and 1 s; one the machine delayed past the next one's
    # due time is not followed by a burst, so a stalled run may have fewer.
    assert 2 <= len(rows) <= 4
    for row in rows:
        for column in monitor.CSV_COLUMNS:
            assert row[column] != "", column
        assert int(row["procs"]) == 2
        # The whole tree can use at most every core there is.
        assert 0 <= float(row["cpu_percent"]) <= 100 * psutil.cpu_count() + 10
        assert float(row["rss_mb"]) > 1
        assert int(row["threads"]) >= 2
        assert int(row["connections"]) >= 1  # the root's listening socket
    assert sum(float(row["cpu_percent"]) for row in rows) > 0  # the root spins
    # Not a TTY: one plain line per sample, then how it ended.
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(rows) + 1
    assert "\x1b[" not in result.stdout
    assert f"duration 1 s reached, {len(rows)} samples" in lines[-1]


def test_sample_of_a_known_tree() -> None:
    state = monitor.open_tree(psutil.Process().pid)
    sample = monitor.sample_process_tree(state)
    assert sample is not None
    row, per_process = sample
    assert set(row) == set(monitor.CSV_COLUMNS)
    assert row["procs"] == len(per_process) >= 1
    assert per_process[0]["pid"] == psutil.Process().pid
    # Primed by open_tree: the second sample has a CPU value.
    assert per_process[0]["cpu_percent"] is not None
    assert "pid" in monitor.format_screen(monitor.MonitorSettings(pid=1), row, per_process)


def test_monitor_stops_when_the_process_exits(tmp_path: Path) -> None:
    proc, _ = start_target(BUSY, "--seconds", "0.5")
    try:
        result = run_perfkit("monitor", "--pid", str(proc.pid), "--interval", "0.1s",
                             "--duration", "60s")
    finally:
        stop_target(proc)
    assert result.returncode == 0, result.stderr
    assert f"process {proc.pid} exited" in result.stdout


def test_unknown_pid_is_a_one_line_error_with_exit_code_2() -> None:
    pid = max(psutil.pids()) + 100_000
    with pytest.raises(TargetError):
        monitor.open_tree(pid)
    result = run_perfkit("monitor", "--pid", str(pid), "--duration", "1s")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert f"no process with pid {pid}" in result.stderr


def test_a_child_born_between_samples_counts_from_zero() -> None:
    """As in resources.csv: a process that did not exist at the previous sample accrued all of
    its CPU since, so the tree's CPU stays known instead of missing or undercounted."""
    state = monitor.open_tree(psutil.Process().pid)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        sample = monitor.sample_process_tree(state)
        assert sample is not None
        row, per_process = sample
        born = next(p for p in per_process if p["pid"] == child.pid)
        assert born["cpu_percent"] is not None and born["cpu_percent"] >= 0
        assert row["cpu_percent"] is not None
    finally:
        child.kill()
        child.wait()
