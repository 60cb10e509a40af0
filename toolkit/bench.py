"""The quick benchmark: one URL, a fixed number of concurrent aiohttp clients, exact percentiles.

What `ab` and `wrk` give, closed-loop: each of `concurrency` workers sends its next request as
soon as its previous one has answered, so latency is measured from the actual send (a stalled
server lowers the request rate instead of showing its queueing; use `perfkit load --rate` for
an open load). Every request, failed or not, goes into one HDR histogram. A request fails on a
non-2xx answer, a timeout or a connection error; more failures than `--max-failures` allows
make the exit code 1, so a script or CI job cannot take a benchmark of errors for a result.
"""

import asyncio
import logging
import math
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from hdrh.histogram import HdrHistogram

from . import rundir
from .analysis import stats
from .errors import ConfigError, TargetError

log = logging.getLogger(__name__)

# Hard bounds, so a typo cannot start an endless or runaway benchmark.
MAX_REQUESTS = 10_000_000
MAX_DURATION_S = 3600.0
MAX_CONCURRENCY = 10_000


@dataclass(frozen=True)
class BenchSettings:
    url: str
    concurrency: int = 1
    requests: int | None = None
    duration_s: float | None = None
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    timeout_s: float = 30.0
    json_path: Path | None = None
    max_failures: int = 0
    max_failures_percent: float | None = None  # when given, replaces max_failures


@dataclass
class BenchResult:
    settings: BenchSettings
    hist: HdrHistogram = field(default_factory=stats.new_histogram)
    count: int = 0
    failures: int = 0
    elapsed_s: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def name(self) -> str:
        """The request name as a run directory spells it: `METHOD /path`."""
        return f"{self.settings.method} {urlsplit(self.settings.url).path or '/'}"


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise ConfigError(f"bad header {text!r}: use 'Name: value'")
    return name.strip(), value.strip()


def parse_max_failures(text: str) -> tuple[int, float | None]:
    """`--max-failures`: a count of requests (`5`) or a share of them (`1%`), as
    (max_failures, max_failures_percent)."""
    value = text.strip()
    try:
        if value.endswith("%"):
            percent = float(value[:-1])
            if 0 <= percent <= 100:
                return 0, percent
        elif int(value) >= 0:
            return int(value), None
    except ValueError:
        pass
    raise ConfigError(f"bad --max-failures {text!r}: use a count (5) or a percentage (1%)")


def check_bench_settings(settings: BenchSettings) -> None:
    parts = urlsplit(settings.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"bad URL {settings.url!r}: use http://host[:port]/path")
    if settings.requests is None and settings.duration_s is None:
        raise ConfigError("give -n REQUESTS or -d DURATION")
    if settings.requests is not None and not 1 <= settings.requests <= MAX_REQUESTS:
        raise ConfigError(f"-n must be between 1 and {MAX_REQUESTS}")
    if settings.duration_s is not None and not 0 < settings.duration_s <= MAX_DURATION_S:
        raise ConfigError(f"-d must be more than 0 and at most {MAX_DURATION_S:.0f} s")
    if not 1 <= settings.concurrency <= MAX_CONCURRENCY:
        raise ConfigError(f"-c must be between 1 and {MAX_CONCURRENCY}")
    if settings.timeout_s <= 0:
        raise ConfigError("--timeout must be more than 0")
    if settings.max_failures < 0 or not 0 <= (settings.max_failures_percent or 0) <= 100:
        raise ConfigError("--max-failures must be a count from 0 or a percentage up to 100%")


async def _check_reachable(url: str, timeout_s: float) -> None:
    """Open (and close) one TCP connection, so an unreachable target is one clear error
    and not N identical failures; no HTTP request is sent, so the target's counts stay exact."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, port),
                                           timeout=min(timeout_s, 10.0))
    except (TimeoutError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, socket.gaierror):
            reason = f"cannot resolve {parts.hostname}"
        raise TargetError(f"{url} is unreachable: {reason}") from exc
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass


async def _measure(settings: BenchSettings) -> BenchResult:
    await _check_reachable(settings.url, settings.timeout_s)
    result = BenchResult(settings)
    remaining = [settings.requests if settings.requests is not None else MAX_REQUESTS]
    started = time.perf_counter()
    deadline = started + (settings.duration_s if settings.duration_s is not None
                          else MAX_DURATION_S)
    timeout = aiohttp.ClientTimeout(total=settings.timeout_s)
    connector = aiohttp.TCPConnector(limit=settings.concurrency, limit_per_host=0)
    headers = dict(settings.headers)

    async def work(session: aiohttp.ClientSession) -> None:
        # Single-threaded event loop: the check-and-decrement of `remaining` cannot race.
        while remaining[0] > 0 and time.perf_counter() < deadline:
            remaining[0] -= 1
            sent = time.perf_counter()
            error = None
            try:
                async with session.request(settings.method, settings.url, data=settings.body,
                                           headers=headers) as response:
                    await response.read()
                    if not 200 <= response.status < 300:
                        error = f"HTTP {response.status}"
            except TimeoutError:
                error = f"timeout after {settings.timeout_s:g} s"
            except aiohttp.ClientError as exc:
                error = f"{type(exc).__name__}: {exc}"[:200]
            stats.record_ms(result.hist, (time.perf_counter() - sent) * 1000.0)
            result.count += 1
            if error is not None:
                result.failures += 1
                result.errors[error] += 1

    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     auto_decompress=False) as session:
        await asyncio.gather(*(work(session) for _ in range(settings.concurrency)))
    result.elapsed_s = time.perf_counter() - started
    return result


def measure_bench(settings: BenchSettings) -> BenchResult:
    check_bench_settings(settings)
    return asyncio.run(_measure(settings))


def allowed_failures(result: BenchResult) -> float:
    settings = result.settings
    if settings.max_failures_percent is not None:
        return result.count * settings.max_failures_percent / 100.0
    return float(settings.max_failures)


def bench_exit_code(result: BenchResult) -> int:
    """1 when more requests failed than --max-failures allows, else 0."""
    return 1 if result.failures > allowed_failures(result) else 0


def _allowance(settings: BenchSettings) -> str:
    if settings.max_failures_percent is not None:
        return f"{settings.max_failures_percent:g} %"
    return str(settings.max_failures)


def summarize_bench(result: BenchResult) -> dict[str, Any]:
    """The summary.json shape of a run, so scripts and `perfkit compare` read both alike."""
    endpoint: dict[str, Any] = {
        "count": result.count,
        "failures": result.failures,
        "rps": result.count / result.elapsed_s if result.elapsed_s > 0 else None,
        "error_rate_percent": 100.0 * result.failures / result.count if result.count else None,
        **stats.summarize_histogram(result.hist),
        "min_ms": stats.min_ms(result.hist),
    }
    settings = result.settings
    return {
        "verdict": None,
        "endpoints": {result.name: endpoint},
        "kpis": [],
        "bench": {"url": settings.url, "method": settings.method,
                  "concurrency": settings.concurrency, "requests": settings.requests,
                  "duration_s": settings.duration_s, "elapsed_s": result.elapsed_s,
                  "successes": result.count - result.failures,
                  "errors": dict(result.errors.most_common()),
                  "failures_allowed": allowed_failures(result),
                  "exit_code": bench_exit_code(result)},
    }


def _ms(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def format_bench(result: BenchResult) -> str:
    endpoint = summarize_bench(result)["endpoints"][result.name]
    successes = result.count - result.failures
    rate = f"{100.0 * successes / result.count:.2f} %" if result.count else "-"
    rps = endpoint["rps"]
    lines = [
        f"{result.settings.method} {result.settings.url}  "
        f"concurrency {result.settings.concurrency}, {result.elapsed_s:.2f} s",
        f"  requests      {result.count}",
        f"  successes     {successes}",
        f"  success rate  {rate}",
        f"  rps           {'-' if rps is None else f'{rps:.1f}'}",
        f"  mean          {_ms(endpoint['mean_ms'])} ms",
        "  latency ms    " + "  ".join(
            f"{label} {_ms(endpoint[key])}" for label, key in
            [("min", "min_ms"), ("p50", "p50_ms"), ("p90", "p90_ms"), ("p95", "p95_ms"),
             ("p99", "p99_ms"), ("max", "max_ms")]),
    ]
    for error, count in result.errors.most_common(5):
        lines.append(f"  failed {count:>7}  {error}")
    if bench_exit_code(result):
        lines.append(f"  FAILED: {result.failures} of {result.count} requests failed, "
                     f"more than --max-failures {_allowance(result.settings)} allows")
    elif result.failures:
        lines.append(f"  {result.failures} of {result.count} requests failed, within "
                     f"--max-failures {_allowance(result.settings)}")
    return "\n".join(lines)


def run_bench(settings: BenchSettings, say: Callable[[str], None]) -> BenchResult:
    """The `perfkit bench` command: measure, print, and write --json if asked."""
    result = measure_bench(settings)
    say(format_bench(result))
    if settings.json_path is not None:
        rundir.write_json(settings.json_path, summarize_bench(result))
        say(f"  wrote {settings.json_path}")
    return result
