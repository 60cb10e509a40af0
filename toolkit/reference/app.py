"""The product-research API (FastAPI). `create_app(settings)` builds nothing until its lifespan
starts: then the database, schema, cache, simulated provider and worker pool (or the Celery
workers) are made once and reach the routes (routes.py) through `Annotated` dependencies."""

import asyncio
import gc
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager, suppress
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError

from .cache import open_cache
from .db import (
    cancel_orphaned_jobs,
    close_database,
    create_schema,
    driver_connection_errors,
    fetch_rows,
    is_unavailable,
    lease_drivers,
    open_database,
)
from .metrics import Metrics, record_request
from .provider import close_client, open_client, start_simulator, stop_simulator
from .research import build_pool, cancel_active_jobs, drain_pool, watch_lost_jobs
from .routes import API, research_error, router
from .settings import ENDPOINTS, ServiceSettings

log = logging.getLogger(__name__)


# The rest of a refused body is read and dropped for up to DRAIN_S, or until none arrives for
# DRAIN_IDLE_S, before the connection closes (BodyLimitMiddleware.refuse).
DRAIN_S = 30.0
DRAIN_IDLE_S = 2.0
# Driver connections the hot paths share; more only add threads (SQLite) or idle sessions.
HOT_PATH_CONNECTIONS = 8

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
                   Awaitable[None]]


def perfkit_version() -> str:
    try:
        return version("perfkit")
    except PackageNotFoundError:
        return "unknown"


async def add_latency(seconds: float) -> None:
    """The known slowdown, to a few microseconds. uvloop's timers count whole milliseconds:
    asyncio.sleep(0.0004) returns at once, sleep(0.002) can last 3 ms and sleep(0.012) 11.2 ms,
    so 20 % of a 4 ms answer would be nothing or double. The loop's timer takes all but the
    last 2 ms of a long wait; the rest blocks the event loop (time.sleep, which releases the
    GIL), as that much more synchronous work in the handler would."""
    deadline = time.perf_counter() + seconds
    if seconds >= 0.010:
        await asyncio.sleep(seconds - 0.002)
    remaining = deadline - time.perf_counter()
    if remaining > 0:
        time.sleep(remaining)


class TimingMiddleware:
    """Times every request into the metrics, and adds the configured extra latency to one
    endpoint before its response starts (the regression gate's known slowdown). Plain ASGI:
    Starlette's BaseHTTPMiddleware would cost a task and a stream per request."""

    def __init__(self, app: ASGIApp, settings: ServiceSettings) -> None:
        self.app = app
        self.extra = {extra.endpoint: extra for extra in settings.extra_latency}

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started_at = time.perf_counter()
        status = {"code": 500}

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                extra = self.extra.get(endpoint_name(scope) or "") if self.extra else None
                if extra is not None:
                    elapsed_s = time.perf_counter() - started_at
                    await add_latency(extra.fixed_ms / 1000.0 + extra.fraction * elapsed_s)
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            metrics: Metrics | None = scope.get("state", {}).get("metrics")
            if metrics is not None:
                record_request(metrics, route_name(scope), status["code"],
                               time.perf_counter() - started_at)


class BodyLimitMiddleware:
    """Answers 413 to a request body over `max_body_bytes` without reading the rest: a declared
    length over it is refused before a byte is read, a chunked body once it passes it (uvicorn
    stops reading the socket while the app does not ask for more, so the rest never lands in
    memory). A body under the limit is read here whole and handed on unchanged."""

    def __init__(self, app: ASGIApp, settings: ServiceSettings) -> None:
        self.app = app
        self.settings = settings
        self.limit = settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self.refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client left; the app will see the disconnect
            size += len(message.get("body", b""))
            if size > self.limit:
                await self.refuse(scope, receive, send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return message
            return await receive()

        await self.app(scope, replay, send)

    async def refuse(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                     send: Callable[[Message], Awaitable[None]]) -> None:
        """Answers 413 at once, then reads and discards the rest of the body (as nginx's
        lingering close does) before the connection is closed: a client that sends its whole
        body before it reads (httpx, requests, most HTTP libraries) would otherwise get a
        connection reset instead of the answer, since closing a socket with unread data resets
        it. The rest is never kept; draining stops after DRAIN_IDLE_S without data or
        DRAIN_S in all, and the connection is closed rather than parsed for a next request."""
        settings = self.settings if scope["path"].startswith(API) else ServiceSettings()
        response = research_error(settings, f"the request body is over {self.limit} bytes", 413,
                                  "request body too large")
        response.headers["Connection"] = "close"
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": response.raw_headers})
        # more_body: the answer is whole (its Content-Length says so), but uvicorn closes the
        # connection only once the body is marked ended, after the drain.
        await send({"type": "http.response.body", "body": response.body, "more_body": True})
        deadline = time.monotonic() + DRAIN_S
        with suppress(TimeoutError):
            while (remaining_s := deadline - time.monotonic()) > 0:
                message = await asyncio.wait_for(receive(), min(DRAIN_IDLE_S, remaining_s))
                if message["type"] != "http.request" or not message.get("more_body", False):
                    break
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def route_template(scope: Scope) -> str | None:
    route = scope.get("route")
    return getattr(route, "path", None)


def route_name(scope: Scope) -> str:
    """`METHOD /path/template` as the run directory names requests; unmatched paths are one
    label so a URL fuzzer cannot blow up the Prometheus series count."""
    template = route_template(scope)
    return f"{scope['method']} {template}" if template else "unmatched"


def endpoint_name(scope: Scope) -> str | None:
    return ENDPOINTS.get((scope["method"], route_template(scope) or ""))


def describe_health(settings: ServiceSettings) -> bytes:
    return json.dumps({
        "status": "healthy",
        "variants": list(settings.variants),
        "latency_profile": settings.profile.name,
        "simulated": True,
        "version": perfkit_version(),
        "concurrency": None if settings.has("unbounded") else settings.concurrency,
        "queue": settings.queue,
        "envelope": settings.envelope,
        "extra_latency": [{"endpoint": extra.endpoint, "fixed_ms": extra.fixed_ms,
                           "fraction": extra.fraction} for extra in settings.extra_latency],
    }).encode()


def create_app(settings: ServiceSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        metrics = Metrics(settings)
        db = open_database(settings.database_url, metrics, settings.statement_timeout_s)
        await create_schema(db.engine, with_indexes=not settings.has("no_index"))
        await lease_drivers(db, HOT_PATH_CONNECTIONS)
        orphaned = await cancel_orphaned_jobs(db, settings.instance_id,
                                              "cancelled: the service restarted")
        if orphaned:
            log.warning("marked %d jobs of this instance's previous run (%s) cancelled",
                        orphaned, settings.instance_id)
        cache = await open_cache(settings.redis_url, settings.cache_ttl_s, metrics)
        simulator = await start_simulator(settings.profile, metrics, settings.seed)
        provider = open_client(simulator.url, metrics, settings.profile, settings.provider_attempts,
                               settings.has("new_client_per_call"), settings.seed)
        pool = build_pool(settings, db, provider, cache, metrics)
        if settings.queue == "celery":
            from .workers import start_workers, stop_workers

            pool.queue = await start_workers(settings, simulator.url)
            sweeper = asyncio.create_task(watch_lost_jobs(pool))
        # Everything built so far lives as long as the app: moved out of the collector's sight,
        # a full collection no longer walks it (a pause on every request that triggers one).
        gc.freeze()
        try:
            yield {"metrics": metrics, "pool": pool, "health_body": describe_health(settings)}
        finally:
            if pool.queue is not None:
                sweeper.cancel()
                pool.accepting = False
                busy = await fetch_rows(db, "SELECT 1 FROM jobs WHERE status = 'processing'")
                await stop_workers(pool.queue, settings.profile.shutdown_grace_s, bool(busy))
                await cancel_active_jobs(pool, "cancelled: the service shut down")
            await drain_pool(pool, settings.profile.shutdown_grace_s)
            await close_client(provider)
            await stop_simulator(simulator)
            await cache.close()
            await close_database(db)

    app = FastAPI(title="perfkit reference research service", version=perfkit_version(),
                  lifespan=lifespan)
    app.add_middleware(BodyLimitMiddleware, settings=settings)  # type: ignore[arg-type]
    app.add_middleware(TimingMiddleware, settings=settings)  # type: ignore[arg-type]

    async def database_failed(request: Request, exc: Exception) -> Response:
        # A database that is down or restarting is the service's state, not a bug: 503 with a
        # time to come back, so clients back off instead of counting a server error.
        if is_unavailable(exc):
            log.warning("%s %s: the database is unavailable: %s", request.method,
                        request.url.path, exc)
            response = research_error(settings, "the database is unavailable", 503)
            response.headers["Retry-After"] = "5"
            return response
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return research_error(settings, "internal server error", 500)

    # Registered per class, not for Exception: Starlette re-raises what reaches its outermost
    # handler, and a database restart would then print a traceback per request.
    for kind in (OSError, TimeoutError, DBAPIError, *driver_connection_errors()):
        app.add_exception_handler(kind, database_failed)

    @app.exception_handler(RequestValidationError)
    async def validation_failed(request: Request, exc: RequestValidationError) -> Response:
        errors = [{"loc": list(error.get("loc", ())), "msg": str(error.get("msg", "")),
                   "type": str(error.get("type", ""))} for error in exc.errors()]
        if request.url.path.startswith(API):
            return research_error(settings, errors, 422, "invalid request")
        return research_error(ServiceSettings(), errors, 422)

    app.include_router(router)
    return app
