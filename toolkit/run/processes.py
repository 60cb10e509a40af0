"""Child processes that never outlive perfkit: the managed reference service and local workers.

Local workers are forked from the running perfkit (`fork_children`) after the locustfile was
imported, as Locust's --processes forks its workers, so its module-level code runs once per
process tree; their output reaches perfkit's terminal line by line with their name in front
(`[worker-1] ...`) and their log file. The reference service is started as a command
(`start_child`).

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
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

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


def stop_child(process: "subprocess.Popen | ForkedProcess", sig: int = signal.SIGTERM,
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


def _signal_group(process: "subprocess.Popen | ForkedProcess", sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


Emit = Callable[[str, bool], None]  # (line, from stderr)


class ForkedProcess:
    """A child forked by `fork_children`: what stop_child uses of a Popen (pid, poll, wait,
    returncode), and the greenlets that relay its output."""

    def __init__(self, pid: int, relays: list[Any], log_file: IO[bytes]) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.relays = relays
        self.log_file = log_file

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: it is gone
                pid, status = self.pid, 0
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                self._drain()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
            time.sleep(0.05)
        assert self.returncode is not None
        return self.returncode

    def _drain(self) -> None:
        """The child's last lines, then its log file closed."""
        import gevent

        gevent.joinall(self.relays, timeout=2.0)
        self.log_file.close()


def fork_children(children: list[tuple[str, Callable[[], int], Path]],
                  emit: Emit) -> list[ForkedProcess]:
    """Fork this process once per (name, run, log path); each child calls `run` and exits
    with what it returns (never coming back here: no `finally` of the parent's runs in it).
    Its stdout and stderr lines reach `emit` as "[name] line" and its log file as written.
    Like start_child's children, each has a session of its own and dies with perfkit.
    Every child is forked before any output is relayed: a greenlet alive at a fork lives on in
    the child, and would read its elder siblings' pipes there."""
    import gevent

    forked: list[tuple[int, int, int, Path, str]] = []
    for name, run, log_path in children:
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = gevent.fork()
        if pid == 0:
            inherited = [fd for _, out_fd, err_fd, _, _ in forked for fd in (out_fd, err_fd)]
            _run_child(run, out_write, err_write, [out_read, err_read, *inherited])
        os.close(out_write)
        os.close(err_write)
        forked.append((pid, out_read, err_read, log_path, name))
    return [_relay(pid, out_read, err_read, log_path, name, emit)
            for pid, out_read, err_read, log_path, name in forked]


def _run_child(run: Callable[[], int], out_write: int, err_write: int,
               close: list[int]) -> None:
    code = 1
    try:
        os.setsid()
        _prepare_child()
        os.dup2(out_write, 1)
        os.dup2(err_write, 2)
        for fd in (out_write, err_write, *close):
            os.close(fd)
        code = run()
    except BaseException:  # the child's boundary: whatever it was, say it and exit
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a closed stream: nothing more can be said
                pass
        os._exit(code)


def _relay(pid: int, out_read: int, err_read: int, log_path: Path, name: str,
           emit: Emit) -> ForkedProcess:
    import gevent
    from gevent.fileobject import FileObjectPosix

    log_file = log_path.open("ab")

    def relay(fd: int, is_err: bool) -> None:
        with FileObjectPosix(fd, "rb") as lines:
            for line in lines:
                if not log_file.closed:
                    log_file.write(line)
                    log_file.flush()
                emit(f"[{name}] {line.decode('utf-8', 'replace').rstrip()}", is_err)

    relays = [gevent.spawn(relay, out_read, False), gevent.spawn(relay, err_read, True)]
    return ForkedProcess(pid, relays, log_file)
