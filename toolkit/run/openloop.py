"""Open (constant-arrival-rate) load on top of any Locust user class.

R iterations per second arrive in all, spread over time as an arrival-rate executor spreads
them (`Arrivals`): each user keeps a schedule of its own, one start every users / R seconds on
average (as wrk2 paces each connection), and the users' schedules interleave instead of
starting together. Evenly (the default), user k's starts are the slots phase_k + n * interval
of the wall clock, phase_k = k / R, so the run's starts fall 1 / R apart; with Poisson
arrivals each user's gaps are exponential with the same mean, and the users together make a
Poisson process of rate R. A user's first start is its first slot after its `on_start`:
setup (a login, a fixture) is not part of the schedule. A user that falls behind starts its
next iteration at once, and the first request of that iteration is measured from its intended
start (recorder.INTENDED_AT), so the time it spent queued behind a slow target shows in the
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

A ramp (perfkit stress) changes the rate and the users at each step (`set_pace`); each user
takes the new pace from its next iteration on.
"""

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

from locust import User
from locust.env import Environment

from .recorder import INTENDED_AT, LATE_SHARE, WAITED, Lateness

# The current (rate, users) of a ramp, in Locust's parsed options: a master sends those to its
# workers with every spawn message, so workers take each step's pace with its users.
PACE_OPTION = "perfkit_pace"


def set_pace(env: Environment, users: int, rate: float | None) -> None:
    """From now on, `users` users of the open load together start `rate` iterations/s."""
    if rate is not None and env.parsed_options is not None:
        setattr(env.parsed_options, PACE_OPTION, [rate, users])


@dataclass
class Arrivals:
    """The schedule every open-loop user of one process draws from: `rate` starts per second
    in all by `users` users (the whole run's, workers included). One per run, shared by all
    user classes (and by both arms of a simultaneous A/B trial), so that their users take
    distinct indexes and therefore distinct phases."""

    rate: float
    users: int
    mode: str = "even"  # config.ARRIVALS
    # Processes sharing the users: a worker's j-th user is user j * worker_count +
    # worker_index of the run (Locust gives each worker its index, 0..N-1), so users of
    # different workers never share a phase, and the wall clock lines their slots up. (A
    # worker beyond the count the master expected shares phases with others: pairs of
    # starts, never all users at once.)
    worker_count: int = 1
    taken: int = 0
    rng: random.Random = field(default_factory=random.Random)

    @property
    def interval_s(self) -> float:
        return self.users / self.rate

    def take_index(self, worker_index: int) -> int:
        j, self.taken = self.taken, self.taken + 1
        return j * self.worker_count + worker_index

    def phase_s(self, index: int) -> float:
        """User `index`'s offset into the interval. Users beyond `users` (a stress ramp adds
        them at the same per-user rate, a worker given more than its share) fall between the
        earlier ones: halfway, then at the quarters... (the van der Corput sequence)."""
        lap, k = divmod(index, self.users)
        between, base = 0.0, 0.5
        while lap:
            lap, bit = divmod(lap, 2)
            between += bit * base
            base /= 2
        return (k + between) / self.rate

    def first_at(self, index: int, now: float) -> float:
        """User `index`'s first intended start, once its on_start ended at `now`."""
        if self.mode == "poisson":
            # Memoryless: a Poisson process seen from any instant waits an exponential gap.
            return now + self.rng.expovariate(1.0 / self.interval_s)
        phase = self.phase_s(index)
        return phase + math.ceil((now - phase) / self.interval_s) * self.interval_s

    def follow_pace(self, user: User) -> None:
        """Take the pace `set_pace` last gave (a stress step), if any."""
        pace = getattr(user.environment.parsed_options, PACE_OPTION, None)
        if pace:
            self.rate, self.users = float(pace[0]), int(pace[1])

    def gap_s(self) -> float:
        """The time from one intended start of a user to its next."""
        if self.mode == "poisson":
            return self.rng.expovariate(1.0 / self.interval_s)
        return self.interval_s


def make_open_loop(user_class: type[User], arrivals: Arrivals,
                   lateness: Lateness) -> type[User]:
    """`user_class` paced so that the run's users together start `arrivals.rate` iterations
    per second."""

    def on_start(self: Any) -> None:
        user_class.on_start(self)
        arrivals.follow_pace(self)
        index = arrivals.take_index(int(getattr(self.environment.runner, "worker_index", 0)))
        self._perfkit_next_at = arrivals.first_at(index, time.time())
        self._perfkit_first = True
        # Until the first slot, in Locust's own wait: a stop then ends this user at once
        # instead of waiting for it (a sleep here would hold the stop up to its timeout).
        self.wait()
        # The first iteration is measured from when it started: no backlog can precede it.
        self._perfkit_intended_at = self._perfkit_started_at = time.time()
        self._perfkit_share_s = arrivals.gap_s()
        self._perfkit_next_at += self._perfkit_share_s
        self._perfkit_waited = [0.0]
        self._perfkit_own_late_s = self._perfkit_target_late_s = 0.0

    def wait_time(self: Any) -> float:
        arrivals.follow_pace(self)
        if self._perfkit_first:
            self._perfkit_first = False
            return max(0.0, self._perfkit_next_at - time.time())
        intended_at = self._perfkit_next_at
        share_s, self._perfkit_share_s = self._perfkit_share_s, arrivals.gap_s()
        self._perfkit_next_at = intended_at + self._perfkit_share_s
        now = time.time()
        waited_s, self._perfkit_waited = self._perfkit_waited[0], [0.0]
        own_s = max(0.0, now - self._perfkit_started_at - waited_s)
        late_s = now - intended_at
        lateness.iterations += 1
        if late_s <= 0:
            self._perfkit_own_late_s = self._perfkit_target_late_s = 0.0
            self._perfkit_intended_at = self._perfkit_started_at = intended_at
            return -late_s
        self._perfkit_own_late_s = max(0.0, self._perfkit_own_late_s + own_s - share_s)
        debt_s = 0.0 if self._perfkit_own_late_s > 0 else \
            self._perfkit_target_late_s + waited_s
        charged_s = self._perfkit_target_late_s = min(late_s, debt_s)
        self._perfkit_intended_at = now - charged_s
        self._perfkit_started_at = now
        # Jitter is judged against the mean interval: a Poisson gap can be a few ms.
        if late_s - charged_s > LATE_SHARE * arrivals.interval_s:
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
