"""The reference research service, as real `perfkit serve` processes on 127.0.0.1."""

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perfkit.reference.app import add_latency

from .conftest import ServiceProcess, StartServices

API = "/api/v1/research/products"


def new_item(name: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"product_name": name or f"Widget {uuid.uuid4().hex[:12]}", "category": "gadgets",
            "price_exact": 19900, **fields}


def create_job(url: str, items: list[dict[str, Any]], **body: Any) -> dict[str, Any]:
    response = httpx.post(url + API, json={"items": items, **body}, timeout=10.0)
    assert response.status_code == 201, response.text
    return dict(response.json())


def read_status(url: str, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{url}{API}/{job_id}/status", timeout=10.0)
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_for_status(url: str, job_id: str, statuses: tuple[str, ...],
                    timeout_s: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        status = read_status(url, job_id)
        if status["status"] in statuses:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {status['status']}, wanted {statuses}")
        time.sleep(0.02)


def read_results(url: str, job_id: str, **params: Any) -> dict[str, Any]:
    response = httpx.get(f"{url}{API}/{job_id}", params=params, timeout=10.0)
    assert response.status_code == 200, response.text
    return dict(response.json())


def read_metrics(url: str, kind: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/api/v1/metrics/{kind}", timeout=10.0)
    assert response.status_code == 200, response.text
    return dict(response.json())


def run_job(url: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    job = create_job(url, items)
    wait_for_status(url, job["job_id"], ("success", "error"))
    return read_results(url, job["job_id"])


def test_health_names_variants_profile_and_simulation(reference_service: str) -> None:
    health = httpx.get(reference_service + "/api/v1/health").json()
    assert health["status"] == "healthy"
    assert health["variants"] == []
    assert health["latency_profile"] == "fast"
    assert health["simulated"] is True
    assert health["version"]
    assert health["concurrency"] == 5


def test_a_batch_goes_from_pending_to_success_with_full_results(reference_service: str) -> None:
    items = [new_item(seller_or_store="Shop", currency="USD", metadata={"sku": i})
             for i in range(10)]
    created = create_job(reference_service, items, priority=3)
    assert created["status"] == "pending"
    assert created["results"] == []
    assert created["metadata"]["total"] == 10
    status = wait_for_status(reference_service, created["job_id"], ("success",))
    assert status["progress"] == 1.0
    assert status["metadata"] == {"total": 10, "successful": 10, "failed": 0, "cancelled": 0}
    assert "10 successful" in status["message"]
    results = read_results(reference_service, created["job_id"])
    assert results["status"] == "success"
    assert results["metadata"]["priority"] == 3
    assert [r["product_name"] for r in results["results"]] == [i["product_name"] for i in items]
    for result, item in zip(results["results"], items, strict=True):
        assert result["status"] == "success"
        assert result["simulated"] is True
        assert result["currency"] == "USD" and result["seller_or_store"] == "Shop"
        assert result["metadata"] == item["metadata"]
        assert result["reviews"]["rating"] is not None and result["reviews"]["count"] is not None
        assert len(result["sources"]) >= 3
        assert any(source["official"] for source in result["sources"])
        assert result["specs"]


def test_duplicates_in_a_job_are_researched_once_and_later_jobs_hit_the_cache(
        reference_service: str) -> None:
    name = f"Galaxy Phone {uuid.uuid4().hex[:8]}"
    items = [new_item(name), new_item(f"  {name.upper()} "), new_item(name, price_exact=1.5)]
    calls_before = read_metrics(reference_service, "application")["provider_calls"]
    first = run_job(reference_service, items)
    calls_after_first = read_metrics(reference_service, "application")["provider_calls"]
    assert calls_after_first - calls_before == 2  # the same name at another price is another item
    assert [r["cached"] for r in first["results"]] == [False, False, False]
    second = run_job(reference_service, items[:1])
    assert second["results"][0]["cached"] is True
    assert read_metrics(reference_service, "application")["provider_calls"] == calls_after_first


def test_unknown_jobs_are_404(reference_service: str) -> None:
    for method, path in [("GET", f"{API}/nope"), ("GET", f"{API}/nope/status"),
                         ("DELETE", f"{API}/{uuid.uuid4()}")]:
        response = httpx.request(method, reference_service + path)
        assert response.status_code == 404, (method, path)
        assert "not found" in response.json()["detail"]


def test_cancelling_a_finished_job_is_400(reference_service: str) -> None:
    job = run_job(reference_service, [new_item()])
    response = httpx.delete(f"{reference_service}{API}/{job['job_id']}")
    assert response.status_code == 400
    assert read_status(reference_service, job["job_id"])["status"] == "success"


BAD_BODIES = [
    ({}, ["body", "items"]),
    ({"items": []}, ["body", "items"]),
    ({"items": [new_item() for _ in range(11)]}, ["body", "items"]),
    ({"items": [new_item(product_name="")]}, ["body", "items", 0, "product_name"]),
    ({"items": [new_item(), new_item(product_name="x" * 501)]},
     ["body", "items", 1, "product_name"]),
    ({"items": [new_item(product_name="   ")]}, ["body", "items", 0, "product_name"]),
    ({"items": [new_item(product_name="a\x00b")]}, ["body", "items", 0, "product_name"]),
    ({"items": [new_item(category="")]}, ["body", "items", 0, "category"]),
    ({"items": [new_item(category="c" * 101)]}, ["body", "items", 0, "category"]),
    ({"items": [new_item(price_exact=0)]}, ["body", "items", 0, "price_exact"]),
    ({"items": [new_item(price_exact=-5)]}, ["body", "items", 0, "price_exact"]),
    ({"items": [new_item(price_exact=1e9)]}, ["body", "items", 0, "price_exact"]),
    ({"items": [new_item(price_exact="cheap")]}, ["body", "items", 0, "price_exact"]),
    ({"items": [new_item(currency="GBP")]}, ["body", "items", 0, "currency"]),
    ({"items": [new_item(seller_or_store="s" * 201)]}, ["body", "items", 0, "seller_or_store"]),
    ({"items": [new_item(metadata=[1, 2])]}, ["body", "items", 0, "metadata"]),
    ({"items": [new_item()], "priority": 0}, ["body", "priority"]),
    ({"items": [new_item()], "priority": 11}, ["body", "priority"]),
    ({"items": [new_item()], "callback_url": "ftp://example.org/x"}, ["body", "callback_url"]),
    ({"items": [new_item()], "callback_url": "not a url"}, ["body", "callback_url"]),
]


@pytest.mark.parametrize(("body", "loc"), BAD_BODIES)
def test_invalid_bodies_are_422_naming_the_field(reference_service: str, body: dict[str, Any],
                                                  loc: list[Any]) -> None:
    response = httpx.post(reference_service + API, json=body)
    assert response.status_code == 422, response.text
    assert loc in [error["loc"] for error in response.json()["detail"]]


def test_malformed_json_is_422(reference_service: str) -> None:
    response = httpx.post(reference_service + API, content=b'{"items": [',
                          headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "body"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12)
NEAR_VALID_ITEMS = st.fixed_dictionaries(
    {"product_name": st.text(max_size=510), "category": st.text(max_size=105),
     "price_exact": st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10, 2 * 10**9)},
    optional={"currency": st.sampled_from(["KRW", "USD", "JPY", "EUR", "krw", ""]),
              "seller_or_store": st.none() | st.text(max_size=205),
              "metadata": JSON_VALUES})
BODIES = (
    st.fixed_dictionaries({"items": st.lists(NEAR_VALID_ITEMS, max_size=12)},
                          optional={"priority": JSON_VALUES | st.integers(-2, 12),
                                    "callback_url": st.none() | st.text(max_size=40)
                                    | st.sampled_from(["http://127.0.0.1:9/cb", "https://x.y"])})
    | JSON_VALUES
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(body=BODIES)
def test_no_request_body_gives_a_500(reference_service: str, body: Any) -> None:
    # allow_nan: a NaN or Infinity literal is what a careless client really sends.
    content = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
    response = httpx.post(reference_service + API, content=content,
                          headers={"content-type": "application/json"}, timeout=10.0)
    assert response.status_code in (201, 400, 422), response.text


HOSTILE_BODIES = [
    b'{"items": [{"product_name": "\\ud800", "category": "c", "price_exact": 1}]}',
    b'{"items": [{"product_name": "ok", "category": "c", "price_exact": 1, '
    b'"metadata": {"\\udfff": "\\u0000"}}]}',
    b'{"items": [{"product_name": "ok", "category": "c", "price_exact": 1, '
    b'"metadata": {"k": "\\udfff"}}]}',
    b'{"items": [{"product_name": "ok", "category": "c", "price_exact": NaN}]}',
    b'{"items": [{"product_name": "ok", "category": "c", "price_exact": 1e999}]}',
    b'{"items": [{"product_name": "ok", "category": "c", "price_exact": 1' + b"0" * 5000 + b"}]}",
    b'{"items": [{"product_name": "ok", "category": "c", "price_exact": 1, "metadata": '
    + b"[" * 50_000 + b"]" * 50_000 + b"}]}",
    b"\xff\xfe not utf-8",
    b"",
    b"[]",
    b'"items"',
]


@pytest.mark.parametrize("content", HOSTILE_BODIES)
def test_hostile_raw_bodies_are_client_errors(reference_service: str, content: bytes) -> None:
    response = httpx.post(reference_service + API, content=content,
                          headers={"content-type": "application/json"}, timeout=10.0)
    assert 400 <= response.status_code < 500, response.text


@pytest.mark.parametrize("path", ["/api/v1/metrics/system", "/api/v1/metrics/database",
                                  "/api/v1/metrics/application"])
def test_metrics_are_json_with_the_dashboard_field_names(reference_service: str,
                                                         path: str) -> None:
    run_job(reference_service, [new_item()])
    body = httpx.get(reference_service + path).json()
    expected = {
        "/api/v1/metrics/system": {"cpu_percent", "memory_percent", "disk_usage", "network_io",
                                   "uptime_seconds"},
        "/api/v1/metrics/database": {"total_queries", "average_time", "max_time",
                                     "slow_queries_count", "recent_slow_queries"},
        "/api/v1/metrics/application": {"research_avg_time", "api_avg_time", "total_requests"},
    }[path]
    assert expected <= set(body)
    assert body["variants"] == []
    numbers = {key: body[key] for key in expected
               if key not in ("network_io", "recent_slow_queries")}
    assert all(isinstance(value, int | float) for value in numbers.values()), numbers
    if path.endswith("system"):
        assert {"bytes_sent", "bytes_recv"} <= set(body["network_io"])
        assert body["uptime_seconds"] > 0
    if path.endswith("database"):
        assert body["total_queries"] > 0 and 0 < body["average_time"] <= body["max_time"]
    if path.endswith("application"):
        assert body["total_requests"] > 0 and body["research_avg_time"] > 0


def test_prometheus_text_has_requests_jobs_provider_cache_and_queries(
        reference_service: str) -> None:
    run_job(reference_service, [new_item()])
    response = httpx.get(reference_service + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'perfkit_reference_request_seconds_count{route="GET /api/v1/research/products/' \
           '{job_id}/status",status="200"}' in text
    for name in ["perfkit_reference_jobs_total{status=\"success\"}",
                 "perfkit_reference_items_total{status=\"success\"}",
                 "perfkit_reference_provider_seconds_bucket", "perfkit_reference_cache_total",
                 "perfkit_reference_db_query_seconds_count", "perfkit_reference_info"]:
        assert name in text, name


@pytest.fixture
def slow_service(start_reference_services: StartServices, tmp_path: Path) -> ServiceProcess:
    """One research slot and 400 ms per provider call, so pending and processing last long
    enough to be seen and cancelled."""
    (service,) = start_reference_services(
        ["--fast", "--concurrency", "1", "--item-latency-ms", "400", "--latency-sigma", "0",
         "--extra-latency", "results=25ms", "--extra-latency", "status:10%",
         "--slow-query-ms", "0",
         "--database-url", f"sqlite+aiosqlite:///{tmp_path / 'slow.db'}"])
    return service


def test_extra_latency_is_announced_in_health(slow_service: ServiceProcess) -> None:
    health = slow_service.get_json("/api/v1/health")
    assert health["concurrency"] == 1
    assert health["extra_latency"] == [
        {"endpoint": "results", "fixed_ms": 25.0, "fraction": 0.0},
        {"endpoint": "status", "fixed_ms": 0.0, "fraction": 0.1},
    ]


def test_pending_and_processing_jobs_can_be_cancelled(slow_service: ServiceProcess) -> None:
    url = slow_service.url
    busy = create_job(url, [new_item(), new_item(), new_item()])
    waiting = create_job(url, [new_item(), new_item()])
    wait_for_status(url, busy["job_id"], ("processing",))
    assert read_status(url, waiting["job_id"])["status"] == "pending"

    assert httpx.delete(f"{url}{API}/{waiting['job_id']}").status_code == 204
    assert httpx.delete(f"{url}{API}/{busy['job_id']}").status_code == 204
    for job in (busy, waiting):
        status = wait_for_status(url, job["job_id"], ("cancelled",))
        assert status["progress"] == 1.0 and status["message"] == "cancelled by the client"
    # The waiting job never got a slot, so none of its items reached the provider.
    waiting_results = read_results(url, waiting["job_id"])
    assert waiting_results["metadata"]["started_at"] is None
    assert [r["status"] for r in waiting_results["results"]] == ["cancelled", "cancelled"]
    busy_results = read_results(url, busy["job_id"])
    assert busy_results["status"] == "cancelled"
    assert "cancelled" in {r["status"] for r in busy_results["results"]}
    assert httpx.delete(f"{url}{API}/{busy['job_id']}").status_code == 400


def test_slow_queries_are_listed_cut_to_200_characters(slow_service: ServiceProcess) -> None:
    # With a 0 ms threshold every statement counts as slow; the five most recent are listed.
    run_job(slow_service.url, [new_item()])
    database = read_metrics(slow_service.url, "database")
    assert database["slow_queries_count"] == database["total_queries"] > 5
    assert database["slow_query_threshold"] == 0.0
    recent = database["recent_slow_queries"]
    assert len(recent) == 5
    assert any(len(entry["query"]) == 200 for entry in recent)  # the long INSERT, cut
    for entry in recent:
        assert set(entry) == {"query", "time", "timestamp"}
        assert 0 < len(entry["query"]) <= 200 and entry["time"] >= 0 and entry["timestamp"] > 0


def test_free_slots_go_to_the_highest_priority_first(slow_service: ServiceProcess) -> None:
    url = slow_service.url
    busy = create_job(url, [new_item(), new_item(), new_item()])
    low = create_job(url, [new_item()], priority=1)
    high = create_job(url, [new_item()], priority=10)
    started = {}
    for name, job in (("busy", busy), ("low", low), ("high", high)):
        wait_for_status(url, job["job_id"], ("success",))
        started[name] = read_results(url, job["job_id"])["metadata"]["started_at"]
    assert started["busy"] < started["high"] < started["low"]


def test_provider_failures_are_retried_then_the_job_is_error(
        start_reference_services: StartServices) -> None:
    failing, thin = start_reference_services(["--fast", "--error-rate", "1"],
                                             ["--fast", "--insufficient-rate", "1"])
    results = run_job(failing.url, [new_item(), new_item()])
    assert results["status"] == "error"
    assert {r["status"] for r in results["results"]} == {"error"}
    assert all("HTTP" in r["error"] for r in results["results"])
    # Three attempts per item: the first call and two retries with backoff.
    assert read_metrics(failing.url, "application")["provider_calls"] == 6

    results = run_job(thin.url, [new_item(), new_item()])
    assert results["status"] == "success"
    assert {r["status"] for r in results["results"]} == {"insufficient_sources"}
    assert results["metadata"]["failed"] == 2
    assert read_results(thin.url, results["job_id"], include_failed="false")["results"] == []


class CallbackReceiver(BaseHTTPRequestHandler):
    bodies: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        length = int(self.headers["content-length"])
        self.bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def callback_url() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), CallbackReceiver)
    CallbackReceiver.bodies = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/done"
    server.shutdown()
    server.server_close()


def test_callback_url_receives_the_final_status(reference_service: str,
                                                callback_url: str) -> None:
    job = create_job(reference_service, [new_item()], callback_url=callback_url)
    wait_for_status(reference_service, job["job_id"], ("success",))
    deadline = time.monotonic() + 10
    while not CallbackReceiver.bodies and time.monotonic() < deadline:
        time.sleep(0.02)
    assert CallbackReceiver.bodies[0]["job_id"] == job["job_id"]
    assert CallbackReceiver.bodies[0]["status"] == "success"


def sqlite_indexes(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                            "AND name LIKE 'ix_%'").fetchall()
    return {name: sql for name, sql in rows}


def test_each_variant_changes_what_it_claims(start_reference_services: StartServices,
                                             reference_service: str,
                                             reference_service_database: Path,
                                             tmp_path: Path) -> None:
    # Two instances carry the five variants between them (each variant's effect is read from
    # its own counter, so they do not mask one another); starting five would double the cost.
    groups = {"queries_schema_clients": ["n_plus_one", "no_index", "new_client_per_call"],
              "cache_concurrency": ["no_cache", "unbounded"]}
    started = start_reference_services(*[
        ["--fast", "--item-latency-ms", "100",
         "--database-url", f"sqlite+aiosqlite:///{tmp_path / group}.db"]
        + [arg for name in names for arg in ("--variant", name)]
        for group, names in groups.items()])
    for service, names in zip(started, groups.values(), strict=True):
        assert service.get_json("/api/v1/health")["variants"] == names
    urls = {"baseline": reference_service}
    urls |= {name: service.url for service, names in zip(started, groups.values(), strict=True)
             for name in names}
    urls_by_instance = {"baseline": reference_service,
                        "queries_schema_clients": started[0].url,
                        "cache_concurrency": started[1].url}
    items = [new_item() for _ in range(10)]
    before = {name: read_metrics(url, "application") for name, url in urls.items()}
    jobs_by_url = {url: run_job(url, items) for url in urls_by_instance.values()}
    jobs = {name: jobs_by_url[url] for name, url in urls.items()}
    app = {name: read_metrics(url, "application") for name, url in urls.items()}

    # n_plus_one: reading 10 results costs one query per item on top of the eager few.
    queries_per_read = {}
    for name in ("baseline", "n_plus_one"):
        url, job_id = urls[name], jobs[name]["job_id"]
        queries_before = read_metrics(url, "database")["total_queries"]
        read_results(url, job_id)
        queries_per_read[name] = read_metrics(url, "database")["total_queries"] - queries_before
    assert queries_per_read["baseline"] <= 3
    assert queries_per_read["n_plus_one"] >= 2 + 10
    assert "n_plus_one" in read_metrics(urls["n_plus_one"], "database")["variants"]

    # no_index: the guide's indexes, partial one included, exist only without the variant.
    indexes = sqlite_indexes(reference_service_database)
    assert {"ix_jobs_status_created_at", "ix_jobs_active", "ix_items_job_id"} <= set(indexes)
    assert "WHERE" in indexes["ix_jobs_active"]
    assert sqlite_indexes(tmp_path / "queries_schema_clients.db") == {}

    # new_client_per_call: one client (and connection) per provider call instead of a pool.
    assert app["baseline"]["provider_clients_created"] == 1
    assert (app["baseline"]["provider_connections_opened"]
            - before["baseline"]["provider_connections_opened"]) <= 5
    per_call = app["new_client_per_call"]
    assert per_call["provider_clients_created"] == per_call["provider_calls"] == 10
    assert per_call["provider_connections_opened"] == 10

    # unbounded: all ten items in flight at once instead of at most five.
    assert app["baseline"]["max_active_research"] <= 5
    assert app["unbounded"]["max_active_research"] > 5

    # no_cache: the same items again are researched again.
    for name in ("baseline", "no_cache"):
        again = run_job(urls[name], items)
        cached = {r["cached"] for r in again["results"]}
        new_calls = (read_metrics(urls[name], "application")["provider_calls"]
                     - app[name]["provider_calls"])
        assert (cached, new_calls) == (({True}, 0) if name == "baseline" else ({False}, 10))


def test_bad_serve_options_are_one_line_errors() -> None:
    for args in (["--variant", "turbo"], ["--extra-latency", "everything=5ms"]):
        result = subprocess.run([sys.executable, "-m", "perfkit", "serve", "--port", "0", *args],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().count("\n") == 0
        assert args[1] in result.stderr


def test_sigterm_and_sigint_stop_the_service_and_no_job_is_left_active(
        start_reference_services: StartServices, tmp_path: Path) -> None:
    signals = (signal.SIGTERM, signal.SIGINT)
    services = start_reference_services(*[
        ["--fast", "--concurrency", "1", "--item-latency-ms", "500", "--latency-sigma", "0",
         "--database-url", f"sqlite+aiosqlite:///{tmp_path / sig.name}.db"] for sig in signals])
    jobs = []
    for service in services:
        quick = run_job(service.url, [new_item()])
        slow = create_job(service.url, [new_item() for _ in range(10)])
        wait_for_status(service.url, slow["job_id"], ("processing",))
        jobs.append((quick["job_id"], slow["job_id"]))
    for service, sig in zip(services, signals, strict=True):
        service.send_signal(sig)
    for service, sig, (quick_id, slow_id) in zip(services, signals, jobs, strict=True):
        assert service.stop(sig) == 0, service.output
        assert f"perfkit serve: stopped ({sig.name})" in service.output
        with sqlite3.connect(tmp_path / f"{sig.name}.db") as conn:
            statuses = dict(conn.execute("SELECT id, status FROM jobs").fetchall())
            message = conn.execute("SELECT message FROM jobs WHERE id = ?",
                                   (slow_id,)).fetchone()[0]
            results = [row[0] for row in conn.execute(
                "SELECT r.status FROM results r JOIN items i ON r.item_id = i.id "
                "WHERE i.job_id = ?", (slow_id,))]
        assert statuses == {quick_id: "success", slow_id: "cancelled"}
        assert message == "cancelled: the service shut down"
        # Every item of the interrupted job is accounted for: researched or marked cancelled.
        assert len(results) == 10 and "cancelled" in results and "success" in results


def test_sigint_while_starting_stops_the_service_even_if_inherited_ignored() -> None:
    """A shell starts a background job (`perfkit serve &` in a script) with SIGINT ignored,
    and the ignore survives exec: a SIGINT while the service is still starting was lost, and
    it served on until killed, leaving its temporary directory behind."""
    proc = subprocess.Popen([sys.executable, "-m", "perfkit", "serve", "--port", "0", "--fast"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    pattern = f"perfkit-serve-{proc.pid}-*"
    deadline = time.monotonic() + 60
    while not list(Path(tempfile.gettempdir()).glob(pattern)) and time.monotonic() < deadline:
        time.sleep(0.01)  # the temporary directory exists: the service is starting
    assert list(Path(tempfile.gettempdir()).glob(pattern)), "the service made no directory"
    proc.send_signal(signal.SIGINT)
    try:
        output, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"SIGINT did not stop the service: {output}")
    assert proc.returncode in (0, 130), output
    assert list(Path(tempfile.gettempdir()).glob(pattern)) == []


def test_the_known_slowdown_is_not_lost_to_the_timer_resolution() -> None:
    """uvloop's timers count whole milliseconds: asyncio.sleep(0.0004) returns at once and
    sleep(0.012) can end at 11.2 ms. A slowdown of --extra-latency lasts at least as asked."""
    import uvloop

    async def timed(seconds: float) -> float:
        started = time.perf_counter()
        await add_latency(seconds)
        return time.perf_counter() - started

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        for seconds in (0.0004, 0.0024, 0.012):
            assert min(runner.run(timed(seconds)) for _ in range(20)) >= seconds
