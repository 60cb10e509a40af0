"""`perfkit serve`: run the reference service under uvicorn until SIGINT or SIGTERM.

Once the socket listens and the lifespan has started, one line with `http://HOST:PORT` goes to
the terminal (flushed): perfkit's runner starts `python -m perfkit serve --port 0` and reads
that line to learn the port."""

import asyncio
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
import uvloop

from ..errors import ConfigError, TargetError
from .settings import ServiceSettings, build_service_settings

log = logging.getLogger(__name__)


def serve_forever(*, say: Callable[[str], None], database_url: str | None = None,
                  **options: Any) -> None:
    """Serve until interrupted. Without `database_url`, the SQLite file lives in a fresh
    temporary directory (removed at exit) so concurrent instances never share a database.
    `options` are build_service_settings' keyword arguments, the serve command's options one
    for one (queue, broker, celery_workers, prefetch_multiplier, max_tasks_per_child,
    result_expires_s, queue_prefix and envelope among them)."""
    # Until run_server installs its own handlers, SIGINT and SIGTERM (how perfkit stops a
    # service that is still starting, and the parent-death signal) interrupt like Ctrl-C, so
    # the temporary directory below is still removed: SIGTERM would end the process on the
    # spot, and SIGINT is ignored altogether in a background job a shell script started.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    temp_dir: Path | None = None
    try:
        if not database_url:
            # The pid in the name tells whose it is, should a killed instance leave it behind.
            # Named before it is made (not mkdtemp), so a stop signal between the two cannot
            # leave a directory the `finally` does not know of.
            temp_dir = (Path(tempfile.gettempdir())
                        / f"perfkit-serve-{os.getpid()}-{secrets.token_hex(6)}")
            temp_dir.mkdir(mode=0o700)
            database_url = f"sqlite+aiosqlite:///{temp_dir / 'research.db'}"
        settings = build_service_settings(database_url=database_url, **options)
        # uvloop and httptools (what `uvicorn[standard]` brings) roughly double the requests a
        # core serves compared with asyncio's loop and h11.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            stopped_by = runner.run(run_server(settings, say))
    except SystemExit as exc:
        # uvicorn exits this way when the port is taken or the lifespan (database, Redis)
        # failed; its log line above says which.
        raise TargetError(f"the reference service could not start on {options.get('host')}:"
                          f"{options.get('port')} "
                          f"(exit {exc.code}); see the error above") from None
    finally:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
    say(f"perfkit serve: stopped ({stopped_by})")


def bind_socket(host: str, port: int) -> socket.socket:
    """Bound here rather than by uvicorn so a taken port is one clear error, and port 0 is
    resolved before anything is printed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise TargetError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


async def check_backends(settings: ServiceSettings) -> None:
    """Fail with one clear line when the database or Redis cannot be reached, before uvicorn
    would report the same from inside its lifespan as a traceback."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from .cache import open_cache

    if not settings.database_url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise ConfigError(f"unsupported --database-url {settings.database_url!r}: use "
                          "sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB")
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error here is the user's environment
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise TargetError(f"cannot connect to {settings.database_url}: {reason}") from None
    finally:
        await engine.dispose()
    cache = await open_cache(settings.redis_url, settings.cache_ttl_s)
    await cache.close()
    if settings.queue == "celery":
        await asyncio.to_thread(check_broker, settings.celery.broker_url)


def check_broker(broker_url: str) -> None:
    from kombu import Connection

    with Connection(broker_url, connect_timeout=5) as conn:
        try:
            conn.ensure_connection(max_retries=1)
        except Exception as exc:  # kombu raises the transport's own errors
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise TargetError(f"cannot reach the broker {conn.as_uri()}: {reason}") from None


async def run_server(settings: ServiceSettings, say: Callable[[str], None]) -> str:
    """Run until a signal; returns its name. Startup failures become a TargetError."""
    # Imported here so that a bad option is reported before FastAPI and SQLAlchemy load.
    from .app import create_app

    await check_backends(settings)
    config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port,
                            log_level="warning", access_log=False, lifespan="on",
                            http="httptools",
                            timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    received: list[str] = []
    sock = bind_socket(settings.host, settings.port)

    def request_exit(signum: int, frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        # A second SIGINT while draining means "now": uvicorn stops waiting for connections.
        if server.should_exit and signum == signal.SIGINT:
            server.force_exit = True
        server.should_exit = True

    # uvicorn installs its own handlers during serve() and, after a graceful stop, re-raises
    # the signal to whatever handler was there before; installing ours first means that
    # re-raise lands here instead of killing the process before the temp dir is removed.
    previous = {sig: signal.signal(sig, request_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if serving.done():
                await serving
                raise TargetError(f"the reference service stopped while starting on "
                                  f"{settings.host}:{settings.port}")
            await asyncio.sleep(0.02)
        bound_port = sock.getsockname()[1]
        say(f"perfkit serve: listening on http://{settings.host}:{bound_port} "
            f"(variants: {', '.join(settings.variants) or 'none'}, "
            f"profile: {settings.profile.name})")
        sys.stdout.flush()
        await serving
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return received[0] if received else "server exited"
