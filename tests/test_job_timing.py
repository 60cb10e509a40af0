"""Job completion times are the job's, not the poll interval's (issue 20): real `perfkit load`
runs of the research scenario against tests/targets/envelope.py, whose jobs end a known time
after their create, with and without the job's timestamps in its answers, in both shapes."""

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from perfkit import rundir
from perfkit.analysis import stats
from perfkit.report import rebuild_report
from perfkit.run.recorder import JOB_TIMESTAMPS, JobTiming
from tests.synthetic import RunSpec, make_run
from tests.targets import ENVELOPE, running_target

USERS = 4
CREATE = "POST /api/v1/research/products"
STATUS = "GET /api/v1/research/products/{id}/status"
STOP_TIMEOUT_S = 12.0
# HdrHistogram keeps 3 significant digits: a 2 s value is exact to 2 ms.
HISTOGRAM_S = 0.005


@dataclass(frozen=True)
class Case:
    job_s: float
    target_args: tuple[str, ...]
    load_args: tuple[str, ...] = ()
    duration_s: float = 6.0


CASES = {
    # The original backend: envelope, ISO timestamps without zone in the answers, and jobs of
    # 2.04 s, which a poll every 2 s reported at 4.03 s.
    "envelope, timestamps": Case(2.04, ("--job-ms", "2040")),
    "envelope, no timestamps": Case(2.04, ("--job-ms", "2040", "--timestamps", "none")),
    # The bundled service's shape, with the timestamps only in the results answer (as the
    # bundled service had them before), from two worker processes.
    "flat, timestamps in results": Case(0.7, ("--job-ms", "700", "--shape", "flat",
                                              "--timestamps", "results"),
                                        ("--workers", "2"), 5.0),
    "flat, no timestamps": Case(0.7, ("--job-ms", "700", "--shape", "flat",
                                      "--timestamps", "none"), duration_s=5.0),
    # Jobs longer than the run, with a graceful stop: the users must not poll on until the
    # stop timeout.
    "stop": Case(60.0, ("--job-ms", "60000"), ("--stop-timeout", f"{STOP_TIMEOUT_S:.0f}s"),
                 3.0),
}


@dataclass(frozen=True)
class Run:
    directory: Path
    returncode: int
    stderr: str


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    """Every case's run, all at once: a few seconds of load each, one wait for all of them
    (most of a run's time is starting perfkit and writing its report)."""
    out = tmp_path_factory.mktemp("job-timing")
    with ExitStack() as stack:
        started = {}
        for name, case in CASES.items():
            url, _ = stack.enter_context(running_target(ENVELOPE, *case.target_args))
            directory = out / name.replace(",", "").replace(" ", "-")
            process = subprocess.Popen(
                [sys.executable, "-m", "perfkit", "load", "--target", url,
                 "--scenario", "research", "--users", str(USERS), "--spawn-rate", str(USERS),
                 "--duration", f"{case.duration_s:g}s", "--warmup", "0s", *case.load_args,
                 "--out", str(directory)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            started[name] = (process, directory)
        finished = {}
        for name, (process, directory) in started.items():
            _, stderr = process.communicate(timeout=120)
            finished[name] = Run(directory, process.returncode, stderr)
    yield finished


def job_values_s(directory: Path) -> tuple[float, float, int]:
    """The smallest and largest job_completion recorded over the whole run, and the count."""
    latency = rundir.load_run(directory).latency
    jobs = latency[latency["name"] == "job_completion"]
    hist = stats.merge_histograms(jobs["hist"].tolist())
    low, high = stats.min_ms(hist), stats.max_ms(hist)
    assert low is not None and high is not None
    return low / 1000.0, high / 1000.0, int(jobs["count"].sum())


def summary_of(directory: Path) -> dict[str, Any]:
    return dict(json.loads((directory / "summary.json").read_text()))


def assert_clean(run: Run) -> dict[str, Any]:
    # A KPI may fail on a busy machine (exit 1); what is asserted here is the job times.
    assert run.returncode in (0, 1), run.stderr
    assert "Traceback" not in run.stderr
    summary = summary_of(run.directory)
    assert summary["totals"]["failures"] == 0, summary["endpoints"]
    return summary


@pytest.mark.parametrize("name", ["envelope, timestamps", "flat, timestamps in results"])
def test_jobs_are_timed_from_their_own_timestamps(runs: dict[str, Run], name: str) -> None:
    run, job_s = runs[name], CASES[name].job_s
    summary = assert_clean(run)
    low, high, count = job_values_s(run.directory)
    assert count >= 2
    # Before: every job at the next 2 s poll (2.0x s for 0.7 s jobs, 4.0x s for 2.04 s jobs).
    assert job_s - 0.1 <= low <= high <= job_s + 0.1, (low, high)
    job = summary["jobs"]["job_completion"]
    assert job["timing"] == {"timestamps": count, "polling": 0, "resolution_s_median": None,
                             "resolution_s_max": None}
    assert rundir.load_run(run.directory).meta.load["job_timing"]["job_completion"] == \
        job["timing"]
    report = (run.directory / "report.html").read_text()
    assert "<td>from the job&#39;s timestamps</td>" in report


@pytest.mark.parametrize("name", ["envelope, no timestamps", "flat, no timestamps"])
def test_without_timestamps_jobs_are_timed_by_polling_within_the_stated_resolution(
        runs: dict[str, Run], name: str) -> None:
    run, job_s = runs[name], CASES[name].job_s
    summary = assert_clean(run)
    low, high, count = job_values_s(run.directory)
    assert count >= 2
    timing = summary["jobs"]["job_completion"]["timing"]
    assert (timing["timestamps"], timing["polling"]) == (0, count)
    resolution_s = timing["resolution_s_max"]
    # Polls back off to a fifth of the time elapsed: ± a tenth of the job's time, and half
    # the latency of the poll that saw it finished (a 2 s poll interval would be ± 1 s).
    status_s = summary["endpoints"][STATUS]["max_ms"] / 1000.0
    assert 0.0 < timing["resolution_s_median"] <= resolution_s <= 0.1 * job_s + status_s + 0.1
    # The job ends job_s after the target handled its create, which the recorded time also
    # counts from the create's send: up to one create latency more.
    create_s = summary["endpoints"][CREATE]["max_ms"] / 1000.0
    assert job_s - resolution_s - HISTOGRAM_S <= low, (low, resolution_s)
    assert high <= job_s + resolution_s + create_s + HISTOGRAM_S, (high, resolution_s, create_s)
    report = (run.directory / "report.html").read_text()
    assert "<td>from polling, ±" in report


def test_a_stopping_user_stops_polling_and_records_no_unfinished_job(
        runs: dict[str, Run]) -> None:
    run, duration_s = runs["stop"], CASES["stop"].duration_s
    assert run.returncode in (0, 1), run.stderr
    assert "Traceback" not in run.stderr
    result = rundir.load_run(run.directory)
    latency, meta = result.latency, result.meta
    polls = latency[latency["name"] == STATUS]
    assert polls["count"].sum() > 0 and "job_completion" not in set(latency["name"])
    # Polling on would have gone on through the stop timeout (every 2 s, each poll
    # recorded) and held the run at its end that long.
    load_end = meta.started_at + duration_s
    assert polls["t"].max() <= load_end + 3, (polls["t"].max() - meta.started_at)
    assert meta.ended_at is not None and meta.ended_at - load_end < STOP_TIMEOUT_S / 2
    assert summary_of(run.directory)["jobs"] == {}


def test_the_job_timing_tally_merges_and_states_its_resolution() -> None:
    worker, master = JobTiming(), JobTiming()
    for how in (JOB_TIMESTAMPS, 0.05, 0.2, 0.2001, 1.0):
        worker.count("job_completion", how)
    worker.count("batch_10_completion", JOB_TIMESTAMPS)
    master.count("job_completion", 0.07)
    shipped = json.loads(json.dumps(worker.take()))  # what a worker report carries
    assert worker.take() == {}
    master.add(shipped)
    assert master.describe() == {
        "batch_10_completion": {"timestamps": 1, "polling": 0, "resolution_s_median": None,
                                "resolution_s_max": None},
        # Resolutions rounded up to 10 ms: 0.05, 0.07, 0.2, 0.21, 1.0 -> median 0.2, max 1.0.
        "job_completion": {"timestamps": 1, "polling": 5, "resolution_s_median": 0.2,
                           "resolution_s_max": 1.0},
    }


def test_a_run_directory_from_before_job_timing_shows_none(tmp_path: Path) -> None:
    make_run(tmp_path / "old", RunSpec(duration_s=10, job_completion_s=2.0))  # no "load"
    rebuild_report(tmp_path / "old")
    job = summary_of(tmp_path / "old")["jobs"]["job_completion"]
    assert job["count"] > 0 and job["timing"] is None
    report = (tmp_path / "old" / "report.html").read_text()
    assert "from polling" not in report and "from the job&#39;s timestamps" not in report
