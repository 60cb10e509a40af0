"""one_request: one GET /work per iteration, nothing else (tests/test_openloop.py counts each
at the target). --rate paces it; without it, each user sends the next as soon as one returns."""

from locust import HttpUser, constant, task


class OneRequestUser(HttpUser):
    wait_time = constant(0)

    @task
    def work(self) -> None:
        self.client.get("/work", name="/work")
