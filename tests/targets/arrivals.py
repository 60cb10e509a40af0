"""A target that notes when each request arrives, to see how a load generator spreads them.

Every request, whatever its path, is noted on arrival (its wall-clock time, time.time(): on
one machine the generator's clock) and answered 200 after `--delay-ms`. `GET /__arrivals`
answers {PATH: [t, ...]} for every path requested, so a load generator's own probes of other
paths (a health check, a metrics scraper) stay apart. Prints its base URL once it listens.

    python tests/targets/arrivals.py --delay-ms 1500
"""

import asyncio
import time

from aiohttp import web
from serving import run_app, target_arguments


def build_app(delay_ms: float) -> web.Application:
    arrivals: dict[str, list[float]] = {}

    async def report(request: web.Request) -> web.Response:
        return web.json_response(arrivals)

    async def answer(request: web.Request) -> web.Response:
        arrivals.setdefault(request.path, []).append(time.time())
        await request.read()
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000.0)
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/__arrivals", report)
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def main() -> None:
    parser = target_arguments(__doc__)
    args = parser.parse_args()
    run_app(build_app(args.delay_ms), args.port, args.host)


if __name__ == "__main__":
    main()
