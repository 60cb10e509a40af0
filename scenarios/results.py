"""results: each user creates one job and waits for it, then reads its results with no think
time (the results endpoint reads every item: where `n_plus_one` shows)."""

import random
import time

from locust import HttpUser, constant, task

from perfkit.scenarios.research import FINISHED, create_job, get_results, get_status, make_job_body


class ResultsUser(HttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        self.job_id = create_job(self, make_job_body(random.Random(), items=10))
        deadline = time.time() + 120
        while self.job_id is not None and time.time() < deadline:
            if get_status(self, self.job_id) in FINISHED:
                break
            time.sleep(0.5)

    @task
    def results(self) -> None:
        if self.job_id is not None:
            get_results(self, self.job_id)
