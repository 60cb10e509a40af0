"""Job completion (create -> finished) with research in Celery workers: the guide's tuning
(prefetch multiplier 1, acks_late) against its mistake, the `high_prefetch` variant (16), on a
burst of short jobs with long ones among them.

    .venv/bin/python bench/service_celery.py [--broker redis://127.0.0.1:6379/3]
        [--jobs 40] [--workers 2] [--item-latency-ms 100]

Each arm starts the reference service (`--fast --queue celery --concurrency 1`, so a job's
items run one after another and a 10-item job is ten times as long as a 1-item one), posts
`--jobs` jobs at once (every fourth with 10 items, the rest with 1), polls each job's status
until it finishes and prints p50/p99/max of create -> finished. With a high prefetch, a worker
node reserves many tasks while it runs a long one; a node that has drained its own share sits
idle while jobs wait inside the busy one, and the queue the broker reports looks empty.
"""

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import aiohttp

API = "/api/v1/research/products"
SERVE = ("import json, sys\nfrom perfkit.reference.server import serve_forever\n"
         "serve_forever(say=lambda line: print(line, flush=True), **json.loads(sys.argv[1]))")


def start_service(options: dict[str, Any]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", SERVE, json.dumps(options)],
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"http://[\w.\-]+:\d+", line)
        if match:
            return proc, match.group(0)
    proc.kill()
    raise SystemExit("the reference service did not print its URL")


async def run_burst(url: str, jobs: int, timeout_s: float) -> dict[str, Any]:
    async with aiohttp.ClientSession(url) as session:

        async def one_job(n: int) -> float:
            size = 10 if n % 4 == 0 else 1
            body = {"items": [{"product_name": f"Celery bench {uuid.uuid4().hex}",
                               "category": "bench", "price_exact": 1000} for _ in range(size)]}
            started_at = time.perf_counter()
            async with session.post(API, json=body) as response:
                job_id = (await response.json())["job_id"]
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                async with session.get(f"{API}/{job_id}/status") as response:
                    if (await response.json())["status"] not in ("pending", "processing"):
                        return time.perf_counter() - started_at
                await asyncio.sleep(0.02)
            raise SystemExit(f"job {job_id} did not finish within {timeout_s} s")

        finished = asyncio.Event()

        async def peak_depth() -> int:
            peak = 0
            for _ in range(int(timeout_s / 0.05)):
                if finished.is_set():
                    break
                async with session.get("/api/v1/metrics/application") as response:
                    peak = max(peak, (await response.json())["queue_depth"] or 0)
                await asyncio.sleep(0.05)
            return peak

        depth = asyncio.create_task(peak_depth())
        durations_s = sorted(await asyncio.gather(*(one_job(n) for n in range(jobs))))
        finished.set()
        peak = await depth
    return {"p50_s": durations_s[len(durations_s) // 2],
            "p99_s": durations_s[min(len(durations_s) - 1, int(len(durations_s) * 0.99))],
            "max_s": durations_s[-1], "peak_queue_depth": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/3")
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--item-latency-ms", type=float, default=100.0)
    parser.add_argument("--timeout-s", type=float, default=120.0, help="per job")
    args = parser.parse_args()
    rows = {}
    for arm, variants in (("guide (prefetch 1)", []), ("high_prefetch (16)", ["high_prefetch"])):
        proc, url = start_service({
            "fast": True, "queue": "celery", "broker": args.broker, "variants": variants,
            "celery_workers": args.workers, "concurrency": 1,
            "item_latency_ms": args.item_latency_ms, "latency_sigma": 0,
            "queue_prefix": f"perfkit-bench-{uuid.uuid4().hex[:8]}"})
        try:
            rows[arm] = asyncio.run(run_burst(url, args.jobs, args.timeout_s))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    print(f"{args.jobs} jobs at once (every 4th 10 items, else 1), {args.workers} celery "
          f"workers, {args.item_latency_ms:g} ms per item, broker {args.broker}")
    print(f"{'arm':20} {'p50 s':>7} {'p99 s':>7} {'max s':>7} {'peak queue depth':>17}")
    for arm, row in rows.items():
        print(f"{arm:20} {row['p50_s']:7.2f} {row['p99_s']:7.2f} {row['max_s']:7.2f} "
              f"{row['peak_queue_depth'] if row['peak_queue_depth'] is not None else '-':>17}")


if __name__ == "__main__":
    main()
