"""The reference service's own latency for health, create, status and results at a fixed number
of concurrent clients (closed loop, aiohttp on 127.0.0.1), with exact HDR percentiles.

    .venv/bin/python bench/service_latency.py [--clients 50] [--requests 2000] [--max-s 20]
        [--items 1] [--serve-arg=--variant --serve-arg=n_plus_one] [--serve-arg=--extra-latency
        --serve-arg=results=20ms]
    .venv/bin/python bench/service_latency.py --guide-batches 3


Starts `python -m perfkit serve --port 0 --fast` (plus any --serve-arg), measures each endpoint
in turn (`--requests` per endpoint, at most `--max-s` seconds each), prints a table and stops
the service. Status and results are read for jobs created in the create phase, round robin;
create posts `--items` new products per job. The client shares the machine (and its cores)
with the service, so figures are of this machine under that contention.
"""

import argparse
import asyncio
import itertools
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import psutil

from perfkit.analysis.stats import max_ms, new_histogram, percentile_ms, record_ms

API = "/api/v1/research/products"


def start_service(serve_args: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "perfkit", "serve", "--port", "0",
                             *serve_args], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        match = re.search(r"http://[\w.\-]+:\d+", line)
        if match:
            return proc, match.group(0)
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit("perfkit serve did not print its URL")


async def measure(session: aiohttp.ClientSession, clients: int, requests: int, max_s: float,
                  send: Callable[[aiohttp.ClientSession], Any],
                  service: psutil.Process) -> dict[str, Any]:
    hist = new_histogram()
    errors = 0
    remaining = itertools.count()
    deadline = time.monotonic() + max_s

    async def client() -> None:
        nonlocal errors
        while next(remaining) < requests and time.monotonic() < deadline:
            started_at = time.perf_counter()
            try:
                ok = await send(session)
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            record_ms(hist, (time.perf_counter() - started_at) * 1000.0)
            errors += 0 if ok else 1

    cpu_before = service.cpu_times()
    started_at = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed_s = time.perf_counter() - started_at
    cpu_after = service.cpu_times()
    count = hist.get_total_count()
    # The service's own CPU per request does not depend on how busy the machine is; on a
    # loaded machine it is the figure to compare (1000 / cpu_ms ~ requests per second per core).
    cpu_s = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    return {"count": count, "errors": errors, "rps": count / elapsed_s,
            "cpu_ms": cpu_s * 1000.0 / count if count else None,
            **{f"p{p}_ms": percentile_ms(hist, p) for p in (50, 95, 99)},
            "max_ms": max_ms(hist)}


async def run_bench(url: str, clients: int, requests: int, max_s: float, items: int,
                    service: psutil.Process) -> dict[str, dict[str, Any]]:
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=30)
    job_ids: list[str] = []
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:

        async def health(s: aiohttp.ClientSession) -> bool:
            async with s.get("/api/v1/health") as response:
                await response.read()
                return response.status == 200

        async def create(s: aiohttp.ClientSession) -> bool:
            body = {"items": [{"product_name": f"Bench item {uuid.uuid4().hex}",
                               "category": "bench", "price_exact": 1000}
                              for _ in range(items)]}
            async with s.post(API, json=body) as response:
                payload = await response.json()
                if response.status == 201:
                    job_ids.append(payload["job_id"])
                return response.status == 201

        def reader(suffix: str) -> Callable[[aiohttp.ClientSession], Any]:
            ids: Iterator[str] = itertools.cycle(job_ids)

            async def read(s: aiohttp.ClientSession) -> bool:
                async with s.get(f"{API}/{next(ids)}{suffix}") as response:
                    await response.read()
                    return response.status == 200
            return read

        table = {"GET /api/v1/health": await measure(session, clients, requests, max_s, health,
                                                     service),
                 "POST /api/v1/research/products": await measure(session, clients, requests,
                                                                 max_s, create, service)}
        # Let the created jobs finish so the read phases do not compete with research.
        await asyncio.sleep(3)
        table["GET /api/v1/research/products/{id}/status"] = await measure(
            session, clients, requests, max_s, reader("/status"), service)
        table["GET /api/v1/research/products/{id}"] = await measure(
            session, clients, requests, max_s, reader(""), service)
    return table


async def time_guide_batches(url: str, batches: int) -> list[float]:
    """Create → finished of 10-product jobs, one after another, on the default (guide)
    profile: the figure the guide quotes as 15-30 s on average."""
    durations_s = []
    async with aiohttp.ClientSession(url) as session:
        for _ in range(batches):
            body = {"items": [{"product_name": f"Guide item {uuid.uuid4().hex}",
                               "category": "bench", "price_exact": 1000} for _ in range(10)]}
            started_at = time.perf_counter()
            async with session.post(API, json=body) as response:
                job_id = (await response.json())["job_id"]
            while True:
                await asyncio.sleep(0.25)
                async with session.get(f"{API}/{job_id}/status") as response:
                    if (await response.json())["status"] not in ("pending", "processing"):
                        break
            durations_s.append(time.perf_counter() - started_at)
    return durations_s


def format_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:8.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=2000, help="per endpoint")
    parser.add_argument("--max-s", type=float, default=20.0, help="per endpoint")
    parser.add_argument("--items", type=int, default=1, help="products per created job")
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="extra argument for perfkit serve (repeatable)")
    parser.add_argument("--guide-batches", type=int, default=0,
                        help="instead: time this many 10-product jobs on the guide profile")
    args = parser.parse_args()
    if args.guide_batches:
        proc, url = start_service(args.serve_arg)
        try:
            durations_s = asyncio.run(time_guide_batches(url, args.guide_batches))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        print(f"perfkit serve {' '.join(args.serve_arg)} | 10-product batches, one at a time")
        print("durations_s: " + ", ".join(f"{d:.1f}" for d in durations_s))
        print(f"mean_s {sum(durations_s) / len(durations_s):.1f}  min_s {min(durations_s):.1f}"
              f"  max_s {max(durations_s):.1f}")
        return
    proc, url = start_service(["--fast", *args.serve_arg])
    try:
        table = asyncio.run(run_bench(url, args.clients, args.requests, args.max_s, args.items,
                                      psutil.Process(proc.pid)))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    load1, _, _ = os.getloadavg()
    print(f"perfkit serve --fast {' '.join(args.serve_arg)} | {args.clients} concurrent clients,"
          f" {args.items} item(s) per create, {os.cpu_count()} cores, load avg {load1:.1f}")
    print(f"{'endpoint':44} {'count':>6} {'err':>4} {'rps':>7} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'p99 ms':>8} {'max ms':>8} {'cpu ms/req':>10}")
    for name, row in table.items():
        print(f"{name:44} {row['count']:6d} {row['errors']:4d} {row['rps']:7.1f} "
              f"{format_ms(row['p50_ms'])} {format_ms(row['p95_ms'])} "
              f"{format_ms(row['p99_ms'])} {format_ms(row['max_ms'])} "
              f"{format_ms(row['cpu_ms']):>10}")


if __name__ == "__main__":
    main()
