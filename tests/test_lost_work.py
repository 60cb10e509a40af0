"""Lost work: research jobs accepted (201) that never reached a final state by the end of the
run (run/jobs.py), against a research API whose jobs take a known time
(tests/targets/envelope.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from perfkit.analysis.kpi import judge_kpi
from perfkit.kpi_file import load_kpi_targets
from perfkit.run import jobs
from perfkit.run.recorder import ARM, JOB_ID
from tests.targets import ENVELOPE, running_target


def perfkit(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "perfkit", *args], capture_output=True,
                          text=True, timeout=timeout)


def run_research(tmp_path: Path, job_ms: int, stop_timeout: str, duration: str = "6s") -> dict:
    run_dir = tmp_path / "run"
    with running_target(ENVELOPE, "--job-ms", str(job_ms)) as (url, _):
        result = perfkit("load", "--target", url, "--scenario", "research", "--users", "4",
                         "--duration", duration, "--warmup", "0s", "--stop-timeout", stop_timeout,
                         "--out", str(run_dir))
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return json.loads((run_dir / "summary.json").read_text())


def lost_jobs_kpi(summary: dict) -> dict:
    (kpi,) = [kpi for kpi in summary["kpis"] if kpi["metric"] == "lost_jobs"]
    return kpi


def test_jobs_that_never_end_are_lost_and_fail_the_kpi(tmp_path: Path) -> None:
    summary = run_research(tmp_path, job_ms=600_000, stop_timeout="2s")
    lost = summary["lost_work"]
    assert lost["accepted"] >= 4  # each of the 4 users created a job, none ended
    assert lost["lost"] == lost["accepted"] and lost["ended_in_run"] == 0
    assert len(lost["lost_ids"]) == min(20, lost["lost"])
    assert lost["checked_s"] <= 2.5  # bounded by the stop timeout
    kpi = lost_jobs_kpi(summary)
    assert kpi["verdict"] == "fail" and kpi["value"] == lost["lost"]


def test_jobs_that_end_after_the_stop_are_not_lost(tmp_path: Path) -> None:
    # A user stops polling at the run's end; its job, 5 s long and created in a 3 s run, ends
    # during the check. (3 s jobs in a 6 s run all ended in the run now and then on a busy
    # machine: nothing was left to check.)
    summary = run_research(tmp_path, job_ms=5000, stop_timeout="10s", duration="3s")
    lost = summary["lost_work"]
    assert lost["lost"] == 0 and lost["ended_after_stop"] == lost["accepted"] >= 1
    assert lost["ended_in_run"] + lost["ended_after_stop"] == lost["accepted"]
    assert lost_jobs_kpi(summary)["verdict"] == "pass"


def test_lost_jobs_are_missing_never_zero_where_no_job_was_accepted(tmp_path: Path) -> None:
    with running_target(ENVELOPE) as (url, _):
        result = perfkit("load", "--target", url, "--scenario", "health", "--users", "2",
                         "--duration", "3s", "--warmup", "0s", "--out", str(tmp_path / "run"))
    assert result.returncode in (0, 1), result.stdout + result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["lost_work"] is None
    kpi = lost_jobs_kpi(summary)
    assert kpi["verdict"] == "missing" and kpi["value"] is None
    assert "no research job was accepted" in kpi["reason"]


def test_the_default_lost_jobs_kpi_allows_none() -> None:
    (kpi,) = [kpi for kpi in load_kpi_targets(None) if kpi.metric == "lost_jobs"]
    assert judge_kpi(kpi, 0.0).verdict == "pass"
    assert judge_kpi(kpi, 1.0).verdict == "fail"


def test_a_simultaneous_trials_jobs_are_asked_of_their_own_arms_target(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each arm's jobs live on its own target: asked of the first arm's, the other's were lost
    (and the check waited out the stop timeout in every trial of the CI's regression gate)."""
    asked: list[tuple[str, str]] = []

    def read_status(url: str, job_id: str) -> str:
        asked.append((url, job_id))
        return "success"

    monkeypatch.setattr(jobs, "read_job_status", read_status)
    ledger = jobs.JobLedger({"A": "http://a", "B": "http://b"})
    ledger.on_request("POST", context={JOB_ID: "ja", ARM: "A"})
    ledger.on_request("POST", context={JOB_ID: "jb", ARM: "B"})
    lost = ledger.check_lost("http://a", 5.0)
    assert sorted(asked) == [("http://a", "ja"), ("http://b", "jb")]
    assert (lost["accepted"], lost["ended_after_stop"], lost["lost"]) == (2, 2, 0)
