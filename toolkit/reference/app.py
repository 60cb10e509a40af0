"""The product-research API (FastAPI). `create_app(settings)` builds nothing until its lifespan
starts: then the engine, schema, cache, simulated provider and worker pool are made once and
reach the routes through `Annotated` dependencies."""

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from .cache import normalise_item_key, open_cache
from .db import (
    FINISHED_STATUSES,
    Item,
    Job,
    Result,
    build_engine,
    cancel_orphaned_jobs,
    create_schema,
    new_job_id,
    utc_now,
)
from .metrics import (
    Metrics,
    read_application_metrics,
    read_database_metrics,
    read_system_metrics,
    record_request,
    render_prometheus,
)
from .provider import close_client, open_client, start_simulator, stop_simulator
from .research import (
    WorkerPool,
    build_pool,
    cancel_job,
    drain_pool,
    load_job,
    start_job,
    summarise_counts,
)
from .schemas import ResearchRequest
from .settings import ENDPOINTS, ServiceSettings

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
                   Awaitable[None]]


def perfkit_version() -> str:
    try:
        return version("perfkit")
    except PackageNotFoundError:
        return "unknown"


def json_response(body: Any, status_code: int = 200) -> Response:
    # ensure_ascii: a client's lone surrogate echoed back in a 422 must not break the encoder.
    return Response(json.dumps(body, ensure_ascii=True, default=str), status_code=status_code,
                    media_type="application/json")


class TimingMiddleware:
    """Times every request into the metrics, and adds the configured extra latency to one
    endpoint before its response starts (the regression gate's known slowdown)."""

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
                extra = self.extra.get(endpoint_name(scope) or "")
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


# Dependencies are `async def` on purpose: FastAPI runs plain `def` ones in a thread pool,
# a thread hop per request for a dictionary lookup.
async def get_pool(request: Request) -> WorkerPool:
    pool: WorkerPool = request.state.pool
    return pool


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.state.metrics
    return metrics


async def get_sessions(request: Request) -> async_sessionmaker[Any]:
    sessions: async_sessionmaker[Any] = request.state.sessions
    return sessions


Pool = Annotated[WorkerPool, Depends(get_pool)]
AppMetrics = Annotated[Metrics, Depends(get_metrics)]
Sessions = Annotated[async_sessionmaker[Any], Depends(get_sessions)]


def not_found(job_id: str) -> Response:
    return json_response({"detail": f"research job {job_id} not found"}, 404)


def describe_result(item: Item, result: Result | None, job_status: str) -> dict[str, Any]:
    if result is None:
        status = "cancelled" if job_status in FINISHED_STATUSES else "pending"
        data: dict[str, Any] = {}
    else:
        status, data = result.status, result.data
    product = data.get("product") or {}
    return {
        "product_name": item.product_name,
        "category": item.category,
        "price_exact": item.price_exact,
        "currency": item.currency,
        "seller_or_store": item.seller_or_store,
        "metadata": item.item_metadata,
        "status": status,
        "brand": product.get("brand"),
        "specs": product.get("specs"),
        "reviews": data.get("reviews"),
        "sources": data.get("sources", []),
        "model": data.get("model"),
        "simulated": True,
        "cached": bool(result and result.cached),
        "duration_s": result.duration_s if result else None,
        "error": result.error if result else None,
        "researched_at": result.created_at.isoformat() if result else None,
    }


def describe_job(job: Job, settings: ServiceSettings, results: list[dict[str, Any]],
                 counts: dict[str, int], total: int) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "status": job.status,
        "results": results,
        "metadata": {
            **summarise_counts(counts),
            "total": total,
            "priority": job.priority,
            "callback_url": job.callback_url,
            "message": job.message,
            "created_at": job.created_at.isoformat(),
            "started_at": job.started_at.isoformat() if job.started_at else None,
            "completed_at": job.completed_at.isoformat() if job.completed_at else None,
            "variants": list(settings.variants),
            "latency_profile": settings.profile.name,
            "simulated": True,
        },
    }


def create_app(settings: ServiceSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        metrics = Metrics(settings)
        engine = build_engine(settings.database_url, metrics)
        await create_schema(engine, with_indexes=not settings.has("no_index"))
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        orphaned = await cancel_orphaned_jobs(sessions, "cancelled: the service restarted")
        if orphaned:
            log.warning("marked %d jobs of a previous run cancelled", orphaned)
        cache = await open_cache(settings.redis_url, settings.cache_ttl_s)
        simulator = await start_simulator(settings.profile, metrics, settings.seed)
        provider = open_client(simulator, metrics, settings.profile, settings.provider_attempts,
                               settings.has("new_client_per_call"), settings.seed)
        pool = build_pool(settings, sessions, provider, cache, metrics)
        try:
            yield {"metrics": metrics, "sessions": sessions, "pool": pool}
        finally:
            await drain_pool(pool, settings.profile.shutdown_grace_s)
            await close_client(provider)
            await stop_simulator(simulator)
            await cache.close()
            await engine.dispose()

    app = FastAPI(title="perfkit reference research service", version=perfkit_version(),
                  lifespan=lifespan)
    app.add_middleware(TimingMiddleware, settings=settings)  # type: ignore[arg-type]

    @app.exception_handler(RequestValidationError)
    async def validation_failed(request: Request, exc: RequestValidationError) -> Response:
        errors = [{"loc": list(error.get("loc", ())), "msg": str(error.get("msg", "")),
                   "type": str(error.get("type", ""))} for error in exc.errors()]
        return json_response({"detail": errors}, 422)

    @app.get("/api/v1/health")
    async def health() -> Response:
        return json_response({
            "status": "healthy",
            "variants": list(settings.variants),
            "latency_profile": settings.profile.name,
            "simulated": True,
            "version": perfkit_version(),
            "concurrency": None if settings.has("unbounded") else settings.concurrency,
            "extra_latency": [{"endpoint": extra.endpoint, "fixed_ms": extra.fixed_ms,
                               "fraction": extra.fraction} for extra in settings.extra_latency],
        })

    @app.post("/api/v1/research/products", status_code=201)
    async def create_research(body: ResearchRequest, pool: Pool) -> Response:
        if not pool.accepting:
            return json_response({"detail": "the service is shutting down"}, 503)
        job = Job(id=new_job_id(), status="pending", priority=body.priority,
                  callback_url=str(body.callback_url) if body.callback_url else None,
                  message="queued", created_at=utc_now())
        items = [Item(job_id=job.id, position=position, product_name=item.product_name,
                      category=item.category, price_exact=item.price_exact,
                      currency=item.currency, seller_or_store=item.seller_or_store,
                      item_metadata=item.metadata,
                      research_key=normalise_item_key(item.product_name, item.price_exact,
                                                      item.currency))
                 for position, item in enumerate(body.items)]
        async with pool.sessions.begin() as session:
            # The unit of work inserts the job before its items (foreign key order).
            session.add(job)
            session.add_all(items)
        start_job(pool, job, items)
        return json_response(describe_job(job, pool.settings, [], {}, len(items)), 201)

    @app.get("/api/v1/research/products/{job_id}")
    async def read_results(job_id: str, pool: Pool,
                           include_failed: Annotated[bool, Query()] = True) -> Response:
        loaded = await load_job(pool.sessions, job_id, pool.settings.has("n_plus_one"))
        if loaded is None:
            return not_found(job_id)
        job, pairs = loaded
        results = [describe_result(item, result, job.status) for item, result in pairs]
        counts: dict[str, int] = {}
        for result in results:
            counts[result["status"]] = counts.get(result["status"], 0) + 1
        if not include_failed:
            results = [result for result in results if result["status"] == "success"]
        return json_response(describe_job(job, pool.settings, results, counts, len(pairs)))

    @app.get("/api/v1/research/products/{job_id}/status")
    async def read_status(job_id: str, sessions: Sessions) -> Response:
        # One grouped query: the job's state, its item total and the outcomes so far.
        async with sessions() as session:
            rows = (await session.execute(
                select(Job.id, Job.status, Job.message, Result.status, func.count(Item.id))
                .join(Item, Item.job_id == Job.id).outerjoin(Result)
                .where(Job.id == job_id).group_by(Job.id, Job.status, Job.message, Result.status)
            )).all()
        if not rows:
            return not_found(job_id)
        _, job_status, job_message, _, _ = rows[0]
        total = sum(int(row[4]) for row in rows)
        counts = {row[3]: int(row[4]) for row in rows if row[3] is not None}
        done = sum(counts.values())
        if job_status in FINISHED_STATUSES:
            progress = 1.0
        else:
            progress = done / total if total else 0.0
        return json_response({
            "job_id": job_id,
            "status": job_status,
            "progress": progress,
            "message": job_message,
            "metadata": {**summarise_counts(counts), "total": total},
        })

    @app.delete("/api/v1/research/products/{job_id}", status_code=204)
    async def cancel_research(job_id: str, pool: Pool) -> Response:
        async with pool.sessions() as session:
            job = await session.get(Job, job_id)
        if job is None:
            return not_found(job_id)
        if not await cancel_job(pool, job_id, "cancelled by the client"):
            return json_response({"detail": f"research job {job_id} already finished"}, 400)
        return Response(status_code=204)

    @app.get("/api/v1/metrics/system")
    async def system_metrics(metrics: AppMetrics) -> Response:
        return json_response(read_system_metrics(metrics))

    @app.get("/api/v1/metrics/database")
    async def database_metrics(metrics: AppMetrics) -> Response:
        return json_response(read_database_metrics(metrics))

    @app.get("/api/v1/metrics/application")
    async def application_metrics(metrics: AppMetrics) -> Response:
        return json_response(read_application_metrics(metrics))

    @app.get("/metrics")
    async def prometheus_metrics(metrics: AppMetrics) -> Response:
        return Response(render_prometheus(metrics),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
