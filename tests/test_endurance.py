"""perfkit endurance: the trend statistics and the leak analysis on fixed series, reports of
series without a trend, and real runs against targets with known memory behaviour."""

import json
import subprocess
import sys
import time
from pathlib import Path

import lxml.html
import numpy as np
import pandas as pd
import pytest

from perfkit import rundir
from perfkit.analysis import stats
from perfkit.analysis.endurance import MIN_SETTLED_S, analyze_endurance, judge_leak
from perfkit.analysis.kpi import judge_run
from perfkit.kpi_file import load_kpi_targets
from perfkit.report import write_report
from perfkit.result import LATENCY_COLUMNS, RunMeta, RunResult, RunSettings
from tests.synthetic import START_T, RunSpec, make_run
from tests.targets import start_target, stop_target
from tests.test_verdict_outputs import assert_outputs_agree

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


def test_a_constant_series_has_an_exact_zero_trend() -> None:
    # Block means of equal floats differ in their last bits: that is no autocorrelated noise,
    # and the interval of a constant is [0, 0], not infinite.
    t = np.arange(0.0, 600.0)
    slope, low, high, _ = stats.trend_interval(t, np.full(t.size, 36.543))
    assert (slope, low, high) == pytest.approx((0.0, 0.0, 0.0), abs=1e-12)


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


def test_two_segments_find_the_knee_and_the_step() -> None:
    t = np.arange(60.0)
    knee = np.minimum(t, 20.0)  # grows until 20, flat after
    assert stats.fit_two_segments(t, knee) in (20, 21)
    step = np.where(t < 35, 10.0, 50.0)
    assert stats.fit_two_segments(t, step) == 35
    assert stats.fit_two_segments(t, step, min_second=30) == 30  # the later part is kept long
    assert stats.fit_two_segments(t[:7], knee[:7]) is None  # 3 + 5 points at least


def test_leak_verdict_needs_the_interval_beyond_the_threshold_and_a_long_enough_run() -> None:
    def trend(per_h: float, low: float | None, high: float | None) -> dict:
        return {"per_h": per_h, "ci_low_per_h": low, "ci_high_per_h": high}

    long, short = MIN_SETTLED_S, MIN_SETTLED_S - 1
    assert judge_leak(trend(50, 30, 70), 10.0, long) == "leak"
    assert judge_leak(trend(50, 30, 70), 10.0, short) == "inconclusive"  # a warm-up can
    assert judge_leak(trend(500, 120, 900), 10.0, short) == "leak"  # no warm-up: > 10 × 10
    assert judge_leak(trend(2, -3, 7), 10.0, long) == "no_leak"
    assert judge_leak(trend(2, -3, 7), 10.0, short) == "inconclusive"
    assert judge_leak(trend(12, 5, 19), 10.0, long) == "inconclusive"
    assert judge_leak(trend(12, None, None), 10.0, long) == "inconclusive"  # no interval
    assert judge_leak({"per_h": None}, 10.0, long) == "missing"


def bucket(t: int, latency_ms: float, count: int, failures: int = 0) -> list[object]:
    hist = stats.new_histogram()
    for _ in range(count):
        stats.record_ms(hist, latency_ms)
    return [t, "GET /api/v1/health", count, failures, stats.encode_histogram(hist)]


def test_drift_and_error_budget_of_a_run_on_fixed_data() -> None:
    # 100 s judged: RSS grows 0.01 MB/s (36 MB/h); latency 10 ms for the first 50 s and
    # 30 ms after; 4 failures in 10,000 requests against a 0.1 % error-rate KPI.
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
    # Growing, but for 100 s and below 10 × the threshold: a warm-up could do that.
    assert memory["verdict"] == "inconclusive"
    assert "too short to tell" in memory["reason"]
    drift = result["drift"]
    overall = drift["endpoints"]["all"]
    assert overall["p95_first_ms"] == pytest.approx(10.0, rel=1e-3)
    assert overall["p95_last_ms"] == pytest.approx(30.0, rel=1e-3)
    assert overall["ratio"] == pytest.approx(3.0, rel=1e-3)
    assert drift["verdict"] == "warn"  # ×3 and +20 ms
    budget = result["error_budget"]
    assert (budget["requests"], budget["failures"]) == (10_000, 4)
    assert budget["allowed_failures"] == pytest.approx(10.0)
    assert budget["used_percent"] == pytest.approx(40.0)
    assert result["trends"]["threads"]["per_h"] == 0.0
    assert result["trends"]["uss_mb"]["per_h"] is None  # no such column: missing, not 0


def memory_of(rss: np.ndarray | None, threshold_mb_h: float = 10.0,
              open_files: np.ndarray | None = None) -> dict:
    """The memory analysis of a run judged for len(rss) seconds, one RSS sample a second."""
    n = 600 if rss is None else rss.size
    columns: dict = {"t": START_T + np.arange(float(n))}
    if rss is not None:
        columns["rss_mb"] = rss
    if open_files is not None:
        columns["open_files"] = open_files
    run = RunResult(run_dir=Path("."), meta=RunMeta(started_at=START_T, ended_at=START_T + n - 1,
                                                    settings=RunSettings(warmup_s=0)),
                    latency=pd.DataFrame([], columns=LATENCY_COLUMNS),
                    resources=pd.DataFrame(columns))
    return json.loads(json.dumps(analyze_endurance(run, [], threshold_mb_h)))["memory"]


NOISE = np.random.default_rng(3).normal(0.0, 0.3, 600)


def plateau(seconds: int, grow_s: int, grew_mb: float) -> np.ndarray:
    t = np.arange(float(seconds))
    return 100.0 + grew_mb * np.minimum(t, grow_s) / grow_s


def test_a_steady_leak_is_a_leak() -> None:
    t = np.arange(600.0)
    memory = memory_of(100.0 + t * 50.0 / 3600 + NOISE)  # 50 MB/h for 10 min
    assert memory["verdict"] == "leak"
    assert memory["per_h"] == pytest.approx(50.0, rel=0.2)
    assert memory["breakpoint_s"] is None and memory["plateau"] is None  # no change to find
    assert memory["settled_s"] == pytest.approx(599.0)
    projection = memory["projection_24h_mb"]
    assert projection["mb"] == pytest.approx(projection["from_mb"] + 24 * memory["per_h"])
    assert projection["low"] < projection["mb"] < projection["high"]


def test_growth_that_stops_is_warm_up_not_a_leak() -> None:
    memory = memory_of(plateau(600, 60, 40.0) + NOISE)  # 40 MB in 60 s, flat for 9 min
    assert memory["verdict"] == "no_leak", memory["reason"]
    assert memory["breakpoint_s"] == pytest.approx(60.0, abs=10.0)
    assert memory["plateau"]["grew_mb"] == pytest.approx(40.0, abs=2.0)
    assert abs(memory["per_h"]) < 10.0 and memory["ci_high_per_h"] < 10.0
    assert memory["reason"].startswith("grew 4")
    early, later = memory["segments"]
    assert early["per_h"] > 1000.0 and abs(later["per_h"]) < 10.0
    # One slope over the whole window grows at far more than the threshold.
    assert memory["whole"]["per_h"] > 50.0


def test_flat_and_constant_memory_are_no_leak() -> None:
    flat = memory_of(100.0 + NOISE)
    assert flat["verdict"] == "no_leak" and flat["plateau"] is None, flat["reason"]
    constant = memory_of(np.full(600, 36.543), open_files=np.full(600, 12.0))
    assert constant["verdict"] == "no_leak"
    assert constant["ci_low_per_h"] == pytest.approx(0.0, abs=1e-9)


def test_one_change_is_a_step_not_a_leak() -> None:
    # A pool filled at once: 30 MB more from 4 min on, flat before and after. The open
    # descriptors step from 11 to 12 at the start: a slope with no finite interval.
    memory = memory_of(np.where(np.arange(600) < 240, 100.0, 130.0) + NOISE,
                       open_files=np.where(np.arange(600) < 3, 11.0, 12.0))
    assert memory["verdict"] == "no_leak", memory["reason"]
    assert memory["plateau"]["grew_mb"] == pytest.approx(30.0, abs=2.0)
    assert memory["breakpoint_s"] == pytest.approx(240.0, abs=15.0)


def test_short_runs_are_inconclusive_unless_the_growth_is_large() -> None:
    short_plateau = memory_of(plateau(60, 40, 40.0) + NOISE[:60] / 100)
    assert short_plateau["verdict"] == "inconclusive"
    assert short_plateau["plateau"] is not None
    assert "too short to tell" in short_plateau["reason"]
    assert f"≥ {MIN_SETTLED_S / 60:g} min" in short_plateau["reason"]
    t = np.arange(60.0)
    assert memory_of(100.0 + t * 3600.0 / 3600 + NOISE[:60])["verdict"] == "leak"  # 3.6 GB/h
    assert memory_of(100.0 + t * 50.0 / 3600 + NOISE[:60] / 100)["verdict"] == "inconclusive"
    assert memory_of(100.0 + NOISE[:60])["verdict"] == "inconclusive"


def test_missing_and_too_few_samples() -> None:
    missing = memory_of(None)
    assert missing["verdict"] == "missing" and missing["per_h"] is None
    assert "--target-pid" in missing["reason"]
    few = memory_of(np.array([100.0, 101.0, 102.0]))
    assert few["verdict"] == "inconclusive" and "too few" in few["reason"]


SECONDS = np.arange(200.0)
SERIES = {
    "constant": (np.full(200, 36.543), np.full(200, 12.0)),
    # RSS steps up once; descriptors open for 100 s and then stay open: a bend that no
    # straight line fits, so its slope has no finite interval.
    "one change": (np.where(SECONDS < 50, 36.5, 76.5),
                   11.0 + np.round(0.3 * np.minimum(SECONDS, 100.0))),
    "missing": (None, None),
}


@pytest.mark.parametrize("name", list(SERIES))
def test_series_without_a_trend_render_every_output(tmp_path: Path, name: str) -> None:
    """Series that are constant, change once or are missing: a slope without an interval (the
    descriptor step) or none at all, through the writer every run uses."""
    rss, open_files = SERIES[name]
    make_run(tmp_path, RunSpec(duration_s=200))
    resources = pd.read_csv(tmp_path / rundir.RESOURCES)
    if rss is None:
        resources = resources.drop(columns=["rss_mb", "uss_mb", "open_files"])
    else:
        resources["rss_mb"], resources["open_files"] = rss, open_files
    resources.to_csv(tmp_path / rundir.RESOURCES, index=False)
    run = rundir.load_run(tmp_path)
    run.meta.command = "endurance"
    run.meta.endurance = analyze_endurance(run, load_kpi_targets(None), 10.0)
    write_report(judge_run(run, load_kpi_targets(None)))
    trend = run.meta.endurance["trends"]["open_files"]
    page = lxml.html.fromstring((tmp_path / "report.html").read_text("utf-8"))
    section = " ".join(page.xpath('//*[@id="endurance"]')[0].text_content().split())
    charts = page.xpath('//*[@id="endurance"]//*[local-name()="svg"]')
    if name == "missing":
        assert trend["per_h"] is None and "no RSS samples" in section and not charts
    else:
        assert len(charts) == 1
        if name == "one change":
            assert trend["per_h"] is not None and trend["ci_low_per_h"] is None
            assert "no interval" in section
            assert "warm-up" in section
    assert json.loads((tmp_path / "summary.json").read_text())["endurance"]["leak_verdict"] \
        == run.meta.endurance["memory"]["verdict"]
    assert "Memory growth" in (tmp_path / "summary.md").read_text()


def start_leaky(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc, url = start_target(LEAKY, *args)
    assert url.startswith("http://127.0.0.1:"), url
    return proc, url


# Runs against purpose-built targets, 20 requests/s, 1 s RSS samples, the default 10 MB/h
# threshold. Durations: a no-leak verdict needs MIN_SETTLED_S (2 min) of flat memory, so the
# long runs last 3 min (10 s warm-up; the plateau grows for the first 40 s and then stays flat
# for about 2 min 20 s); the short ones last 60 s. All five run at once (~3.5 min).
RUNS = {
    # name: (target arguments, duration, expected leak verdict, run verdict, exit code)
    "steady leak 60 s": (("--leak-kb", "16"), "60s", "leak", "fail", 1),  # ~1.1 GB/h
    "plateau 60 s": (("--leak-kb", "64", "--grow-s", "40"), "60s", "inconclusive", "warn", 0),
    "steady leak 3 min": (("--leak-kb", "10"), "3m", "leak", "fail", 1),  # ~700 MB/h
    "plateau 3 min": (("--leak-kb", "64", "--grow-s", "40"), "3m", "no_leak", "pass", 0),
    "flat 3 min": (("--leak-kb", "0"), "3m", "no_leak", "pass", 0),
}


@pytest.mark.timeout(480)
def test_leaks_plateaus_and_flat_memory_of_real_targets(tmp_path: Path) -> None:
    kpis = tmp_path / "kpi.toml"
    kpis.write_text('replace_defaults = true\n[[kpi]]\nmetric = "error_rate_percent"\n'
                    'target = "1%"\n', "utf-8")
    targets: list[subprocess.Popen[str]] = []
    runs: dict[str, subprocess.Popen[str]] = {}
    started = time.monotonic()
    try:
        for index, (name, (args, duration, *_)) in enumerate(RUNS.items()):
            proc, url = start_leaky(*args)
            targets.append(proc)
            runs[name] = subprocess.Popen(
                [sys.executable, "-m", "perfkit", "endurance", "--target", url,
                 "--target-pid", str(proc.pid), "--scenario", "health", "--users", "2",
                 "--rate", "20", "--duration", duration, "--warmup", "10s", "--kpi",
                 str(kpis), "--out", str(tmp_path / f"run{index}"),
                 *(["--profile"] if name == "flat 3 min" else [])],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        outputs = {name: run.communicate(timeout=400)[0] for name, run in runs.items()}
    finally:
        for process in [*runs.values()]:
            process.kill()
            process.wait()
            if process.stdout is not None:
                process.stdout.close()
        for proc in targets:
            stop_target(proc)
    print(f"five endurance runs in {time.monotonic() - started:.0f} s")
    for index, (name, (_, _, leak, verdict, code)) in enumerate(RUNS.items()):
        run_dir = tmp_path / f"run{index}"
        endurance = rundir.load_run(run_dir).meta.endurance
        memory = endurance["memory"]
        assert memory["verdict"] == leak, (name, memory["reason"], outputs[name])
        assert runs[name].returncode == code, (name, outputs[name])
        assert_outputs_agree(run_dir, runs[name].returncode, verdict)
        # The terminal says the memory verdict before the run's verdict, which includes it.
        lines = outputs[name].splitlines()
        memory_line = next(i for i, line in enumerate(lines) if "memory growth" in line)
        verdict_line = next(i for i, line in enumerate(lines) if "verdict" in line)
        assert memory_line < verdict_line, outputs[name]
        assert f"verdict {verdict.upper()}" in lines[verdict_line]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["endurance"]["leak_verdict"] == leak
        if leak == "leak":
            assert memory["ci_low_per_h"] > 100.0  # several hundred MB/h at least
            assert summary["verdict_reason"].startswith("memory leak")
        page = (run_dir / "report.html").read_text("utf-8")
        assert f'data-leak-verdict="{leak}"' in page and "projection to 24 h" in page
    plateau_3m = rundir.load_run(tmp_path / "run3").meta.endurance["memory"]
    # 64 KiB × 20/s for the 30 s of the growth inside the judged window: ~37 MB.
    assert 20.0 < plateau_3m["plateau"]["grew_mb"] < 60.0, plateau_3m["reason"]
    assert "flat since" in plateau_3m["reason"]
    steady = rundir.load_run(tmp_path / "run4").meta.endurance
    assert steady["error_budget"]["requests"] > 0
    assert steady["drift"]["endpoints"]["GET /api/v1/health"]["p95_first_ms"] is not None

    profile = rundir.load_run(tmp_path / "run4").meta.profile
    if not profile["available"] and "may not attach" in profile["note"]:
        pytest.skip(f"py-spy cannot attach here: {profile['note']}")
    assert profile["available"], profile["note"]
    assert (tmp_path / "run4" / "profile.svg").stat().st_size > 0
    assert (tmp_path / "run4" / "profile.speedscope.json").stat().st_size > 0
