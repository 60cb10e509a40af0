"""What the reference service's own instrumentation costs per request, in microseconds of CPU:
the timing middleware around a trivial ASGI app (with its Prometheus histogram), the
histogram update alone, and one timed statement's bookkeeping.

    .venv/bin/python bench/service_middleware.py [--requests 100000]
"""

import argparse
import asyncio
import time
from typing import Any

from perfkit.reference.app import TimingMiddleware
from perfkit.reference.metrics import Metrics, record_query, record_request
from perfkit.reference.settings import build_service_settings


class Route:
    path = "/api/v1/research/products/{job_id}/status"


async def bare_app(scope: Any, receive: Any, send: Any) -> None:
    scope["route"] = Route
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def time_asgi(app: Any, metrics: Metrics | None, requests: int) -> float:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        pass

    state = {"metrics": metrics} if metrics else {}
    started_at = time.process_time()
    for _ in range(requests):
        await app({"type": "http", "method": "GET", "path": "/x", "state": state}, receive, send)
    return (time.process_time() - started_at) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100_000)
    args = parser.parse_args()
    settings = build_service_settings(fast=True)
    metrics = Metrics(settings)
    bare_us = asyncio.run(time_asgi(bare_app, None, args.requests))
    wrapped_us = asyncio.run(time_asgi(TimingMiddleware(bare_app, settings), metrics,
                                       args.requests))
    started_at = time.process_time()
    for _ in range(args.requests):
        record_request(metrics, "GET /api/v1/health", 200, 0.001)
    request_us = (time.process_time() - started_at) / args.requests * 1e6
    started_at = time.process_time()
    for _ in range(args.requests):
        record_query(metrics, "SELECT 1", 0.0001)
    query_us = (time.process_time() - started_at) / args.requests * 1e6
    print(f"CPU per request, {args.requests} requests")
    print(f"{'timing middleware (incl. histogram)':40} {wrapped_us - bare_us:6.1f} us")
    print(f"{'record_request (counters + histogram)':40} {request_us:6.1f} us")
    print(f"{'record_query (per statement)':40} {query_us:6.1f} us")


if __name__ == "__main__":
    main()
