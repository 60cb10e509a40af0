"""The system under test: start the bundled reference service, or check a given target."""

import logging
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import TargetError
from .processes import start_child, stop_child

log = logging.getLogger(__name__)

HEALTH_PATH = "/api/v1/health"
# The service drains for up to 10 s (guide profile), then cancels the rest in bulk and closes
# its database and worker processes: give it that and a margin before it is killed.
STOP_TIMEOUT_S = 45.0
_URL_LINE = re.compile(r"(http://[\w.\-]+:\d+)")


@dataclass
class ManagedTarget:
    process: subprocess.Popen
    url: str
    log_path: Path
    restarting: bool = False  # a stack=service-restart fault has it down on purpose


def serve_command(serve_args: list[str], port: int = 0) -> list[str]:
    return [sys.executable, "-m", "perfkit", "serve", "--host", "127.0.0.1", "--port",
            str(port), *serve_args]


def start_reference_service(log_path: Path, serve_args: list[str],
                            timeout_s: float = 60.0) -> ManagedTarget:
    """Start `perfkit serve SERVE_ARGS` on a free loopback port; its output goes to
    `log_path`. The service prints its URL once it listens (and its Celery workers are up)."""
    command = serve_command(serve_args)
    process = start_child(command, log_path)
    try:
        return _wait_for_service(process, log_path, timeout_s)
    except BaseException:
        # Not ready, or interrupted while waiting: never leave it running.
        stop_child(process, signal.SIGINT, STOP_TIMEOUT_S)
        raise


def _wait_for_service(process: subprocess.Popen, log_path: Path,
                      timeout_s: float) -> ManagedTarget:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        output = log_path.read_text("utf-8", errors="replace")
        match = _URL_LINE.search(output)
        if match:
            target = ManagedTarget(process, match.group(1), log_path)
            wait_until_healthy(target.url, deadline - time.monotonic(), process)
            return target
        if process.poll() is not None:
            raise TargetError(f"the reference service exited with code {process.returncode}: "
                              f"{_last_line(output)}")
        time.sleep(0.1)
    raise TargetError(f"the reference service did not start within {timeout_s:.0f} s")


def wait_until_healthy(url: str, timeout_s: float,
                       process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + max(timeout_s, 1.0)
    error = ""
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise TargetError(f"the target exited with code {process.returncode} "
                              "before it was ready")
        try:
            with urllib.request.urlopen(url + HEALTH_PATH, timeout=2) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError) as exc:
            error = str(exc)
        time.sleep(0.2)
    raise TargetError(f"{url}{HEALTH_PATH} did not answer 200 in time ({error})")


def check_target(url: str, timeout_s: float = 10.0) -> None:
    """A target is reachable when it answers HTTP at all (another deployment may lack health)."""
    if not re.match(r"^https?://", url):
        raise TargetError(f"bad target URL {url!r}: expected http://host:port")
    deadline = time.monotonic() + timeout_s
    error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url.rstrip("/") + HEALTH_PATH, timeout=3):
                return
        except urllib.error.HTTPError:
            return  # it answered: a 404 or 500 from health is data, not unreachability
        except OSError as exc:
            error = exc
        time.sleep(0.5)
    raise TargetError(f"target {url} is unreachable: {error}")


def stop_reference_service(target: ManagedTarget, timeout_s: float = STOP_TIMEOUT_S) -> None:
    # SIGINT lets in-flight jobs finish or be marked cancelled.
    stop_child(target.process, signal.SIGINT, timeout_s)


def _last_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
