import json
import math
import re
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from perfkit import rundir
from perfkit.analysis import stats
from perfkit.analysis.compare import (
    CompareSettings,
    between_runs_interval,
    compare_runs,
    parse_thresholds,
)
from perfkit.analysis.environment import (
    check_environment,
    describe_machine_load,
    other_work_percent,
    summarize_environment,
)
from perfkit.collectors.system import SystemCollector
from perfkit.errors import ConfigError
from perfkit.report.compare_html import write_compare_report
from perfkit.result import RunResult
from tests.synthetic import EndpointSpec, RunSpec, make_run
from tests.targets import (
    BUSY,
    CPU_BURNER,
    FIXED_DELAY,
    running_target,
    start_process,
    start_target,
    stop_target,
)

RESULTS = "GET /api/v1/research/products/{id}"
HEALTH = "GET /api/v1/health"
# Two minutes of the synthetic research mix: the results endpoint gets ~600 requests a run.
GATE_DURATION_S = 120


def slower(spec: RunSpec, name: str, factor: float) -> RunSpec:
    endpoints = dict(spec.endpoints)
    ep = endpoints[name]
    endpoints[name] = replace(ep, median_ms=ep.median_ms * factor)
    return replace(spec, endpoints=endpoints)


def synthetic(tmp_path: Path, label: str, spec: RunSpec) -> RunResult:
    make_run(tmp_path / label, spec)
    return rundir.load_run(tmp_path / label)


def noisy_spec(seed: int) -> RunSpec:
    """Same build, noisy: per-second hiccups shared by all endpoints and a per-run factor of
    about 1 % (a machine that drifts well under the threshold, as the method assumes; with
    3 % the false-alarm rate rises to ~5 %: docs/regression.md), on Poisson arrivals."""
    factor = float(np.random.default_rng(seed).lognormal(0.0, 0.01))
    return RunSpec(seed=seed, duration_s=GATE_DURATION_S, noise_sigma=0.1, latency_factor=factor)


def by_key(comparison, subject: str, metric: str):
    return next(m for m in comparison.metrics if m.subject == subject and m.metric == metric)


def test_percentiles_of_counts_match_hdrhistogram() -> None:
    rng = np.random.default_rng(5)
    blocks = []
    merged = stats.new_histogram()
    for _ in range(7):
        hist = stats.new_histogram()
        for value in rng.lognormal(3, 1, 300):
            stats.record_ms(hist, value)
            stats.record_ms(merged, value)
        blocks.append([stats.encode_histogram(hist)])
    values_us, counts = stats.block_counts(blocks)
    assert counts.sum() == merged.get_total_count() == 2100
    found = stats.percentiles_of_counts(values_us, counts.sum(axis=0), [50, 95, 99, 100])[0]
    for q, value_us in zip([50, 95, 99, 100], found, strict=True):
        assert value_us / 1000.0 == stats.percentile_ms(merged, q)


def test_empty_blocks_have_missing_percentiles() -> None:
    hist = stats.new_histogram()
    stats.record_ms(hist, 5.0)
    values_us, counts = stats.block_counts([[], [stats.encode_histogram(hist)]])
    per_block = stats.percentiles_of_counts(values_us, counts, [50])
    assert math.isnan(per_block[0, 0])
    assert per_block[1, 0] == pytest.approx(5000, rel=1e-3)


def test_mann_whitney_known_answer() -> None:
    # U = 0 for fully separated samples of 3: z = (4.5 - 0.5) / sqrt(5.25), two-sided p 0.0809
    p_value, prob_greater = stats.mann_whitney(np.array([1.0, 2, 3]), np.array([4.0, 5, 6]))
    assert p_value == pytest.approx(math.erfc(4.0 / math.sqrt(5.25) / math.sqrt(2)), rel=1e-9)
    assert p_value == pytest.approx(0.0809, abs=1e-4)
    assert prob_greater == 0.0
    p_same, prob_same = stats.mann_whitney(np.array([2.0, 2, 2]), np.array([2.0, 2, 2]))
    assert p_same == 1.0 and prob_same == 0.5


@pytest.mark.parametrize(("ratio", "low", "high", "p", "expected"), [
    (1.25, 1.05, 1.45, 0.0001, "regressed"),    # beyond the threshold and significant
    (1.25, 0.95, 1.60, 0.0001, "inconclusive"),  # interval reaches no change
    (1.25, 1.05, 1.45, 0.5, "inconclusive"),    # Mann-Whitney disagrees
    (1.05, 1.01, 1.09, 0.0001, "unchanged"),    # significant but within the threshold
    (0.75, 0.60, 0.90, 0.0001, "improved"),
    (1.00, 0.85, 1.15, 0.5, "inconclusive"),    # too noisy to say it is within 10 %
])
def test_verdict_rule(ratio: float, low: float, high: float, p: float, expected: str) -> None:
    prob_greater = 0.9 if ratio > 1 else 0.1
    assert stats.judge_ratio(ratio, low, high, p, prob_greater, 0.10, 0.999, True) == expected
    mirrored = {"regressed": "improved", "improved": "regressed"}.get(expected, expected)
    assert stats.judge_ratio(ratio, low, high, p, prob_greater, 0.10, 0.999, False) == mirrored


def test_thresholds_parse() -> None:
    assert parse_thresholds(["15%", "p99_ms=20%"]) == (0.15, {"p99_ms": 0.20})
    # the resource metrics' names before they were named like the KPIs still work
    assert parse_thresholds(["rss_peak_mb=25%", "cpu_mean_percent=30%"]) == (
        0.10, {"rss_mb_peak": 0.25, "cpu_percent_mean": 0.30})
    with pytest.raises(ConfigError, match="metric must be one of"):
        parse_thresholds(["p42_ms=5%"])
    with pytest.raises(ConfigError, match="bad threshold"):
        parse_thresholds(["ten"])


@pytest.fixture(scope="module")
def gate_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[RunResult]]:
    tmp = tmp_path_factory.mktemp("gate")
    runs: dict[str, list[RunResult]] = {"base": [], "same": [], "slower": []}
    for i in range(20):
        runs["base"].append(synthetic(tmp, f"base{i}", noisy_spec(1000 + i)))
        runs["same"].append(synthetic(tmp, f"same{i}", noisy_spec(2000 + i)))
        runs["slower"].append(synthetic(tmp, f"slower{i}",
                                        slower(noisy_spec(3000 + i), RESULTS, 1.2)))
    return runs


def test_aa_pairs_pass(gate_runs: dict[str, list[RunResult]]) -> None:
    passed = sum(not compare_runs([base], [same]).regressed
                 for base, same in zip(gate_runs["base"], gate_runs["same"], strict=True))
    assert passed >= 19


def test_ab_pairs_fail_naming_the_endpoint(gate_runs: dict[str, list[RunResult]]) -> None:
    named = 0
    for base, slow in zip(gate_runs["base"], gate_runs["slower"], strict=True):
        named += RESULTS in compare_runs([base], [slow]).regressed_subjects
    assert named >= 19


def test_lower_throughput_is_a_regression_and_faster_is_an_improvement(tmp_path: Path) -> None:
    base = synthetic(tmp_path, "base", RunSpec(seed=1, duration_s=90))
    spec = RunSpec(seed=2, duration_s=90)
    endpoints = dict(spec.endpoints)
    endpoints[HEALTH] = EndpointSpec(rps=20, median_ms=3)  # half the requests
    endpoints[RESULTS] = EndpointSpec(rps=5, median_ms=15)  # twice as fast
    current = synthetic(tmp_path, "cur", replace(spec, endpoints=endpoints))
    comparison = compare_runs([base], [current])
    assert by_key(comparison, HEALTH, "rps").verdict == "regressed"
    assert by_key(comparison, RESULTS, "p50_ms").verdict == "improved"
    assert comparison.regressed_subjects == [HEALTH]


def test_warmup_is_not_judged(tmp_path: Path) -> None:
    base = synthetic(tmp_path, "base", RunSpec(seed=1, duration_s=90, warmup_s=20))
    current = synthetic(tmp_path, "cur", RunSpec(seed=2, duration_s=90, warmup_s=20,
                                                 warmup_slowdown=3.0))
    assert not compare_runs([base], [current]).regressed
    judged_from_start = compare_runs([base], [current], CompareSettings(warmup_s=0))
    assert judged_from_start.regressed  # the same runs, with the slow warm-up judged


def test_pooled_runs_make_a_narrower_interval(tmp_path: Path) -> None:
    base = [synthetic(tmp_path, f"b{i}", RunSpec(seed=10 + i)) for i in range(3)]
    cur = [synthetic(tmp_path, f"c{i}", RunSpec(seed=20 + i)) for i in range(3)]
    one = by_key(compare_runs(base[:1], cur[:1]), RESULTS, "p50_ms")
    pooled = by_key(compare_runs(base, cur), RESULTS, "p50_ms")
    assert pooled.ci_high - pooled.ci_low < one.ci_high - one.ci_low


def test_spread_between_runs_widens_the_interval(tmp_path: Path) -> None:
    base = [synthetic(tmp_path, f"b{i}", RunSpec(seed=10 + i)) for i in range(3)]
    steady = [synthetic(tmp_path, f"s{i}", RunSpec(seed=20 + i)) for i in range(3)]
    drifting = [synthetic(tmp_path, f"d{i}", RunSpec(seed=20 + i, latency_factor=factor))
                for i, factor in enumerate([0.8, 1.0, 1.25])]
    calm = by_key(compare_runs(base, steady), HEALTH, "p50_ms")
    spread = by_key(compare_runs(base, drifting), HEALTH, "p50_ms")
    assert spread.ci_high - spread.ci_low > 2 * (calm.ci_high - calm.ci_low)


def test_different_scenarios_are_refused(tmp_path: Path) -> None:
    base = synthetic(tmp_path, "base", RunSpec(seed=1))
    other = synthetic(tmp_path, "other", RunSpec(seed=2, scenario="health"))
    with pytest.raises(ConfigError, match="different scenarios"):
        compare_runs([base], [other])


def test_disjoint_endpoints_are_refused_and_partial_ones_listed(tmp_path: Path) -> None:
    base = synthetic(tmp_path, "base", RunSpec(seed=1, job_completion_s=None, endpoints={
        HEALTH: EndpointSpec(rps=40, median_ms=3), RESULTS: EndpointSpec(rps=5, median_ms=30)}))
    only_status = synthetic(tmp_path, "status", RunSpec(seed=2, job_completion_s=None, endpoints={
        "GET /api/v1/research/products/{id}/status": EndpointSpec(rps=20, median_ms=8)}))
    with pytest.raises(ConfigError, match="share no endpoint"):
        compare_runs([base], [only_status])
    only_health = synthetic(tmp_path, "health", RunSpec(seed=3, job_completion_s=None, endpoints={
        HEALTH: EndpointSpec(rps=40, median_ms=3)}))
    comparison = compare_runs([base], [only_health])
    assert comparison.only_in_baseline == [RESULTS]
    assert {m.subject for m in comparison.metrics} == {HEALTH, "target"}


def test_unmeasured_resources_are_missing_not_zero(tmp_path: Path) -> None:
    base = synthetic(tmp_path, "base", RunSpec(seed=1))
    make_run(tmp_path / "cur", RunSpec(seed=2))
    (tmp_path / "cur" / rundir.RESOURCES).unlink()
    comparison = compare_runs([base], [rundir.load_run(tmp_path / "cur")])
    cpu = by_key(comparison, "target", "cpu_percent_mean")
    assert cpu.verdict == "missing" and cpu.current is None
    assert by_key(comparison, "target", "rss_mb_peak").verdict == "missing"


def test_report_files(tmp_path: Path) -> None:
    base = synthetic(tmp_path, "base", RunSpec(seed=1, duration_s=GATE_DURATION_S))
    slow = synthetic(tmp_path, "slow", slower(RunSpec(seed=2, duration_s=GATE_DURATION_S),
                                              RESULTS, 1.5))
    comparison = compare_runs([base], [slow])
    html_path = write_compare_report(comparison, [base], [slow], tmp_path / "out")
    html = html_path.read_text("utf-8")
    assert "REGRESSION in GET /api/v1/research/products/{id}" in html
    assert html.count("<svg") == len({m.subject for m in comparison.metrics})
    assert "http://" not in html.replace("http://www.w3.org", "")  # nothing fetched from a CDN
    suite = ET.parse(tmp_path / "out" / "junit.xml").getroot()
    assert int(suite.get("failures", "0")) == len(comparison.regressed) >= 1
    markdown = (tmp_path / "out" / "compare.md").read_text("utf-8")
    assert "**regressed**" in markdown
    record = rundir.load_run(base.run_dir)  # the runs themselves are left untouched
    assert not (record.run_dir / "compare.json").exists()
    assert (tmp_path / "out" / "compare.json").exists()


# What else the machine was doing (analysis.environment) and the spread between runs.

def machine_load(run: RunResult, others: float, steal: float | None = 0.0,
                 loadavg: float = 1.0) -> RunResult:
    """The run with the machine-load columns of resources.csv added (synthetic runs are
    written without them, as runs recorded before they existed were)."""
    path = run.run_dir / rundir.RESOURCES
    frame = pd.read_csv(path)
    frame["sys_loadavg_1m"] = loadavg
    frame["sys_steal_percent"] = steal
    frame["others_cpu_percent"] = others
    frame["sys_perfkit_cpu_percent"] = 40.0
    frame.to_csv(path, index=False)
    return rundir.load_run(run.run_dir)


def test_environment_summary_from_a_resources_frame() -> None:
    frame = pd.DataFrame({
        "t": np.arange(100.0, 110.0),
        "sys_loadavg_1m": [0.5, 0.6, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2, 2.4],
        "sys_steal_percent": [None, 1.0, 2.0, 4.0, 0.0, 0.0, 0.0, 0.0, 6.0, 9.0],
        "others_cpu_percent": [None, 50.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 90.0],
        "sys_perfkit_cpu_percent": [None, 5.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0, 5.0],
        "cpu_percent": [None, 10.0, 50.0, 50.0, 50.0, 50.0, 50.0, 50.0, 50.0, 10.0],
        "wait_percent": [None, 0.0, 20.0, 20.0, 20.0, 20.0, 20.0, 20.0, None, 0.0],
        "sys_perfkit_wait_percent": [None, 0.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 0.0],
    })
    summary = summarize_environment(frame, 102.0, 108.0, cpu_count=2)
    assert summary is not None
    assert summary["others_cpu_percent"] == {"mean": 40.0, "max": 70.0}  # 10..70, t 102..108
    assert summary["sys_steal_percent"] == {"mean": pytest.approx(12 / 7, abs=0.01), "max": 6.0}
    assert summary["sys_perfkit_cpu_percent"] == {"mean": 30.0, "max": 30.0}
    # the load average at the run's first and last sample, its mean over the judged window
    assert summary["sys_loadavg_1m"] == {"start": 0.5, "end": 2.4, "mean": 1.6, "max": 2.2,
                                     "mean_per_core": 0.8}
    assert summary["samples"] == 7
    # seconds waited for a CPU per second run, over the seconds where all is known (102..107)
    assert summary["cpu_wait_ratio"] == pytest.approx(6 * 24 / (6 * 80), abs=0.005)
    assert other_work_percent(summary) == pytest.approx(40.0 + 12 / 7, abs=0.01)
    # a run recorded before the columns existed: not recorded, not zero
    assert summarize_environment(frame[["t"]], 102.0, 108.0, 2) is None
    assert summarize_environment(None, 102.0, 108.0, 2) is None
    # no target tree to subtract: other processes' CPU not measured, never 0
    unmeasured = frame.assign(others_cpu_percent=None)
    unmeasured_summary = summarize_environment(unmeasured, 102.0, 108.0, 2)
    assert unmeasured_summary is not None
    assert unmeasured_summary["others_cpu_percent"] == {"mean": None, "max": None}
    assert other_work_percent(unmeasured_summary) is None
    assert "other processes not measured" in describe_machine_load(unmeasured_summary)


def _env(others: float | None, steal: float | None = 0.0, wait: float | None = 0.1) -> dict:
    return {"others_cpu_percent": {"mean": others, "max": others},
            "sys_steal_percent": {"mean": steal, "max": steal}, "cpu_wait_ratio": wait}


def test_environment_rule() -> None:
    labels = (["a"], ["b"])
    busier = check_environment([_env(3.0)], [_env(85.0)], labels)
    assert busier["busier"] == "current" and busier["difference_percent"] == 82.0
    assert busier["note"] == ("the machine was busier in the current run: it ran beside 85 % "
                              "of a core of other work, the baseline beside 3 %")
    # steal is CPU the machine did not get: it counts as other work
    assert check_environment([_env(3.0)], [_env(10.0, steal=30.0)], labels)["busier"] == "current"
    # within the threshold (25 % of a core): the same machine
    assert check_environment([_env(3.0)], [_env(27.0)], labels)["busier"] is None
    quieter = check_environment([_env(85.0)], [_env(3.0)], labels)
    assert quieter["busier"] == "baseline" and "judged as usual" in quieter["note"]
    missing = check_environment([None], [_env(85.0)], labels)
    assert missing["busier"] is None and "not recorded for a" in missing["note"]
    # several runs a side: every current run must be busier than every baseline run
    overlap = check_environment([_env(3.0), _env(70.0)], [_env(85.0), _env(90.0)],
                                (["a1", "a2"], ["b1", "b2"]))
    assert overlap["busier"] is None
    apart = check_environment([_env(3.0), _env(10.0)], [_env(85.0), _env(90.0)],
                              (["a1", "a2"], ["b1", "b2"]))
    assert apart["busier"] == "current" and "beside 85-90 %" in apart["note"]
    # a saturated machine: other work cannot grow, the wait for a CPU does
    saturated = check_environment([_env(170.0, wait=1.5)], [_env(180.0, wait=4.3)], labels)
    assert saturated["busier"] == "current"
    assert "waited 4.30 s for a CPU per second they ran, 1.50 s in the baseline" \
        in saturated["note"]
    assert check_environment([_env(170.0, wait=1.5)], [_env(180.0, wait=1.9)],
                             labels)["busier"] is None
    # waiting more with little other work is the run's own doing (a build that needs more CPU
    # than the cores give): not the machine's
    assert check_environment([_env(3.0, wait=0.1)], [_env(10.0, wait=2.0)],
                             labels)["busier"] is None
    assert check_environment([_env(170.0, wait=None)], [_env(180.0, wait=4.3)],
                             labels)["busier"] is None


@pytest.fixture(scope="module")
def busy_pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunResult]:
    """A baseline and a current run whose results endpoint is 50 % slower and health endpoint
    twice as fast, 60 s each (as test_regression_gate's pair, which fails the gate)."""
    tmp = tmp_path_factory.mktemp("busy")
    spec = RunSpec(seed=3, duration_s=60)
    endpoints = dict(spec.endpoints)
    endpoints[RESULTS] = replace(endpoints[RESULTS], median_ms=endpoints[RESULTS].median_ms * 1.5)
    endpoints[HEALTH] = replace(endpoints[HEALTH], median_ms=endpoints[HEALTH].median_ms / 2)
    return {"base": synthetic(tmp, "base", RunSpec(seed=1, duration_s=60)),
            "cur": synthetic(tmp, "cur", replace(spec, endpoints=endpoints))}


def test_a_busier_current_run_makes_a_regression_inconclusive(
        busy_pair: dict[str, RunResult]) -> None:
    base, cur = busy_pair["base"], busy_pair["cur"]
    plain = compare_runs([base], [cur])  # no machine load recorded: judged as before
    assert RESULTS in plain.regressed_subjects
    assert "not recorded for base, cur" in plain.environment["note"]
    assert plain.environment["note"] in plain.notes

    busier = compare_runs([machine_load(base, others=3.0)], [machine_load(cur, others=85.0)])
    assert not busier.regressed
    results_p50 = by_key(busier, RESULTS, "p50_ms")
    assert results_p50.verdict == "inconclusive"
    assert "machine was busier in the current run" in results_p50.note
    assert f"{RESULTS} p50_ms" in busier.environment["explained"]
    assert len(busier.environment["explained"]) == len(plain.regressed)
    assert "beside 85 % of a core of other work, the baseline beside 3 %" in busier.notes[-1]
    # an improvement is never turned into anything else
    assert by_key(busier, HEALTH, "p50_ms").verdict == by_key(plain, HEALTH, "p50_ms").verdict \
        == "improved"

    quieter = compare_runs([machine_load(base, others=85.0)], [machine_load(cur, others=3.0)])
    assert quieter.regressed_subjects == plain.regressed_subjects
    assert quieter.environment["busier"] == "baseline" and not quieter.environment["explained"]
    # the report says why, and the headline is not "no regression"
    html_path = write_compare_report(busier, [base], [cur], busy_pair["cur"].run_dir / "out")
    html = html_path.read_text("utf-8")
    assert "inconclusive: the machine was busier in the current run" in html
    assert "85 % of a core" in html
    record = json.loads((html_path.parent / "compare.json").read_text("utf-8"))
    assert record["regression"] is False and record["environment"]["busier"] == "current"


def test_a_busier_machine_does_not_excuse_a_regression_larger_than_it_explains(
        tmp_path: Path) -> None:
    """The busier run's CPU wait bounds what the machine can explain: x5 stays a regression
    beside a wait that explains at most x1.5-x3, while the x1.5 of busy_pair is excused."""
    base = synthetic(tmp_path, "base", RunSpec(seed=1, duration_s=60))
    slow = synthetic(tmp_path, "slow", RunSpec(seed=2, duration_s=60, latency_factor=5.0))
    comparison = compare_runs([machine_load(base, others=3.0)],
                              [machine_load(slow, others=85.0)])
    assert comparison.environment["busier"] == "current"
    # no wait recorded in these runs: the default bound
    assert comparison.environment["explainable_ratio"] == 2.0
    assert RESULTS in comparison.regressed_subjects
    results_p50 = by_key(comparison, RESULTS, "p50_ms")
    assert results_p50.verdict == "regressed"
    assert "more than it explains (x2.00 at most)" in results_p50.note
    assert f"{RESULTS} p50_ms" in comparison.environment["unexplained"]


def test_the_wait_sets_how_much_a_busier_machine_explains() -> None:
    def env(others: float, wait: float | None) -> dict:
        return {"others_cpu_percent": {"mean": others}, "sys_steal_percent": {"mean": 0.0},
                "cpu_wait_ratio": wait}

    record = check_environment([env(30.0, 0.5)], [env(90.0, 2.5)], (["a"], ["b"]))
    assert record["busier"] == "current"
    assert record["explainable_ratio"] == pytest.approx(1.5 * 3.5 / 1.5)  # (1+2.5)/(1+0.5)
    barely = check_environment([env(3.0, 0.0)], [env(60.0, 0.1)], (["a"], ["b"]))
    assert barely["explainable_ratio"] == 1.65  # 1.5 x 1.1 (never under 1.5)


def test_between_runs_interval_known_answer() -> None:
    # logs 0, 0.1, -0.1: mean 0, s = 0.1; one current run at log 0.5: se = 0.1 sqrt(1 + 1/3).
    # Student's t with 2 degrees of freedom has a closed form: F(t) = 1/2 + t / (2 sqrt(t²+2)).
    baseline = np.exp([0.0, 0.1, -0.1])
    base, cur, ratio, low, high, p_value, prob_greater = between_runs_interval(
        baseline, np.exp([0.5]), 0.95)
    se = 0.1 * math.sqrt(4 / 3)
    t_value = 0.5 / se
    quantile = 0.95 * math.sqrt(2 / (1 - 0.95**2))  # F(q) = 0.975
    assert quantile == pytest.approx(4.303, abs=1e-3)
    assert (base, cur, ratio) == pytest.approx((1.0, math.exp(0.5), math.exp(0.5)))
    assert low == pytest.approx(math.exp(0.5 - quantile * se))
    assert high == pytest.approx(math.exp(0.5 + quantile * se))
    assert p_value == pytest.approx(1 - t_value / math.sqrt(t_value**2 + 2))
    assert prob_greater == 1.0


def drifting_runs(tmp_path: Path, label: str, factors: list[float], seed: int) -> list[RunResult]:
    return [synthetic(tmp_path, f"{label}{i}", RunSpec(seed=seed + i, duration_s=30,
                                                       latency_factor=factor))
            for i, factor in enumerate(factors)]


def test_multi_run_baseline_judges_against_the_spread_between_runs(tmp_path: Path) -> None:
    settings = CompareSettings(between_runs=True)
    steady = drifting_runs(tmp_path, "steady", [1.0, 1.01, 0.99, 1.0, 1.02], 10)
    same = synthetic(tmp_path, "same", RunSpec(seed=30, duration_s=30, latency_factor=1.01))
    slow = synthetic(tmp_path, "slow", RunSpec(seed=31, duration_s=30, latency_factor=2.0))
    # the same build lies inside the baseline's spread: no regression
    aa = compare_runs(steady, [same], settings)
    assert aa.evidence == "between runs" and not aa.regressed
    health = by_key(aa, HEALTH, "p50_ms")
    assert health.evidence == "between runs" and len(health.baseline_per_run) == 5
    assert health.baseline == pytest.approx(
        math.exp(np.mean(np.log(health.baseline_per_run))))
    # twice as slow lies far beyond a spread of ~1 %
    ab = compare_runs(steady, [slow], settings)
    assert HEALTH in ab.regressed_subjects and RESULTS in ab.regressed_subjects
    # a baseline whose runs spread by ±25 % cannot tell +40 % from its own noise, where the
    # noise within a run (the bootstrap of pooled blocks) would call it a regression
    spread = drifting_runs(tmp_path, "spread", [0.8, 1.0, 1.25, 0.9, 1.1], 10)
    slower = synthetic(tmp_path, "slower", RunSpec(seed=32, duration_s=30, latency_factor=1.4))
    assert HEALTH in compare_runs(spread, [slower]).regressed_subjects
    judged = compare_runs(spread, [slower], settings)
    assert by_key(judged, HEALTH, "p50_ms").verdict == "inconclusive"
    assert HEALTH not in judged.regressed_subjects
    # two runs give no spread to speak of: judged within runs, and said so
    few = compare_runs(steady[:2], [slow], settings)
    assert few.evidence == "within runs"
    assert any("at least 3 runs" in note for note in few.notes)


def test_fully_separated_lower_blocks_are_judged() -> None:
    # Mann-Whitney's P(current > baseline) = 0: every current block below every baseline one
    assert stats.judge_ratio(0.5, 0.4, 0.6, 1e-6, 0.0, 0.10, 0.999, True) == "improved"
    assert stats.judge_ratio(0.5, 0.4, 0.6, 1e-6, 0.0, 0.10, 0.999, False) == "regressed"


# End to end: real runs of purpose-built targets, real collectors, the CLI.

LAX_KPIS = """replace_defaults = true

[[kpi]]
name = "error rate"
metric = "error_rate_percent"
target = "5%"
"""


def run_perfkit(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "perfkit", *args], capture_output=True,
                          text=True, timeout=180, cwd=cwd)


def load_args(url: str, proc: subprocess.Popen[str], kpi: Path, duration: str,
              *load: str) -> list[str]:
    """By default one user as fast as the target answers: its latency is the target's, plus
    the generator's."""
    return ["load", "--target", url, "--target-pid", str(proc.pid), "--scenario", "health",
            *(load or ("--users", "1")), "--duration", duration, "--warmup", "1s",
            "--kpi", str(kpi)]


def machine_cpu_s() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - times.iowait - times.steal - times.guest - times.guest_nice


def process_cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


@pytest.mark.serial
def test_system_collector_tells_other_work_from_perfkits_own(tmp_path: Path) -> None:
    """A spinning thread of this process (perfkit's own: the collector runs in it) and an
    orphaned spinning process (other work): each lands in its own column."""
    target, _ = start_process([sys.executable, "-c",
                               "import time; print('ready', flush=True); time.sleep(60)"])
    # started through a shell that exits at once: not a descendant of this process
    shell, pid_line = start_process(["sh", "-c", f"{sys.executable} {BUSY} --seconds 20 "
                                     f">/dev/null 2>&1 & echo $!"])
    other = psutil.Process(int(pid_line))
    ends_at = time.monotonic() + 4.0

    def spin() -> None:
        while time.monotonic() < ends_at:
            sum(i * i for i in range(1000))

    spinner = threading.Thread(target=spin)
    own = psutil.Process()
    collector = SystemCollector(target.pid, tmp_path / rundir.RESOURCES, interval_s=0.5)
    try:
        spinner.start()
        collector.start()
        time.sleep(0.6)  # from the second sample on, rates are measured
        started, stamp = time.monotonic(), time.time()
        machine0, own0, other0 = machine_cpu_s(), process_cpu_s(own), process_cpu_s(other)
        time.sleep(3.0)
        wall_s = time.monotonic() - started
        machine_s, own_s, other_s = (machine_cpu_s() - machine0, process_cpu_s(own) - own0,
                                     process_cpu_s(other) - other0)
        collector.stop()
        spinner.join()
    finally:
        other.kill()
        stop_target(shell)
        stop_target(target)
    frame = pd.read_csv(tmp_path / rundir.RESOURCES)
    # the rows whose interval (the 0.5 s before each) lies within the measured 3 s
    frame = frame[(frame["t"] >= stamp + 0.5) & (frame["t"] <= stamp + wall_s)]
    assert len(frame) >= 4
    others, own_percent = (frame["others_cpu_percent"].mean(),
                           frame["sys_perfkit_cpu_percent"].mean())
    # this process's CPU is perfkit's; the orphan's is other work, with whatever else ran
    assert own_percent == pytest.approx(100 * own_s / wall_s, abs=10)
    assert others >= 0.8 * 100 * other_s / wall_s > 10
    assert others == pytest.approx(100 * (machine_s - own_s) / wall_s, abs=10)
    assert frame["sys_loadavg_1m"].notna().all() and frame["sys_steal_percent"].notna().all()
    assert frame["wait_percent"].notna().all() and frame["sys_perfkit_wait_percent"].notna().all()


@pytest.mark.serial
def test_compare_beside_a_cpu_burner_is_inconclusive(tmp_path: Path) -> None:
    """Two runs of one target, the second beside a CPU burner started before it: its latency
    doubles, and compare says the machine was busier, not that the target regressed."""
    kpi = tmp_path / "kpi.toml"
    kpi.write_text(LAX_KPIS)
    with running_target(CPU_BURNER, "--burn-ms", "4") as (url, proc):
        quiet = run_perfkit(*load_args(url, proc, kpi, "8s"), "--out", "quiet", cwd=tmp_path)
        assert quiet.returncode == 0, quiet.stdout + quiet.stderr
        burner, _ = start_target(BUSY, "--seconds", "40", "--children", "2")
        try:
            # regression = the run and its compare with the quiet one, in one process; 95 %:
            # eight 1 s blocks a side are enough for Mann-Whitney at that level
            busy = run_perfkit("regression", "--baseline", "quiet", "--confidence", "0.95",
                               *load_args(url, proc, kpi, "8s")[1:], "--out", "busy",
                               cwd=tmp_path)
        finally:
            stop_target(burner)
    assert busy.returncode == 0, busy.stdout + busy.stderr
    assert "compare: inconclusive: the machine was busier in the current run" in busy.stdout
    assert "of a core of other work" in busy.stdout
    record = json.loads((tmp_path / "busy" / "compare" / "compare.json").read_text())
    environment = record["environment"]
    # on a quiet machine the burner's CPU shows as other work; where other work had filled
    # the cores already, as a longer wait for them
    assert environment["busier"] == "current", environment["note"]
    # the rule fired: without it these would have been regressions (latency doubled)
    assert f"{HEALTH} p50_ms" in environment["explained"], record["metrics"]
    assert record["regression"] is False
    html = (tmp_path / "busy" / "compare" / "compare.html").read_text()
    assert "the machine was busier in the current run" in html
    # each run says what else the machine was doing, in run.json, summary.json and its report
    busy_meta = json.loads((tmp_path / "busy" / "run.json").read_text())
    quiet_meta = json.loads((tmp_path / "quiet" / "run.json").read_text())
    assert check_environment([quiet_meta["environment"]], [busy_meta["environment"]],
                             (["quiet"], ["busy"]))["busier"] == "current"
    summary = json.loads((tmp_path / "busy" / "summary.json").read_text())
    assert summary["environment"] == busy_meta["environment"]
    assert "other processes" in (tmp_path / "busy" / "report.html").read_text()


@pytest.mark.serial
def test_baseline_of_several_runs_end_to_end(tmp_path: Path) -> None:
    """`perfkit baseline save` of four short runs, and a compare of a slower target against
    it: judged against the spread between the four runs, and caught. (4 s runs: after the 1 s
    warm-up the judged window starts at the next whole second, so a 3 s run kept 1.0-2.0 s,
    at times fewer than the 2 buckets compare needs.)"""
    kpi = tmp_path / "kpi.toml"
    kpi.write_text(LAX_KPIS)
    with running_target(FIXED_DELAY, "--delay-ms", "100") as (url, proc):
        slow = run_perfkit(*load_args(url, proc, kpi, "4s"), "--out", "slow", cwd=tmp_path)
        assert slow.returncode == 0, slow.stdout + slow.stderr
    # ×20, and four runs (three degrees of freedom): beyond their spread even on a machine
    # so busy that the 5 ms wait reads 7-11 ms from run to run. The four runs come from one
    # process (regression --repeat: one start-up), compared with the slow run on the way,
    # which is not what this test judges.
    with running_target(FIXED_DELAY, "--delay-ms", "5") as (url, proc):
        repeated = run_perfkit("regression", "--baseline", "slow", "--repeat", "4",
                               *load_args(url, proc, kpi, "4s")[1:], "--out", "base",
                               cwd=tmp_path)
    base = [f"base/run-{i}" for i in range(1, 5)]
    for run in base:
        meta = json.loads((tmp_path / run / "run.json").read_text())
        assert meta["status"] == "completed", repeated.stdout + repeated.stderr
    saved = run_perfkit("baseline", "save", *base, "--name", "main", cwd=tmp_path)
    assert saved.returncode == 0 and "4 runs" in saved.stdout, saved.stdout + saved.stderr
    listed = run_perfkit("baseline", "list", cwd=tmp_path)
    assert re.search(r"^main\s+health\s+4 s .* runs 4$", listed.stdout, re.M), listed.stdout
    compared = run_perfkit("compare", "main", "slow", "--confidence", "0.95", cwd=tmp_path)
    assert compared.returncode == 1, compared.stdout + compared.stderr
    assert "evidence between runs" in compared.stdout
    assert f"REGRESSION in {HEALTH}" in compared.stdout
    record = json.loads((tmp_path / "slow" / "compare" / "compare.json").read_text())
    assert record["evidence"] == "between runs" and len(record["baseline_runs"]) == 4
    p50 = next(m for m in record["metrics"] if m["subject"] == HEALTH and m["metric"] == "p50_ms")
    assert p50["verdict"] == "regressed" and len(p50["baseline_per_run"]) == 4
