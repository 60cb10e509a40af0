"""health: GET /api/v1/health as fast as the target answers (what `ab -c 10` measures)."""

from locust import HttpUser, constant, task


class HealthUser(HttpUser):
    wait_time = constant(0)

    @task
    def health(self) -> None:
        self.client.get("/api/v1/health", name="/api/v1/health")
