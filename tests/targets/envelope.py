"""A research API in the original backend's envelope shape, for the scenarios' tests.

    python tests/targets/envelope.py --job-ms 500 [--shape envelope|flat|bare-id]

Routes: `GET /api/v1/health`, `POST /api/v1/research/products` (201), `GET
.../products/{id}/status`, `GET .../products/{id}`, answered as
`{"success": true, "data": {...}, "message": "..."}` (create: `data.job_id`, `data.status`,
`data.metadata.total_items`; status: `data.status`, `data.progress`, `data.metadata.total`;
results: `data.results`). A job is pending, then processing, then completed `--job-ms` after
its create (the issue does not name the original's states; `completed` is one the scenarios
must understand besides the bundled service's `success`). There are no `/api/v1/metrics/*`
routes (404), as on the original.

`--shape flat` answers the bundled service's flat fields and state names instead;
`--shape bare-id` answers create with `{"id": ...}`, a shape neither reader knows.
`GET /_served` (not counted) tells how many answers each route sent, by perfkit's request
names. Prints its base URL once it listens.
"""

import argparse
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
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


def build_app(job_s: float, shape: str) -> web.Application:
    jobs: dict[str, tuple[float, int]] = {}  # job id -> (created at, item count)
    served: Counter[str] = Counter()
    finished = "success" if shape == "flat" else "completed"

    def job_state(job_id: str) -> tuple[str, float, int]:
        created_at, total = jobs[job_id]
        progress = min(1.0, (time.monotonic() - created_at) / job_s) if job_s > 0 else 1.0
        status = finished if progress >= 1.0 else "processing" if progress > 0 else "pending"
        return status, progress, total

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
        jobs[job_id] = (time.monotonic(), len(items))
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
        return answer({"job_id": job_id, "status": state, "progress": progress,
                       "metadata": {"total": total, "completed": int(progress * total)}}, shape)

    async def results(request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        if job_id not in jobs:
            return refuse(f"research job {job_id} not found", 404)
        state, progress, total = job_state(job_id)
        done = int(progress * total)
        return answer({"job_id": job_id, "status": state,
                       "results": [{"position": i, "status": "success",
                                    "summary": "simulated research"} for i in range(done)]},
                      shape)

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
    parser.add_argument("--job-ms", type=float, default=500.0,
                        help="time from create to completed")
    parser.add_argument("--shape", choices=["envelope", "flat", "bare-id"], default="envelope")
    args = parser.parse_args()
    run_app(build_app(args.job_ms / 1000.0, args.shape), args.port)


if __name__ == "__main__":
    main()
