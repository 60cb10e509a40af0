"""The product-research API (FastAPI). `create_app(settings)` builds nothing until its lifespan
starts: then the database, schema, cache, simulated provider and worker pool (or the Celery
workers) are made once and reach the routes (routes.py) through `Annotated` dependencies."""

import asyncio
import gc
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError

from .cache import open_cache
from .db import (
    cancel_orphaned_jobs,
    close_database,
    create_schema,
    fetch_rows,
    lease_drivers,
    open_database,
)
from .metrics import Metrics, record_request
from .provider import close_client, open_client, start_simulator, stop_simulator
from .research import build_pool, cancel_active_jobs, drain_pool
from .routes import API, research_error, router
from .settings import ENDPOINTS, ServiceSettings

log = logging.getLogger(__name__)

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
                    await asyncio.sleep(extra.fixed_ms / 1000.0 + extra.fraction * elapsed_s)
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            metrics: Metrics | None = scope.get("state", {}).get("metrics")
            if metrics is not None:
                record_request(metrics, route_name(scope), status["code"],
                               time.perf_counter() - started_at)


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
        db = open_database(settings.database_url, metrics)
        await create_schema(db.engine, with_indexes=not settings.has("no_index"))
        await lease_drivers(db, HOT_PATH_CONNECTIONS)
        orphaned = await cancel_orphaned_jobs(db, "cancelled: the service restarted")
        if orphaned:
            log.warning("marked %d jobs of a previous run cancelled", orphaned)
        cache = await open_cache(settings.redis_url, settings.cache_ttl_s)
        simulator = await start_simulator(settings.profile, metrics, settings.seed)
        provider = open_client(simulator.url, metrics, settings.profile, settings.provider_attempts,
                               settings.has("new_client_per_call"), settings.seed)
        pool = build_pool(settings, db, provider, cache, metrics)
        if settings.queue == "celery":
            from .workers import start_workers, stop_workers

            pool.queue = await start_workers(settings, simulator.url)
        # Everything built so far lives as long as the app: moved out of the collector's sight,
        # a full collection no longer walks it (a pause on every request that triggers one).
        gc.freeze()
        try:
            yield {"metrics": metrics, "pool": pool, "health_body": describe_health(settings)}
        finally:
            if pool.queue is not None:
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
    app.add_middleware(TimingMiddleware, settings=settings)  # type: ignore[arg-type]

    @app.exception_handler(RequestValidationError)
    async def validation_failed(request: Request, exc: RequestValidationError) -> Response:
        errors = [{"loc": list(error.get("loc", ())), "msg": str(error.get("msg", "")),
                   "type": str(error.get("type", ""))} for error in exc.errors()]
        if request.url.path.startswith(API):
            return research_error(settings, errors, 422, "invalid request")
        return research_error(ServiceSettings(), errors, 422)

    app.include_router(router)
    return app
