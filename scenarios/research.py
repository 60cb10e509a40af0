"""research (default): a client of the research API as the real front end uses it.

Task weights: 4 research flows to 1 health check, 1-3 s think time between tasks.
A research flow creates a job of 1-10 products drawn from the bundled catalogue, polls its
status every 2 s until it finishes, then reads its results. The time from create to finished
is recorded as `job_completion` (and `batch_10_completion` for 10-product jobs).
Answers are read in the bundled service's flat shape or the original backend's envelope
(shapes.py); an answer in neither is a failed request with the reason, never a missing one.
"""

import json
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from locust import HttpUser, between, task
from locust.clients import ResponseContextManager

from perfkit.scenarios import shapes

log = logging.getLogger(__name__)

CATALOGUE: list[dict[str, Any]] = json.loads(
    (Path(__file__).with_name("catalogue.json")).read_text("utf-8"))
PRODUCTS = "/api/v1/research/products"
POLL_INTERVAL_S = 2.0
JOB_TIMEOUT_S = 300.0

T = TypeVar("T")


def make_job_body(rng: random.Random, items: int | None = None) -> dict[str, Any]:
    count = items or rng.randint(1, 10)
    return {"items": rng.sample(CATALOGUE, count), "priority": rng.randint(1, 10)}


def read_or_fail(response: ResponseContextManager, what: str,
                 read: Callable[[int, bytes | None], T]) -> T | None:
    """`read` the answer, or mark the request failed with the reason and return None.

    A request that got no answer fails with its connection error, one in neither shape with
    the ShapeError's reason. Any other exception escaping `catch_response` would leave the
    request unrecorded, so it is a failure too (and logged: it is a bug of the reader).
    """
    if response.error is not None:
        response.failure(response.error)  # no answer at all: keep the connection error's words
        return None
    try:
        return read(response.status_code, response.content)
    except shapes.ShapeError as exc:
        response.failure(f"{what}: {exc}")
    except Exception as exc:
        log.exception("%s: reading the answer failed", what)
        response.failure(f"{what}: unreadable answer ({type(exc).__name__}: {exc})")
    return None


def create_job(user: HttpUser, body: dict[str, Any]) -> str | None:
    with user.client.post(PRODUCTS, json=body, name=PRODUCTS, catch_response=True) as response:
        return read_or_fail(response, "create", shapes.read_job_id)


def get_status(user: HttpUser, job_id: str) -> str | None:
    with user.client.get(f"{PRODUCTS}/{job_id}/status", name=PRODUCTS + "/{id}/status",
                         catch_response=True) as response:
        status = read_or_fail(response, "status", shapes.read_status)
        return None if status is None else status.status


def get_results(user: HttpUser, job_id: str) -> None:
    with user.client.get(f"{PRODUCTS}/{job_id}", name=PRODUCTS + "/{id}",
                         catch_response=True) as response:
        read_or_fail(response, "results", shapes.read_results)


def wait_for_job(user: HttpUser, job_id: str, started_at: float, timeout_s: float,
                 poll_interval_s: float) -> str | None:
    """Poll the job's status until it finishes or `timeout_s` after `started_at`; the last
    status read (None if none could be read)."""
    status = None
    while time.time() - started_at < timeout_s:
        time.sleep(poll_interval_s)  # gevent-patched: yields to other users
        status = get_status(user, job_id)
        if status in shapes.FINISHED:
            break
    return status


def record_job(user: HttpUser, name: str, started_at: float, error: str | None) -> None:
    user.environment.events.request.fire(
        request_type="JOB", name=name, response_time=(time.time() - started_at) * 1000,
        response_length=0, exception=RuntimeError(error) if error else None, context={})


def research_flow(user: HttpUser, rng: random.Random) -> None:
    body = make_job_body(rng)
    started_at = time.time()
    job_id = create_job(user, body)
    if job_id is None:
        return  # the failed create is recorded; without a job id the flow cannot go on
    status = wait_for_job(user, job_id, started_at, JOB_TIMEOUT_S, POLL_INTERVAL_S)
    error = None if status in shapes.SUCCEEDED else f"job ended {status or 'unfinished'}"
    record_job(user, "job_completion", started_at, error)
    if len(body["items"]) == 10:
        record_job(user, "batch_10_completion", started_at, error)
    if status in shapes.FINISHED:
        get_results(user, job_id)


class ResearchUser(HttpUser):
    wait_time = between(1, 3)

    def on_start(self) -> None:
        self.rng = random.Random()

    @task(4)
    def research(self) -> None:
        research_flow(self, self.rng)

    @task(1)
    def health(self) -> None:
        self.client.get("/api/v1/health", name="/api/v1/health")
