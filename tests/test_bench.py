import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from perfkit import bench
from perfkit.errors import ConfigError, TargetError
from tests.targets import FIXED_DELAY, start_target, stop_target

DELAY_MS = 50.0
# The histogram is exact to 0.1 % here; the rest is the loopback round trip plus the
# scheduling of a shared 2-core machine, which can only add time, never remove it.
PRECISION = 0.001
ALLOWANCE_MS = 50.0


@pytest.fixture(scope="module")
def delayed_url() -> Iterator[str]:
    proc, url = start_target(FIXED_DELAY, "--delay-ms", str(DELAY_MS), "--port", "0")
    yield url
    stop_target(proc)


@pytest.fixture(scope="module")
def failing_url() -> Iterator[str]:
    proc, url = start_target(FIXED_DELAY, "--fail-every", "4", "--port", "0")
    yield url
    stop_target(proc)


def run_perfkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "perfkit", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.serial
def test_percentiles_match_the_targets_fixed_delay(delayed_url: str) -> None:
    result = bench.measure_bench(bench.BenchSettings(url=f"{delayed_url}/api/v1/health",
                                                     concurrency=4, requests=40))
    summary = bench.summarize_bench(result)["endpoints"]["GET /api/v1/health"]
    assert summary["count"] == 40
    assert summary["failures"] == 0
    lowest_ms = DELAY_MS * (1 - PRECISION)
    for key in ["min_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms"]:
        assert summary[key] >= lowest_ms, key
    assert summary["min_ms"] <= summary["p50_ms"] <= summary["p90_ms"] <= summary["p95_ms"]
    assert summary["p95_ms"] <= summary["p99_ms"] <= summary["max_ms"]
    assert summary["p50_ms"] < DELAY_MS + ALLOWANCE_MS
    assert result.hist.get_total_count() == 40


def test_non_2xx_answers_are_counted_as_failures_exactly(failing_url: str) -> None:
    result = bench.measure_bench(bench.BenchSettings(url=failing_url, concurrency=3,
                                                     requests=100))
    assert result.count == 100
    assert result.failures == 25
    assert result.errors == {"HTTP 500": 25}


def test_post_sends_body_and_headers(failing_url: str) -> None:
    result = bench.measure_bench(bench.BenchSettings(
        url=f"{failing_url}/api/v1/research/products", concurrency=2, requests=6,
        method="POST", headers=(("Content-Type", "application/json"),), body=b'{"items": []}'))
    assert result.name == "POST /api/v1/research/products"
    assert result.count == 6


def test_cli_prints_the_figures_and_writes_summary_json(delayed_url: str,
                                                        tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = run_perfkit("bench", f"{delayed_url}/status", "-c", "3", "-n", "12",
                         "-H", "X-Test: 1", "--json", str(out))
    assert result.returncode == 0, result.stderr
    for label in ["requests      12", "successes     12", "success rate  100.00 %", "rps",
                  "mean", "min", "p50", "p90", "p95", "p99", "max"]:
        assert label in result.stdout
    summary = json.loads(out.read_text())
    assert summary["verdict"] is None
    assert summary["kpis"] == []
    endpoint = summary["endpoints"]["GET /status"]
    assert endpoint["count"] == 12
    assert endpoint["failures"] == 0
    for key in ["rps", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms", "min_ms"]:
        assert endpoint[key] > 0, key


def test_duration_bounds_the_run(delayed_url: str) -> None:
    result = bench.measure_bench(bench.BenchSettings(url=delayed_url, concurrency=2,
                                                     duration_s=0.5))
    # Each of the 2 workers finishes the request it started before the deadline.
    assert 2 <= result.count
    assert result.count == result.hist.get_total_count()


def test_unreachable_url_is_a_one_line_error_with_exit_code_2() -> None:
    with pytest.raises(TargetError):
        bench.measure_bench(bench.BenchSettings(url="http://127.0.0.1:1/", requests=1))
    result = run_perfkit("bench", "http://127.0.0.1:1/", "-n", "3")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "unreachable" in result.stderr


@pytest.mark.parametrize("settings", [
    bench.BenchSettings(url="http://127.0.0.1:8000/"),
    bench.BenchSettings(url="127.0.0.1:8000", requests=1),
    bench.BenchSettings(url="http://127.0.0.1:8000/", requests=bench.MAX_REQUESTS + 1),
    bench.BenchSettings(url="http://127.0.0.1:8000/", duration_s=bench.MAX_DURATION_S + 1),
])
def test_unbounded_or_malformed_settings_are_refused(settings: bench.BenchSettings) -> None:
    with pytest.raises(ConfigError):
        bench.check_bench_settings(settings)


def test_bad_header_is_refused() -> None:
    assert bench.parse_header("X-A:  b ") == ("X-A", "b")
    with pytest.raises(ConfigError):
        bench.parse_header("no colon")


@pytest.mark.parametrize("max_failures, exit_code", [
    (None, 1), ("24", 1), ("25", 0), ("24%", 1), ("25%", 0), ("100%", 0),
])
def test_exit_code_is_1_when_more_requests_failed_than_allowed(
        failing_url: str, tmp_path: Path, max_failures: str | None, exit_code: int) -> None:
    # The target fails every 4th request it serves: exactly 25 of any 100 in a row.
    allowance = [] if max_failures is None else ["--max-failures", max_failures]
    out = tmp_path / "bench.json"
    result = run_perfkit("bench", failing_url, "-c", "3", "-n", "100", "--json", str(out),
                         *allowance)
    assert result.returncode == exit_code, result.stdout + result.stderr
    assert "requests      100" in result.stdout
    summary = json.loads(out.read_text())
    assert summary["endpoints"]["GET /"]["failures"] == 25
    assert summary["bench"]["exit_code"] == exit_code
    if exit_code:
        assert "FAILED: 25 of 100 requests failed" in result.stdout
    else:
        assert "25 of 100 requests failed, within --max-failures" in result.stdout


def test_no_failures_is_exit_code_0_and_says_nothing_of_failures(delayed_url: str) -> None:
    result = run_perfkit("bench", delayed_url, "-c", "2", "-n", "10")
    assert result.returncode == 0, result.stderr
    assert "failed" not in result.stdout.lower()


@pytest.mark.parametrize("text", ["-1", "1.5", "x", "101%", "-2%", "%"])
def test_a_bad_max_failures_is_a_one_line_error_with_exit_code_2(delayed_url: str,
                                                                 text: str) -> None:
    with pytest.raises(ConfigError):
        bench.parse_max_failures(text)
    result = run_perfkit("bench", delayed_url, "-n", "1", "--max-failures", text)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--max-failures" in result.stderr


def test_max_failures_reads_a_count_or_a_percentage() -> None:
    assert bench.parse_max_failures("0") == (0, None)
    assert bench.parse_max_failures(" 5 ") == (5, None)
    assert bench.parse_max_failures("1%") == (0, 1.0)
    assert bench.parse_max_failures("0.5%") == (0, 0.5)
