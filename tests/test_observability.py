"""Observability of any target, against real processes: a service that exposes only a standard
Prometheus /metrics (http and https), the bundled service on PostgreSQL and Redis, a real
Prometheus server scraping perfkit's own metrics, and an OTLP receiver."""

import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import lxml.html
import pytest

from perfkit import rundir
from tests.conftest import StartServices
from tests.targets import SQL, running_target

TARGETS = Path(__file__).parent / "targets"
PG = "postgres@127.0.0.1:5432"


def perfkit(*args: str, env: dict[str, str] | None = None,
            timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "perfkit", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def start_target(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, str(TARGETS / "prometheus_app.py"), *args],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    assert url.startswith("http"), url
    return proc, url


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kpi(run_dir: Path, name: str) -> dict[str, Any]:
    summary = json.loads((run_dir / "summary.json").read_text())
    return next(k for k in summary["kpis"] if k["name"] == name)


def request_count(run_dir: Path) -> int:
    latency = rundir.load_run(run_dir, histograms=False).latency
    return int(latency.loc[latency["name"].str.contains(" "), "count"].sum())


@pytest.fixture
def prometheus_target() -> Iterator[str]:
    proc, url = start_target("--token", "s3cret")
    yield url
    stop(proc)


def test_a_target_with_only_standard_metrics_gets_its_cpu_and_memory_judged(
        prometheus_target: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = perfkit("load", "--target", prometheus_target, "--scenario", "health",
                     "--users", "2", "--duration", "8s", "--warmup", "2s", "--out", str(out),
                     "--metrics-auth", "bearer:s3cret")
    assert result.returncode in (0, 1), result.stderr
    meta = json.loads((out / rundir.RUN_JSON).read_text())
    assert meta["target_pid"] is None and "s3cret" not in json.dumps(meta)
    scraped = meta["collectors"]["prometheus"]
    assert scraped["available"] and scraped["process"], scraped
    assert scraped["server_histogram"] == "http_request_duration_seconds"
    memory = kpi(out, "target memory RSS mean")
    # The target holds 64 MiB on top of its interpreter.
    assert memory["verdict"] != "missing" and memory["value"] > 64, memory
    cpu = kpi(out, "target CPU mean")
    assert cpu["verdict"] != "missing" and cpu["value"] > 0, cpu
    html = (out / "report.html").read_text()
    assert "Server-side latency" in html and "network + queueing" in html
    assert "process metrics at" in html


def test_a_metrics_endpoint_that_refuses_perfkit_leaves_resources_missing(
        prometheus_target: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = perfkit("load", "--target", prometheus_target, "--scenario", "health",
                     "--users", "1", "--duration", "4s", "--warmup", "1s", "--out", str(out))
    assert result.returncode in (0, 1), result.stderr
    meta = json.loads((out / rundir.RUN_JSON).read_text())
    assert "GET /metrics: 401" in meta["collectors"]["prometheus"]["note"]
    assert not (out / rundir.TARGET_METRICS).exists()
    assert kpi(out, "target memory RSS mean")["verdict"] == "missing"
    html = (out / "report.html").read_text()
    assert "not measured: GET /metrics: 401" in html


HEALTH_WITH_CA = """
import os
from locust import HttpUser, constant, task

class HealthUser(HttpUser):
    wait_time = constant(0)

    def on_start(self):
        self.client.verify = os.environ["SSL_CERT_FILE"]

    @task
    def health(self):
        self.client.get("/api/v1/health", name="/api/v1/health")
"""


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_an_https_target_with_a_self_signed_certificate_is_loaded_and_scraped(
        tls_files: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = tls_files
    proc, url = start_target("--tls", str(cert), str(key))
    try:
        assert url.startswith("https://")
        out = tmp_path / "run"
        # The certificate is trusted, not the verification turned off: perfkit's scrapes
        # through OpenSSL's SSL_CERT_FILE; Locust's HttpUser ignores the environment
        # (trust_env off), so the scenario names its CA bundle itself.
        scenario = tmp_path / "health_tls.py"
        scenario.write_text(HEALTH_WITH_CA)
        result = perfkit("load", "--target", url, "--scenario", str(scenario), "--users", "2",
                         "--duration", "6s", "--warmup", "1s", "--out", str(out),
                         env={"SSL_CERT_FILE": str(cert)})
        assert result.returncode in (0, 1), result.stderr
    finally:
        stop(proc)
    summary = json.loads((out / "summary.json").read_text())
    health = summary["endpoints"]["GET /api/v1/health"]
    assert health["count"] > 0 and health["failures"] == 0
    scraped = json.loads((out / rundir.RUN_JSON).read_text())["collectors"]["prometheus"]
    assert scraped["available"] and scraped["process"] and scraped["url"].startswith("https")
    served = [r for r in rundir.load_run(out).server_latency
              if r["name"] == "GET /api/v1/health"]
    assert served and served[-1]["count"] > 0


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh PostgreSQL database with pg_stat_statements created (skipped where the
    server has not loaded it: scripts/test.sh does)."""
    import psycopg

    name = f"perfkit_obs_{os.getpid()}_{int(time.time() * 1000) % 100000}"
    try:
        admin = psycopg.connect(f"postgresql://{PG}/postgres", autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {PG}: {exc}")
    with admin:
        loaded = admin.execute("SHOW shared_preload_libraries").fetchone()
        if "pg_stat_statements" not in str(loaded):
            pytest.skip("pg_stat_statements is not in shared_preload_libraries")
        admin.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(f"postgresql://{PG}/{name}", autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")
    yield name
    with psycopg.connect(f"postgresql://{PG}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def drive_research(url: str, jobs: int) -> None:
    body = {"items": [{"product_name": f"product {i}", "category": "food",
                       "price_exact": 1000 + i} for i in range(3)]}
    with httpx.Client(base_url=url, timeout=30) as client:
        job_ids = [client.post("/api/v1/research/products", json=body).json()["job_id"]
                   for _ in range(jobs)]
        deadline = time.monotonic() + 60
        for job_id in job_ids:
            while client.get(f"/api/v1/research/products/{job_id}/status").json()[
                    "status"] in ("pending", "processing"):
                assert time.monotonic() < deadline, "jobs did not finish"
                time.sleep(0.1)
            client.get(f"/api/v1/research/products/{job_id}")


def test_postgres_and_redis_collectors_agree_with_the_services_own_counters(
        database: str, start_reference_services: StartServices, tmp_path: Path) -> None:
    from perfkit.collectors.postgres import PostgresCollector
    from perfkit.collectors.redis_info import RedisCollector

    redis_url = "redis://127.0.0.1:6379/11"
    [service] = start_reference_services(
        ["--fast", "--database-url", f"postgresql+asyncpg://{PG}/{database}",
         "--redis-url", redis_url])
    drive_research(service.url, 2)  # connections opened, codecs set up: not counted below
    time.sleep(0.5)
    before = service.get_json("/api/v1/metrics/database")["total_queries"]
    postgres = PostgresCollector(f"postgresql://{PG}/{database}", tmp_path, interval_s=0.5)
    redis = RedisCollector(redis_url, tmp_path, interval_s=0.5)
    postgres.start()
    redis.start()
    deadline = time.monotonic() + 10
    while postgres.samples < 1 or redis.samples < 1:  # their first samples are the baseline
        assert time.monotonic() < deadline
        time.sleep(0.05)
    drive_research(service.url, 6)
    time.sleep(0.5)
    after = service.get_json("/api/v1/metrics/database")["total_queries"]
    postgres_entry, redis_entry = postgres.stop(), redis.stop()
    assert postgres_entry["pg_stat_statements"] is True, postgres_entry
    assert postgres_entry["note"] == "" and redis_entry["note"] == ""
    run = rundir.load_run(tmp_path, rundir.RunMeta())
    assert run.postgres is not None and run.redis is not None
    counted = int(run.postgres["calls"].iloc[-1] - run.postgres["calls"].iloc[0])
    assert after - before > 0
    # The service counts every statement it executes; pg_stat_statements every statement the
    # server ran. The service's own /metrics reads between are no queries.
    assert counted == after - before, (counted, after - before)
    slowest = run.pg_statements
    assert slowest and all(s["calls"] > 0 for s in slowest)
    assert any("INSERT INTO items" in s["query"] for s in slowest)
    lookups = run.redis["keyspace_hits"].iloc[-1] + run.redis["keyspace_misses"].iloc[-1] - (
        run.redis["keyspace_hits"].iloc[0] + run.redis["keyspace_misses"].iloc[0])
    assert lookups > 0  # the result cache was asked


def test_a_run_with_db_and_redis_urls_reports_them(
        database: str, start_reference_services: StartServices, tmp_path: Path) -> None:
    [service] = start_reference_services(
        ["--fast", "--database-url", f"postgresql+asyncpg://{PG}/{database}",
         "--redis-url", "redis://127.0.0.1:6379/12"])
    out = tmp_path / "run"
    result = perfkit("load", "--target", service.url, "--scenario", "research", "--users", "2",
                     "--duration", "8s", "--warmup", "2s", "--out", str(out),
                     "--db-url", f"postgresql://{PG}/{database}",
                     "--redis-url", "redis://127.0.0.1:6379/12")
    assert result.returncode in (0, 1), result.stderr
    meta = json.loads((out / rundir.RUN_JSON).read_text())
    assert meta["collectors"]["postgres"]["available"]
    assert meta["collectors"]["redis"]["available"]
    capacity = kpi(out, "database capacity")
    # Judged from PostgreSQL's own numbers: a short run proves no capacity, and says so.
    assert "pg_stat_statements" in capacity["reason"] or capacity["verdict"] == "pass"
    html = (out / "report.html").read_text()
    assert "Data stores" in html and "cache hit ratio" in html
    assert "mean query time" in html and "INSERT INTO" in html


def test_a_target_without_metrics_gets_its_slow_queries_and_query_times_from_postgres(
        database: str, tmp_path: Path) -> None:
    """Most targets expose no /api/v1/metrics/*: with --db-url, pg_stat_statements fills the
    report's slow queries and database chart, and the report says so."""
    db_url = f"postgresql://{PG}/{database}"
    out = tmp_path / "run"
    with running_target(SQL, "--database-url", db_url, "--sleep-ms", "20") as (url, _):
        result = perfkit("load", "--target", url, "--scenario", "health", "--users", "2",
                         "--duration", "4s", "--warmup", "1s", "--out", str(out),
                         "--db-url", db_url, "--history", "off")
    assert result.returncode in (0, 1), result.stderr
    meta = json.loads((out / rundir.RUN_JSON).read_text())
    assert not meta["collectors"]["app"]["available"]  # the target has no metrics of its own
    page = lxml.html.fromstring((out / "report.html").read_text())
    slow = page.xpath('//*[@id="slow-queries"]')[0]
    assert "pg_stat_statements" in slow.text_content()
    rows = [[" ".join(td.text_content().split()) for td in tr.xpath("./td")]
            for tr in slow.xpath(".//tbody/tr")]
    # Slowest on average first: the statement of known duration, every one run in the run.
    query, calls, mean, slowest, _total = rows[0]
    assert query == "SELECT pg_sleep($1)", rows
    assert int(calls.replace(",", "")) > 0
    assert float(mean.removesuffix(" ms")) >= 20.0
    assert float(slowest.removesuffix(" ms")) >= float(mean.removesuffix(" ms"))
    assert any(row[0].startswith("INSERT INTO visits") for row in rows)
    chart = page.xpath('//*[@id="database"]')[0]
    assert chart.xpath('.//*[local-name()="svg"]'), "no database chart"
    text = " ".join(chart.text_content().split())
    assert "not measured" not in text
    assert "From the target's PostgreSQL (pg_stat_statements" in text
    assert "The database KPIs are judged on PostgreSQL's own statistics" in text
    assert "pg_stat_statements" in kpi(out, "database capacity")["reason"]


def test_without_pg_stat_statements_timings_are_missing_and_rates_remain(
        tmp_path: Path) -> None:
    import psycopg

    from perfkit.collectors.postgres import PostgresCollector

    name = f"perfkit_obs_plain_{os.getpid()}"
    try:
        with psycopg.connect(f"postgresql://{PG}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {PG}: {exc}")
    try:
        collector = PostgresCollector(f"postgresql://{PG}/{name}", tmp_path, interval_s=0.3)
        collector.start()
        deadline = time.monotonic() + 10
        while collector.samples < 1:  # its first sample is the baseline
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with psycopg.connect(f"postgresql://{PG}/{name}", autocommit=True) as conn:
            for _ in range(50):
                conn.execute("SELECT 1")
        # An idle backend reports its counts to the statistics up to 10 s late; one that
        # exits reports them at once.
        time.sleep(1.0)
        entry = collector.stop()
    finally:
        with psycopg.connect(f"postgresql://{PG}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert entry["pg_stat_statements"] is False and "pg_stat_statements" in entry["note"]
    run = rundir.load_run(tmp_path, rundir.RunMeta())
    assert run.postgres is not None
    assert run.postgres["calls"].isna().all() and run.postgres["exec_ms"].isna().all()
    assert run.postgres["xacts"].iloc[-1] - run.postgres["xacts"].iloc[0] >= 50
    assert not (tmp_path / rundir.PG_STATEMENTS).exists()


def test_a_real_prometheus_scrapes_a_run_and_counts_its_requests(
        prometheus_target: str, tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("Prometheus is not installed (apt-get install prometheus; scripts/test.sh "
                    "does)")
    exporter_port, prometheus_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: perfkit\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{exporter_port}']}}]\n")
    prometheus = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prometheus_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{prometheus_port}/api/v1"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{prometheus_port}/-/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not start"
            time.sleep(0.2)
        out = tmp_path / "run"
        result = perfkit("load", "--target", prometheus_target, "--scenario", "health",
                         "--users", "2", "--duration", "8s", "--warmup", "1s",
                         "--out", str(out), "--prometheus-port", str(exporter_port))
        assert result.returncode in (0, 1), result.stderr
        meta = json.loads((out / rundir.RUN_JSON).read_text())
        assert meta["export"]["scrapes"] >= 3, meta["export"]
        # The exporter has gone, so Prometheus marked its series stale: ask for the last
        # value each had, as a dashboard of a finished run does.
        query = (f'sum(last_over_time(perfkit_requests_total{{run_id="{out.name}",'
                 f'scenario="health"}}[5m]))')
        answer = httpx.get(f"{api}/query", params={"query": query}).json()
        assert answer["status"] == "success", answer
        [sample] = answer["data"]["result"]
        # The exporter waited for a scrape after the load ended: the final count.
        assert int(float(sample["value"][1])) == request_count(out)
        buckets = httpx.get(f"{api}/query", params={
            "query": f'last_over_time(perfkit_request_duration_seconds_bucket'
                     f'{{run_id="{out.name}",le="+Inf"}}[5m])'
        }).json()["data"]["result"]
        assert buckets and buckets[0]["metric"]["endpoint"] == "GET /api/v1/health"
    finally:
        prometheus.terminate()
        prometheus.wait(15)


class _OtlpReceiver(BaseHTTPRequestHandler):
    bodies: list[bytes] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        type(self).bodies.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_otlp_export_pushes_the_runs_request_count(prometheus_target: str,
                                                   tmp_path: Path) -> None:
    pytest.importorskip("opentelemetry.sdk.metrics",
                        reason="the OpenTelemetry extra is not installed (perfkit[otlp])")
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )

    server = ThreadingHTTPServer(("127.0.0.1", 0), _OtlpReceiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "run"
        result = perfkit("load", "--target", prometheus_target, "--scenario", "health",
                         "--users", "1", "--duration", "4s", "--warmup", "1s", "--out", str(out),
                         "--otlp-endpoint", f"http://127.0.0.1:{server.server_address[1]}")
        assert result.returncode in (0, 1), result.stderr
    finally:
        server.shutdown()
        server.server_close()
    assert json.loads((out / rundir.RUN_JSON).read_text())["export"]["otlp"]["flushed"]
    counts = []
    for body in _OtlpReceiver.bodies:
        request = ExportMetricsServiceRequest.FromString(body)
        for resource in request.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == "perfkit.requests":
                        counts += [p.as_int or int(p.as_double) for p in metric.sum.data_points
                                   if any(a.key == "run_id" and a.value.string_value == out.name
                                          for a in p.attributes)]
    assert counts and max(counts) == request_count(out)


def test_metrics_url_and_credentials_are_not_recorded() -> None:
    from perfkit.collectors.prometheus import metrics_url, without_credentials

    assert metrics_url("https://svc:8443/", "/metrics") == "https://svc:8443/metrics"
    assert metrics_url("http://svc", "http://svc:9100/metrics") == "http://svc:9100/metrics"
    assert without_credentials("https://u:p@svc:9100/m") == "https://svc:9100/m"
    assert urllib.parse.urlsplit(without_credentials("http://svc/m")).netloc == "svc"
