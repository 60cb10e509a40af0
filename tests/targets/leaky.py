"""A target with a deliberate memory leak: every request keeps `--leak-kb` KiB for ever.

The retained buffers are written to, so their pages are really resident (RSS grows, not only
the address space). `--leak-kb 0` is the same server without the leak: the steady control.
Prints its base URL once it listens.

    python tests/targets/leaky.py --leak-kb 64
"""

import argparse

from aiohttp import web
from serving import run_app


def build_app(leak_kb: int) -> web.Application:
    kept: list[bytearray] = []

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        if leak_kb:
            kept.append(bytearray(b"x" * (leak_kb * 1024)))
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--leak-kb", type=int, default=64)
    args = parser.parse_args()
    run_app(build_app(args.leak_kb), args.port)


if __name__ == "__main__":
    main()
