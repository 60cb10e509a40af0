"""results: each user creates one job and waits for it (polling as research.py does, gaps of
at most 0.5 s), then reads its results with no think time (the results endpoint reads every
item: where `n_plus_one` shows)."""

import random
import time

from locust import HttpUser, constant, task

from perfkit.scenarios.research import create_job, get_results, make_job_body, wait_for_job

JOB_TIMEOUT_S = 120.0
POLL_INTERVAL_S = 0.5  # the longest gap between polls


class ResultsUser(HttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        self.rng = random.Random()
        self.job_id: str | None = None

    @task
    def results(self) -> None:
        if self.job_id is None:
            # Retried (each failure recorded) rather than skipped: a task that sends nothing
            # would spin the load generator at no think time.
            self.job_id = create_job(self, make_job_body(self.rng, items=10))
            if self.job_id is not None:
                wait_for_job(self, self.job_id, time.time(), JOB_TIMEOUT_S, POLL_INTERVAL_S)
            return
        get_results(self, self.job_id)
