"""A tiny HTTP target with a known behaviour, for tests and benchmarks.

Every request, whatever its method or path, waits `--delay-ms` and answers 200 with a short
body; with `--fail-every N` every N-th request (counted across all connections) answers 500,
so a client's failure count can be checked exactly. Prints its base URL on stdout once it
listens, then serves until killed.

    python tests/targets/fixed_delay.py --delay-ms 20 --port 0
"""

import asyncio

from aiohttp import web
from serving import run_app, target_arguments


def build_app(delay_ms: float, fail_every: int) -> web.Application:
    counter = {"requests": 0}

    async def answer(request: web.Request) -> web.Response:
        counter["requests"] += 1
        number = counter["requests"]
        await request.read()
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000.0)
        if fail_every and number % fail_every == 0:
            return web.Response(status=500, text="deliberate failure\n")
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def main() -> None:
    parser = target_arguments(__doc__)
    parser.add_argument("--fail-every", type=int, default=0,
                        help="answer 500 to every N-th request (0: never)")
    args = parser.parse_args()
    run_app(build_app(args.delay_ms, args.fail_every), args.port, args.host)


if __name__ == "__main__":
    main()
