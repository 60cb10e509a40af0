"""research (default): a client of the research API as the real front end uses it.

Task weights: 4 research flows to 1 health check, 1-3 s think time between tasks.
A research flow creates a job of 1-10 products drawn from the bundled catalogue, polls its
status until it finishes, then reads its results. The time from create to finished is
recorded as `job_completion` (and `batch_10_completion` for 10-product jobs).
Answers are read in the bundled service's flat shape or the original backend's envelope
(shapes.py); an answer in neither is a failed request with the reason, never a missing one.

A job's time is its own, not the poll interval's:
- where the status (or else the results) answer carries the job's timestamps, it is their
  difference (server clock, shapes.job_duration_s). The poll interval then does not matter
  to the measurement, so once an answer shows them (the create's, or the first poll's) the
  flow polls every 2 s, as the real front end does, and the flow and its mix of requests stay
  the front end's (the bundled service's create answer carries `created_at`);
- otherwise polling times it: the first poll 0.1 s after the create answered, then gaps of a
  fifth of the time elapsed since the create (at least 0.1 s, at most 2 s). The job ended
  between the last poll that saw it running (sent) and the one that saw it finished
  (answered); it is recorded at the middle of that gap, so within ± half the gap of its end
  (at most ± 10 % of its time, plus request latency). That half-gap is the stated resolution.
Each JOB record says which (recorder.JOB_TIMING); the run tallies it (run.json
`load.job_timing`) and the report shows it next to the job times.

A user asked to stop (the run's end, with a graceful `--stop-timeout`) stops polling at once
and records no completion for its job: the job did not finish within the run.
"""

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from locust import HttpUser, User, between, task
from locust.clients import ResponseContextManager
from locust.user.task import LOCUST_STATE_STOPPING

from perfkit.run.recorder import JOB_TIMESTAMPS, JOB_TIMING
from perfkit.scenarios import shapes

log = logging.getLogger(__name__)

CATALOGUE: list[dict[str, Any]] = json.loads(
    (Path(__file__).with_name("catalogue.json")).read_text("utf-8"))
PRODUCTS = "/api/v1/research/products"
POLL_INTERVAL_S = 2.0  # the longest gap between two polls of a job's status
FIRST_POLL_S = 0.1  # after the create answered
POLL_SHARE = 0.2  # each later gap: this share of the time since the create...
MIN_POLL_S = 0.1  # ... but at least this
STOP_CHECK_S = 0.1  # how soon a pausing user notices it was asked to stop
JOB_TIMEOUT_S = 300.0

T = TypeVar("T")


def make_job_body(rng: random.Random, items: int | None = None) -> dict[str, Any]:
    count = items or rng.randint(1, 10)
    return {"items": rng.sample(CATALOGUE, count), "priority": rng.randint(1, 10)}


def read_or_fail(response: ResponseContextManager, what: str,
                 read: Callable[[int, bytes | None], T]) -> T | None:
    """`read` the answer, or mark the request failed with the reason and return None.

    A request that got no answer fails with its connection error, one in neither shape with
    the ShapeError's reason. Any other exception escaping `catch_response` would leave the
    request unrecorded, so it is a failure too (and logged: it is a bug of the reader).
    """
    if response.error is not None:
        response.failure(response.error)  # no answer at all: keep the connection error's words
        return None
    try:
        return read(response.status_code, response.content)
    except shapes.ShapeError as exc:
        response.failure(f"{what}: {exc}")
    except Exception as exc:
        log.exception("%s: reading the answer failed", what)
        response.failure(f"{what}: unreadable answer ({type(exc).__name__}: {exc})")
    return None


def create_job(user: HttpUser, body: dict[str, Any]) -> str | None:
    created = post_job(user, body)
    return None if created is None else created.job_id


def post_job(user: HttpUser, body: dict[str, Any]) -> shapes.CreatedJob | None:
    with user.client.post(PRODUCTS, json=body, name=PRODUCTS, catch_response=True) as response:
        return read_or_fail(response, "create", shapes.read_created_job)


def get_status(user: HttpUser, job_id: str) -> shapes.JobStatus | None:
    with user.client.get(f"{PRODUCTS}/{job_id}/status", name=PRODUCTS + "/{id}/status",
                         catch_response=True) as response:
        return read_or_fail(response, "status", shapes.read_status)


def get_results(user: HttpUser, job_id: str) -> float | None:
    """Read a finished job's results; its duration where the answer carries its timestamps."""
    with user.client.get(f"{PRODUCTS}/{job_id}", name=PRODUCTS + "/{id}",
                         catch_response=True) as response:
        read = read_or_fail(response, "results", shapes.read_finished_results)
        return None if read is None else read[1]


@dataclass(frozen=True)
class JobWait:
    """How waiting for a job ended. `polled_s`/`resolution_s`: create → finished as polling
    saw it (the middle of the last gap between polls) and half that gap; None unless the job
    finished. `stopped`: the user was asked to stop first."""

    status: shapes.JobStatus | None  # the last status read, None if none could be
    polled_s: float | None = None
    resolution_s: float | None = None
    stopped: bool = False


def next_poll_gap_s(elapsed_s: float, max_gap_s: float, timestamps: bool) -> float:
    """The gap before the next poll, `elapsed_s` after the create was sent. With the job's
    timestamps in the answers the gap does not affect the measurement: the longest."""
    if timestamps:
        return max_gap_s
    return min(max_gap_s, max(MIN_POLL_S, POLL_SHARE * elapsed_s))


def stopping(user: User) -> bool:
    # Locust has no public "asked to stop" signal: a graceful stop marks a user running a
    # task as stopping and lets it finish the task (up to --stop-timeout), then kills it.
    return user._state == LOCUST_STATE_STOPPING


def pause(user: User, seconds: float) -> bool:
    """Sleep `seconds` (gevent-patched: yields to other users); False as soon as the user is
    asked to stop."""
    deadline = time.time() + seconds
    while not stopping(user):
        left_s = deadline - time.time()
        if left_s <= 0:
            return True
        time.sleep(min(left_s, STOP_CHECK_S))
    return False


def wait_for_job(user: HttpUser, job_id: str, started_at: float, timeout_s: float,
                 max_gap_s: float, timestamps: bool = False) -> JobWait:
    """Poll the job's status until it finishes, `timeout_s` after `started_at` (when its
    create was sent), or until the user is asked to stop. `timestamps`: the create's answer
    carried the job's creation time, so its answers are expected to time it."""
    status = None
    gap_s = max_gap_s if timestamps else FIRST_POLL_S
    running_at = started_at  # the latest time the job was known not to have finished
    while time.time() - started_at < timeout_s:
        if not pause(user, gap_s):
            return JobWait(status, stopped=True)
        sent_at = time.time()
        status = get_status(user, job_id)
        answered_at = time.time()
        if status is not None and status.status in shapes.FINISHED:
            return JobWait(status, (running_at + answered_at) / 2 - started_at,
                           (answered_at - running_at) / 2)
        if status is not None:  # an unread answer says nothing about the job
            running_at = sent_at
        timestamps = timestamps or (status is not None and status.created_at is not None)
        gap_s = next_poll_gap_s(answered_at - started_at, max_gap_s, timestamps)
    return JobWait(status)


def record_job(user: HttpUser, name: str, duration_s: float, timing: str | float | None,
               error: str | None) -> None:
    """A JOB record of `duration_s`; `timing`: how it was measured (recorder.JOB_TIMING),
    None for a job that never finished (the time waited for it is not a completion time).
    It carries the user's context as Locust's requests do, so a simultaneous A/B trial's
    arm labels its jobs too ("[A] job_completion")."""
    context = {**user.context()}  # a copy: a user class may hand out its own dict
    if timing is not None:
        context[JOB_TIMING] = timing
    user.environment.events.request.fire(
        request_type="JOB", name=name, response_time=duration_s * 1000, response_length=0,
        exception=RuntimeError(error) if error else None, context=context)


def research_flow(user: HttpUser, rng: random.Random) -> None:
    body = make_job_body(rng)
    started_at = time.time()
    created = post_job(user, body)
    if created is None:
        return  # the failed create is recorded; without a job id the flow cannot go on
    job_id = created.job_id
    wait = wait_for_job(user, job_id, started_at, JOB_TIMEOUT_S, POLL_INTERVAL_S,
                        timestamps=created.created_at is not None)
    if wait.stopped:
        return  # the run ended first: the job did not finish within it
    status = wait.status.status if wait.status is not None else None
    error = None if status in shapes.SUCCEEDED else f"job ended {status or 'unfinished'}"
    duration_s: float = time.time() - started_at
    timing: str | float | None = None
    if wait.status is not None and wait.polled_s is not None:  # it finished
        from_results_s = get_results(user, job_id)
        duration_s, timing = wait.polled_s, wait.resolution_s
        for from_timestamps_s in (wait.status.duration_s, from_results_s):
            if from_timestamps_s is not None:
                duration_s, timing = from_timestamps_s, JOB_TIMESTAMPS
                break
    record_job(user, "job_completion", duration_s, timing, error)
    if len(body["items"]) == 10:
        record_job(user, "batch_10_completion", duration_s, timing, error)


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
