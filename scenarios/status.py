"""status: each user creates one small job, then reads its status with no think time."""

import random

from locust import HttpUser, constant, task

from perfkit.scenarios.research import create_job, get_status, make_job_body


class StatusUser(HttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        self.rng = random.Random()
        self.job_id: str | None = None

    @task
    def status(self) -> None:
        if self.job_id is None:
            # The create is retried (and each failure recorded) rather than skipped: a task
            # that sends nothing would spin the load generator at no think time.
            self.job_id = create_job(self, make_job_body(self.rng, items=1))
            return
        get_status(self, self.job_id)
