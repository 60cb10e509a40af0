"""perfkit stress: the ramp, step judgement on fixed data, and a real ramp against a target of
known capacity."""

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from perfkit import rundir
from perfkit.analysis import stats
from perfkit.analysis.stress import judge_step, kendall_tau, plan_steps, summarize_stress
from perfkit.config import LoadSettings, StressSettings, load_kpi_targets
from perfkit.errors import ConfigError
from tests.targets import CAPACITY, running_target

HEALTH = "GET /api/v1/health"


@contextmanager
def capacity_target(*args: str) -> Iterator[tuple[str, int]]:
    with running_target(CAPACITY, *args) as (url, process):
        yield url, process.pid


def kpi_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "kpi.toml"
    path.write_text("replace_defaults = true\n" + body, "utf-8")
    return path


def bucket(t: int, latencies_ms: list[float], failures: int = 0,
           name: str = HEALTH) -> dict[str, object]:
    hist = stats.new_histogram()
    for value in latencies_ms:
        stats.record_ms(hist, value)
    return {"t": t, "name": name, "count": len(latencies_ms), "failures": failures,
            "hist": stats.encode_histogram(hist)}


def test_closed_ramp_adds_users_per_step() -> None:
    settings = StressSettings(LoadSettings(users=5), step_users=10, step_duration_s=20,
                              max_steps=3)
    assert plan_steps(settings) == [(0.0, 5, None), (20.0, 15, None), (40.0, 25, None)]


def test_open_ramp_keeps_each_users_pace() -> None:
    # 4 users at 40/s: 10/s each; 80/s and 120/s take 8 and 12 users.
    settings = StressSettings(LoadSettings(users=4, rate=40.0), step_rate=40.0,
                              step_duration_s=10, max_steps=3)
    assert plan_steps(settings) == [(0.0, 4, 40.0), (10.0, 8, 80.0), (20.0, 12, 120.0)]


def test_ramp_options_must_match_the_load() -> None:
    with pytest.raises(ConfigError, match="--step-rate needs an open load"):
        plan_steps(StressSettings(LoadSettings(), step_rate=5.0))
    with pytest.raises(ConfigError, match="--step-rate, not --step-users"):
        plan_steps(StressSettings(LoadSettings(rate=10.0), step_users=5))


def test_kendall_tau() -> None:
    assert kendall_tau([1, 2, 3, 4, 5]) == 1.0
    assert kendall_tau([5, 4, 3, 2]) == -1.0
    # one spike at the end of a flat series is not a trend
    assert kendall_tau([214, 223, 219, 218, 808]) == pytest.approx(0.4)
    assert kendall_tau([1, 2, 3]) is None


def test_a_steady_step_holds_and_a_growing_queue_breaks() -> None:
    targets = load_kpi_targets(None)  # GET /api/v1/health p99: 100 ms target, 200 ms allowed
    steady = [bucket(t, [20.0] * 50) for t in range(100, 110)]
    held = judge_step(1, 10, None, steady, None, 100, 110, targets, None, 1.0)
    assert held["held"] and held["breaches"] == []
    assert held["rps"] == pytest.approx(50.0)
    assert held["endpoints"][HEALTH]["p99_ms"] == pytest.approx(20.0, rel=1e-3)

    # Latency rising second by second, 30 ms -> 165 ms: within the KPI, but unbounded.
    growing = [bucket(t, [30.0 + 15 * (t - 200)] * 50) for t in range(200, 210)]
    broke = judge_step(2, 20, None, growing, None, 200, 210, targets, held, 1.0)
    kinds = [b["kind"] for b in broke["breaches"]]
    assert not broke["held"]
    assert kinds == ["latency_growth", "latency_growth"]  # within the step and across steps
    assert broke["p50_tau"] == 1.0


def test_a_kpi_or_the_error_rate_breaks_a_step_and_names_the_endpoint() -> None:
    targets = load_kpi_targets(None)
    slow = [bucket(t, [20.0] * 90 + [450.0] * 10, failures=5) for t in range(0, 10)]
    result = judge_step(3, 30, None, slow, None, 0, 10, targets, None, 1.0)
    breaches = {b["kpi"]: b for b in result["breaches"]}
    assert set(breaches) == {"GET /api/v1/health p99", "error rate",
                             "error rate (--max-error-rate)"}
    assert breaches["GET /api/v1/health p99"]["endpoint"] == HEALTH
    assert breaches["GET /api/v1/health p99"]["limit"] == 200.0
    assert breaches["error rate"]["kind"] == "kpi"  # the KPI file's 0.1 % target
    assert breaches["error rate (--max-error-rate)"]["value"] == pytest.approx(5.0)
    summary = summarize_stress(StressSettings(LoadSettings()), [result], "broke")
    assert summary["capacity"] is None
    assert summary["broke"]["step"] == 3


@pytest.mark.serial
def test_stress_finds_the_capacity_of_a_worker_pool(tmp_path: Path) -> None:
    # 4 workers × 200 ms: 20 req/s. Open-load steps of 8 req/s: 8 and 16 hold, 24 breaks.
    kpis = kpi_file(tmp_path, '[[kpi]]\nmetric = "p95_ms"\nendpoint = "GET /api/v1/health"\n'
                              'target = "2s"\n')
    with capacity_target("--workers", "4", "--service-ms", "200") as (url, pid):
        result = subprocess.run(
            [sys.executable, "-m", "perfkit", "stress", "--target", url, "--target-pid",
             str(pid), "--scenario", "health", "--users", "4", "--rate", "8",
             "--step-rate", "8", "--step-duration", "6s", "--max-steps", "5",
             "--kpi", str(kpis), "--out", str(tmp_path / "run")],
            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    stress = rundir.load_run(tmp_path / "run").meta.stress
    assert [s["step"] for s in stress["steps"]] == [1, 2, 3]  # it stopped by itself
    assert stress["capacity"]["step"] == 2
    assert stress["capacity"]["rate"] == 16.0
    assert stress["broke"]["step"] == 3
    assert stress["stopped"] == "broke"
    assert "broke at step 3" in result.stdout
    assert (tmp_path / "run" / "stress.svg").read_text().lstrip().startswith("<?xml")
    report = (tmp_path / "run" / "report.html").read_text("utf-8")
    assert 'id="stress"' in report and "data:image/svg+xml;base64" in report
    timeline = (tmp_path / "run" / "timeline.csv").read_text().splitlines()
    assert max(int(line.split(",")[1]) for line in timeline[1:]) == 12
    json.dumps(stress)  # plain JSON, no NaN
    # The ramp's result reaches CI: summary.json, summary.md and junit.xml say it.
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stress"]["capacity"]["step"] == 2
    assert summary["stress"]["broke_at"]["step"] == 3
    assert summary["verdict_reason"].startswith("capacity step 2:")
    assert "**Stress capacity:** step 2" in (tmp_path / "run" / "summary.md").read_text()
    assert 'name="stress capacity"' in (tmp_path / "run" / "junit.xml").read_text()


def test_a_saturated_closed_load_breaks_when_waits_grow_instead_of_throughput() -> None:
    targets = load_kpi_targets(None)
    # 10 -> 15 users (+50 %): throughput stays at 100/s, the median goes 60 -> 90 ms (+50 %).
    before = judge_step(3, 10, None, [bucket(t, [60.0] * 100) for t in range(0, 10)], None,
                        0, 10, targets, None, 100.0)
    saturated = judge_step(4, 15, None, [bucket(t, [90.0] * 100) for t in range(10, 20)],
                           None, 10, 20, targets, before, 100.0)
    assert [b["kpi"] for b in saturated["breaches"]] == ["latency growth across steps"]
    # The same latency growth with throughput growing along with the users is not saturation.
    scaling = judge_step(4, 15, None, [bucket(t, [90.0] * 150) for t in range(10, 20)],
                         None, 10, 20, targets, before, 100.0)
    assert scaling["held"]
