"""perfkit endurance: the trend statistics on fixed data, the analysis of a run directory, and
real runs against a leaking and a steady target."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from perfkit import rundir
from perfkit.analysis import stats
from perfkit.analysis.endurance import analyze_endurance, judge_leak
from perfkit.config import load_kpi_targets
from perfkit.result import LATENCY_COLUMNS, RunMeta, RunResult, RunSettings

LEAKY = Path(__file__).parent / "targets" / "leaky.py"


def test_t_quantile_matches_the_table() -> None:
    for df, expected in [(1, 12.706), (2, 4.303), (5, 2.571), (10, 2.228), (28, 2.048),
                         (1000, 1.962)]:
        assert stats.t_quantile(0.975, df) == pytest.approx(expected, abs=1e-3)
    assert stats.t_quantile(0.025, 10) == pytest.approx(-2.228, abs=1e-3)


def test_trend_of_an_exact_line_is_exact() -> None:
    t = np.arange(0.0, 3600.0, 1.0)
    slope, low, high, blocks = stats.trend_interval(t, 100.0 + t / 360.0)  # 10 per hour
    assert slope * 3600 == pytest.approx(10.0)
    assert low * 3600 == pytest.approx(10.0) and high * 3600 == pytest.approx(10.0)
    assert blocks == 60  # per-minute means


def test_trend_interval_covers_the_true_slope_in_noise() -> None:
    rng = np.random.default_rng(7)
    t = np.arange(600.0)
    covered = 0
    for _ in range(200):
        y = 50.0 + 0.002 * t + rng.normal(0.0, 1.0, t.size)
        _, low, high, _ = stats.trend_interval(t, y)
        covered += low <= 0.002 <= high
    assert 180 <= covered <= 200  # 95 % nominal: about 190 of 200


def test_a_slow_cycle_widens_the_interval() -> None:
    # A sawtooth longer than a block (a GC cycle): the residuals are autocorrelated and a
    # plain OLS interval would be far too sure of a slope that is not there.
    t = np.arange(0.0, 1200.0)
    sawtooth = 50.0 + 5.0 * ((t % 300.0) / 300.0)
    slope, low, high, _ = stats.trend_interval(t, sawtooth)
    assert low <= 0.0 <= high
    assert stats.trend_interval(t[:4], sawtooth[:4]) is None
    assert stats.trend_interval(t, np.full(t.size, np.nan)) is None


def test_leak_verdict_needs_the_whole_interval_beyond_the_threshold() -> None:
    def trend(per_h: float, low: float, high: float) -> dict[str, float]:
        return {"per_h": per_h, "ci_low_per_h": low, "ci_high_per_h": high}

    assert judge_leak(trend(50, 30, 70), 10.0) == "leak"
    assert judge_leak(trend(2, -3, 7), 10.0) == "no_leak"
    assert judge_leak(trend(12, 5, 19), 10.0) == "inconclusive"
    assert judge_leak({"per_h": None}, 10.0) == "missing"


def bucket(t: int, latency_ms: float, count: int, failures: int = 0) -> list[object]:
    hist = stats.new_histogram()
    for _ in range(count):
        stats.record_ms(hist, latency_ms)
    return [t, "GET /api/v1/health", count, failures, stats.encode_histogram(hist)]


def test_analysis_of_a_run_directory_on_fixed_data() -> None:
    # 100 s judged: RSS grows 0.01 MB/s (36 MB/h); latency 10 ms for the first 20 s and
    # 30 ms for the last 20 s; 4 failures in 10,000 requests against a 0.1 % error-rate KPI.
    started = 1_000_000.0
    latency = pd.DataFrame(
        [bucket(int(started) + s, 10.0 if s < 50 else 30.0, 100, 1 if s in (3, 40, 70, 90)
                else 0) for s in range(100)], columns=LATENCY_COLUMNS)
    resources = pd.DataFrame({"t": started + np.arange(101.0),
                              "rss_mb": 200.0 + 0.01 * np.arange(101.0),
                              "threads": np.full(101, 8.0)})
    run = RunResult(run_dir=Path("."), meta=RunMeta(started_at=started, ended_at=started + 100,
                                                    settings=RunSettings(warmup_s=0)),
                    latency=latency, resources=resources)
    result = analyze_endurance(run, load_kpi_targets(None), leak_threshold_mb_h=10.0)
    memory = result["memory"]
    assert memory["per_h"] == pytest.approx(36.0)
    assert memory["verdict"] == "leak"
    assert memory["note"].startswith("short run (100 s judged)")
    drift = result["drift"]["endpoints"]["all"]
    assert drift["p95_first_ms"] == pytest.approx(10.0, rel=1e-3)
    assert drift["p95_last_ms"] == pytest.approx(30.0, rel=1e-3)
    assert drift["ratio"] == pytest.approx(3.0, rel=1e-3)
    budget = result["error_budget"]
    assert (budget["requests"], budget["failures"]) == (10_000, 4)
    assert budget["allowed_failures"] == pytest.approx(10.0)
    assert budget["used_percent"] == pytest.approx(40.0)
    assert result["trends"]["threads"]["per_h"] == 0.0
    assert result["trends"]["uss_mb"]["per_h"] is None  # no such column: missing, not 0


def test_endurance_flags_the_leaking_target_and_not_the_steady_one(tmp_path: Path) -> None:
    # Both runs at once (they share nothing): 64 KiB kept per request at 20 req/s is about
    # 4.5 GB/h. A 16 s judged window cannot resolve 10 MB/h (one allocator arena step is
    # that much), so the threshold here is 200 MB/h. The steady run also records a py-spy
    # profile (--profile), from the end of the warm-up on.
    kpis = tmp_path / "kpi.toml"
    kpis.write_text('replace_defaults = true\n[[kpi]]\nmetric = "error_rate_percent"\n'
                    'target = "1%"\n', "utf-8")
    targets, runs = [], []
    try:
        for leak_kb in ("64", "0"):
            target = subprocess.Popen([sys.executable, str(LEAKY), "--leak-kb", leak_kb],
                                      stdout=subprocess.PIPE, text=True)
            targets.append(target)
            assert target.stdout is not None
            url = target.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:"), url
            runs.append(subprocess.Popen(
                [sys.executable, "-m", "perfkit", "endurance", "--target", url,
                 "--target-pid", str(target.pid), "--scenario", "health", "--users", "2",
                 "--rate", "20", "--duration", "20s", "--warmup", "4s",
                 "--leak-threshold", "200MB/h", "--kpi", str(kpis),
                 "--out", str(tmp_path / f"leak{leak_kb}"),
                 *(["--profile"] if leak_kb == "0" else [])],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outputs = [run.communicate(timeout=120)[0] for run in runs]
    finally:
        for process in targets + runs:
            process.kill()
            process.wait()
            if process.stdout is not None:
                process.stdout.close()
    leaky = rundir.load_run(tmp_path / "leak64").meta.endurance
    steady = rundir.load_run(tmp_path / "leak0").meta.endurance
    assert leaky["memory"]["verdict"] == "leak", outputs[0]
    assert leaky["memory"]["ci_low_per_h"] > 1000.0
    assert runs[0].returncode == 1  # a leak fails the command
    assert "LEAK" in outputs[0]
    assert steady["memory"]["verdict"] != "leak", outputs[1]
    assert steady["memory"]["ci_low_per_h"] < 200.0
    assert steady["error_budget"]["requests"] > 0
    assert steady["drift"]["endpoints"]["GET /api/v1/health"]["p95_first_ms"] is not None
    json.dumps(steady)
    report = (tmp_path / "leak64" / "report.html").read_text("utf-8")
    assert 'id="endurance"' in report and "LEAK" in report
    summary = json.loads((tmp_path / "leak64" / "summary.json").read_text())
    assert summary["endurance"]["leak_verdict"] == "leak"
    assert summary["endurance"]["ci_mb_per_h"][0] > 1000.0
    assert "**leak**" in (tmp_path / "leak64" / "summary.md").read_text()
    assert "<failure" in (tmp_path / "leak64" / "junit.xml").read_text()

    profile = rundir.load_run(tmp_path / "leak0").meta.profile
    if not profile["available"] and "may not attach" in profile["note"]:
        pytest.skip(f"py-spy cannot attach here: {profile['note']}")
    assert profile["available"], profile["note"]
    assert (tmp_path / "leak0" / "profile.svg").stat().st_size > 0
    assert (tmp_path / "leak0" / "profile.speedscope.json").stat().st_size > 0
