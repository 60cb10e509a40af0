"""Small purpose-built targets, each a script run as a real process on 127.0.0.1.

`start_target` starts one and waits for the base URL it prints on its first stdout line.
"""

import subprocess
import sys
import threading
from pathlib import Path

from perfkit.errors import TargetError

TARGETS_DIR = Path(__file__).parent
FIXED_DELAY = TARGETS_DIR / "fixed_delay.py"


def start_target(script: Path, *args: str,
                 ready_timeout_s: float = 20.0) -> tuple[subprocess.Popen[str], str]:
    """Start `script` with `args`; return the process and the URL it printed once listening."""
    proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    stdout = proc.stdout
    lines: list[str] = []
    # readline blocks without a timeout, so read on a thread and bound the wait here.
    reader = threading.Thread(target=lambda: lines.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(ready_timeout_s)
    if not lines or not lines[0].startswith("http"):
        stop_target(proc)
        raise TargetError(f"{script.name} printed no URL within {ready_timeout_s:.0f} s")
    return proc, lines[0].strip()


def stop_target(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    if proc.stdout is not None:
        proc.stdout.close()
