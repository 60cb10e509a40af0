"""Shared fixtures. The reference service runs as a real `python -m perfkit serve --port 0`
process; its first URL line says where it listens."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

_URL = re.compile(r"http://[\w.\-]+:\d+")
# Runs the tests start record no history unless a test asks (--history): none lands in the
# checkout's reports/history.db, and test processes never write one SQLite file together.
os.environ["PERFKIT_HISTORY"] = "off"

# Every test file, longest first (the sum of its test times in phase 1 of a CI run of main at
# 5b7603e, `--durations=0`, 2026-12-06). scripts/test.sh hands whole files to its workers in
# collection order (--dist loadfile --no-loadscope-reorder): long files first, so no worker is
# still in a long one when the others have run out (xdist's own order, by number of tests, left
# the 90 s soak test for last). A file not named here is new and not known to be short: first.
LONGEST_FILES_FIRST = (
    "test_reliability.py", "test_endurance.py", "test_envelope.py", "test_reference_celery.py",
    "test_regression_gate.py", "test_observability.py", "test_load.py",
    "test_verdict_outputs.py", "test_locust.py", "test_distributed.py",
    "test_reference_bounds.py", "test_reference_soak.py", "test_report_outputs.py",
    "test_verdicts.py", "test_compare.py", "test_reference.py", "test_openloop.py",
    "test_cli.py", "test_report_html.py", "test_reference_backends.py", "test_job_timing.py",
    "test_reference_hostile.py", "test_bench.py", "test_profiling.py", "test_api.py",
    "test_history.py", "test_monitor.py", "test_layout.py", "test_collectors.py",
    "test_alarms.py", "test_scenarios.py", "test_kpi.py", "test_settings_sources.py",
    "test_stress.py", "test_stats.py", "test_simultaneous.py", "test_observed.py",
)


@pytest.hookimpl(trylast=True)  # after pytest's own ordering within a file, which is kept
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, -1))


@dataclass
class ServiceProcess:
    """A running `perfkit serve`; `output` collects every line it prints (stdout and stderr)."""

    proc: subprocess.Popen[str]
    args: tuple[str, ...]
    output: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)
    url: str = ""
    reader: threading.Thread | None = None
    signalled: bool = False

    def read_output(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line.rstrip("\n"))
            match = _URL.search(line)
            if match and not self.ready.is_set():
                self.url = match.group(0)
                self.ready.set()
        self.ready.set()

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        """Send `sig` (once: a second SIGINT means "force"), wait for the exit and return the
        exit code (killed after the timeout)."""
        if self.proc.poll() is None and not self.signalled:
            self.send_signal(sig)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise
        finally:
            # The pipe is closed by us once the reader has drained it, or pytest's
            # warnings-as-errors reports the unclosed file.
            if self.reader is not None:
                self.reader.join(5)
            if self.proc.stdout is not None:
                self.proc.stdout.close()

    def send_signal(self, sig: int) -> None:
        self.signalled = True
        self.proc.send_signal(sig)

    def get_json(self, path: str) -> dict:  # type: ignore[type-arg]
        response = httpx.get(self.url + path, timeout=10.0)
        response.raise_for_status()
        return dict(response.json())


def launch_reference_service(*args: str) -> ServiceProcess:
    proc = subprocess.Popen(
        [sys.executable, "-m", "perfkit", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    service = ServiceProcess(proc=proc, args=args)
    service.reader = threading.Thread(target=service.read_output, daemon=True)
    service.reader.start()
    return service


def wait_until_listening(service: ServiceProcess, timeout_s: float = 60.0) -> ServiceProcess:
    if not service.ready.wait(timeout_s) or not service.url:
        service.stop(signal.SIGKILL)
        raise RuntimeError(f"perfkit serve {' '.join(service.args)} did not start:\n"
                           + "\n".join(service.output[-30:]))
    return service


StartServices = Callable[..., list[ServiceProcess]]


@pytest.fixture
def start_reference_services() -> Iterator[StartServices]:
    """`start([args...], [args...])` starts several services at once (their imports overlap)
    and waits until all listen; all are stopped after the test."""
    started: list[ServiceProcess] = []

    def start(*arg_lists: list[str]) -> list[ServiceProcess]:
        services = [launch_reference_service(*args) for args in arg_lists]
        started.extend(services)
        return [wait_until_listening(service) for service in services]

    yield start
    # Signal all first, then wait: their shutdowns overlap.
    for service in started:
        if service.proc.poll() is None and not service.signalled:
            service.send_signal(signal.SIGTERM)
    for service in started:
        service.stop()


@pytest.fixture(scope="session")
def reference_service_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SQLite file behind `reference_service`."""
    return tmp_path_factory.mktemp("reference-service") / "research.db"


@pytest.fixture(scope="session")
def reference_service(reference_service_database: Path) -> Iterator[str]:
    """Base URL of one shared `perfkit serve --fast` (no variants, SQLite file
    `reference_service_database`)."""
    service = wait_until_listening(launch_reference_service(
        "--fast", "--database-url", f"sqlite+aiosqlite:///{reference_service_database}"))
    yield service.url
    service.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def private_redis(tmp_path: Any) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of our own, so pausing it (SIGSTOP) disturbs nobody else."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while subprocess.run(["redis-cli", "-p", str(port), "ping"],
                         capture_output=True).stdout.strip() != b"PONG":
        assert time.monotonic() < deadline, "redis-server does not answer"
        time.sleep(0.1)
    yield f"redis://127.0.0.1:{port}/0", proc
    proc.send_signal(signal.SIGCONT)
    proc.terminate()
    proc.wait(10)


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: the pages must be checked in a real browser. "
                    "Install Debian's chromium (apt-get install chromium); scripts/test.sh does.")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(),
                                              args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()
