"""A target with a deliberate memory leak: every request keeps `--leak-kb` KiB for ever.

The retained buffers are written to, so their pages are really resident (RSS grows, not only
the address space). `--leak-kb 0` is the same server without the leak: the steady control.
`--grow-s S` keeps memory only for the first S seconds after the first request and then
nothing more: a working set that warms up and stays flat (a plateau), which is not a leak.
Prints its base URL once it listens.

    python tests/targets/leaky.py --leak-kb 64
    python tests/targets/leaky.py --leak-kb 64 --grow-s 40
"""

import argparse
import time

from aiohttp import web
from serving import run_app


def build_app(leak_kb: int, grow_s: float | None = None) -> web.Application:
    kept: list[bytearray] = []
    first_request_at: list[float] = []

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        now = time.monotonic()
        if not first_request_at:
            first_request_at.append(now)
        growing = grow_s is None or now - first_request_at[0] < grow_s
        if leak_kb and growing:
            kept.append(bytearray(b"x" * (leak_kb * 1024)))
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--leak-kb", type=int, default=64)
    parser.add_argument("--grow-s", type=float, default=None,
                        help="Keep memory only this long after the first request.")
    args = parser.parse_args()
    run_app(build_app(args.leak_kb, args.grow_s), args.port)


if __name__ == "__main__":
    main()
