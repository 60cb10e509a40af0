"""research (default): a client of the research API as the real front end uses it.

Task weights: 4 research flows to 1 health check, 1-3 s think time between tasks.
A research flow creates a job of 1-10 products drawn from the bundled catalogue, polls its
status every 2 s until it finishes, then reads its results. The time from create to finished
is recorded as `job_completion` (and `batch_10_completion` for 10-product jobs).
"""

import json
import random
import time
from pathlib import Path
from typing import Any

from locust import HttpUser, between, task

CATALOGUE: list[dict[str, Any]] = json.loads(
    (Path(__file__).with_name("catalogue.json")).read_text("utf-8"))
PRODUCTS = "/api/v1/research/products"
FINISHED = {"success", "error", "cancelled"}
POLL_INTERVAL_S = 2.0
JOB_TIMEOUT_S = 300.0


def make_job_body(rng: random.Random, items: int | None = None) -> dict[str, Any]:
    count = items or rng.randint(1, 10)
    return {"items": rng.sample(CATALOGUE, count), "priority": rng.randint(1, 10)}


def create_job(user: HttpUser, body: dict[str, Any]) -> str | None:
    with user.client.post(PRODUCTS, json=body, name=PRODUCTS, catch_response=True) as response:
        if response.status_code != 201:
            response.failure(f"create answered {response.status_code}")
            return None
        return str(response.json()["job_id"])


def get_status(user: HttpUser, job_id: str) -> str | None:
    with user.client.get(f"{PRODUCTS}/{job_id}/status", name=PRODUCTS + "/{id}/status",
                         catch_response=True) as response:
        if response.status_code != 200:
            response.failure(f"status answered {response.status_code}")
            return None
        return str(response.json()["status"])


def get_results(user: HttpUser, job_id: str) -> None:
    with user.client.get(f"{PRODUCTS}/{job_id}", name=PRODUCTS + "/{id}",
                         catch_response=True) as response:
        if response.status_code != 200:
            response.failure(f"results answered {response.status_code}")


def record_job(user: HttpUser, name: str, started_at: float, error: str | None) -> None:
    user.environment.events.request.fire(
        request_type="JOB", name=name, response_time=(time.time() - started_at) * 1000,
        response_length=0, exception=RuntimeError(error) if error else None, context={})


def research_flow(user: HttpUser, rng: random.Random) -> None:
    body = make_job_body(rng)
    started_at = time.time()
    job_id = create_job(user, body)
    if job_id is None:
        return
    status = None
    while time.time() - started_at < JOB_TIMEOUT_S:
        time.sleep(POLL_INTERVAL_S)  # gevent-patched: yields to other users
        status = get_status(user, job_id)
        if status in FINISHED:
            break
    error = None if status == "success" else f"job ended {status or 'unfinished'}"
    record_job(user, "job_completion", started_at, error)
    if len(body["items"]) == 10:
        record_job(user, "batch_10_completion", started_at, error)
    if status in FINISHED:
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
