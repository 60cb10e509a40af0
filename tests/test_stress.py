"""perfkit stress: the ramp, step judgement, capacity (measured and estimated), the knee and the
verdict on fixed data, and real ramps against targets of known capacity."""

import json
import math
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import pytest

from perfkit import rundir
from perfkit.analysis import stats
from perfkit.analysis.stress import (
    OPEN_USERS_MAX,
    fit_usl,
    judge_step,
    judge_stress,
    kendall_tau,
    plan_steps,
    size_open_users,
    summarize_stress,
)
from perfkit.errors import ConfigError
from perfkit.kpi_file import KpiTarget, load_kpi_targets
from perfkit.result import RunMeta, RunResult, empty_latency
from perfkit.settings import LoadSettings, StressSettings
from perfkit.units import format_value
from tests.targets import CAPACITY, CPU_BURNER, running_target

HEALTH = "GET /api/v1/health"


@contextmanager
def capacity_target(*args: str) -> Iterator[tuple[str, int]]:
    with running_target(CAPACITY, *args) as (url, process):
        yield url, process.pid


def kpi_file(tmp_path: Path, body: str, replace: bool = True) -> Path:
    path = tmp_path / "kpi.toml"
    path.write_text(f"replace_defaults = {'true' if replace else 'false'}\n" + body, "utf-8")
    return path


def bucket(t: int, latencies_ms: list[float], failures: int = 0,
           name: str = HEALTH) -> dict[str, object]:
    hist = stats.new_histogram()
    for value in latencies_ms:
        stats.record_ms(hist, value)
    return {"t": t, "name": name, "count": len(latencies_ms), "failures": failures,
            "hist": stats.encode_histogram(hist)}


def closed(users: int, **kwargs: Any) -> list[int]:
    return [u for _, u, _ in plan_steps(StressSettings(LoadSettings(users=users), **kwargs))]


def test_a_closed_ramp_stops_at_users_the_peak() -> None:
    # The case: --users 10 --step-users 4 ran 10, 14, 18.
    assert closed(10, step_users=4) == [4, 8, 10]
    assert closed(10) == list(range(1, 11))  # the default step reaches the peak in 10 steps
    assert closed(100, max_steps=4) == [25, 50, 75, 100]
    assert closed(5, start_users=2) == [2, 3, 4, 5]
    assert closed(10, start_users=10) == [10]
    assert closed(100, step_users=5, max_steps=3) == [5, 10, 15]  # --max-steps comes first
    settings = StressSettings(LoadSettings(users=9), step_users=3, step_duration_s=20)
    assert plan_steps(settings) == [(0.0, 3, None), (20.0, 6, None), (40.0, 9, None)]


def test_an_open_ramp_stops_at_rate_the_peak_and_sizes_its_first_users() -> None:
    settings = StressSettings(LoadSettings(users=4, rate=40.0), step_duration_s=10,
                              max_steps=5, users_given=False)
    # 8/s: 8 users (one start per user per second: FIRST_LATENCY_S × 2), whatever --users.
    assert plan_steps(settings) == [(10.0 * k, 8, 8.0 * (k + 1)) for k in range(5)]
    started = StressSettings(LoadSettings(users=4, rate=40.0), start_rate=10, step_rate=15,
                             users_given=True)
    assert plan_steps(started) == [(0.0, 4, 10.0), (30.0, 4, 25.0), (60.0, 4, 40.0)]


def test_ramp_options_must_match_the_load() -> None:
    with pytest.raises(ConfigError, match="--start-rate and --step-rate need an open load"):
        plan_steps(StressSettings(LoadSettings(), step_rate=5.0))
    with pytest.raises(ConfigError, match="--start-rate and --step-rate need an open load"):
        plan_steps(StressSettings(LoadSettings(), start_rate=5.0))
    with pytest.raises(ConfigError, match="--users caps each step's users"):
        plan_steps(StressSettings(LoadSettings(rate=10.0), step_users=5))
    with pytest.raises(ConfigError, match="--start-users 20 is above --users 10, the peak"):
        plan_steps(StressSettings(LoadSettings(users=10), start_users=20))
    with pytest.raises(ConfigError, match="--start-rate 50 is above --rate 40"):
        plan_steps(StressSettings(LoadSettings(rate=40.0), start_rate=50.0))


def test_open_load_users_follow_littles_law() -> None:
    # 100/s at p95 50 ms: 5 in flight, 10 users with the headroom.
    assert size_open_users(100.0, {"p95_ms": 50.0}, 2, OPEN_USERS_MAX) == 10
    assert size_open_users(4.0, {"p95_ms": 10.0}, 0, OPEN_USERS_MAX) == 2  # the floor
    assert size_open_users(100.0, {"p95_ms": 5.0}, 30, OPEN_USERS_MAX) == 30  # never fewer
    assert size_open_users(100.0, {"p95_ms": 500.0}, 2, 40) == 40  # an explicit --users caps
    # A generator late by itself (a flow longer than one request): twice the users.
    late = {"p95_ms": 10.0, "late_iterations_percent": 30.0}
    assert size_open_users(10.0, late, 6, OPEN_USERS_MAX) == 12
    assert size_open_users(10.0, None, 0, OPEN_USERS_MAX) == 10  # before any step: 0.5 s


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
    assert held["concurrency"] == pytest.approx(1.0, rel=1e-2)  # 50/s × 20 ms

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
    # Latency and errors are no per-request demand: no estimate, and the run says what
    # step 1 served instead of "none" or 0 rps.
    assert summary["capacity"] is None and summary["estimate"] is None
    assert summary["broke"]["step"] == 3
    verdict, reason = judge_stress(summary, "completed", "", targets)
    assert verdict == "fail"
    assert reason.startswith("capacity below the first step's load: step 3 (30 users) served "
                             "100 rps at p95 450 ms and already broke: GET /api/v1/health p99")
    assert "start lower (--start-users 15)" in reason


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


# Fixed steps of a CPU-bound target: each second `rps` requests of `latency_ms`, and the
# busiest process at `cpu` % of one core.
def cpu_step(step: int, users: int, rps: int, cpu: float, latency_ms: float,
             targets: list[KpiTarget], previous: dict[str, Any] | None,
             rate: float | None = None) -> dict[str, Any]:
    t0 = 1000 + 10 * step
    records = [bucket(t, [latency_ms] * rps) for t in range(t0, t0 + 10)]
    resources = pd.DataFrame({"t": [t0 + 0.5 + k for k in range(10)],
                              "cpu_busiest_percent": [cpu] * 10})
    return judge_step(step, users, rate, records, resources, t0, t0 + 10, targets, previous,
                      1.0)


def cpu_kpis(throughput: str | None = None) -> list[KpiTarget]:
    """The default CPU KPIs (mean: target 50 %, allowed 80 %; peak: allowed 80 %)."""
    targets = [k for k in load_kpi_targets(None) if k.metric.startswith("cpu_busiest")]
    if throughput is not None:
        targets += [k for k in load_kpi_targets(None) if k.metric == "rps"]
    return targets


def test_a_first_step_over_the_cpu_limit_gives_an_estimated_capacity() -> None:
    """The issue's service: one process, 30.6 rps at CPU 96 % in step 1, p95 88 ms."""
    targets = cpu_kpis()
    step = cpu_step(1, 10, 31, 96.0, 88.0, targets, None)
    assert [b["kpi"] for b in step["breaches"]] == ["target CPU mean", "target CPU peak"]
    assert step["cpu_ms_per_request"] == pytest.approx(96.0 / 31 * 10)  # 31 ms per request
    stress = summarize_stress(StressSettings(LoadSettings(users=10)), [step], "broke")
    capacity, estimate = stress["capacity"], stress["estimate"]
    assert capacity["basis"] == "estimated" and stress["measured"] is None
    assert capacity["rps"] == pytest.approx(80.0 / (96.0 / 31))  # limit / demand: 25.8 rps
    assert estimate["demand_per_request"] == pytest.approx(96.0 / 31)
    assert estimate["concurrency"] == pytest.approx(capacity["rps"] * 0.088, rel=1e-2)
    assert estimate["text"] == ("31.0 ms of CPU per request (target CPU mean, step 1): "
                                "~25.8 rps at 80 % of one core")
    assert stress["suggestion"] == "start lower (--start-users 5) or use an open load (--rate 39)"
    verdict, reason = judge_stress(stress, "completed", "", targets)
    assert verdict == "warn"  # only estimated; no throughput KPI
    assert reason.startswith("capacity ~25.8 rps, estimated: 31.0 ms of CPU per request")
    assert "step 1 served 31 rps at p95 88.1 ms and already broke" in reason
    verdict, reason = judge_stress(stress, "completed", "", cpu_kpis(throughput="50rps"))
    assert verdict == "fail" and "48 % under the 50 rps throughput target" in reason
    assert not re.search(r"(?<![\d.])0 rps", reason) and "none" not in reason


def test_between_a_held_step_and_a_cpu_break_the_capacity_is_at_the_limit() -> None:
    targets = cpu_kpis(throughput="50rps")
    steps = [cpu_step(1, 5, 20, 60.0, 20.0, targets, None)]
    steps.append(cpu_step(2, 10, 40, 120.0, 25.0, targets, steps[-1]))
    assert [s["held"] for s in steps] == [True, False]  # 60 % warns, 120 % fails
    stress = summarize_stress(StressSettings(LoadSettings(users=10)), steps, "broke")
    # 30 ms of CPU per request: 80 % of a core at 26.7 rps, between 20 (held) and 40 (broke).
    assert stress["measured"]["step"] == 1
    assert stress["capacity"]["basis"] == "estimated"
    assert stress["capacity"]["rps"] == pytest.approx(80.0 / 3.0)
    verdict, reason = judge_stress(stress, "completed", "", targets)
    assert verdict == "fail"  # 26.7 rps is under the 50 rps target
    assert reason.startswith("capacity ~26.7 rps, estimated at the limit between step 1 "
                             "(held, 20 rps) and step 2")
    # A latency KPI that broke at the same step: the limit is no longer the capacity.
    slow = dict(steps[1], breaches=[*steps[1]["breaches"], {
        "kind": "kpi", "kpi": "p99", "metric": "p99_ms", "endpoint": HEALTH, "value": 900.0,
        "limit": 200.0, "reason": "p99 900 ms"}])
    stress = summarize_stress(StressSettings(LoadSettings(users=10)), [steps[0], slow], "broke")
    assert stress["capacity"]["basis"] == "measured" and stress["capacity"]["rps"] == 20.0
    assert stress["estimate"]["other_breaches"] == ["p99"]


def verdict_cases() -> list[tuple[str, dict[str, Any], str, list[KpiTarget], str, int]]:
    """(case, stress, status, KPIs, verdict, exit code) for every stress verdict."""
    targets, no_rps = cpu_kpis(throughput="50rps"), cpu_kpis()
    held = [cpu_step(1, 5, 60, 30.0, 10.0, targets, None)]
    held.append(cpu_step(2, 10, 120, 95.0, 10.0, targets, held[-1]))
    below = [cpu_step(1, 5, 20, 30.0, 10.0, targets, None)]
    below.append(cpu_step(2, 10, 40, 95.0, 10.0, targets, below[-1]))
    never = [cpu_step(1, 5, 20, 30.0, 10.0, targets, None)]
    first = [cpu_step(1, 10, 31, 96.0, 88.0, targets, None)]
    silent = [dict(never[0], count=0, rps=0.0)]
    settings = StressSettings(LoadSettings(users=10))

    def of(steps: list[dict[str, Any]], stopped: str = "broke") -> dict[str, Any]:
        return summarize_stress(settings, steps, stopped)

    return [
        ("measured, meets the throughput KPI", of(held), "completed", targets, "pass", 0),
        ("no throughput KPI", of(below), "completed", no_rps, "pass", 0),
        ("never broke, under the target: missing", of(never, "max_steps"), "completed",
         targets, "pass", 0),
        ("only estimated", of(first), "completed", no_rps, "warn", 0),
        ("under the throughput KPI", of(below), "completed", targets, "fail", 1),
        ("estimated under the KPI", of(first), "completed", targets, "fail", 1),
        ("the target died", of(held), "target_died", targets, "fail", 1),
        ("aborted by an alarm", of(held), "aborted", targets, "fail", 1),
        ("no step completed", of([], "target_died"), "completed", targets, "error", 3),
        ("nothing recorded", of(silent, "max_steps"), "completed", targets, "error", 3),
        ("the run failed", of(held), "failed", targets, "error", 3),
        ("interrupted", of(held), "interrupted", targets, "pass", 130),
    ]


@pytest.mark.parametrize("case", verdict_cases(), ids=lambda case: case[0])
def test_every_stress_verdict_has_its_exit_code(
        case: tuple[str, dict[str, Any], str, list[KpiTarget], str, int]) -> None:
    _, stress, status, targets, verdict, exit_code = case
    judged, reason = judge_stress(stress, status, "", targets)
    assert judged == verdict, reason
    run = RunResult(run_dir=Path("."), meta=RunMeta(status=status, stress=stress),
                    latency=empty_latency(), verdict=judged, verdict_reason=reason)
    assert run.exit_code == exit_code


def test_exit_code_follows_status_and_verdict_only() -> None:
    def code(status: str, verdict: str) -> int:
        return RunResult(run_dir=Path("."), meta=RunMeta(status=status),
                         latency=empty_latency(), verdict=verdict).exit_code

    assert [code("completed", v) for v in ("pass", "warn", "fail", "error")] == [0, 0, 1, 3]
    assert [code("interrupted", v) for v in ("pass", "fail", "error")] == [130, 130, 130]
    assert [code(s, "pass") for s in ("degraded", "aborted", "target_died")] == [1, 1, 1]


def usl(n: float, lam: float, sigma: float, kappa: float) -> float:
    return lam * n / (1 + sigma * (n - 1) + kappa * n * (n - 1))


def test_the_usl_fit_recovers_known_contention_and_coherency() -> None:
    loads = [1, 2, 4, 8, 12, 16, 24, 32, 40]
    exact = fit_usl([(n, usl(n, 50.0, 0.04, 0.002)) for n in loads])
    assert exact["status"] == "fit" and exact["r2"] == pytest.approx(1.0)
    assert exact["sigma"] == pytest.approx(0.04, rel=1e-3)
    assert exact["kappa"] == pytest.approx(0.002, rel=1e-3)
    assert exact["peak_concurrency"] == pytest.approx(math.sqrt(0.96 / 0.002), rel=1e-3)
    assert exact["peak_rps"] == pytest.approx(usl(math.sqrt(0.96 / 0.002), 50.0, 0.04, 0.002))
    noise = random.Random(7)
    noisy = fit_usl([(n, usl(n, 50.0, 0.04, 0.002) * noise.uniform(0.97, 1.03))
                     for n in loads])
    assert noisy["status"] == "fit"
    assert noisy["peak_concurrency"] == pytest.approx(21.9, rel=0.2)
    assert noisy["r2"] > 0.95 and noisy["note"].startswith("USL fit over 9 steps (R² ")


def test_the_usl_fit_says_when_it_cannot_be_relied_on() -> None:
    assert fit_usl([(1, 10.0), (2, 19.0)])["status"] == "too_few_steps"
    same = fit_usl([(4, 10.0), (4, 11.0), (4, 9.0), (None, 5.0)])
    assert same["status"] == "too_few_steps" and same["peak_rps"] is None
    assert "3 or more needed" in same["note"]
    scattered = fit_usl([(1, 30.0), (2, 5.0), (3, 28.0), (4, 6.0), (5, 31.0), (6, 4.0)])
    assert scattered["status"] == "poor_fit" and scattered["r2"] < 0.9
    assert scattered["note"].startswith("poor fit (R² ")
    linear = fit_usl([(n, 10.0 * n) for n in (1, 2, 3, 4)])
    assert linear["status"] == "fit" and "no knee within reach" in linear["note"]


def summary_files(run: Path) -> tuple[dict[str, Any], str, str]:
    return (json.loads((run / "summary.json").read_text()),
            (run / "summary.md").read_text().splitlines()[0],
            (run / "junit.xml").read_text())


@pytest.mark.serial
def test_stress_finds_the_capacity_of_a_worker_pool(tmp_path: Path) -> None:
    # 4 workers × 200 ms: 20 req/s. Open-load steps of 9 req/s up to 36: 9 and 18 hold, 27
    # (35 % over) breaks. A throughput KPI of 1000 rps: the capacity is under it, the run
    # fails (exit 1).
    kpis = kpi_file(tmp_path, '[[kpi]]\nmetric = "p95_ms"\nendpoint = "GET /api/v1/health"\n'
                              'target = "2s"\n[[kpi]]\nmetric = "rps"\ntarget = "1000rps"\n')
    with capacity_target("--workers", "4", "--service-ms", "200") as (url, pid):
        result = subprocess.run(
            [sys.executable, "-m", "perfkit", "stress", "--target", url, "--target-pid",
             str(pid), "--scenario", "health", "--rate", "36", "--start-rate", "9",
             "--step-rate", "9", "--step-duration", "6s", "--kpi", str(kpis),
             "--out", str(tmp_path / "run")],
            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    stress = rundir.load_run(tmp_path / "run").meta.stress
    assert [s["step"] for s in stress["steps"]] == [1, 2, 3]  # it stopped by itself
    assert [s["rate"] for s in stress["steps"]] == [9.0, 18.0, 27.0]
    # Users sized by Little's law from the latency the step before showed, not grown with
    # the rate: 9 for 9/s (a start per user per second before anything was seen), then
    # twice the arrivals in one p95.
    steps = stress["steps"]
    assert steps[0]["users"] == 9
    for before, step in zip(steps, steps[1:], strict=False):
        assert step["users"] == max(before["users"],
                                    math.ceil(step["rate"] * before["p95_ms"] / 1000 * 2))
    assert stress["capacity"]["basis"] == "measured"
    assert stress["capacity"]["step"] == 2
    assert stress["capacity"]["rps"] == pytest.approx(18.0, rel=0.1)
    assert stress["broke"]["step"] == 3
    assert stress["stopped"] == "broke"
    assert stress["knee"]["status"] in ("fit", "poor_fit")  # three steps: a fit, judged
    assert "broke at step 3" in result.stdout
    assert (tmp_path / "run" / "stress.svg").read_text().lstrip().startswith("<?xml")
    report = (tmp_path / "run" / "report.html").read_text("utf-8")
    assert 'id="stress"' in report and "data:image/svg+xml;base64" in report
    assert 'data-verdict="fail"' in report and "Knee" in report
    timeline = (tmp_path / "run" / "timeline.csv").read_text().splitlines()
    assert max(int(line.split(",")[1]) for line in timeline[1:]) == steps[-1]["users"]
    json.dumps(stress)  # plain JSON, no NaN
    # One verdict everywhere: summary.json, summary.md, junit.xml, the terminal, exit 1.
    summary, first_line, junit = summary_files(tmp_path / "run")
    assert summary["verdict"] == "fail"
    assert summary["verdict_reason"].startswith(
        f"capacity {format_value(stress['capacity']['rps'], 'rps')} at step 2 (18 req/s offered")
    assert "% under the 1000 rps throughput target; broke at step 3" in summary["verdict_reason"]
    assert summary["stress"]["capacity"]["step"] == 2
    assert summary["stress"]["broke_at"]["step"] == 3
    # The whole-ramp KPIs leave out the first step's settle time (1.2 s, to the next whole
    # second), not a tenth of the planned 4 steps (2.4 s) or of --duration.
    assert summary["window"]["warmup_s"] < 2.3
    assert first_line.startswith("### perfkit: ❌ FAIL — capacity 1")
    assert "**Stress capacity:** step 2" in (tmp_path / "run" / "summary.md").read_text()
    assert 'name="stress capacity"' in junit and 'failures="1"' in junit
    assert "perfkit: verdict FAIL: capacity 1" in result.stdout


@dataclass
class CpuBound:
    url: str
    pid: int
    ceiling_rps: float  # what the target served when saturated, measured here
    cpu_share: float    # the share of one core it got then (under 1 on a busy machine)


def measure_ceiling(url: str, pid: int, out: Path) -> tuple[float, float]:
    """(rps, share of a core) of the target under a short closed saturating benchmark."""
    target = psutil.Process(pid)
    cpu_before, started = sum(target.cpu_times()[:2]), time.monotonic()
    subprocess.run([sys.executable, "-m", "perfkit", "bench", f"{url}/api/v1/health",
                    "-c", "4", "-d", "4s", "--json", str(out)], check=True,
                   capture_output=True, timeout=60)
    share = (sum(target.cpu_times()[:2]) - cpu_before) / (time.monotonic() - started)
    return next(iter(json.loads(out.read_text())["endpoints"].values()))["rps"], share


@pytest.fixture(scope="module")
def cpu_bound(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CpuBound]:
    """A single-process target that burns 20 ms of CPU per request (about 50 rps at one
    core), and its ceiling measured by a short closed saturating benchmark."""
    with running_target(CPU_BURNER, "--burn-ms", "20") as (url, process):
        ceiling, share = measure_ceiling(url, process.pid,
                                         tmp_path_factory.mktemp("bench") / "bench.json")
        yield CpuBound(url, process.pid, ceiling, share)


# The CPU KPIs decide these ramps, with the error rate: the bundled API's latency KPIs are
# not this target's (its latency is this machine's CPU contention).
ERROR_RATE_KPI = ('[[kpi]]\nname = "error rate"\nmetric = "error_rate_percent"\ntarget = "0.1%"\n')


@pytest.mark.serial
def test_an_open_load_ramp_finds_the_capacity_of_a_cpu_bound_target(
        cpu_bound: CpuBound, tmp_path: Path) -> None:
    # The default CPU KPIs (mean 50 % / 80 % allowed, peak 80 % allowed): the capacity at
    # the limit is about half to four fifths of the ceiling.
    defaults = [k for k in load_kpi_targets(None) if k.metric.startswith("cpu_busiest")]
    kpis = kpi_file(tmp_path, ERROR_RATE_KPI + "".join(
        f'[[kpi]]\nname = "{k.name}"\nmetric = "{k.metric}"\n'
        + (f'target = "{k.target:g}%"\n' if k.target is not None else "")
        + (f'allowed = "{k.allowed:g}%"\n' if k.allowed is not None else "")
        for k in defaults))
    ceiling = cpu_bound.ceiling_rps
    start, step = round(0.5 * ceiling, 1), round(0.15 * ceiling, 1)  # up to 1.25 × the ceiling
    result = subprocess.run(
        [sys.executable, "-m", "perfkit", "stress", "--target", cpu_bound.url, "--target-pid",
         str(cpu_bound.pid), "--scenario", "health", "--start-rate", str(start),
         "--step-rate", str(step), "--rate", f"{start + 5 * step:g}", "--step-duration", "4s",
         "--kpi", str(kpis), "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120)
    # The machine's other work changes what the target gets: the ceiling measured again
    # after the ramp bounds it from the other side.
    after, _ = measure_ceiling(cpu_bound.url, cpu_bound.pid, tmp_path / "bench.json")
    low, high = min(ceiling, after), max(ceiling, after)
    stress = rundir.load_run(tmp_path / "run").meta.stress
    found = f"ceiling {ceiling:.1f} rps at {100 * cpu_bound.cpu_share:.0f} % CPU, " \
            f"{after:.1f} rps after\n" + result.stdout[-3000:]
    assert stress["capacity"] is not None, found
    assert 0.5 * low <= stress["capacity"]["rps"] <= 1.05 * high, found
    assert stress["measured"] is not None, found  # the first step held
    assert result.returncode == 0, found
    assert summary_files(tmp_path / "run")[0]["verdict"] == "pass"
    # The open load kept its steps' rates with the users Little's law asked for (over the
    # steps: a step of a few seconds holds few arrivals of each user), and the steps measured
    # the 20 ms of CPU each request burns (a second's CPU samples against a few seconds of
    # requests per step: fitted over the steps, as the estimate does).
    held = [s for s in stress["steps"] if s["held"]]
    assert sum(s["rps"] for s in held) >= 0.85 * sum(s["rate"] for s in held), found
    demand_ms = 10 * sum(s["cpu_busiest_mean_percent"] * s["rps"] for s in held) \
        / sum(s["rps"] ** 2 for s in held)
    assert demand_ms == pytest.approx(20.0, rel=0.4), found


@pytest.mark.serial
def test_a_closed_ramp_that_saturates_at_once_says_what_it_served_and_estimates(
        cpu_bound: CpuBound, tmp_path: Path) -> None:
    # Two users keep one process busy, so step 1 saturates it. The CPU limit is set well below
    # the share of a core the target got in the benchmark (beside other work it cannot reach
    # the default 80 %), so that step 1 breaks it whatever else the machine does.
    limit = max(5, round(35 * cpu_bound.cpu_share))
    kpis = kpi_file(tmp_path, ERROR_RATE_KPI + f'[[kpi]]\nname = "target CPU mean"\n'
                                               f'metric = "cpu_busiest_percent_mean"\n'
                                               f'allowed = "{limit}%"\n')
    result = subprocess.run(
        [sys.executable, "-m", "perfkit", "stress", "--target", cpu_bound.url, "--target-pid",
         str(cpu_bound.pid), "--scenario", "health", "--users", "4", "--start-users", "2",
         "--step-users", "2", "--step-duration", "4s", "--kpi", str(kpis),
         "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120)
    found = f"ceiling {cpu_bound.ceiling_rps:.1f} rps at {100 * cpu_bound.cpu_share:.0f} % " \
            f"CPU, limit {limit} %\n" + result.stdout[-3000:]
    stress = rundir.load_run(tmp_path / "run").meta.stress
    assert [s["held"] for s in stress["steps"]] == [False], found
    first, capacity, estimate = stress["steps"][0], stress["capacity"], stress["estimate"]
    assert first["rps"] > 0 and first["p95_ms"] > 0, found
    assert stress["broke"]["rps"] == first["rps"]  # what step 1 served is kept and said
    # The CPU per request is the 20 ms the target burns (and what serving costs besides), the
    # capacity the throughput at which it makes `limit` % of a core: below what step 1 served.
    assert first["cpu_ms_per_request"] == pytest.approx(20.0, rel=0.35), found
    assert capacity["basis"] == "estimated", found
    assert capacity["rps"] == pytest.approx(limit * 10 / first["cpu_ms_per_request"],
                                            rel=0.01), found
    assert 0 < capacity["rps"] < first["rps"], found
    assert "ms of CPU per request (target CPU mean, step 1): ~" in estimate["text"]
    assert f"at {limit} % of one core" in estimate["text"]
    assert "--rate" in stress["suggestion"]
    summary, first_line, junit = summary_files(tmp_path / "run")
    assert (summary["verdict"], result.returncode) == ("warn", 0), found
    assert first_line.startswith("### perfkit: ⚠️ WARN — capacity ~"), first_line
    assert f"step 1 served {format_value(first['rps'], 'rps')} at p95" \
        in summary["verdict_reason"]
    assert summary["stress"]["capacity"]["basis"] == "estimated"
    assert 'failures="0"' in junit
    report = (tmp_path / "run" / "report.html").read_text("utf-8")
    assert ">estimated</span>" in report and "To find the capacity below step 1" in report
    for text in (result.stdout, first_line):
        assert "capacity below the first step" not in text
        assert not re.search(r"(?<![\d.])0 rps", text)
