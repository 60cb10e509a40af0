"""A target that accepts connections and answers its health check, then never answers
anything else: what a deadlocked service looks like from outside. Prints its base URL.

    python tests/targets/hang.py --port 0
"""

import argparse
import asyncio

from aiohttp import web
from serving import run_app


def build_app() -> web.Application:
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "healthy"})

    async def hang(request: web.Request) -> web.Response:
        await asyncio.Event().wait()  # never set: the request waits until the client gives up
        raise AssertionError("unreachable")

    app = web.Application()
    app.router.add_get("/api/v1/health", health)
    app.router.add_route("*", "/{tail:.*}", hang)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        run_app(build_app(), args.port)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
