"""The target's own numbers on fixed data: Prometheus text parsed, histogram quantiles, window
growth of cumulative counters, routes matched, PostgreSQL and Redis summaries."""

import math

import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from perfkit.analysis.observed import (
    compare_latency,
    histogram_quantile,
    route_key,
    summarize_postgres,
    summarize_redis,
    summarize_server_latency,
)
from perfkit.collectors.postgres import is_query, libpq_url, statement_deltas
from perfkit.collectors.prometheus import read_process, read_server_histogram
from perfkit.errors import ConfigError
from perfkit.redaction import redact_argv, redact_url
from perfkit.settings import parse_metrics_auth

INSTRUMENTATOR = """\
# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 12.5
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 1.048576e+08
# TYPE process_open_fds gauge
process_open_fds 17.0
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{handler="/i/{iid}",method="GET",status="200",le="0.01"} 6.0
http_request_duration_seconds_bucket{handler="/i/{iid}",method="GET",status="200",le="0.1"} 9.0
http_request_duration_seconds_bucket{handler="/i/{iid}",method="GET",status="200",le="+Inf"} 10.0
http_request_duration_seconds_count{handler="/i/{iid}",method="GET",status="200"} 10.0
http_request_duration_seconds_sum{handler="/i/{iid}",method="GET",status="200"} 0.5
http_request_duration_seconds_bucket{handler="/i/{iid}",method="GET",status="500",le="0.01"} 0.0
http_request_duration_seconds_bucket{handler="/i/{iid}",method="GET",status="500",le="0.1"} 2.0
http_request_duration_seconds_bucket{handler="/i/{iid}",method="GET",status="500",le="+Inf"} 2.0
http_request_duration_seconds_count{handler="/i/{iid}",method="GET",status="500"} 2.0
http_request_duration_seconds_sum{handler="/i/{iid}",method="GET",status="500"} 0.1
"""


def test_process_metrics_and_the_server_histogram_are_read_from_prometheus_text() -> None:
    families = list(text_string_to_metric_families(INSTRUMENTATOR))
    assert read_process(families) == {"cpu_s": 12.5, "rss_bytes": 104857600.0, "fds": 17.0}
    family, routes = read_server_histogram(families)
    assert family == "http_request_duration_seconds"
    # Summed over the status label.
    assert routes == {"GET /i/{iid}": {"count": 12, "sum_s": 0.6,
                                               "buckets": [[0.01, 6], [0.1, 11]]}}


def test_no_server_histogram_is_none() -> None:
    families = list(text_string_to_metric_families("# TYPE x counter\nx_total 1\n"))
    assert read_server_histogram(families) == (None, {})
    assert read_process(families) == {}


def test_histogram_quantile_interpolates_as_prometheus_does() -> None:
    buckets = [(0.01, 6.0), (0.1, 11.0)]
    assert histogram_quantile(0.5, buckets, 12) == pytest.approx(0.01)   # rank 6: 6th ≤ 10 ms
    # rank 9: 3 of the 5 requests in (10 ms, 100 ms]
    assert histogram_quantile(0.75, buckets, 12) == pytest.approx(0.01 + 0.09 * 3 / 5)
    assert histogram_quantile(0.99, buckets, 12) == 0.1   # beyond the last bound: that bound
    assert histogram_quantile(0.5, [(0.01, 4.0)], 4) == pytest.approx(0.005)
    assert histogram_quantile(0.5, buckets, 0) is None


def test_server_latency_of_a_window_is_the_growth_between_scrapes() -> None:
    def scrape(t: float, count: int, le_10ms: int, sum_s: float) -> dict:
        return {"t": t, "name": "GET /items/{item_id}", "count": count, "sum_s": sum_s,
                "buckets": [[0.01, le_10ms], [0.1, count]]}

    records = [scrape(100, 100, 100, 0.5), scrape(102, 100, 100, 0.5),
               scrape(104, 110, 100, 1.0), scrape(106, 200, 100, 5.0)]
    # From the scrape at 102 (the last at the start) to the one at 104: 10 requests, all in
    # (10, 100] ms, 0.5 s in all.
    summary = summarize_server_latency(records, 102, 105)
    assert summary["GET /items/{item_id}"]["count"] == 10
    assert summary["GET /items/{item_id}"]["mean_ms"] == pytest.approx(50.0)
    assert summary["GET /items/{item_id}"]["p50_ms"] == pytest.approx(55.0)
    # A restart (count went back) is not a window.
    assert summarize_server_latency([scrape(1, 50, 50, 1), scrape(2, 5, 5, 0.1)], 0, 3) == {}


def test_client_and_server_names_meet_across_parameter_spellings() -> None:
    assert route_key("GET /items/{id}") == route_key("GET /items/{item_id}") \
        == route_key("GET /items/:id") == route_key("GET /items/<int:id>/")
    rows = compare_latency(
        {"GET /items/{id}": {"count": 10, "p50_ms": 12.0, "p95_ms": 30.0, "p99_ms": 40.0},
         "GET /health": {"count": 3, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 2.0}},
        {"GET /items/{item_id}": {"count": 10, "p50_ms": 9.0, "p95_ms": 20.0, "p99_ms": 25.0}})
    by_name = {row["name"]: row for row in rows}
    assert by_name["GET /items/{id}"]["outside_server_p50_ms"] == pytest.approx(3.0)
    assert by_name["GET /health"]["server_p50_ms"] is None  # missing, never zero
    assert by_name["GET /health"]["outside_server_p50_ms"] is None


def test_postgres_summary_takes_rates_over_the_window_and_peaks_of_connections() -> None:
    frame = pd.DataFrame({
        "t": [0.0, 2.0, 4.0, 6.0], "calls": [100, 300, 500, 500],
        "exec_ms": [50.0, 150.0, 250.0, 250.0], "rows": [0, 0, 0, 0],
        "xacts": [10, 110, 210, 213], "active": [0, 3, 5, 0],
        "idle_in_transaction": [0, 1, 2, 0], "waiting": [0, 0, 1, 0],
        "connections": [5, 8, 9, 5]})
    summary = summarize_postgres(frame, 0.0, 4.0, interval_s=2.0)
    assert summary is not None
    assert summary["queries"] == 400 and summary["queries_s"] == pytest.approx(100.0)
    assert summary["query_mean_ms"] == pytest.approx(0.5)
    assert summary["xacts_s"] == pytest.approx(50.0 - 0.5)  # less perfkit's own
    assert (summary["active_max"], summary["idle_in_transaction_max"],
            summary["waiting_max"], summary["connections_max"]) == (5, 2, 1, 9)
    without = frame.assign(calls=math.nan, exec_ms=math.nan)
    summary = summarize_postgres(without, 0.0, 4.0)
    assert summary is not None and summary["queries_s"] is None
    assert summary["query_mean_ms"] is None and summary["xacts_s"] == pytest.approx(50.0)


def test_redis_hit_ratio_is_of_the_windows_lookups() -> None:
    frame = pd.DataFrame({"t": [0.0, 1.0, 2.0], "commands": [1000, 1100, 1300],
                          "keyspace_hits": [500, 530, 590], "keyspace_misses": [500, 510, 530],
                          "used_memory_mb": [1.0, 1.5, 1.2], "connected_clients": [2, 3, 3]})
    summary = summarize_redis(frame, 0.0, 2.0)
    assert summary is not None
    assert summary["hit_ratio_percent"] == pytest.approx(100.0 * 90 / 120)
    assert summary["commands_s"] == pytest.approx(150.0)
    assert summary["used_memory_mb_max"] == 1.5 and summary["connected_clients_max"] == 3
    idle = frame.assign(keyspace_hits=500, keyspace_misses=500)
    summary = summarize_redis(idle, 0.0, 2.0)
    assert summary is not None and summary["hit_ratio_percent"] is None


def test_statement_deltas_rank_the_runs_statements_by_total_time() -> None:
    first = {1: ("SELECT a", 10, 5.0, 10, 3.0), 2: ("INSERT b", 5, 50.0, 5, 20.0),
             4: ("DELETE d", 2, 10.0, 2, 9.0)}
    last = {1: ("SELECT a", 110, 105.0, 110, 3.0), 2: ("INSERT b", 5, 50.0, 5, 20.0),
            3: ("UPDATE c", 4, 400.0, 4, 190.0), 4: ("DELETE d", 3, 19.5, 3, 9.5)}
    rows = statement_deltas(first, last)
    assert [(r["query"], r["calls"], r["total_ms"]) for r in rows] == [
        ("UPDATE c", 4, 400.0), ("SELECT a", 100, 100.0), ("DELETE d", 1, 9.5)]
    assert rows[0]["mean_ms"] == 100.0
    # The slowest execution is the run's where the run raised it (or the statement is new);
    # an older one is only a bound.
    assert [(r["max_ms"], r["max_in_run"]) for r in rows] == [
        (190.0, True), (3.0, False), (9.5, True)]
    assert is_query("  WITH x AS (SELECT 1) SELECT * FROM x") and not is_query("BEGIN")
    assert not is_query("SET search_path = public")


def test_urls_and_secrets() -> None:
    assert libpq_url("postgresql+asyncpg://u@h/db") == "postgresql://u@h/db"
    with pytest.raises(ConfigError):
        libpq_url("mysql://h/db")
    assert redact_url("postgresql://u:secret@h/db") == "postgresql://***@h/db"
    assert parse_metrics_auth("bearer:abc") == "Bearer abc"
    assert parse_metrics_auth("basic:u:p") == "Basic dTpw"
    with pytest.raises(ConfigError):
        parse_metrics_auth("token")
    assert redact_argv(["perfkit", "--metrics-auth", "bearer:abc", "--metrics-auth=basic:u:p",
                        "--redis-url=redis://:pw@h:6379/0"]) == [
        "perfkit", "--metrics-auth", "***", "--metrics-auth=***", "--redis-url=redis://***@h:6379/0"]



def test_the_grafana_dashboard_queries_only_metrics_perfkit_serves() -> None:
    import json
    import re
    from pathlib import Path

    from prometheus_client import CollectorRegistry, generate_latest

    from perfkit.analysis import stats
    from perfkit.run.exporter import RunCollector, Snapshot
    from perfkit.run.recorder import Tally

    tally = Tally()
    for latency_ms in (3.0, 20.0, 20.0, 700.0):
        stats.record_ms(tally.hist, latency_ms)
    tally.count, tally.failures = 4, 1
    snapshot = Snapshot(elapsed_s=5.0, users=2, offered_rate=None, achieved_rps=0.8, alarms=0,
                        endpoints={"GET /x": tally},
                        target={"cpu_percent": 12.0, "rss_bytes": 1e8})
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunCollector(lambda: snapshot, {"run_id": "r1", "scenario": "s"}))
    served = generate_latest(registry).decode()
    assert 'perfkit_request_duration_seconds_bucket{endpoint="GET /x",le="0.025",' \
           'run_id="r1",scenario="s"} 3.0' in served
    assert 'perfkit_failures_total{endpoint="GET /x",run_id="r1",scenario="s"} 1.0' in served
    dashboard = (Path(__file__).parent.parent / "docs/grafana/perfkit.json").read_text()
    wanted = set(re.findall(r"perfkit_[a-z_]+", "\n".join(
        t["expr"] for p in json.loads(dashboard)["panels"] for t in p["targets"])))
    # perfkit_offered_rate has no sample in a closed load, but is declared.
    declared = set(re.findall(r"^# TYPE (\S+) ", served, re.MULTILINE))
    missing = {name for name in wanted if name not in declared
               and name.removesuffix("_total").removesuffix("_bucket") not in declared}
    assert wanted and not missing, missing
