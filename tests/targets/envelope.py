"""A research API in the original backend's envelope shape, for the scenarios' tests.

    python tests/targets/envelope.py [--job-ms 2000] [--shape envelope|flat|bare-id]
                                     [--timestamps all|results|none]

Routes: `GET /api/v1/health`, `POST /api/v1/research/products` (201), `GET
.../products/{id}/status`, `GET .../products/{id}`, answered as
`{"success": true, "data": {...}, "message": "..."}` (create: `data.job_id`, `data.status`,
`data.metadata.total_items`; status: `data.status`, `data.progress`, `data.metadata.total`;
results: `data.results`). A job is pending, then processing, then completed `--job-ms` after
its create (default 2 s, the original's LLM call; the issue does not name the original's
states; `completed` is one the scenarios must understand besides the bundled service's
`success`). There are no `/api/v1/metrics/*` routes (404), as on the original.

The status and results answers carry the job's timestamps as a FastAPI + SQLAlchemy backend
serialises its job row: `data.created_at`, `data.updated_at` and `data.completed_at` (null
until completed), ISO 8601 without a zone (`datetime.utcnow()` columns), and `completed_at`
exactly `--job-ms` after `created_at`. `--timestamps results` leaves them out of the status
answers, `--timestamps none` out of every answer (the scenarios must then time jobs by
polling).

`--shape flat` answers the bundled service's flat fields, state names and timestamp places
instead (status: `created_at`, `completed_at`; results: `metadata.created_at`,
`metadata.completed_at`; ISO with `+00:00`, as the bundled service on PostgreSQL);
`--shape bare-id` answers create with `{"id": ...}`, a shape neither reader knows.
`GET /_served` (not counted) tells how many answers each route sent, by perfkit's request
names. Prints its base URL once it listens.
"""

import argparse
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from serving import run_app

PRODUCTS = "/api/v1/research/products"
MAX_ITEMS = 10

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def answer(data: dict[str, Any], shape: str, status: int = 200,
           message: str = "ok") -> web.Response:
    if shape == "envelope":
        return web.json_response({"success": True, "data": data, "message": message},
                                 status=status)
    return web.json_response(data, status=status)


def refuse(message: str, status: int) -> web.Response:
    return web.json_response({"success": False, "data": None, "message": message},
                             status=status)


def iso(epoch_s: float | None, shape: str) -> str | None:
    if epoch_s is None:
        return None
    moment = datetime.fromtimestamp(epoch_s, UTC)
    return moment.isoformat() if shape == "flat" else moment.replace(tzinfo=None).isoformat()


def build_app(job_s: float, shape: str, timestamps: str) -> web.Application:
    # job id -> (created at on the monotonic clock, and on the wall clock, item count)
    jobs: dict[str, tuple[float, float, int]] = {}
    served: Counter[str] = Counter()
    finished = "success" if shape == "flat" else "completed"

    def job_state(job_id: str) -> tuple[str, float, int]:
        created_at, _, total = jobs[job_id]
        progress = min(1.0, (time.monotonic() - created_at) / job_s) if job_s > 0 else 1.0
        status = finished if progress >= 1.0 else "processing" if progress > 0 else "pending"
        return status, progress, total

    def job_times(job_id: str, state: str) -> dict[str, Any]:
        """The job's timestamps as the shape places them."""
        created_at = jobs[job_id][1]
        completed_at = created_at + job_s if state == finished else None
        if shape == "flat":
            return {"created_at": iso(created_at, shape), "completed_at": iso(completed_at, shape)}
        # The row was last updated when the job was created or, once done, completed.
        return {"created_at": iso(created_at, shape),
                "updated_at": iso(completed_at or created_at, shape),
                "completed_at": iso(completed_at, shape)}

    @web.middleware
    async def count_answers(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
        route = request.match_info.route.resource
        path = route.canonical if route is not None else request.path
        if path != "/_served":
            served[f"{request.method} {path}"] += 1
        if isinstance(response, web.HTTPException):
            raise response
        return response

    async def health(request: web.Request) -> web.Response:
        return answer({"status": "healthy"}, shape)

    async def create(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            items = body["items"]
        except (ValueError, KeyError, TypeError):
            return refuse("body must be JSON with an items list", 422)
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_ITEMS:
            return refuse(f"items must hold 1 to {MAX_ITEMS} products", 422)
        job_id = uuid.uuid4().hex
        jobs[job_id] = (time.monotonic(), time.time(), len(items))
        if shape == "bare-id":
            return web.json_response({"id": job_id}, status=201)
        return answer({"job_id": job_id, "status": "pending",
                       "metadata": {"total_items": len(items), "total": len(items)}},
                      shape, 201, "research job created")

    async def status(request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        if job_id not in jobs:
            return refuse(f"research job {job_id} not found", 404)
        state, progress, total = job_state(job_id)
        data = {"job_id": job_id, "status": state, "progress": progress,
                "metadata": {"total": total, "completed": int(progress * total)}}
        if timestamps == "all":
            data.update(job_times(job_id, state))
        return answer(data, shape)

    async def results(request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        if job_id not in jobs:
            return refuse(f"research job {job_id} not found", 404)
        state, progress, total = job_state(job_id)
        done = int(progress * total)
        data: dict[str, Any] = {"job_id": job_id, "status": state,
                                "results": [{"position": i, "status": "success",
                                             "summary": "simulated research"}
                                            for i in range(done)]}
        if timestamps != "none" and shape == "flat":
            data["metadata"] = {"total": total, **job_times(job_id, state)}
        elif timestamps != "none":
            data.update(job_times(job_id, state))
        return answer(data, shape)

    async def served_counts(request: web.Request) -> web.Response:
        return web.json_response(dict(served))

    app = web.Application(middlewares=[count_answers])
    app.router.add_get("/api/v1/health", health)
    app.router.add_post(PRODUCTS, create)
    app.router.add_get(PRODUCTS + "/{id}/status", status)
    app.router.add_get(PRODUCTS + "/{id}", results)
    app.router.add_get("/_served", served_counts)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--job-ms", type=float, default=2000.0,
                        help="time from create to completed")
    parser.add_argument("--shape", choices=["envelope", "flat", "bare-id"], default="envelope")
    parser.add_argument("--timestamps", choices=["all", "results", "none"], default="all",
                        help="which answers carry the job's timestamps")
    args = parser.parse_args()
    run_app(build_app(args.job_ms / 1000.0, args.shape, args.timestamps), args.port)


if __name__ == "__main__":
    main()
