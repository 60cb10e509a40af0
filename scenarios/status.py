"""status: each user creates one small job, then reads its status with no think time."""

import random

from locust import HttpUser, constant, task

from perfkit.scenarios.research import create_job, get_status, make_job_body


class StatusUser(HttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        self.job_id = create_job(self, make_job_body(random.Random(), items=1))

    @task
    def status(self) -> None:
        if self.job_id is not None:
            get_status(self, self.job_id)
