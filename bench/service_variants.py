"""The research side of the reference service's variants: a burst of 10-item jobs whose products
repeat (so the cache has something to hit), per variant: job completion p50/p99 and the
service's CPU per researched item. The read-side variants (n_plus_one, no_index) and
unbounded's create p99 are measured by bench/service_floor.py.

    .venv/bin/python bench/service_variants.py [--jobs 30] [--variant no_cache ...]
"""

import argparse
import asyncio
import sys
import time
import uuid
from typing import Any

import aiohttp
import psutil
from service_floor import API, start_process, stop_process


async def run_burst(url: str, jobs: int, names: list[str]) -> list[float]:
    async with aiohttp.ClientSession(url) as session:

        async def one_job(n: int) -> float:
            body = {"items": [{"product_name": names[(n * 3 + i) % len(names)],
                               "category": "bench", "price_exact": 1000} for i in range(10)]}
            started_at = time.perf_counter()
            async with session.post(API, json=body) as response:
                job_id = (await response.json())["job_id"]
            for _ in range(6000):  # at most 120 s
                await asyncio.sleep(0.02)
                async with session.get(f"{API}/{job_id}/status") as response:
                    if (await response.json())["status"] not in ("pending", "processing"):
                        return time.perf_counter() - started_at
            raise SystemExit(f"job {job_id} did not finish")

        return sorted(await asyncio.gather(*(one_job(n) for n in range(jobs))))


def measure(variant: str | None, jobs: int) -> dict[str, Any]:
    args = ["--variant", variant] if variant else []
    proc, url = start_process([sys.executable, "-m", "perfkit", "serve", "--port", "0", "--fast",
                               *args])
    try:
        service = psutil.Process(proc.pid)
        cpu_before = service.cpu_times()
        names = [f"Variant item {n} {uuid.uuid4().hex[:6]}" for n in range(150)]
        durations_s = asyncio.run(run_burst(url, jobs, names))
        cpu_after = service.cpu_times()
    finally:
        stop_process(proc)
    cpu_s = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    return {"p50_s": durations_s[len(durations_s) // 2], "p99_s": durations_s[-1],
            "cpu_ms_per_item": cpu_s * 1000.0 / (jobs * 10)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--variant", action="append",
                        help="default: no_cache, new_client_per_call, unbounded")
    args = parser.parse_args()
    variants = args.variant or ["no_cache", "new_client_per_call", "unbounded"]
    rows = {name or "default": measure(name, args.jobs) for name in [None, *variants]}
    print(f"{args.jobs} 10-item jobs at once, 150 distinct products, perfkit serve --fast")
    print(f"{'variant':22} {'p50 s':>7} {'p99 s':>7} {'CPU ms/item':>12}")
    for name, row in rows.items():
        print(f"{name:22} {row['p50_s']:7.2f} {row['p99_s']:7.2f} {row['cpu_ms_per_item']:12.2f}")


if __name__ == "__main__":
    main()
