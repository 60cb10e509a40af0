"""A target with a deliberate memory leak: every request keeps `--leak-kb` KiB for ever.

The retained buffers are written to, so their pages are really resident (RSS grows, not only
the address space). `--leak-kb 0` is the same server without the leak: the steady control.
Prints its base URL once it listens.

    python tests/targets/leaky.py --leak-kb 64
"""

import argparse
import asyncio
import socket

from aiohttp import web


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


async def serve(args: argparse.Namespace) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    runner = web.AppRunner(build_app(args.leak_kb), access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock, backlog=1024).start()
    print(f"http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--leak-kb", type=int, default=64)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
