"""perfkit load end to end: real Locust runs (seconds) against real targets on 127.0.0.1."""

import json
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from perfkit import rundir
from perfkit.analysis import stats
from tests.targets import FAULTY, running_target


def faulty_target(*args: str) -> AbstractContextManager[tuple[str, subprocess.Popen[str]]]:
    return running_target(FAULTY, *args)


def perfkit(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "perfkit", *args], capture_output=True,
                          text=True, timeout=timeout)


def served_requests(url: str) -> int:
    with urllib.request.urlopen(url + "/__count", timeout=5) as response:
        return int(json.load(response)["requests"])


def locust_count(run_dir: Path, name: str) -> int:
    return int(rundir.load_run(run_dir).meta.locust_counts[name])


def endpoint_totals(run_dir: Path) -> dict[str, dict]:
    run = rundir.load_run(run_dir)
    return stats.summarize_endpoints(run.latency, 1.0)


def target_median_ms(url: str, requests: int = 20) -> float:
    """The target's own answer time, timed one request at a time outside perfkit: a 50 ms
    sleep takes longer on a machine whose timers run late, for perfkit and for this alike."""
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        with urllib.request.urlopen(url + "/api/v1/health", timeout=5) as response:
            response.read()
        times.append(1000.0 * (time.perf_counter() - started))
    return sorted(times)[len(times) // 2]


ONE_PROCESS = """
import json, sys
import locust, perfkit
handlers = []
for i in range(3):
    perfkit.load(target=sys.argv[1], scenario="health", users=2, duration="2s",
                 out=f"{sys.argv[2]}/run{i}", say=lambda _m: None)
    handlers.append(len(locust.events.request._handlers))
print(json.dumps(handlers))
"""


def test_runs_in_one_process_leave_no_listener_behind(tmp_path: Path) -> None:
    """perfkit ab runs many loads in one process on Locust's global events: a run whose
    recorder stayed subscribed would record (and hold in memory) every later run's requests."""
    with faulty_target() as (url, _):
        done = subprocess.run([sys.executable, "-c", ONE_PROCESS, url, str(tmp_path)],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    handlers = json.loads(done.stdout.strip().splitlines()[-1])
    assert handlers[0] == handlers[1] == handlers[2]
    for i in range(3):
        run_dir = tmp_path / f"run{i}"
        health = endpoint_totals(run_dir)["GET /api/v1/health"]
        assert health["count"] == locust_count(run_dir, "GET /api/v1/health") > 0


@pytest.mark.serial
def test_percentiles_match_a_known_fixed_delay(tmp_path: Path) -> None:
    with faulty_target("--delay-ms", "50") as (url, _):
        result = perfkit("load", "--target", url, "--scenario", "health", "--users", "3",
                         "--duration", "4s", "--out", str(tmp_path / "run"))
        own_ms = target_median_ms(url)
    assert result.returncode in (0, 1), result.stderr
    health = endpoint_totals(tmp_path / "run")["GET /api/v1/health"]
    # Every request Locust counted was recorded, once.
    assert health["count"] == locust_count(tmp_path / "run", "GET /api/v1/health") > 0
    # Never faster than the delay; a few ms of loopback and scheduling above it at the median.
    assert 50.0 <= health["p50_ms"] <= max(50.0, own_ms) * 1.001 + 15.0
    assert health["max_ms"] >= health["p99_ms"] >= health["p50_ms"]
    assert result.stdout.strip().splitlines()[-1].startswith("Report: ")


@pytest.mark.serial
def test_open_load_shows_a_stall_that_closed_load_hides(tmp_path: Path) -> None:
    p90 = {}
    for mode, extra in (("open", ["--rate", "40"]), ("closed", [])):
        with faulty_target("--delay-ms", "5", "--stall-at", "2", "--stall-s", "2") as (url, _):
            result = perfkit("load", "--target", url, "--scenario", "health", "--users", "4",
                             "--duration", "7s", "--warmup", "0s", *extra,
                             "--out", str(tmp_path / mode))
        assert result.returncode in (0, 1), result.stderr
        p90[mode] = endpoint_totals(tmp_path / mode)["GET /api/v1/health"]["p90_ms"]
    # Open: the ~80 arrivals due during the 2 s stall each wait for it (coordinated omission
    # corrected). Closed: only the 4 requests in flight see it, far above the 90th percentile.
    assert p90["open"] >= 400.0
    assert p90["closed"] < 100.0


@pytest.mark.serial
def test_open_load_keeps_its_arrival_rate(tmp_path: Path) -> None:
    with faulty_target("--delay-ms", "2") as (url, _):
        result = perfkit("load", "--target", url, "--scenario", "health", "--users", "4",
                         "--rate", "25", "--duration", "6s", "--out", str(tmp_path / "run"))
    assert result.returncode in (0, 1), result.stderr
    count = endpoint_totals(tmp_path / "run")["GET /api/v1/health"]["count"]
    assert 100 <= count <= 175  # 25/s for 6 s; a closed load would have sent thousands


def test_a_target_that_dies_leaves_a_readable_partial_run(tmp_path: Path) -> None:
    with faulty_target("--delay-ms", "5", "--die-after", "2") as (url, process):
        result = perfkit("load", "--target", url, "--target-pid", str(process.pid),
                         "--scenario", "health", "--users", "2", "--duration", "30s",
                         "--out", str(tmp_path / "run"))
    assert result.returncode == 1, result.stderr
    run = rundir.load_run(tmp_path / "run")
    assert run.meta.status == "target_died"
    assert "exited" in run.meta.message
    assert run.meta.ended_at - run.meta.started_at < 25
    assert run.latency["count"].sum() > 0
    assert (tmp_path / "run" / "summary.json").exists()
    assert "target_died" in result.stdout


def test_two_workers_merge_exactly(tmp_path: Path) -> None:
    with faulty_target("--delay-ms", "10") as (url, _):
        result = perfkit("load", "--target", url, "--scenario", "health", "--users", "4",
                         "--workers", "2", "--duration", "5s", "--out", str(tmp_path / "run"))
        served = served_requests(url)
    assert result.returncode in (0, 1), result.stderr + result.stdout
    run = rundir.load_run(tmp_path / "run")
    assert run.meta.settings.workers == 2
    health = stats.summarize_endpoints(run.latency, 1.0)["GET /api/v1/health"]
    # Nothing lost or counted twice on the way from the workers to the master: the same count
    # as Locust's own, and no more than the target served.
    assert health["count"] == locust_count(tmp_path / "run", "GET /api/v1/health") > 0
    assert health["count"] <= served
    assert health["p50_ms"] >= 10.0
    assert len(list((tmp_path / "run").glob("worker-*.log"))) == 2


def test_research_scenario_against_the_reference_service(tmp_path: Path) -> None:
    result = perfkit("load", "--fast", "--users", "6", "--spawn-rate", "6", "--duration", "10s",
                     "--out", str(tmp_path / "run"))
    assert result.returncode in (0, 1), result.stderr
    run = rundir.load_run(tmp_path / "run")
    names = set(run.latency["name"])
    assert {"POST /api/v1/research/products", "GET /api/v1/research/products/{id}/status",
            "job_completion"} <= names
    # The bundled service's status answers carry the job's timestamps: no job timed by polling.
    assert run.meta.load is not None
    timing = run.meta.load["job_timing"]["job_completion"]
    assert timing["timestamps"] > 0 and timing["polling"] == 0, timing
    assert run.meta.target_managed and run.meta.status == "completed"
    assert run.meta.collectors["app"]["available"] is True
    assert run.resources is not None and run.resources["rss_mb"].notna().any()
    assert run.app is not None and run.app["db_total_queries"].max() > 0
    assert (tmp_path / "run" / "target.log").exists()


def test_ctrl_c_stops_the_run_and_leaves_a_report(tmp_path: Path) -> None:
    with faulty_target("--delay-ms", "5") as (url, _):
        process = subprocess.Popen(
            [sys.executable, "-m", "perfkit", "load", "--target", url, "--scenario", "health",
             "--users", "2", "--duration", "60s", "--out", str(tmp_path / "run")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not (tmp_path / "run" / "timeline.csv").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    run = rundir.load_run(tmp_path / "run")
    assert run.meta.status == "interrupted"
    assert run.latency["count"].sum() > 0
    assert (tmp_path / "run" / "summary.json").exists()


def test_a_users_own_locustfile(tmp_path: Path) -> None:
    locustfile = tmp_path / "mine.py"
    locustfile.write_text(
        "from locust import HttpUser, constant, task\n\n\n"
        "class Mine(HttpUser):\n"
        "    wait_time = constant(0.05)\n\n"
        "    @task\n"
        "    def index(self):\n"
        "        self.client.get('/shop', name='/shop')\n\n"
        "    @task\n"
        "    def named(self):\n"
        "        self.client.get('/fast', name='GET /fast')\n")
    with faulty_target("--delay-ms", "1") as (url, _):
        result = perfkit("load", "--target", url, "--scenario", str(locustfile), "--users", "2",
                         "--duration", "3s", "--out", str(tmp_path / "run"))
    assert result.returncode in (0, 1), result.stderr
    names = set(endpoint_totals(tmp_path / "run"))
    # The method is shown beside a name, never prefixed twice.
    assert {"GET /shop", "GET /fast"} <= names and "GET GET /fast" not in names


@pytest.mark.parametrize("args, message", [
    (["--scenario", "nosuch"], "unknown scenario"),
    (["--target", "http://127.0.0.1:9"], "unreachable"),
    (["--variant", "turbo"], "unknown variant"),
    (["--target", "ftp://example"], "bad target URL"),
    (["--users", "0"], "--users"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path: Path, args: list[str],
                                                message: str) -> None:
    result = perfkit("load", "--duration", "2s", "--out", str(tmp_path / "run"), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_bad_kpi_file_fails_before_the_run(tmp_path: Path) -> None:
    kpi_file = tmp_path / "kpi.toml"
    kpi_file.write_text('[[kpi]]\nmetric = "p99_msec"\nendpoint = "GET /api/v1/health"\n'
                        'target = "100ms"\n')
    result = perfkit("load", "--kpi", str(kpi_file), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "kpi.toml:2" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
