"""Open (constant-arrival-rate) load on top of any Locust user class.

Each user owns an evenly spaced schedule of intended start times (users / rate seconds apart,
as wrk2 paces each connection). A user that falls behind starts its next iteration at once, and
the first request of that iteration is measured from its intended start (recorder.INTENDED_AT),
so the time it spent queued behind a slow target shows in the percentiles instead of being
silently omitted. `--users` is the concurrency cap: more users, more slots in flight.
"""

import time
from typing import Any

from locust import User

from .recorder import INTENDED_AT


def make_open_loop(user_class: type[User], rate: float, users: int) -> type[User]:
    """`user_class` paced so that `users` of it together start `rate` iterations per second."""
    interval_s = users / rate

    def on_start(self: Any) -> None:
        now = time.time()
        self._perfkit_intended_at = now
        self._perfkit_next_at = now + interval_s
        user_class.on_start(self)

    def wait_time(self: Any) -> float:
        intended_at = self._perfkit_next_at
        self._perfkit_next_at = intended_at + interval_s
        self._perfkit_intended_at = intended_at
        return max(0.0, intended_at - time.time())

    def context(self: Any) -> dict:
        base = user_class.context(self)
        intended_at = getattr(self, "_perfkit_intended_at", None)
        if intended_at is None:
            return base
        self._perfkit_intended_at = None  # only an iteration's first request was scheduled
        return {**base, INTENDED_AT: intended_at}

    return type(user_class.__name__, (user_class,), {
        "on_start": on_start, "wait_time": wait_time, "context": context,
        "__module__": user_class.__module__,
    })
