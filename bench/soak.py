"""Soak of the reference service past its capacity while its backends fail: Redis paused (SIGSTOP
of a private redis-server) for a while, PostgreSQL restarted once. Prints what happened to the
backlog, the answers, the jobs and the service's memory; `--json PATH` writes the same figures
for a test to read.

    .venv/bin/python bench/soak.py --duration 1h                 # guide latencies (8 s a call)
    .venv/bin/python bench/soak.py --duration 2m --item-latency-ms 300   # the test's version
    .venv/bin/python bench/soak.py --duration 1h --fault-every 10m --postgres-fault outage

Creates arrive open-loop at `--overload` times what the research slots can finish (jobs of
`--items` products, names never repeated so the cache cannot absorb them), status polls and
health checks beside them. At 25 % of the run Redis is paused for `--redis-pause` (default
15 % of the run, at least 10 s); at 55 % PostgreSQL is restarted (`pg_ctlcluster
--skip-systemctl-redirect 15 main restart`: the machine's shared cluster, back up within
seconds), or with `--postgres-fault outage` only the soak's database is cut off for 2 s.
After the load the backlog is left to drain, then the jobs table is read.

What it reports: the most jobs ever queued against `--max-queued-jobs` and the 503s past it;
every answer by endpoint and status (a 500 is a finding); how long after PostgreSQL answered
again the first job finished `success`; jobs left pending or processing after the drain; the
service's RSS after warm-up (first and last quarter medians, least-squares slope in MB/h).
"""

import argparse
import asyncio
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from statistics import median
from typing import Any

import aiohttp
import asyncpg
import psutil

API = "/api/v1/research/products"
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
GUIDE_MEDIAN_MS = 8000.0
CONCURRENCY = 5


def parse_duration_s(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(s|m|h)?", text.strip())
    if not match:
        raise SystemExit(f"bad duration {text!r}: use 90s, 10m, 1h")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]


@dataclass
class Soak:
    url: str
    service: subprocess.Popen[str]
    redis: subprocess.Popen[bytes]
    database_url: str
    answers: Counter[tuple[str, int]] = field(default_factory=Counter)
    retry_after_missing: int = 0
    accepted: list[str] = field(default_factory=list)
    queued_samples: list[int] = field(default_factory=list)
    rss_samples: list[tuple[float, float]] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    pg_back_at: datetime | None = None
    load_done: bool = False
    # (what, started, ended) of every fault, in UTC, for the recovery read from the jobs.
    faults: list[tuple[str, datetime, datetime]] = field(default_factory=list)

    def note(self, what: str) -> None:
        elapsed_s = time.monotonic() - self.started_at
        self.events.append((elapsed_s, what))
        print(f"[{elapsed_s:7.1f} s] {what}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(directory)],
                            stdout=subprocess.DEVNULL)
    for _ in range(100):
        ping = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True)
        if ping.stdout.strip() == b"PONG":
            return proc, f"redis://127.0.0.1:{port}/0"
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the private redis-server did not start")


def start_service(args: argparse.Namespace, database_url: str, redis_url: str,
                  log_path: Path) -> tuple[subprocess.Popen[str], str]:
    latency = [] if args.item_latency_ms is None else [
        "--item-latency-ms", str(args.item_latency_ms)]
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "perfkit", "serve", "--port", "0", "--database-url",
         database_url, "--redis-url", redis_url, "--max-queued-jobs",
         str(args.max_queued_jobs), "--concurrency", str(CONCURRENCY), *latency],
        stdout=subprocess.PIPE, stderr=log, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"http://[\w.\-]+:\d+", line)
        if match:
            return proc, match.group(0)
    raise SystemExit(f"the service did not start; see {log_path}")


async def admin(statement: str) -> None:
    conn = await asyncpg.connect(POSTGRES_ADMIN, timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def postgres_ready() -> bool:
    try:
        conn = await asyncpg.connect(POSTGRES_ADMIN, timeout=2)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return False
    await conn.close()
    return True


async def restart_postgres(soak: Soak, fault: str) -> None:
    """`restart`: the machine's cluster. `outage`: what a restart looks like to the service,
    for its own database only (every connection dropped, new ones refused for 2 s, about what a
    restart takes here), so PostgreSQL tests beside it are not disturbed."""
    name = soak.database_url.rsplit("/", 1)[1]
    soak.note(f"PostgreSQL {fault}")
    if fault == "outage":
        await admin(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        await admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{name}'")
        await asyncio.sleep(2.0)
        await admin(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
    else:
        proc = await asyncio.create_subprocess_exec(
            "pg_ctlcluster", "--skip-systemctl-redirect", "15", "main", "restart",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        await proc.wait()
    while not await postgres_ready():
        await asyncio.sleep(0.2)
    soak.pg_back_at = datetime.now(UTC)
    soak.note("PostgreSQL answers again")


async def pause_redis(soak: Soak, pause_s: float) -> None:
    soak.note(f"Redis paused (SIGSTOP) for {pause_s:.0f} s")
    soak.redis.send_signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(pause_s)
    finally:
        soak.redis.send_signal(signal.SIGCONT)
    soak.note("Redis resumed")


async def inject(soak: Soak, what: str, fault: Any) -> None:
    started = datetime.now(UTC)
    await fault
    soak.faults.append((what, started, datetime.now(UTC)))


async def request(soak: Soak, session: aiohttp.ClientSession, name: str, method: str,
                  path: str, body: Any = None) -> tuple[int, Any]:
    try:
        async with session.request(method, soak.url + path, json=body) as response:
            status = response.status
            data = await response.json(content_type=None) if status in (200, 201) else None
            if status == 503 and "Retry-After" not in response.headers:
                soak.retry_after_missing += 1
    except (aiohttp.ClientError, TimeoutError):
        status, data = 0, None  # no answer at all: counted as status 0
    soak.answers[(name, status)] += 1
    return status, data


async def create_jobs(soak: Soak, session: aiohttp.ClientSession, rate_per_s: float,
                      items: int, until: float) -> None:
    tasks: set[asyncio.Task[None]] = set()

    async def one() -> None:
        body = {"items": [{"product_name": f"Soak {uuid.uuid4().hex}", "category": "soak",
                           "price_exact": 1000} for _ in range(items)]}
        status, data = await request(soak, session, "create", "POST", API, body)
        if status == 201:
            soak.accepted.append(data["job_id"])

    due = time.monotonic()
    while due < until:
        task = asyncio.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        due += 1.0 / rate_per_s
        await asyncio.sleep(max(0.0, due - time.monotonic()))
    if tasks:
        await asyncio.wait(tasks)


async def poll(soak: Soak, session: aiohttp.ClientSession, until: float) -> None:
    """Status reads of recent jobs (5/s) and a health check each second."""
    tick = 0
    while time.monotonic() < until:
        if soak.accepted:
            job_id = random.choice(soak.accepted[-50:])
            await request(soak, session, "status", "GET", f"{API}/{job_id}/status")
        if tick % 5 == 0:
            await request(soak, session, "health", "GET", "/api/v1/health")
        tick += 1
        await asyncio.sleep(0.2)


async def sample(soak: Soak, session: aiohttp.ClientSession) -> None:
    process = psutil.Process(soak.service.pid)
    last_rss_at = 0.0
    while not soak.load_done:
        try:
            async with session.get(soak.url + "/api/v1/metrics/application") as response:
                if response.status == 200:
                    soak.queued_samples.append(int((await response.json())["queued_jobs"]))
        except (aiohttp.ClientError, TimeoutError):
            pass
        if time.monotonic() - last_rss_at >= 5.0:
            last_rss_at = time.monotonic()
            soak.rss_samples.append((last_rss_at - soak.started_at,
                                     process.memory_info().rss / 1e6))
        await asyncio.sleep(1.0)


async def drain(soak: Soak, session: aiohttp.ClientSession, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    queued = -1
    while time.monotonic() < deadline:
        try:
            async with session.get(soak.url + "/api/v1/metrics/application") as response:
                queued = int((await response.json())["queued_jobs"])
        except (aiohttp.ClientError, TimeoutError, KeyError):
            queued = -1
        if queued == 0:
            return 0
        await asyncio.sleep(1.0)
    return queued


def slope_mb_per_h(samples: list[tuple[float, float]]) -> float | None:
    if len(samples) < 3:
        return None
    xs = [t / 3600.0 for t, _ in samples]
    ys = [rss for _, rss in samples]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


async def read_jobs(database_url: str, pg_back_at: datetime | None,
                    faults: list[tuple[str, datetime, datetime]]) -> dict[str, Any]:
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""), timeout=10)
    try:
        # Recovery: from a fault's end to the first job that finished `success` after it.
        recoveries = []
        for what, started, ended in faults:
            first = await conn.fetchval("SELECT min(completed_at) FROM jobs WHERE status = "
                                        "'success' AND completed_at > $1", ended)
            recoveries.append({
                "fault": what, "at": started.isoformat(timespec="seconds"),
                "for_s": round((ended - started).total_seconds(), 1),
                "first_success_after_s": None if first is None
                else round((first - ended).total_seconds(), 2)})
        statuses = {row[0]: row[1] for row in await conn.fetch(
            "SELECT status, count(*) FROM jobs GROUP BY status")}
        database_errors = await conn.fetchval(
            "SELECT count(*) FROM jobs WHERE status = 'error' AND message LIKE '%database%'")
        first_success = None if pg_back_at is None else await conn.fetchval(
            "SELECT min(completed_at) FROM jobs WHERE status = 'success' "
            "AND completed_at > $1", pg_back_at)
    finally:
        await conn.close()
    return {"statuses": statuses, "database_errors": int(database_errors),
            "recoveries": recoveries,
            "first_success_after_recovery_s": None if first_success is None
            else (first_success - pg_back_at).total_seconds()}


async def run_soak(soak: Soak, args: argparse.Namespace, duration_s: float) -> dict[str, Any]:
    median_s = (args.item_latency_ms or GUIDE_MEDIAN_MS) / 1000.0
    capacity_per_s = CONCURRENCY / (median_s * args.items)
    rate_per_s = capacity_per_s * args.overload
    pause_s = args.redis_pause_s or (
        min(60.0, parse_duration_s(args.fault_every) / 4) if args.fault_every
        else max(10.0, 0.15 * duration_s))
    soak.note(f"load: {rate_per_s:.2f} creates/s of {args.items} items against a capacity of "
              f"{capacity_per_s:.2f} jobs/s, for {duration_s:.0f} s")
    until = time.monotonic() + duration_s
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=200)) as session:
        sampler = asyncio.create_task(sample(soak, session))

        async def faults() -> None:
            if args.fault_every:
                # Redis paused, then PostgreSQL, in turn, every --fault-every.
                every_s = parse_duration_s(args.fault_every)
                for k in range(1, math.ceil(duration_s / every_s)):
                    await asyncio.sleep(max(0.0, k * every_s - (time.monotonic()
                                                                - soak.started_at)))
                    if k % 2:
                        await inject(soak, "Redis paused", pause_redis(soak, pause_s))
                    else:
                        await inject(soak, f"PostgreSQL {args.postgres_fault}",
                                     restart_postgres(soak, args.postgres_fault))
                return
            await asyncio.sleep(0.25 * duration_s)
            await inject(soak, "Redis paused", pause_redis(soak, pause_s))
            await asyncio.sleep(max(0.0, 0.55 * duration_s - (time.monotonic()
                                                               - soak.started_at)))
            await inject(soak, f"PostgreSQL {args.postgres_fault}",
                         restart_postgres(soak, args.postgres_fault))

        fault_task = asyncio.create_task(faults())
        await asyncio.gather(create_jobs(soak, session, rate_per_s, args.items, until),
                             poll(soak, session, until), fault_task)
        soak.note("load stopped; draining the backlog")
        backlog_s = args.max_queued_jobs * args.items * median_s / CONCURRENCY
        left = await drain(soak, session, backlog_s * 1.5 + 60.0)
        soak.note(f"drained (queued jobs left: {left})")
        soak.load_done = True
        await sampler
        async with session.get(soak.url + "/api/v1/metrics/application") as response:
            app = await response.json()
    jobs = await read_jobs(soak.database_url, soak.pg_back_at, soak.faults)
    warm = [s for s in soak.rss_samples if s[0] >= 0.2 * duration_s]
    quarter = max(1, len(warm) // 4)
    return {
        "duration_s": duration_s,
        "item_latency_ms": args.item_latency_ms or GUIDE_MEDIAN_MS,
        "items_per_job": args.items,
        "capacity_jobs_per_s": capacity_per_s,
        "offered_jobs_per_s": rate_per_s,
        "max_queued_jobs": args.max_queued_jobs,
        "peak_queued_jobs": max(soak.queued_samples, default=None),
        "answers": {f"{name} {status}": count
                    for (name, status), count in sorted(soak.answers.items())},
        "server_errors": sum(count for (_, status), count in soak.answers.items()
                             if status >= 500 and status != 503),
        "no_answer": sum(count for (_, status), count in soak.answers.items() if status == 0),
        "rejected_503": soak.answers[("create", 503)],
        "retry_after_missing": soak.retry_after_missing,
        "accepted_jobs": len(soak.accepted),
        "jobs": jobs["statuses"],
        "left_active": sum(jobs["statuses"].get(s, 0) for s in ("pending", "processing")),
        "jobs_failed_by_database": jobs["database_errors"],
        "first_success_after_recovery_s": jobs["first_success_after_recovery_s"],
        "recoveries": jobs["recoveries"],
        "cache_errors": app.get("cache_errors"),
        "rss_first_quarter_mb": median(s[1] for s in warm[:quarter]) if warm else None,
        "rss_last_quarter_mb": median(s[1] for s in warm[-quarter:]) if warm else None,
        "rss_peak_mb": max((s[1] for s in soak.rss_samples), default=None),
        "rss_slope_mb_per_h": slope_mb_per_h(warm),
        "events": [f"{at:.1f} s {what}" for at, what in soak.events],
    }


def print_report(result: dict[str, Any]) -> None:
    print(f"\nsoak: {result['duration_s']:.0f} s, {result['items_per_job']}-item jobs, "
          f"{result['item_latency_ms']:.0f} ms per call, offered "
          f"{result['offered_jobs_per_s']:.2f} jobs/s against a capacity of "
          f"{result['capacity_jobs_per_s']:.2f}")
    rows = [
        ("peak queued jobs / cap", f"{result['peak_queued_jobs']} / {result['max_queued_jobs']}"),
        ("creates accepted / 503", f"{result['accepted_jobs']} / {result['rejected_503']}"),
        ("503 without Retry-After", result["retry_after_missing"]),
        ("answers 5xx other than 503", result["server_errors"]),
        ("requests with no answer", result["no_answer"]),
        ("jobs by status", result["jobs"]),
        ("jobs failed by the database", result["jobs_failed_by_database"]),
        ("first success after PostgreSQL was back (s)",
         result["first_success_after_recovery_s"]),
        ("left pending or processing", result["left_active"]),
        ("cache lookups without Redis", result["cache_errors"]),
        ("RSS after warm-up, first / last quarter (MB)",
         f"{result['rss_first_quarter_mb']:.1f} / {result['rss_last_quarter_mb']:.1f}"),
        ("RSS slope (MB/h), peak (MB)",
         f"{result['rss_slope_mb_per_h']:.1f}, {result['rss_peak_mb']:.1f}"),
    ]
    for name, value in rows:
        print(f"  {name:<46} {value}")
    for fault in result["recoveries"]:
        print(f"  fault at {fault['at']}: {fault['fault']} for {fault['for_s']} s, first job "
              f"success {fault['first_success_after_s']} s after it ended")
    print("  answers: " + ", ".join(f"{key}: {count}" for key, count in result["answers"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", default="10m", help="90s, 10m, 1h (default 10m)")
    parser.add_argument("--item-latency-ms", type=float,
                        help="simulated LLM median per call (default: the guide's 8000 ms)")
    parser.add_argument("--items", type=int, default=3, help="products per job")
    parser.add_argument("--overload", type=float, default=2.0,
                        help="offered creates over what the slots finish")
    parser.add_argument("--max-queued-jobs", type=int, default=40)
    parser.add_argument("--redis-pause-s", type=float, help="default 15%% of the run, >= 10 s")
    parser.add_argument("--postgres-fault", choices=("restart", "outage"), default="restart",
                        help="restart the machine's cluster, or cut off this soak's database "
                             "only (default restart)")
    parser.add_argument("--fault-every", help="a fault every DURATION instead (10m): Redis "
                        "paused (a quarter of it, at most 60 s) and PostgreSQL in turn")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    duration_s = parse_duration_s(args.duration)
    # Stopped by SIGTERM (or SIGINT, which a background shell ignores), the cleanup below
    # still runs: the service, the private Redis, the database, the cluster left up.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    for tool in ("redis-server", "redis-cli", "pg_ctlcluster"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed")
    workdir = Path(tempfile.mkdtemp(prefix="perfkit-soak-"))
    database = f"perfkit_soak_{uuid.uuid4().hex[:12]}"
    asyncio.run(admin(f'CREATE DATABASE "{database}"'))
    database_url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}"
    redis, redis_url = start_redis(workdir)
    service = None
    try:
        service, url = start_service(args, database_url, redis_url, workdir / "service.log")
        soak = Soak(url, service, redis, database_url)
        result = asyncio.run(run_soak(soak, args, duration_s))
        service.send_signal(signal.SIGTERM)
        service.wait(60)
        log_text = (workdir / "service.log").read_text()
        result["service_tracebacks"] = log_text.count("Traceback")
        result["service_exit_code"] = service.returncode
        print_report(result)
        print(f"  service tracebacks in its log: {result['service_tracebacks']}, exit code "
              f"{result['service_exit_code']}")
        if args.json:
            args.json.write_text(json.dumps(result, indent=2, default=str))
            shutil.copy(workdir / "service.log", args.json.with_suffix(".log"))
    finally:
        if service is not None and service.poll() is None:
            service.kill()
            service.wait()
        redis.send_signal(signal.SIGCONT)
        redis.terminate()
        redis.wait(10)
        # The shared cluster must be up whatever happened above.
        if not asyncio.run(postgres_ready()):
            subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main",
                            "start"], check=False)
        asyncio.run(admin(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true'))
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
