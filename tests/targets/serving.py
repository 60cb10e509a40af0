"""Serve a purpose-built target's aiohttp app on 127.0.0.1 and print its URL once it listens.

The targets run as scripts (`python tests/targets/NAME.py`), so they import this module by its
bare name from their own folder.
"""

import argparse
import asyncio
import contextlib
import socket
import ssl

from aiohttp import web


def target_arguments(doc: str) -> argparse.ArgumentParser:
    """The options every target takes (--host, --port, --delay-ms); a target adds its own."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    return parser


def run_app(app: web.Application, port: int = 0, host: str = "127.0.0.1",
            ssl_context: ssl.SSLContext | None = None) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(app, host, port, ssl_context))


async def _serve(app: web.Application, host: str, port: int,
                 ssl_context: ssl.SSLContext | None = None) -> None:
    # Bind the socket ourselves so that port 0 gives a free port we can print before serving.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock, backlog=1024, ssl_context=ssl_context).start()
    scheme = "https" if ssl_context else "http"
    print(f"{scheme}://{host}:{sock.getsockname()[1]}", flush=True)
    await asyncio.Event().wait()
