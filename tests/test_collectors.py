"""System and app collectors against real processes and real HTTP servers on 127.0.0.1."""

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import psutil
import pytest

from perfkit import rundir
from perfkit.collectors.app import AppCollector
from perfkit.collectors.system import COLUMNS, SystemCollector

TARGET_COLUMNS = [c for c in COLUMNS[1:] if not c.startswith("sys_")]
# Where the kernel exposes no block devices (some containers) disk rates are missing, rightly.
MACHINE_COLUMNS = [c for c in COLUMNS if c.startswith("sys_")
                   and ("disk" not in c or psutil.disk_io_counters() is not None)]

# Waits for a line on stdin, then spawns a child that burns 0.4 s of CPU, allocates 8 x 8 MiB
# (touched, so resident) itself and burns 0.2 s of CPU; then idles, child and parent, so the
# tree's total CPU time at the end is what the collector must have seen between its samples.
WORKLOAD = textwrap.dedent("""
    import subprocess, sys, time
    BURN = "import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.4: pass\\n" \\
        "print('burnt', flush=True)\\ntime.sleep(60)"
    print("ready", flush=True)
    sys.stdin.readline()
    child = subprocess.Popen([sys.executable, "-c", BURN], stdout=subprocess.PIPE, text=True)
    blocks = []
    for _ in range(8):
        blocks.append(bytearray(8 * 1024 * 1024))
        time.sleep(0.1)
    t = time.process_time()
    while time.process_time() - t < 0.2:
        pass
    child.stdout.readline()
    print("done", flush=True)
    time.sleep(60)
""")

# The research API's metrics endpoints, served by the stdlib: "full" serves them with a
# growing query count and repeated slow queries, "none" 404s everything, "html" answers every
# path with an HTML page (a single-page app's fallback route), "db_only" has no application
# metrics.
METRICS_SERVER = textwrap.dedent("""
    import json, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    MODE = sys.argv[1]
    scrapes = {"n": 0}
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def log_message(self, *args):
            pass
        def send(self, status, body, content_type):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def do_GET(self):
            if MODE == "html":
                return self.send(200, b"<html><body>app</body></html>", "text/html")
            if MODE in ("full", "db_only") and self.path == "/api/v1/metrics/database":
                scrapes["n"] += 1
                n = scrapes["n"]
                slow = [{"query": "SELECT * FROM items", "time": 0.25,
                         "timestamp": "2026-11-26T05:00:00"}]
                if n >= 2:
                    slow.append({"query": "SELECT * FROM jobs", "time": 0.5,
                                 "timestamp": "2026-11-26T05:00:01"})
                body = {"total_queries": 100 * n, "average_time": 0.0125, "max_time": 0.5,
                        "slow_queries_count": len(slow), "recent_slow_queries": slow}
                return self.send(200, json.dumps(body).encode(), "application/json")
            if MODE == "full" and self.path == "/api/v1/metrics/application":
                body = {"research_avg_time": 1.5, "api_avg_time": 0.002, "total_requests": 42}
                return self.send(200, json.dumps(body).encode(), "application/json")
            if MODE == "full" and self.path == "/metrics":
                return self.send(200, b"# HELP x\\nx 1\\n", "text/plain")
            if MODE == "full" and self.path == "/busy":
                import time
                t = time.time()
                while time.time() - t < 0.002:
                    pass
                return self.send(200, b"ok", "text/plain")
            self.send(404, b'{"detail": "Not Found"}', "application/json")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()
""")


def wait_until(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def csv_rows(path: Path) -> int:
    if not path.exists():
        return 0
    return max(0, len(path.read_text().splitlines()) - 1)


def start_process(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def stop_process(proc: subprocess.Popen[str]) -> None:
    for child in psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []:
        child.kill()
    proc.kill()
    proc.wait(timeout=10)
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()


@pytest.fixture
def workload() -> Iterator[subprocess.Popen[str]]:
    proc = start_process([sys.executable, "-c", WORKLOAD])
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield proc
    stop_process(proc)


def serve_metrics(mode: str) -> tuple[subprocess.Popen[str], str]:
    proc = start_process([sys.executable, "-c", METRICS_SERVER, mode])
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


@pytest.fixture
def metrics_server() -> Iterator[Callable[[str], str]]:
    started: list[subprocess.Popen[str]] = []

    def start(mode: str) -> str:
        proc, url = serve_metrics(mode)
        started.append(proc)
        return url

    yield start
    for proc in started:
        stop_process(proc)


def cpu_s_of_tree(pid: int) -> float:
    root = psutil.Process(pid)
    times = [p.cpu_times() for p in [root, *root.children(recursive=True)]]
    return sum(t.user + t.system for t in times)


def test_system_collector_samples_a_growing_process_tree(
    workload: subprocess.Popen[str], tmp_path: Path
) -> None:
    out = tmp_path / rundir.RESOURCES
    cpu_before_s = cpu_s_of_tree(workload.pid)  # idle from here until told to start
    collector = SystemCollector(workload.pid, out, interval_s=0.2)
    collector.start()
    wait_until(lambda: csv_rows(out) >= 3)
    assert workload.stdin is not None and workload.stdout is not None
    workload.stdin.write("go\n")
    workload.stdin.flush()
    assert workload.stdout.readline().strip() == "done"
    rows_when_done = csv_rows(out)
    wait_until(lambda: csv_rows(out) >= rows_when_done + 2)
    latest = collector.latest()
    entry = collector.stop()
    cpu_used_s = cpu_s_of_tree(workload.pid) - cpu_before_s

    frame = pd.read_csv(out)
    assert list(frame.columns) == COLUMNS
    assert entry["available"] and entry["samples"] == len(frame) and entry["note"] == ""
    assert entry["target_samples"] == len(frame)
    assert latest is not None and latest["t"] in set(frame["t"])
    # psutil has nothing to diff the first sample against: missing, not 0.
    assert frame.loc[0, ["cpu_percent", "read_mb_s", "ctx_switches_s"]].isna().all()
    assert frame.loc[0, "rss_mb"] > 0 and frame.loc[0, "procs"] == 1
    assert frame["procs"].max() == 2
    later = frame.iloc[1:]
    # The child was born between two samples, so its CPU counts from birth: no gap.
    assert later[["cpu_percent", "ctx_switches_s"]].notna().all().all()
    # Every CPU second the tree used between the first and last sample, and nothing else.
    seen_cpu_s = (later["cpu_percent"] / 100 * frame["t"].diff().iloc[1:]).sum()
    assert seen_cpu_s == pytest.approx(cpu_used_s, rel=0.05, abs=0.05)
    assert cpu_used_s > 0.6
    assert later["cpu_machine_percent"].tolist() == pytest.approx(
        (later["cpu_percent"] / psutil.cpu_count()).tolist(), abs=0.011
    )
    assert frame["rss_mb"].iloc[-1] > frame["rss_mb"].iloc[0] + 50
    assert (frame["uss_mb"] <= frame["rss_mb"]).all() and (frame["uss_mb"] > 0).all()
    assert (frame["threads"] >= 1).all() and (frame["open_files"] >= 3).all()
    assert later[MACHINE_COLUMNS].notna().all().all()
    assert 0 < entry["cpu_s"] < 5


def test_system_collector_outlives_its_target(tmp_path: Path) -> None:
    target = start_process([sys.executable, "-c", "print('ready', flush=True); input()"])
    assert target.stdout is not None and target.stdout.readline().strip() == "ready"
    out = tmp_path / rundir.RESOURCES
    collector = SystemCollector(target.pid, out, interval_s=0.2)
    collector.start()
    wait_until(lambda: csv_rows(out) >= 2)
    stop_process(target)
    rows_at_death = csv_rows(out)
    wait_until(lambda: csv_rows(out) >= rows_at_death + 3)
    entry = collector.stop()

    frame = pd.read_csv(out)
    assert frame["procs"].iloc[0] == 1
    gone = frame[frame["procs"].isna()]
    assert len(gone) >= 2
    assert gone[TARGET_COLUMNS].isna().all().all()
    assert gone[["sys_cpu_percent", "sys_memory_percent"]].notna().all().all()
    assert f"target pid {target.pid} exited" in entry["note"]
    assert entry["samples"] == len(frame) and entry["target_samples"] < len(frame)


def test_system_collector_without_pid_samples_the_machine_only(tmp_path: Path) -> None:
    out = tmp_path / rundir.RESOURCES
    collector = SystemCollector(None, out, interval_s=0.1)
    collector.start()
    wait_until(lambda: csv_rows(out) >= 3)
    entry = collector.stop()

    frame = pd.read_csv(out)
    assert frame[TARGET_COLUMNS].isna().all().all()
    assert frame.loc[0, "sys_cpu_percent"] != frame.loc[0, "sys_cpu_percent"]  # NaN: no diff yet
    assert frame.iloc[1:][MACHINE_COLUMNS].notna().all().all()
    assert 0 < frame["sys_memory_percent"].min() <= 100
    assert entry["note"] == "no target pid: machine-wide columns only"
    assert entry["target_samples"] == 0


def test_system_collector_with_a_pid_that_does_not_exist(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    collector = SystemCollector(gone.pid, tmp_path / rundir.RESOURCES, interval_s=0.1)
    collector.start()
    wait_until(lambda: csv_rows(tmp_path / rundir.RESOURCES) >= 1)
    entry = collector.stop()
    assert entry["note"] == f"target pid {gone.pid} not found: machine-wide columns only"
    assert entry["samples"] >= 1 and entry["target_samples"] == 0


def test_stop_is_idempotent_and_latest_is_none_before_start(tmp_path: Path) -> None:
    collector = SystemCollector(os.getpid(), tmp_path / rundir.RESOURCES, interval_s=0.1)
    assert collector.latest() is None
    collector.start()
    wait_until(lambda: collector.latest() is not None)
    first = collector.stop()
    assert collector.stop() == first
    assert first["samples"] == csv_rows(tmp_path / rundir.RESOURCES)


def test_app_collector_scrapes_metrics_in_ms(
    metrics_server: Callable[[str], str], tmp_path: Path
) -> None:
    url = metrics_server("full")
    collector = AppCollector(url, tmp_path, interval_s=0.1)
    collector.start()
    wait_until(lambda: csv_rows(tmp_path / rundir.APP) >= 3)
    entry = collector.stop()

    run = pd.read_csv(tmp_path / rundir.APP)
    assert list(run.columns) == [
        "t", "db_total_queries", "db_average_ms", "db_max_ms", "db_slow_queries_count",
        "research_avg_ms", "api_avg_ms", "total_requests", "queue_depth", "workers",
    ]
    # This fake target reports no research queue: those columns stay missing, never 0.
    assert run[["queue_depth", "workers"]].isna().all().all()
    assert run["db_total_queries"].tolist() == [100 * (i + 1) for i in range(len(run))]
    first = run.iloc[0]
    assert (first["db_average_ms"], first["db_max_ms"]) == (12.5, 500.0)
    assert (first["research_avg_ms"], first["api_avg_ms"], first["total_requests"]) == (
        1500.0, 2.0, 42)
    assert entry["available"] is True and entry["samples"] == len(run)
    assert entry["prometheus"] is True and entry["note"] == ""
    slow = json.loads((tmp_path / rundir.SLOW_QUERIES).read_text())
    # Seen in every scrape, stored once each.
    assert slow == [
        {"query": "SELECT * FROM items", "time_ms": 250.0, "timestamp": "2026-11-26T05:00:00"},
        {"query": "SELECT * FROM jobs", "time_ms": 500.0, "timestamp": "2026-11-26T05:00:01"},
    ]
    assert entry["slow_queries"] == 2


def test_app_collector_with_database_metrics_only(
    metrics_server: Callable[[str], str], tmp_path: Path
) -> None:
    collector = AppCollector(metrics_server("db_only"), tmp_path, interval_s=0.1)
    collector.start()
    wait_until(lambda: csv_rows(tmp_path / rundir.APP) >= 2)
    entry = collector.stop()
    frame = pd.read_csv(tmp_path / rundir.APP)
    assert frame["db_total_queries"].notna().all()
    assert frame[["research_avg_ms", "api_avg_ms", "total_requests"]].isna().all().all()
    assert entry["available"] is True and entry["prometheus"] is False
    assert entry["note"] == "GET /api/v1/metrics/application: 404"


@pytest.mark.parametrize(("mode", "reason"), [
    ("none", "GET /api/v1/metrics/database: 404"),
    ("html", "GET /api/v1/metrics/database: not JSON (text/html)"),
])
def test_app_collector_without_metrics_endpoints_leaves_no_rows(
    metrics_server: Callable[[str], str], tmp_path: Path, mode: str, reason: str
) -> None:
    collector = AppCollector(metrics_server(mode), tmp_path, interval_s=0.1)
    collector.start()
    wait_until(lambda: collector.cpu_s > 0)
    time.sleep(0.3)
    entry = collector.stop()
    assert entry["available"] is False and entry["samples"] == 0
    assert reason in entry["note"] and "/api/v1/metrics/application" in entry["note"]
    assert entry["slow_queries"] is None
    assert not (tmp_path / rundir.APP).exists() and not (tmp_path / rundir.SLOW_QUERIES).exists()


def test_app_collector_with_nothing_listening(tmp_path: Path) -> None:
    proc, url = serve_metrics("none")
    stop_process(proc)  # its port is now closed
    collector = AppCollector(url, tmp_path, interval_s=0.05)
    collector.start()
    wait_until(lambda: re.match(r"([3-9]|\d\d+) scrapes failed", collector.describe()["note"])
               is not None)
    entry = collector.stop()
    assert entry["available"] is False and entry["samples"] == 0
    assert re.search(r"scrapes failed \(last: ConnectionRefusedError", entry["note"])
    assert not (tmp_path / rundir.APP).exists()


def test_app_collector_against_the_reference_service(tmp_path: Path) -> None:
    service = start_process([sys.executable, "-m", "perfkit", "serve", "--port", "0", "--fast"])
    try:
        assert service.stdout is not None
        line = service.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert match, line
        url = match.group(0)
        import urllib.request
        body = {"items": [{"product_name": "삼성 갤럭시 버즈3", "category": "가전디지털",
                           "price_exact": 189000}]}
        request = urllib.request.Request(
            url + "/api/v1/research/products", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 201
        collector = AppCollector(url, tmp_path, interval_s=0.2)
        collector.start()
        wait_until(lambda: csv_rows(tmp_path / rundir.APP) >= 2)
        entry = collector.stop()
    finally:
        stop_process(service)
    frame = pd.read_csv(tmp_path / rundir.APP)
    assert entry["available"] is True and entry["prometheus"] is True
    assert (frame["db_total_queries"] > 0).all() and (frame["total_requests"] >= 1).all()
    assert (frame["db_average_ms"] > 0).all()
    assert (frame["db_max_ms"] >= frame["db_average_ms"]).all()
    assert frame["api_avg_ms"].notna().all()
    assert isinstance(json.loads((tmp_path / rundir.SLOW_QUERIES).read_text()), list)


# Runs in a fresh interpreter where `import locust` has monkey-patched the stdlib, as in the
# runner: a real Locust load on the metrics server while both collectors sample it, and a
# greenlet that computes without yielding for a while, which would starve a greenlet sampler.
UNDER_LOCUST = textwrap.dedent("""
    import json, sys, time
    import locust
    import gevent
    from gevent import monkey
    from pathlib import Path
    from locust import HttpUser, constant, task
    from locust.env import Environment
    from perfkit.collectors.app import AppCollector
    from perfkit.collectors.system import SystemCollector
    assert monkey.is_module_patched("threading") and monkey.is_module_patched("socket")
    url, pid, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    class Client(HttpUser):
        host = url
        wait_time = constant(0.01)
        @task
        def busy(self):
            self.client.get("/busy")
    env = Environment(user_classes=[Client])
    runner = env.create_local_runner()
    system = SystemCollector(pid, out / "resources.csv", interval_s=0.2)
    app = AppCollector(url, out, interval_s=0.2)
    system.start()
    app.start()
    runner.start(4, spawn_rate=100)
    gevent.sleep(1.5)
    cpu_before = time.thread_time()
    collectors_cpu_before = system.cpu_s + app.cpu_s
    rows_before = system.samples
    while time.thread_time() - cpu_before < 1.0:
        sum(range(1000))
    rows_while_busy = system.samples - rows_before
    main_cpu_s = time.thread_time() - cpu_before
    collectors_cpu_s = system.cpu_s + app.cpu_s - collectors_cpu_before
    gevent.sleep(0.5)
    runner.quit()
    print(json.dumps({"system": system.stop(), "app": app.stop(), "main_cpu_s": main_cpu_s,
                      "collectors_cpu_s": collectors_cpu_s,
                      "rows_while_busy": rows_while_busy,
                      "requests": env.stats.total.num_requests}))
""")


def test_collectors_sample_beside_a_real_locust_run(tmp_path: Path) -> None:
    server, url = serve_metrics("full")
    try:
        result = subprocess.run(
            [sys.executable, "-c", UNDER_LOCUST, url, str(server.pid), str(tmp_path)],
            capture_output=True, text=True, timeout=60,
        )
    finally:
        stop_process(server)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["requests"] > 20
    system, app = report["system"], report["app"]
    frame = pd.read_csv(tmp_path / rundir.RESOURCES)
    assert system["samples"] == len(frame) and system["target_samples"] == len(frame)
    assert frame["cpu_percent"].iloc[1:].gt(0).any()
    assert app["available"] is True and csv_rows(tmp_path / rundir.APP) == app["samples"] > 3
    # A greenlet sampler could not have sampled at all while the main greenlet computed (how
    # many samples a native thread gets meanwhile depends on the GIL and the machine's load).
    assert report["rows_while_busy"] >= 1
    # thread_time() in the collectors' own threads: the busy loop's CPU second is not in what
    # they used meanwhile (a greenlet's thread_time would include all of it).
    assert report["main_cpu_s"] >= 1.0
    assert 0 < report["collectors_cpu_s"] < 0.5
    assert system["cpu_s"] > 0 and app["cpu_s"] > 0
