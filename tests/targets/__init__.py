"""Small purpose-built targets, each a script run as a real process on 127.0.0.1.

`start_target` starts one and waits for the first line it prints once ready: the base URL
for a server, the listening address for the others.
"""

import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from perfkit.errors import TargetError

TARGETS_DIR = Path(__file__).parent
FIXED_DELAY = TARGETS_DIR / "fixed_delay.py"
BUSY = TARGETS_DIR / "busy.py"
FAULTY = TARGETS_DIR / "faulty.py"
CAPACITY = TARGETS_DIR / "capacity.py"
HANG = TARGETS_DIR / "hang.py"
CPU_BURNER = TARGETS_DIR / "cpu_burner.py"
ENVELOPE = TARGETS_DIR / "envelope.py"
SQL = TARGETS_DIR / "sql.py"
SWITCHABLE = TARGETS_DIR / "switchable.py"
OUTAGE = TARGETS_DIR / "outage.py"


def start_target(script: Path, *args: str,
                 ready_timeout_s: float = 20.0) -> tuple[subprocess.Popen[str], str]:
    """Start `script` with `args`; return the process and the first line it printed."""
    return start_process([sys.executable, str(script), *args], ready_timeout_s)


@contextmanager
def running_target(script: Path, *args: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """A target server for the length of a `with` block: (its base URL, its process)."""
    proc, url = start_target(script, *args)
    assert url.startswith("http://127.0.0.1:"), url
    try:
        yield url, proc
    finally:
        stop_target(proc)


def start_process(argv: list[str],
                  ready_timeout_s: float = 20.0) -> tuple[subprocess.Popen[str], str]:
    """Start `argv`; return the process and the first line it printed on stdout."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    stdout = proc.stdout
    lines: list[str] = []
    # readline blocks without a timeout, so read on a thread and bound the wait here.
    reader = threading.Thread(target=lambda: lines.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(ready_timeout_s)
    if not lines or not lines[0].strip():
        stop_target(proc)
        raise TargetError(f"{argv} was not ready within {ready_timeout_s:.0f} s")
    return proc, lines[0].strip()


def stop_target(proc: subprocess.Popen[str]) -> None:
    """Stop the target and any processes it started."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    if proc.stdout is not None:
        proc.stdout.close()
    if proc.stdout is not None:
        proc.stdout.close()
