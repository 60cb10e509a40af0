"""The master's merge of its workers' histograms is exact: with 20 workers (simulated, on
Locust's protocol: tests/simulated_workers.py) reporting 20 endpoints every 3 s to a real
`perfkit load` master, and with real Recorders handing reports to one another."""

import json
import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from perfkit import rundir
from perfkit.analysis import stats
from perfkit.run.recorder import Recorder
from tests.targets import FIXED_DELAY, running_target
from tests.worker_ledger import (
    Ledger,
    compare,
    endpoint_paths,
    make_pool,
    master_argv,
    simulator_argv,
)

REPO = Path(__file__).resolve().parent.parent


def test_twenty_workers_merge_exactly_into_the_run_directory(tmp_path: Path) -> None:
    port, out, sent_path = _free_port(), tmp_path / "run", tmp_path / "sent.json"
    with running_target(FIXED_DELAY, "--delay-ms", "0") as (url, _), \
            (tmp_path / "master.log").open("wb") as log:
        master = subprocess.Popen(master_argv(url, port, 20, 7, out), cwd=REPO, stdout=log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            simulated = subprocess.run(simulator_argv(port, 20, sent_path, requests_per_s=40),
                                       cwd=REPO, capture_output=True, text=True, timeout=120)
            code = master.wait(60)
        finally:
            if master.poll() is None:
                master.kill()
                master.wait(10)
    assert simulated.returncode == 0, simulated.stdout + simulated.stderr
    output = (tmp_path / "master.log").read_text()
    assert code in (0, 1), output  # 1: the simulated error rate (1 %) fails its KPI
    run = rundir.load_run(out)
    assert run.meta.status == "completed", run.meta.message
    assert len(run.meta.distributed["workers"]) == 20 and run.meta.distributed["lost"] == 0
    # Something to merge: every endpoint, over several seconds, and most buckets hold a
    # histogram from each of the 20 workers.
    ledger, pool = Ledger.load(sent_path), make_pool(requests_per_s=40)
    assert {name for _, name in ledger.sent} == {f"GET {path}" for path in endpoint_paths(20)}
    assert len({t for t, _ in ledger.sent}) >= 6
    assert sum(len(sent) == 20 for sent in ledger.sent.values()) >= 5 * 20
    assert compare(run.latency, ledger, pool) == []
    load = json.loads((out / rundir.RUN_JSON).read_text())["load"]
    assert load["complete"] == ledger.requests(pool) > 0


@pytest.mark.parametrize("workers", [1, 3])
def test_merged_worker_reports_equal_one_recorder_of_every_request(workers: int) -> None:
    """Real Recorders: `workers` record parts of the same requests and hand their reports to
    a master's; its buckets and totals equal those of one recorder that saw every request,
    to the encoded histogram, with the extremes and percentiles the live view reads."""
    rng = np.random.default_rng(workers)
    alone, master = Recorder(None), Recorder(None)
    parts = [Recorder(None) for _ in range(workers)]
    names = ["/a", "/b", "/c"]
    for index, latency_ms in enumerate(rng.lognormal(np.log(30.0), 1.5, 3000).tolist()):
        name, failed = names[index % 3], index % 17 == 0
        for recorder in (alone, parts[index % workers]):
            recorder.on_request("GET", name, latency_ms, RuntimeError() if failed else None)
    for part in parts:
        part.stopped = True  # the last report takes every bucket
        report: dict = {}
        part.on_report_to_master("worker", report)
        master.on_worker_report("worker", report)
    assert sorted(master.buckets) == sorted(alone.buckets)
    for key, tally in alone.buckets.items():
        assert master.buckets[key].record(*key) == tally.record(*key)
    for name, tally in alone.totals.items():
        merged = master.totals[name]
        assert (merged.count, merged.failures) == (tally.count, tally.failures)
        assert stats.encode_histogram(merged.hist) == stats.encode_histogram(tally.hist)
        assert stats.summarize_histogram(merged.hist) == stats.summarize_histogram(tally.hist)
        assert stats.min_ms(merged.hist) == stats.min_ms(tally.hist)
        assert stats.max_ms(merged.hist) == stats.max_ms(tally.hist)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
