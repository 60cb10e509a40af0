"""Open (constant-arrival-rate) load on top of any Locust user class.

Each user owns an evenly spaced schedule of intended start times (users / rate seconds apart,
as wrk2 paces each connection), starting once its `on_start` is done: setup (a login, a
fixture) is not part of the schedule. A user that falls behind starts its next iteration at
once, and the first request of that iteration is measured from its intended start
(recorder.INTENDED_AT), so the time it spent queued behind a slow target shows in the
percentiles instead of being silently omitted (coordinated omission).

Only the lateness the target caused is charged, though. Each user keeps the lateness its own
time would have caused (the flow's sleeps, think time and CPU beyond its share of the rate,
as if every response had been instant). While that is zero, the whole backlog is the
target's: a stall delays every iteration after it until the user catches up, and each of them
is charged. Once the flow alone cannot keep the schedule (it sleeps 1 s per iteration with a
0.1 s share), the schedule is out of reach whatever the target does: nothing is charged, and
each request counts its own response time only. That lateness is the generator's:
counted (`Lateness`), reported, never added to a request's latency. `--users` is the
concurrency cap: more users, more slots in flight.
"""

import time
from typing import Any

from locust import User

from .recorder import INTENDED_AT, LATE_SHARE, WAITED, Lateness


def make_open_loop(user_class: type[User], rate: float, users: int,
                   lateness: Lateness) -> type[User]:
    """`user_class` paced so that `users` of it together start `rate` iterations per second."""
    interval_s = users / rate

    def on_start(self: Any) -> None:
        user_class.on_start(self)
        now = time.time()
        self._perfkit_intended_at = self._perfkit_started_at = now
        self._perfkit_next_at = now + interval_s
        self._perfkit_waited = [0.0]
        self._perfkit_own_late_s = self._perfkit_target_late_s = 0.0

    def wait_time(self: Any) -> float:
        intended_at = self._perfkit_next_at
        self._perfkit_next_at = intended_at + interval_s
        now = time.time()
        waited_s, self._perfkit_waited = self._perfkit_waited[0], [0.0]
        own_s = max(0.0, now - self._perfkit_started_at - waited_s)
        late_s = now - intended_at
        lateness.iterations += 1
        if late_s <= 0:
            self._perfkit_own_late_s = self._perfkit_target_late_s = 0.0
            self._perfkit_intended_at = self._perfkit_started_at = intended_at
            return -late_s
        self._perfkit_own_late_s = max(0.0, self._perfkit_own_late_s + own_s - interval_s)
        debt_s = 0.0 if self._perfkit_own_late_s > 0 else \
            self._perfkit_target_late_s + waited_s
        charged_s = self._perfkit_target_late_s = min(late_s, debt_s)
        self._perfkit_intended_at = now - charged_s
        self._perfkit_started_at = now
        if late_s - charged_s > LATE_SHARE * interval_s:
            lateness.late_iterations += 1
            lateness.generator_lateness_s += late_s - charged_s
        return 0.0

    def context(self: Any) -> dict:
        base = user_class.context(self)
        waited = getattr(self, "_perfkit_waited", None)
        if waited is None:
            return base
        extra: dict[str, Any] = {WAITED: waited}
        if self._perfkit_intended_at is not None:
            extra[INTENDED_AT] = self._perfkit_intended_at
            self._perfkit_intended_at = None  # only an iteration's first request was scheduled
        return {**base, **extra}

    return type(user_class.__name__, (user_class,), {
        "on_start": on_start, "wait_time": wait_time, "context": context,
        "__module__": user_class.__module__,
    })
