"""Child processes that never outlive perfkit: the managed reference service and local workers.

Each child starts in a process group of its own (so a terminal's Ctrl-C reaches perfkit only,
which then stops the children in order) and, on Linux, with a parent-death signal: if perfkit
itself is killed (SIGKILL, a crash, a CI runner cancelling the job) the kernel sends the child
SIGTERM, which the reference service handles like Ctrl-C (drain, mark the rest cancelled,
remove its temporary database). Stopping sends a signal to the whole group and waits; what has
not exited by then is killed, group and all.
"""

import ctypes
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _prepare_child() -> None:  # runs in the child between fork and exec
    # perfkit stops its children with SIGINT. A shell starts a background job (`perfkit load
    # &` in a CI script) with SIGINT ignored, and an ignored signal stays ignored across exec:
    # the service would miss the stop until it installed its own handler, and be killed 45 s
    # later with its temporary directory left behind.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def start_child(command: list[str] | str, log_path: Path) -> subprocess.Popen:
    """Start `command` (a string runs in a shell) with its output in `log_path`, tied to
    perfkit's life. Its own session: a shell command's children are stopped with it."""
    with log_path.open("wb") as log_file:
        return subprocess.Popen(command, shell=isinstance(command, str), stdout=log_file,
                                stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_prepare_child)


def stop_child(process: subprocess.Popen, sig: int = signal.SIGTERM,
               timeout_s: float = 10.0) -> None:
    """Send `sig` to the child's process group, wait up to `timeout_s`, then kill the group."""
    if process.poll() is None:
        _signal_group(process, sig)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("pid %d did not stop within %.0f s; killing it", process.pid,
                        timeout_s)
    _signal_group(process, signal.SIGKILL)  # whatever the child left behind in its group
    if process.poll() is None:
        process.wait()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
