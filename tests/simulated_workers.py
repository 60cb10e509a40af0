"""Simulated perfkit workers: Locust's master/worker protocol without generating any load.

Each is what `perfkit worker` is to its master, on the wire: it asks the master for the setup
(`perfkit_setup`), joins with Locust's `client_ready`, says who it is (`perfkit_worker_info`),
heartbeats every second, answers `spawn` with `spawning` and `spawning_complete`, sends a stats
report every 3 s (Locust's WORKER_REPORT_INTERVAL) with Locust's own stats, errors and user
counts and perfkit's closed 1-s buckets (REPORT_KEY: one encoded HDR histogram per endpoint and
second, from tests/worker_ledger.py's pool), and on `quit` sends its last report (every bucket,
the current second too, as a stopped worker does) and quits. Many share this one gevent
process, each with its own ZeroMQ connection and identity, as separate machines would.

Run as a process of its own (Locust monkey-patches it); prints `spawned` once the master
starts the load, and writes what was sent to --ledger when every worker has quit:

    python -m tests.simulated_workers --master 127.0.0.1:5557 --workers 20 --ledger sent.json
"""

import locust  # noqa: F401, I001  (first: Locust monkey-patches the standard library)

import argparse
import os
import random
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import gevent
from locust.rpc import Message, rpc
from locust.stats import RequestStats, StatsEntry, StatsError

from perfkit.run import distributed
from perfkit.run.recorder import (INTERRUPTED_KEY, JOB_TIMING_KEY, LATENESS_KEY, REPORT_KEY,
                                  request_name)
from tests.worker_ledger import Ledger, Pool, endpoint_paths, make_pool

REPORT_INTERVAL_S = 3.0  # locust.runners.WORKER_REPORT_INTERVAL
HEARTBEAT_INTERVAL_S = 1.0  # locust.runners.HEARTBEAT_INTERVAL


def locust_entries(pool: Pool) -> list[StatsEntry]:
    """Each pool entry as Locust's stats of the same requests (Locust ships response times
    rounded, a count per rounded value)."""
    entries = []
    for values, failures in zip(pool.latencies_ms, pool.failures.tolist(), strict=True):
        entry = StatsEntry(RequestStats(), "pool", "GET")
        for value in values:
            entry.log(round(value), 0)
        for _ in range(failures):
            entry.log_error(None)
        entry.num_reqs_per_sec, entry.num_fail_per_sec = {}, {}  # set per report
        entries.append(entry)
    return entries


class SimulatedWorker:
    def __init__(self, host: str, port: int, pool: Pool, entries: list[StatsEntry],
                 paths: list[str], ledger: Ledger, seed: int) -> None:
        self.host, self.port, self.pool, self.entries = host, port, pool, entries
        self.paths, self.ledger = paths, ledger
        self.random = random.Random(seed)
        self.client_id = f"{socket.gethostname()}_sim_{uuid.uuid4().hex}"
        self.client: Any = None
        self.state = "ready"
        self.user_classes_count: dict[str, int] = {}
        self.next_t: int | None = None  # the first second not yet reported
        self.quit = False
        self.greenlets: list[gevent.Greenlet] = []

    def run(self, connect_timeout_s: float = 60.0) -> None:
        """Join the master and follow it until it says quit."""
        setup = distributed.fetch_setup(self.host, self.port, connect_timeout_s)
        if not setup.get("ok"):
            raise RuntimeError(f"the master refused a simulated worker: {setup.get('reason')}")
        self.client = rpc.Client(self.host, self.port, self.client_id)
        try:
            self.send("client_ready", locust.__version__)
            self.send(distributed.WORKER_INFO, {
                "hostname": socket.gethostname(), "addresses": [], "pid": os.getpid(),
                "perfkit": distributed.perfkit_version()})
            self.greenlets.append(gevent.spawn(self.heartbeat))
            while not self.quit:
                self.handle(self.client.recv())
        finally:
            gevent.killall(self.greenlets)
            self.client.close(linger=1000)

    def send(self, kind: str, data: Any) -> None:
        self.client.send(Message(kind, data, self.client_id))

    def handle(self, msg: Message) -> None:
        if msg.type == "spawn":
            self.send("spawning", None)
            self.user_classes_count = dict(msg.data["user_classes_count"])
            self.send("spawning_complete", {"user_classes_count": self.user_classes_count,
                                            "user_count": sum(self.user_classes_count.values())})
            if self.next_t is None:
                if self.ledger.spawned_at is None:
                    self.ledger.spawned_at = time.time()
                    print(f"spawned {self.ledger.spawned_at}", flush=True)
                self.next_t = int(time.time())
                self.greenlets.append(gevent.spawn(self.report_every_interval))
            self.state = "running"
        elif msg.type == "quit":
            gevent.killall(self.greenlets)
            self.greenlets = []
            if self.next_t is not None:
                self.report(int(time.time()) + 1)
            self.send("quit", None)
            self.quit = True
            self.ledger.workers_quit += 1

    def heartbeat(self) -> None:
        while True:
            self.send("heartbeat", {"state": self.state, "current_cpu_usage": 10.0,
                                    "current_memory_usage": 80_000_000})
            gevent.sleep(HEARTBEAT_INTERVAL_S)

    def report_every_interval(self) -> None:
        # Real workers start at different moments: their reports do not come in step.
        gevent.sleep(self.random.uniform(0, REPORT_INTERVAL_S))
        while True:
            self.report(int(time.time()))
            gevent.sleep(REPORT_INTERVAL_S)

    def report(self, until_t: int) -> None:
        """A stats report with every second from next_t up to (not including) until_t."""
        assert self.next_t is not None
        seconds = range(self.next_t, until_t)
        self.next_t = max(self.next_t, until_t)
        locust_stats = RequestStats()
        total = StatsEntry(locust_stats, "Aggregated", "")
        entries, errors, records = [], {}, []
        for path in self.paths if seconds else []:
            name = request_name("GET", path)
            entry = StatsEntry(locust_stats, path, "GET")
            per_s, fail_per_s = {}, {}
            for t in seconds:
                index = self.random.randrange(len(self.pool.encoded))
                count, failures = int(self.pool.counts[index]), int(self.pool.failures[index])
                records.append({"t": t, "name": name, "count": count, "failures": failures,
                                "hist": self.pool.encoded[index]})
                self.ledger.sent[(t, name)].append(index)
                entry.extend(self.entries[index])
                per_s[t], fail_per_s[t] = count, failures
            entry.num_reqs_per_sec, entry.num_fail_per_sec = per_s, fail_per_s
            entry.last_request_timestamp = seconds[-1] + 0.5
            entry.start_time = float(seconds[0])
            total.extend(entry)
            if entry.num_failures:
                error = "HTTPError('500 Server Error')"
                errors[StatsError.create_key("GET", path, error)] = StatsError(
                    "GET", path, error, entry.num_failures).serialize()
            entries.append(entry.serialize())
        self.ledger.reports.append(time.time())
        self.send("stats", {
            "stats": entries, "stats_total": total.serialize(), "errors": errors,
            "user_count": sum(self.user_classes_count.values()),
            "user_classes_count": self.user_classes_count,
            JOB_TIMING_KEY: {}, REPORT_KEY: records,
            LATENESS_KEY: {"iterations": 0, "late_iterations": 0, "generator_lateness_s": 0.0},
            INTERRUPTED_KEY: 0})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--master", required=True, help="HOST:PORT")
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--endpoints", type=int, default=20)
    parser.add_argument("--requests-per-s", type=float, default=50.0,
                        help="per endpoint and worker: the pool's histograms (make_pool)")
    parser.add_argument("--pool-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ledger", type=Path, required=True)
    parser.add_argument("--timeout-s", type=float, default=300.0)
    args = parser.parse_args(argv)
    host, _, port = args.master.rpartition(":")
    pool = make_pool(args.pool_size, args.requests_per_s, args.seed)
    entries = locust_entries(pool)
    paths, ledger = endpoint_paths(args.endpoints), Ledger()
    workers = [SimulatedWorker(host, int(port), pool, entries, paths, ledger, seed=index)
               for index in range(args.workers)]
    greenlets = [gevent.spawn(worker.run) for worker in workers]
    try:
        gevent.joinall(greenlets, timeout=args.timeout_s, raise_error=True)
    finally:
        gevent.killall(greenlets)
        ledger.save(args.ledger)
    print(f"{ledger.workers_quit} of {args.workers} workers quit", flush=True)
    return 0 if ledger.workers_quit == args.workers else 1


if __name__ == "__main__":
    sys.exit(main())
