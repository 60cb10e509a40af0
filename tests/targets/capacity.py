"""A target with a known capacity: a fixed pool of workers in front of a FIFO queue.

Each request waits for one of `--workers` slots and holds it for `--service-ms`, so the target
serves at most workers × 1000 / service-ms requests per second; beyond that the queue, and
with it the latency, grows without bound (a thread pool, a connection pool, a worker pool).
`--slow-from S --slow-factor F` multiplies the service time by F from S seconds after the
first request on: a target that becomes slow mid-run. Prints its base URL once it listens.

    python tests/targets/capacity.py --workers 4 --service-ms 40     # 100 req/s
"""

import argparse
import asyncio
import time

from aiohttp import web
from serving import run_app


def build_app(workers: int, service_ms: float, slow_from_s: float | None,
              slow_factor: float) -> web.Application:
    first: list[float] = []

    async def answer(request: web.Request) -> web.Response:
        now = time.monotonic()
        if not first:
            first.append(now)
        await request.read()
        slots: asyncio.Semaphore = request.app["slots"]
        async with slots:  # asyncio.Semaphore wakes its waiters in FIFO order
            service_s = service_ms / 1000.0
            if slow_from_s is not None and time.monotonic() - first[0] >= slow_from_s:
                service_s *= slow_factor
            await asyncio.sleep(service_s)
        return web.Response(text="ok\n")

    async def on_startup(app: web.Application) -> None:
        app["slots"] = asyncio.Semaphore(workers)  # made inside the serving loop

    app = web.Application()
    app.on_startup.append(on_startup)
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--service-ms", type=float, default=40.0)
    parser.add_argument("--slow-from", type=float, default=None)
    parser.add_argument("--slow-factor", type=float, default=1.0)
    args = parser.parse_args()
    run_app(build_app(args.workers, args.service_ms, args.slow_from, args.slow_factor), args.port)


if __name__ == "__main__":
    main()
