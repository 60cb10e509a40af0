"""The routes of the research API. Each reaches the database in one hop: the hot ones (create,
status, results) as one statement or transaction on the driver (db.py says why), none through
the ORM except the `n_plus_one` variant's read.

With `envelope` set, the research routes answer as the original backend does:
`{"success": true, "data": {...}, "message": "..."}`, errors with their status codes and
`success: false`."""

import json
import math
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from .cache import normalise_item_key
from .db import (
    FINISHED_STATUSES,
    STATUS_SQL,
    fetch_rows,
    insert_job,
    iso_time,
    json_value,
    new_job_id,
    probe_database,
    utc_now,
)
from .metrics import (
    Metrics,
    read_application_metrics,
    read_database_metrics,
    read_system_metrics,
    read_worker_counts,
    record_rejected_job,
    render_prometheus,
)
from .research import (
    WorkerPool,
    cancel_job,
    count_queued_jobs,
    load_result_rows,
    read_queue_state,
    submit_job,
    summarise_counts,
)
from .schemas import ResearchRequest
from .settings import ServiceSettings

API = "/api/v1/research/products"
HEALTH_PROBE_S = 1.0

router = APIRouter()


def json_response(body: Any, status_code: int = 200) -> Response:
    # ensure_ascii: a client's lone surrogate echoed back in a 422 must not break the encoder.
    return Response(json.dumps(body, ensure_ascii=True, default=str), status_code=status_code,
                    media_type="application/json")


def research_response(settings: ServiceSettings, data: Any, message: str,
                      status_code: int = 200) -> Response:
    if settings.envelope:
        return json_response({"success": True, "data": data, "message": message}, status_code)
    return json_response(data, status_code)


def research_error(settings: ServiceSettings, detail: Any, status_code: int,
                   message: str | None = None) -> Response:
    """`detail` stays in the envelope too: clients of either shape read it."""
    if settings.envelope:
        return json_response({"success": False, "data": None,
                              "message": message or str(detail), "detail": detail}, status_code)
    return json_response({"detail": detail}, status_code)


# Dependencies are `async def` on purpose: FastAPI runs plain `def` ones in a thread pool,
# a thread hop per request for a dictionary lookup.
async def get_pool(request: Request) -> WorkerPool:
    pool: WorkerPool = request.state.pool
    return pool


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.state.metrics
    return metrics


Pool = Annotated[WorkerPool, Depends(get_pool)]
AppMetrics = Annotated[Metrics, Depends(get_metrics)]


def not_found(settings: ServiceSettings, job_id: str) -> Response:
    return research_error(settings, f"research job {job_id} not found", 404)


def job_metadata(settings: ServiceSettings, counts: Counter[str], total: int,
                 job: Sequence[Any]) -> dict[str, Any]:
    """`job`: status, priority, callback_url, message, created_at, started_at, completed_at."""
    return {
        **summarise_counts(counts),
        "total": total,
        "total_items": total,
        "priority": job[1],
        "callback_url": job[2],
        "message": job[3],
        "created_at": iso_time(job[4]),
        "started_at": iso_time(job[5]),
        "completed_at": iso_time(job[6]),
        "variants": list(settings.variants),
        "latency_profile": settings.profile.name,
        "simulated": True,
    }


def describe_result(row: Sequence[Any]) -> dict[str, Any]:
    """One `RESULTS_SQL` row: the item from column 7, its result (or NULLs) from column 13."""
    (job_status, product_name, category, price_exact, currency, seller_or_store, metadata,
     status, data, error, cached, duration_s, researched_at) = (row[0], *row[7:])
    if status is None:
        status = "cancelled" if job_status in FINISHED_STATUSES else "pending"
    answer = json_value(data) or {}
    product = answer.get("product") or {}
    return {
        "product_name": product_name,
        "category": category,
        "price_exact": price_exact,
        "currency": currency,
        "seller_or_store": seller_or_store,
        "metadata": json_value(metadata),
        "status": status,
        "brand": product.get("brand"),
        "specs": product.get("specs"),
        "reviews": answer.get("reviews"),
        "sources": answer.get("sources", []),
        "model": answer.get("model"),
        "simulated": True,
        "cached": bool(cached),
        "duration_s": duration_s,
        "error": error,
        "researched_at": iso_time(researched_at),
    }


def retry_after_s(settings: ServiceSettings) -> int:
    """When a slot is likely free again: one provider call's median spread over the slots,
    at least a second and at most a minute."""
    seconds = settings.profile.median_ms / 1000.0 / max(settings.concurrency, 1)
    return min(60, max(1, math.ceil(seconds)))


def unavailable(settings: ServiceSettings, detail: str, retry_after: int) -> Response:
    response = research_error(settings, detail, 503)
    response.headers["Retry-After"] = str(retry_after)
    return response


def parse_job_id(job_id: str) -> str | None:
    """The canonical form of a job id, or None when it cannot be one: such an id is not
    found, and never reaches the database (a NUL byte is an error inside PostgreSQL)."""
    if len(job_id) > 45:  # "urn:uuid:" and 36 characters, uuid.UUID's longest form
        return None
    try:
        return str(uuid.UUID(job_id))
    except ValueError:
        return None


@router.post(API, status_code=201)
async def create_research(body: ResearchRequest, pool: Pool) -> Response:
    if not pool.accepting:
        return research_error(pool.settings, "the service is shutting down", 503)
    queued = await count_queued_jobs(pool)
    if queued >= pool.settings.max_queued_jobs:
        record_rejected_job(pool.metrics)
        return unavailable(pool.settings, f"{queued} research jobs are queued, the most this "
                           "service accepts; retry later", retry_after_s(pool.settings))
    job = {"id": new_job_id(), "status": "pending", "priority": body.priority,
           "callback_url": str(body.callback_url) if body.callback_url else None,
           "message": "queued", "created_at": utc_now(),
           "instance_id": pool.settings.instance_id}
    items = [{"job_id": job["id"], "position": position, "product_name": item.product_name,
              "category": item.category, "price_exact": item.price_exact,
              "currency": item.currency, "seller_or_store": item.seller_or_store,
              "metadata": item.metadata,
              "research_key": normalise_item_key(item.product_name, item.price_exact,
                                                 item.currency)}
             for position, item in enumerate(body.items)]
    pool.admitting += 1
    try:
        for item, item_id in zip(items, await insert_job(pool.db, job, items), strict=True):
            item["id"] = item_id
        if not await submit_job(pool, job, items):
            return research_error(pool.settings, "the research queue is unreachable", 503)
    finally:
        pool.admitting -= 1
    data = {"job_id": job["id"], "status": "pending", "results": [],
            "metadata": job_metadata(pool.settings, Counter(), len(items), (
                "pending", job["priority"], job["callback_url"], job["message"],
                job["created_at"], None, None))}
    return research_response(pool.settings, data, "research job created", 201)


@router.get(API + "/{job_id}")
async def read_results(job_id: str, pool: Pool,
                       include_failed: Annotated[bool, Query()] = True) -> Response:
    canonical = parse_job_id(job_id)
    rows = await load_result_rows(pool, canonical) if canonical else []
    if not rows:
        return not_found(pool.settings, job_id)
    results = [describe_result(row) for row in rows]
    counts = Counter(result["status"] for result in results)
    if not include_failed:
        results = [result for result in results if result["status"] == "success"]
    data = {"job_id": job_id, "status": rows[0][0], "results": results,
            "metadata": job_metadata(pool.settings, counts, len(rows), rows[0])}
    return research_response(pool.settings, data, rows[0][3])


@router.get(API + "/{job_id}/status")
async def read_status(job_id: str, pool: Pool) -> Response:
    # One grouped statement: the job's state, its item total and the outcomes so far.
    canonical = parse_job_id(job_id)
    rows = await fetch_rows(pool.db, STATUS_SQL, canonical) if canonical else []
    if not rows:
        return not_found(pool.settings, job_id)
    job_status, job_message = rows[0][0], rows[0][1]
    total = sum(int(row[3]) for row in rows)
    counts = Counter({row[2]: int(row[3]) for row in rows if row[2] is not None})
    done = sum(counts.values())
    if job_status in FINISHED_STATUSES:
        progress = 1.0
    else:
        progress = done / total if total else 0.0
    # The job's own timestamps, so a client times the job from them rather than from when
    # its poll happened to see it finished.
    data = {"job_id": job_id, "status": job_status, "progress": progress,
            "message": job_message, "created_at": iso_time(rows[0][4]),
            "completed_at": iso_time(rows[0][5]),
            "metadata": {**summarise_counts(counts), "total": total}}
    return research_response(pool.settings, data, job_message)


@router.delete(API + "/{job_id}", status_code=204)
async def cancel_research(job_id: str, pool: Pool) -> Response:
    canonical = parse_job_id(job_id)
    if not canonical or not await fetch_rows(pool.db, "SELECT 1 FROM jobs WHERE id = $1",
                                             canonical):
        return not_found(pool.settings, job_id)
    if not await cancel_job(pool, canonical, "cancelled by the client"):
        return research_error(pool.settings, f"research job {job_id} already finished", 400)
    return Response(status_code=204)


@router.get("/api/v1/health")
async def health(request: Request, pool: Pool) -> Response:
    # The settings part is built once in the lifespan; the database's state is read at most
    # every HEALTH_PROBE_S, so a health check under load costs no query of its own.
    now = time.monotonic()
    if now - pool.health_probed_at >= HEALTH_PROBE_S:
        pool.health_probed_at = now
        pool.database_error = await probe_database(pool.db)
    body: bytes = request.state.health_body
    if pool.database_error is None:
        return Response(body[:-1] + b', "database": "ok"}', media_type="application/json")
    detail = json.dumps(pool.database_error, ensure_ascii=True).encode()
    body = body.replace(b'"status": "healthy"', b'"status": "unhealthy"', 1)
    return Response(body[:-1] + b', "database": "unavailable", "database_error": ' + detail
                    + b"}", status_code=503, media_type="application/json",
                    headers={"Retry-After": "5"})


@router.get("/api/v1/metrics/system")
async def system_metrics(metrics: AppMetrics) -> Response:
    return json_response(read_system_metrics(metrics))


@router.get("/api/v1/metrics/database")
async def database_metrics(metrics: AppMetrics) -> Response:
    return json_response(read_database_metrics(metrics))


# Counted where the research runs: under `--queue celery` that is the worker processes. Their
# Prometheus counts are read (read_worker_counts); what they do not count is reported missing
# there, never as a zero.
WORKER_SIDE_FIELDS = ("job_avg_time", "max_active_research", "callbacks_sent",
                      "callbacks_failed")


@router.get("/api/v1/metrics/application")
async def application_metrics(pool: Pool) -> Response:
    body = read_application_metrics(pool.metrics)
    if pool.queue is not None:
        body.update(dict.fromkeys(WORKER_SIDE_FIELDS))
        if pool.queue.metrics_dir is not None:
            body.update(read_worker_counts(pool.queue.metrics_dir))
        # The research time the dashboards read comes from the results the workers wrote.
        rows = await fetch_rows(pool.db, "SELECT avg(duration_s), count(*) FROM results "
                                         "WHERE duration_s IS NOT NULL")
        body["research_avg_time"] = float(rows[0][0]) if rows[0][1] else None
        body["researched_items"] = int(rows[0][1])
    return json_response({**body, **await read_queue_state(pool)})


@router.get("/metrics")
async def prometheus_metrics(pool: Pool) -> Response:
    await read_queue_state(pool)  # sets the queue gauges
    return Response(render_prometheus(pool.metrics, pool.queue and pool.queue.metrics_dir),
                    media_type="text/plain; version=0.0.4; charset=utf-8")
