"""create: POST /api/v1/research/products with 1-10 catalogue products, no think time
(the guide's POST load test). Jobs are left to run; the service's queue grows with the load."""

import random

from locust import HttpUser, constant, task

from perfkit.scenarios.research import create_job, make_job_body


class CreateUser(HttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        self.rng = random.Random()

    @task
    def create(self) -> None:
        create_job(self, make_job_body(self.rng))
