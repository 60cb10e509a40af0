"""one_request_fast: one_request on Locust's FastHttpUser (geventhttpclient)."""

from locust import FastHttpUser, constant, task


class OneRequestFastUser(FastHttpUser):
    wait_time = constant(0)

    @task
    def work(self) -> None:
        self.client.get("/work", name="/work")
