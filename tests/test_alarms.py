"""Alarms: a KPI judged over a sliding window, the webhook, and --abort-on-fail on a real run
against a target that becomes slow mid-run."""

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from perfkit import rundir
from perfkit.analysis import stats
from perfkit.analysis.kpi import judge_window, window_kpis
from perfkit.kpi_file import load_kpi_targets
from perfkit.run.alarms import post_json
from perfkit.run.recorder import Recorder

CAPACITY = Path(__file__).parent / "targets" / "capacity.py"
HEALTH = "GET /api/v1/health"


@contextmanager
def webhook_server(fail_first: int = 0) -> Iterator[tuple[str, list[dict]]]:
    """A local HTTP server that records every JSON body POSTed to it; the first `fail_first`
    POSTs get a 503."""
    received: list[dict] = []
    failures = [fail_first]

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if failures[0] > 0:
                failures[0] -= 1
                self.send_response(503)
            else:
                received.append(json.loads(body))
                self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def bucket(t: int, latencies_ms: list[float], name: str = HEALTH) -> dict[str, object]:
    hist = stats.new_histogram()
    for value in latencies_ms:
        stats.record_ms(hist, value)
    return {"t": t, "name": name, "count": len(latencies_ms), "failures": 0,
            "hist": stats.encode_histogram(hist)}


def test_window_kpis_are_the_upper_bounds_without_database_timings() -> None:
    metrics = {kpi.metric for kpi in window_kpis(load_kpi_targets(None))}
    assert "p99_ms" in metrics and "rss_mb_peak" in metrics
    assert not metrics & {"rps", "db_capacity_qps", "db_query_mean_ms"}


def test_judge_window_uses_the_kpi_definitions_on_the_window_only() -> None:
    targets = load_kpi_targets(None)  # health p99: 100 ms target, 200 ms allowed
    records = ([bucket(t, [10.0] * 98 + [900.0] * 2) for t in range(0, 10)]
               + [bucket(t, [10.0] * 100) for t in range(20, 30)])
    results = {r.kpi.name: r for r in judge_window(records, None, 0, 9, targets)}
    assert results["GET /api/v1/health p99"].verdict == "fail"
    assert results["GET /api/v1/health p99"].value == pytest.approx(900.0, rel=1e-3)
    later = {r.kpi.name: r for r in judge_window(records, None, 20, 29, targets)}
    assert later["GET /api/v1/health p99"].verdict == "pass"
    assert later["target memory RSS peak"].verdict == "missing"  # no samples: no alarm


def test_recorder_window_holds_written_and_pending_buckets(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / rundir.LATENCY, keep_s=60.0)
    now = time.time()
    for _ in range(3):
        recorder.on_request("GET", "/api/v1/health", 5.0, None)
    recorder.flush(final=True)  # written to latency.bin and kept
    recorder.on_request("GET", "/api/v1/health", 7.0, RuntimeError("boom"))  # still pending
    window = recorder.window_records(now - 5, now + 5)
    assert sum(r["count"] for r in window) == 4
    assert sum(r["failures"] for r in window) == 1
    assert stats.merge_histograms(r["hist"] for r in window).get_total_count() == 4
    assert recorder.window_records(now + 10, now + 20) == []
    assert [len(chunk.frame) for chunk in rundir.read_latency(tmp_path) if chunk] == [1]
    not_kept = Recorder(tmp_path / "other.jsonl")  # keep_s 0: the old behaviour, nothing kept
    not_kept.on_request("GET", "/api/v1/health", 5.0, None)
    not_kept.flush(final=True)
    assert not_kept.window_records(0, now + 5) == []


def test_webhook_is_retried_until_it_answers() -> None:
    with webhook_server(fail_first=2) as (url, received):
        assert post_json(url, {"kpi": "x"}, deadline_s=10.0) == ""
    assert received == [{"kpi": "x"}]


def test_a_dead_webhook_gives_up_within_its_deadline() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once the socket is closed
    error = post_json(f"http://127.0.0.1:{port}/hook", {"kpi": "x"}, deadline_s=2.0)
    assert "ConnectionRefused" in error or "refused" in error


def test_a_target_that_turns_slow_raises_an_alarm_and_aborts_the_run(tmp_path: Path) -> None:
    # 4 workers at 5 ms, then 60× slower (300 ms) from 3 s on: p95 far over the 100 ms KPI.
    # Not in the serial phase: a busy machine can only make the alarm come sooner, on the same
    # KPI, and every assertion holds either way.
    kpis = tmp_path / "kpi.toml"
    kpis.write_text('replace_defaults = true\n[[kpi]]\nmetric = "p95_ms"\n'
                    'endpoint = "GET /api/v1/health"\ntarget = "100ms"\n', "utf-8")
    target = subprocess.Popen([sys.executable, str(CAPACITY), "--workers", "4",
                               "--service-ms", "5", "--slow-from", "3", "--slow-factor", "60"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert target.stdout is not None
        url = target.stdout.readline().strip()
        with webhook_server() as (hook, received):
            result = subprocess.run(
                [sys.executable, "-m", "perfkit", "load", "--target", url, "--scenario",
                 "health", "--users", "4", "--rate", "8", "--duration", "60s", "--warmup", "0s",
                 "--kpi", str(kpis), "--alert-webhook", hook, "--abort-on-fail",
                 "--out", str(tmp_path / "run")],
                capture_output=True, text=True, timeout=120)
    finally:
        target.kill()
        target.wait()
        if target.stdout is not None:
            target.stdout.close()
    assert result.returncode == 1, result.stdout + result.stderr
    alarm_lines = [line for line in result.stdout.splitlines() if "ALARM" in line]
    assert alarm_lines and "GET /api/v1/health p95" in alarm_lines[0]
    run = rundir.load_run(tmp_path / "run")
    assert run.meta.status == "aborted"
    assert "--abort-on-fail" in run.meta.message
    assert run.meta.ended_at - run.meta.started_at < run.meta.settings.duration_s
    assert run.alarms[0]["kpi"] == "GET /api/v1/health p95"
    assert run.alarms[0]["value"] > run.alarms[0]["limit"] == 100.0
    assert set(run.alarms[0]) == {"t", "kpi", "value", "limit", "message"}
    assert received and received[0]["kpi"] == "GET /api/v1/health p95"
    assert received[0]["run_id"] == "run"
    assert run.meta.alarms["webhook"]["posted"] == 1
    assert (tmp_path / "run" / "report.html").exists()
    assert (tmp_path / "run" / "summary.json").exists()


def test_fast_percentiles_and_mean_equal_hdrh_exactly() -> None:
    # The live window relies on stats' vectorised percentile_ms and mean_ms; they must give
    # hdrh's own numbers, to the last bit, on narrow, wide and extreme histograms.
    rng = np.random.default_rng(3)
    samples = [rng.lognormal(3.0, 2.0, 2000), rng.uniform(0.001, 5.0, 500),
               np.array([0.001, 1.0, 1000.0, 3.6e6]), np.array([42.0])]
    for values in samples:
        hist = stats.new_histogram()
        for value in values:
            stats.record_ms(hist, float(value))
        assert stats.mean_ms(hist) == hist.get_mean_value() / 1000.0
        for percentile in (0.0, 0.1, 50.0, 90.0, 95.0, 99.0, 99.9, 100.0):
            assert stats.percentile_ms(hist, percentile) == \
                hist.get_value_at_percentile(percentile) / 1000.0
    assert stats.mean_ms(stats.new_histogram()) is None
