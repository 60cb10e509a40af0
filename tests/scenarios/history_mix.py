"""history_mix: results of one finished 10-item job (3 in 5 requests), its status and health, so
a short run has enough requests on each endpoint for its median (tests/test_history.py)."""
import random
import time

from locust import HttpUser, constant, task

from perfkit.scenarios.research import (
    create_job,
    get_results,
    get_status,
    make_job_body,
    wait_for_job,
)


class MixUser(HttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        self.job_id: str | None = None

    def _job(self) -> str | None:
        if self.job_id is None:
            self.job_id = create_job(self, make_job_body(random.Random(), items=10))
            if self.job_id is not None:
                wait_for_job(self, self.job_id, time.time(), 60.0, 0.5)
        return self.job_id

    @task
    def health(self) -> None:
        self.client.get("/api/v1/health", name="/api/v1/health")

    @task
    def status(self) -> None:
        job_id = self._job()
        if job_id is not None:
            get_status(self, job_id)

    @task(3)
    def results(self) -> None:
        job_id = self._job()
        if job_id is not None:
            get_results(self, job_id)
