"""What perfkit's exact recording costs the load generator.

One Locust process (this one) drives a fast local target (tests/targets/fixed_delay.py, no
delay) as hard as it can, alternating rounds without and with perfkit's Recorder attached
(A B A B ...), and prints requests per second of each and their ratio. The target runs in its
own process, so on a 2-core machine each side has a core.

    .venv/bin/python bench/recording_cost.py [--rounds 4] [--round-s 8] [--users 20]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gevent
from locust import FastHttpUser, HttpUser, constant, task
from locust.env import Environment

from perfkit.run.recorder import Recorder

ROOT = Path(__file__).resolve().parent.parent


class Requests(HttpUser):
    wait_time = constant(0)

    @task
    def get(self) -> None:
        self.client.get("/api/v1/health", name="/api/v1/health")


class Fast(FastHttpUser):
    wait_time = constant(0)

    @task
    def get(self) -> None:
        self.client.get("/api/v1/health", name="/api/v1/health")


def run_round(user_class: type, url: str, users: int, seconds: float, record: bool) -> float:
    env = Environment(user_classes=[user_class], host=url)
    if record:
        with tempfile.TemporaryDirectory() as tmp:
            recorder = Recorder(Path(tmp) / "latency.jsonl")
            recorder.attach(env)
            return _drive(env, users, seconds, recorder)
    return _drive(env, users, seconds, None)


def _drive(env: Environment, users: int, seconds: float, recorder: Recorder | None) -> float:
    runner = env.create_local_runner()
    runner.start(users, spawn_rate=users)
    gevent.sleep(1.0)  # let every user start before counting
    before = env.stats.total.num_requests
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        gevent.sleep(1.0)
        if recorder is not None:
            recorder.flush()  # as the runner does every second
    rps = (env.stats.total.num_requests - before) / (time.perf_counter() - started)
    runner.quit()
    if recorder is not None:
        recorder.flush(final=True)
    return rps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--round-s", type=float, default=8.0)
    parser.add_argument("--users", type=int, default=20)
    args = parser.parse_args()
    target = subprocess.Popen([sys.executable, str(ROOT / "tests/targets/fixed_delay.py"),
                               "--delay-ms", "0", "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert target.stdout is not None
        url = target.stdout.readline().strip()
        print(f"target {url} (fixed_delay.py, no delay); {args.users} users, "
              f"{args.rounds} rounds of {args.round_s:.0f} s per arm, one Locust process")
        print(f"{'client':<14} {'without rps':>12} {'with rps':>10} {'ratio':>7}")
        for user_class in (Requests, Fast):
            without, with_ = [], []
            for _ in range(args.rounds):
                without.append(run_round(user_class, url, args.users, args.round_s, False))
                with_.append(run_round(user_class, url, args.users, args.round_s, True))
            a, b = statistics.median(without), statistics.median(with_)
            print(f"{user_class.__mro__[1].__name__:<14} {a:12.0f} {b:10.0f} {b / a:7.3f}")
    finally:
        target.kill()
        target.wait()


if __name__ == "__main__":
    main()
