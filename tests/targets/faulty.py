"""A target with scripted faults, for the runner's tests: a fixed delay, one stall, or a crash.

    python tests/targets/faulty.py --delay-ms 5 --stall-at 3 --stall-s 2 --die-after 6

Times count from the first request. During the stall every request (new and in flight) is
held until the stall ends, as a stop-the-world pause or a saturated pool would. `--die-after`
exits the process abruptly (exit code 3). `GET /__count` tells how many other requests it
served, in all and per path. Prints its base URL once it listens.
"""

import asyncio
import os
import time

from aiohttp import web
from serving import run_app, target_arguments


def build_app(delay_ms: float, stall_at: float | None, stall_s: float,
              die_after: float | None) -> web.Application:
    first: list[float] = []
    served: dict = {"requests": 0, "paths": {}}

    async def count(request: web.Request) -> web.Response:
        return web.json_response(served)

    async def answer(request: web.Request) -> web.Response:
        served["requests"] += 1
        served["paths"][request.path] = served["paths"].get(request.path, 0) + 1
        now = time.monotonic()
        if not first:
            first.append(now)
        since = now - first[0]
        if die_after is not None and since >= die_after:
            os._exit(3)
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000.0)
        if stall_at is not None:
            stall_end = stall_at + stall_s
            since = time.monotonic() - first[0]
            if stall_at <= since < stall_end:
                await asyncio.sleep(stall_end - since)
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/__count", count)
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def main() -> None:
    parser = target_arguments(__doc__)
    parser.add_argument("--stall-at", type=float, default=None)
    parser.add_argument("--stall-s", type=float, default=0.0)
    parser.add_argument("--die-after", type=float, default=None)
    args = parser.parse_args()
    run_app(build_app(args.delay_ms, args.stall_at, args.stall_s, args.die_after), args.port,
            args.host)


if __name__ == "__main__":
    main()
