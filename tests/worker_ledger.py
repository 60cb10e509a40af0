"""What simulated workers (tests/simulated_workers.py) send a master, the command lines of
both, and the check that the master wrote exactly what was sent. No Locust here: importing it
would monkey-patch the test process.

The workers' 1-s histograms are drawn from a pool made once from a seed (encoding thousands of
histograms a second would make the simulator, not the master, the bottleneck); the simulator
and the checker make the same pool from the same seed. The ledger lists, per bucket (t, name),
the pool entries the workers sent for it, so the expected merge is exact, cell by cell.
"""

import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from perfkit.analysis import stats

FAILURE_SHARE = 0.01


def master_argv(url: str, port: int, workers: int, duration_s: int, out: Path) -> list[str]:
    """A perfkit master as a distributed run starts it, waiting for `workers` on 127.0.0.1."""
    return [sys.executable, "-m", "perfkit", "load", "--target", url, "--scenario", "health",
            "-u", str(workers), "-r", str(workers), "-t", f"{duration_s}s", "--warmup", "0s",
            "--stop-timeout", "3s", "--master-bind-host", "127.0.0.1",
            "--master-bind-port", str(port), "--expect-workers", str(workers),
            "--expect-workers-timeout", "120s", "--history", "off", "--out", str(out)]


def simulator_argv(port: int, workers: int, ledger: Path, endpoints: int = 20,
                   requests_per_s: float = 50.0) -> list[str]:
    return [sys.executable, "-m", "tests.simulated_workers", "--master", f"127.0.0.1:{port}",
            "--workers", str(workers), "--endpoints", str(endpoints),
            "--requests-per-s", str(requests_per_s), "--ledger", str(ledger)]


def endpoint_paths(count: int) -> list[str]:
    return [f"/api/e{index:02d}" for index in range(count)]


@dataclass
class Pool:
    """One second of one endpoint's requests on one worker, `size` ways: the latencies, the
    encoded histogram, its counts and its dense counts array."""

    latencies_ms: list[list[float]]
    encoded: list[str]
    counts: np.ndarray
    failures: np.ndarray
    dense: np.ndarray  # [entry, histogram cell]


def make_pool(size: int = 64, requests_per_s: float = 50.0, seed: int = 1) -> Pool:
    rng = np.random.default_rng(seed)
    latencies, encoded, counts, failures = [], [], [], []
    for _ in range(size):
        count = max(1, int(rng.poisson(requests_per_s)))
        # Endpoints differ: medians 2 ms..400 ms, some with long tails.
        values = rng.lognormal(np.log(rng.uniform(2.0, 400.0)), rng.uniform(0.2, 1.2),
                               count).tolist()
        hist = stats.new_histogram()
        for value in values:
            stats.record_ms(hist, value)
        latencies.append(values)
        encoded.append(stats.encode_histogram(hist))
        counts.append(count)
        failures.append(int(rng.binomial(count, FAILURE_SHARE)))
    rows, cells, cell_counts = stats.decode_cells(encoded)
    dense = np.zeros((size, stats.new_histogram().counts_len), np.int64)
    np.add.at(dense, (rows, cells), cell_counts)
    return Pool(latencies, encoded, np.array(counts), np.array(failures), dense)


@dataclass
class Ledger:
    """What the simulated workers sent: per bucket (t, name) the pool entries reported for it,
    when each stats report left, and when the first worker was told to spawn."""

    sent: dict[tuple[int, str], list[int]] = field(default_factory=lambda: defaultdict(list))
    reports: list[float] = field(default_factory=list)
    spawned_at: float | None = None
    workers_quit: int = 0

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({
            "sent": [[t, name, entries] for (t, name), entries in self.sent.items()],
            "reports": self.reports, "spawned_at": self.spawned_at,
            "workers_quit": self.workers_quit}))

    @classmethod
    def load(cls, path: Path) -> "Ledger":
        data = json.loads(path.read_text())
        ledger = cls(reports=data["reports"], spawned_at=data["spawned_at"],
                     workers_quit=data["workers_quit"])
        for t, name, entries in data["sent"]:
            ledger.sent[(t, name)] = entries
        return ledger

    def requests(self, pool: Pool) -> int:
        return sum(int(pool.counts[i]) for entries in self.sent.values() for i in entries)

    def records(self) -> int:
        return sum(len(entries) for entries in self.sent.values())


def compare(latency: Any, ledger: Ledger, pool: Pool) -> list[str]:
    """Every difference between the master's latency records (a run directory's latency
    frame: t, name, count, failures, hist; one bucket may span several lines) and what the
    simulated workers sent; [] when the merge was exact."""
    written: dict[tuple[int, str], list[int]] = defaultdict(list)
    for row, (t, name) in enumerate(zip(latency["t"].tolist(), latency["name"].tolist(),
                                        strict=True)):
        written[(int(t), str(name))].append(row)
    rows, cells, cell_counts = stats.decode_cells(latency["hist"].tolist())
    order = np.argsort(rows, kind="stable")
    rows, cells, cell_counts = rows[order], cells[order], cell_counts[order]
    bounds = np.searchsorted(rows, np.arange(len(latency) + 1))
    differences = []
    for key in sorted(set(ledger.sent) | set(written)):
        if key not in written:
            differences.append(f"{key}: sent, not written")
            continue
        if key not in ledger.sent:
            differences.append(f"{key}: written, never sent")
            continue
        times = np.bincount(ledger.sent[key], minlength=len(pool.encoded))
        count, failures, dense = int(times @ pool.counts), int(times @ pool.failures), \
            times @ pool.dense
        got = np.zeros_like(dense)
        for row in written[key]:
            piece = slice(bounds[row], bounds[row + 1])
            np.add.at(got, cells[piece], cell_counts[piece])
        got_count = int(latency["count"].iloc[written[key]].sum())
        got_failures = int(latency["failures"].iloc[written[key]].sum())
        if (got_count, got_failures) != (count, failures):
            differences.append(f"{key}: count {got_count} failures {got_failures}, sent "
                               f"{count} and {failures}")
        elif not np.array_equal(got, dense):
            differing = np.flatnonzero(got != dense)
            differences.append(f"{key}: histogram differs in {differing.size} cells "
                               f"(first: cell {differing[0]})")
    return differences
