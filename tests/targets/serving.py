"""Serve a purpose-built target's aiohttp app on 127.0.0.1 and print its URL once it listens.

The targets run as scripts (`python tests/targets/NAME.py`), so they import this module by its
bare name from their own folder.
"""

import asyncio
import socket
import ssl

from aiohttp import web


def run_app(app: web.Application, port: int = 0, host: str = "127.0.0.1",
            ssl_context: ssl.SSLContext | None = None) -> None:
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
