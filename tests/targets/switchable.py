"""A tiny HTTP target whose latency can be switched mid-run, for tests of what a run shows live.

Every request waits the current delay and answers 200, except the control URL: `POST
/control?delay_ms=N` sets the delay from then on (and answers it), so a test can slow the
target down at a moment of its choosing. Prints its base URL on stdout once it listens.

    python tests/targets/switchable.py --delay-ms 5 --port 0
"""

import asyncio

from aiohttp import web
from serving import run_app, target_arguments


def build_app(delay_ms: float) -> web.Application:
    current = {"delay_ms": delay_ms}

    async def control(request: web.Request) -> web.Response:
        current["delay_ms"] = float(request.query["delay_ms"])
        return web.Response(text=f"delay_ms={current['delay_ms']:g}\n")

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        if current["delay_ms"] > 0:
            await asyncio.sleep(current["delay_ms"] / 1000.0)
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_post("/control", control)
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def main() -> None:
    parser = target_arguments(__doc__)
    args = parser.parse_args()
    run_app(build_app(args.delay_ms), args.port, args.host)


if __name__ == "__main__":
    main()
