"""A single-process HTTP target that burns CPU in its event loop for every request: what a
pegged single-process Python server looks like (one core at 100 %, whatever the machine).
Prints its base URL once it listens.

    python tests/targets/cpu_burner.py --burn-ms 20
"""

import argparse
import time

from aiohttp import web
from serving import run_app


def build_app(burn_ms: float) -> web.Application:
    async def burn(request: web.Request) -> web.Response:
        until = time.process_time() + burn_ms / 1000.0
        while time.process_time() < until:  # CPU time, not wall time: really busy
            pass
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", burn)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--burn-ms", type=float, default=20.0)
    args = parser.parse_args()
    try:
        run_app(build_app(args.burn_ms), args.port)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
