"""The gate end to end: the CLI's exit codes on fixed data, and a short real A/B run."""

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from tests.synthetic import RunSpec, make_run

PERFKIT = [sys.executable, "-m", "perfkit"]
RESULTS = "GET /api/v1/research/products/{id}"
# The gate's own verdict only: the KPI defaults (50 RPS...) are not what this test is about.
LAX_KPIS = """replace_defaults = true

[[kpi]]
name = "error rate"
metric = "error_rate_percent"
target = "5%"
"""


def run_perfkit(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PERFKIT, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)


@pytest.fixture(scope="module")
def synthetic_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    make_run(root / "base", RunSpec(seed=1, duration_s=60))
    make_run(root / "same", RunSpec(seed=2, duration_s=60))
    slow = RunSpec(seed=3, duration_s=60)
    endpoints = dict(slow.endpoints)
    endpoints[RESULTS] = replace(endpoints[RESULTS], median_ms=endpoints[RESULTS].median_ms * 1.5)
    make_run(root / "slow", replace(slow, endpoints=endpoints))
    make_run(root / "other", RunSpec(seed=4, scenario="health"))
    return root


def test_compare_exit_codes(synthetic_runs: Path) -> None:
    same = run_perfkit("compare", "base", "same", cwd=synthetic_runs)
    assert same.returncode == 0, same.stderr
    assert "no regression" in same.stdout
    assert (synthetic_runs / "same" / "compare" / "compare.html").exists()

    slow = run_perfkit("compare", "base", "slow", "--out", "out-slow", cwd=synthetic_runs)
    assert slow.returncode == 1, slow.stderr
    assert f"REGRESSION in {RESULTS}" in slow.stdout
    record = json.loads((synthetic_runs / "out-slow" / "compare.json").read_text())
    assert record["regression"] is True
    assert record["regressed_endpoints"] == [RESULTS]

    other = run_perfkit("compare", "base", "other", cwd=synthetic_runs)
    assert other.returncode == 2
    assert other.stderr.strip().count("\n") == 0
    assert "different scenarios" in other.stderr


def test_baseline_save_list_and_compare_by_name(synthetic_runs: Path, tmp_path: Path) -> None:
    saved = run_perfkit("baseline", "save", str(synthetic_runs / "base"), "--name", "main",
                        cwd=tmp_path)
    assert saved.returncode == 0, saved.stderr
    kept = sorted(p.name for p in (tmp_path / "reports" / "baselines" / "main").iterdir())
    assert "run.json" in kept and "latency.bin" in kept
    assert not any(name.endswith((".html", ".svg", ".log")) for name in kept)
    listed = run_perfkit("baseline", "list", cwd=tmp_path)
    assert re.search(r"^main\s+research\s+60 s", listed.stdout, re.M), listed.stdout
    by_name = run_perfkit("compare", "main", str(synthetic_runs / "slow"), "--out", "o",
                          cwd=tmp_path)
    assert by_name.returncode == 1, by_name.stderr
    unknown = run_perfkit("compare", "nope", str(synthetic_runs / "slow"), cwd=tmp_path)
    assert unknown.returncode == 2 and "saved: main" in unknown.stderr


@contextmanager
def running_service(log_path: Path, *extra: str) -> Iterator[tuple[str, int]]:
    """A reference service (fast profile) on a free loopback port: (url, pid)."""
    with log_path.open("wb") as log_file:
        process = subprocess.Popen([*PERFKIT, "serve", "--port", "0", "--fast", *extra],
                                   stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        match = None
        while match is None and time.monotonic() < deadline and process.poll() is None:
            match = re.search(r"http://127\.0\.0\.1:\d+", log_path.read_text())
            time.sleep(0.2)
        assert match, log_path.read_text()
        yield match.group(0), process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


def _load_args(url: str, pid: int, kpi: Path) -> list[str]:
    return ["--target", url, "--target-pid", str(pid), "--scenario", "results", "--rate", "10",
            "--users", "5", "--duration", "12s", "--warmup", "2s", "--kpi", str(kpi)]


# Serial: beside other test files the second run may well see more of the machine's other
# work than the first, and compare then rightly calls the slowdown inconclusive.
@pytest.mark.serial
def test_real_slowdown_fails_the_gate_naming_the_endpoint(tmp_path: Path) -> None:
    """A baseline of the plain service, then `perfkit regression` against a service whose
    results endpoint waits 300 ms more: exit 1, the results endpoint named."""
    kpi = tmp_path / "kpi.toml"
    kpi.write_text(LAX_KPIS)
    with running_service(tmp_path / "plain.log") as (url, pid):
        base = run_perfkit("load", *_load_args(url, pid, kpi), "--out", str(tmp_path / "base"),
                           cwd=tmp_path)
    assert base.returncode == 0, base.stdout + base.stderr
    with running_service(tmp_path / "slow.log", "--extra-latency", "results=300ms") as (url, pid):
        result = run_perfkit("regression", "--baseline", str(tmp_path / "base"),
                             *_load_args(url, pid, kpi), "--out", str(tmp_path / "slow"),
                             cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    record = json.loads((tmp_path / "slow" / "compare" / "compare.json").read_text())
    assert RESULTS in record["regressed_endpoints"], result.stdout
