"""The reference service with `--queue celery` (research in Celery worker processes) on the real
Redis (127.0.0.1:6379) and RabbitMQ (127.0.0.1:5672), and with `--envelope`.

Most tests start the service as `tests/targets/reference_serve.py`, which calls
`server.serve_forever` with the options directly; the last ones go through `perfkit load`."""

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis

from perfkit.errors import ConfigError
from perfkit.reference.settings import build_service_settings

from .conftest import ServiceProcess, wait_until_listening
from .test_reference import (
    API,
    create_job,
    new_item,
    read_metrics,
    read_results,
    read_status,
    wait_for_status,
)
from .test_reference_backends import run_admin_statement

TARGET = Path(__file__).parent / "targets" / "reference_serve.py"
BROKERS = {"redis": "redis://127.0.0.1:6379/3", "rabbitmq": "amqp://guest:guest@127.0.0.1:5672//"}

StartTarget = Callable[..., ServiceProcess]


@pytest.fixture
def start_target(tmp_path: Path) -> Iterator[StartTarget]:
    """`start(**serve_forever_options)`: one service on a SQLite file of its own, stopped (and
    checked for an exit code of 0) after the test."""
    started: list[ServiceProcess] = []

    def start(**options: Any) -> ServiceProcess:
        options.setdefault("database_url",
                           f"sqlite+aiosqlite:///{tmp_path / uuid.uuid4().hex}.db")
        proc = subprocess.Popen([sys.executable, str(TARGET), json.dumps(options)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        service = ServiceProcess(proc=proc, args=(json.dumps(options),))
        service.reader = threading.Thread(target=service.read_output, daemon=True)
        service.reader.start()
        started.append(service)
        return wait_until_listening(service)

    yield start
    for service in started:
        service.stop()


def celery_options(broker: str, **options: Any) -> dict[str, Any]:
    # A queue prefix of its own, so no other instance on the same broker takes its tasks.
    return {"fast": True, "queue": "celery", "broker": BROKERS[broker],
            "queue_prefix": f"perfkit-test-{uuid.uuid4().hex[:8]}", **options}


def wait_until(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still not {what} after {timeout_s} s")
        time.sleep(0.05)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLite, or a PostgreSQL database created for the test and dropped after (the database
    the docs recommend when worker processes write beside the server)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'celery.db'}"
        return
    name = f"perfkit_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(run_admin_statement(f'CREATE DATABASE "{name}"'))
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    asyncio.run(run_admin_statement(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.mark.parametrize(("broker", "database_url"),
                         [("redis", "sqlite"), ("rabbitmq", "postgresql")],
                         indirect=["database_url"])
def test_celery_workers_research_every_job_and_show_the_queue(start_target: StartTarget,
                                                              broker: str,
                                                              database_url: str) -> None:
    # One item at a time per worker, so the jobs outlast their creation by far (at 200 ms an
    # item, a busy machine had emptied the queue before it was read).
    service = start_target(**celery_options(broker, celery_workers=2, concurrency=1,
                                            item_latency_ms=600, latency_sigma=0,
                                            database_url=database_url))
    url = service.url
    assert service.get_json("/api/v1/health")["queue"] == "celery"
    jobs = [create_job(url, [new_item() for _ in range(1 + n % 3)]) for n in range(8)]

    # Two workers, one job each at a time: the rest wait in the broker's research queue.
    prometheus = httpx.get(url + "/metrics").text
    app = read_metrics(url, "application")
    assert "perfkit_reference_workers 2.0" in prometheus
    depth_line = next(line for line in prometheus.splitlines()
                      if line.startswith("perfkit_reference_queue_depth "))
    assert float(depth_line.split()[1]) >= 1
    assert app["queue"] == "celery" and app["workers"] == 2
    assert app["prefetch_multiplier"] == 1 and app["acks_late"] is True
    assert app["queue_depth"] >= 1, app

    # The worker processes are the service's descendants, as a process-tree sampler sees them.
    descendants = {child.pid for child in psutil.Process(service.proc.pid).children(
        recursive=True)}
    assert len(app["worker_pids"]) == 4  # two nodes, each with its pool process
    assert set(app["worker_pids"]) <= descendants

    for job in jobs:
        status = wait_for_status(url, job["job_id"], ("success", "error"), timeout_s=60)
        assert status["status"] == "success" and status["progress"] == 1.0
        results = read_results(url, job["job_id"])
        assert results["metadata"]["successful"] == results["metadata"]["total"]
        assert all(r["status"] == "success" and r["simulated"] for r in results["results"])
    app = read_metrics(url, "application")
    assert app["queue_depth"] == 0
    assert app["researched_items"] == sum(1 + n % 3 for n in range(8))
    assert app["research_avg_time"] > 0
    # Counted in the worker processes, read from their Prometheus counts; the job time is not
    # among them: missing, not zero.
    items = sum(1 + n % 3 for n in range(8))
    assert app["finished_jobs"] == 8 and app["provider_calls"] >= items, app
    assert app["cache_hits"] + app["cache_misses"] == items and app["active_research"] == 0
    assert app["job_avg_time"] is None
    # /metrics: the research counts are the worker processes', summed.
    prometheus = httpx.get(url + "/metrics").text
    assert f'perfkit_reference_items_total{{status="success"}} {items:.1f}' in prometheus
    assert 'perfkit_reference_jobs_total{status="success"} 8.0' in prometheus
    assert 'perfkit_reference_provider_seconds_count{outcome="ok"}' in prometheus
    assert "perfkit_reference_active_research 0.0" in prometheus
    assert prometheus.count("# TYPE perfkit_reference_items_total counter") == 1

    pids = app["worker_pids"]
    assert service.stop(signal.SIGTERM) == 0, service.output
    assert not [pid for pid in pids if psutil.pid_exists(pid)
                and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]


def test_a_killed_service_leaves_no_worker_behind(start_target: StartTarget) -> None:
    service = start_target(**celery_options("redis", celery_workers=1))

    def worker_pids() -> list[int] | None:
        pids = read_metrics(service.url, "application")["worker_pids"]
        return pids if len(pids) == 2 else None

    # The worker's pool process may still be starting when the service already listens (a busy
    # machine showed one of the two).
    pids = wait_until(worker_pids, 30, "the worker and its pool process")
    service.send_signal(signal.SIGKILL)
    service.proc.wait(10)

    def gone() -> bool:
        return not any(psutil.pid_exists(pid) and psutil.Process(pid).status()
                       != psutil.STATUS_ZOMBIE for pid in pids)
    wait_until(gone, 20, "gone")


def test_shutdown_cancels_what_the_workers_did_not_finish(start_target: StartTarget) -> None:
    # 2 s an item: the jobs outlast the creates and the wait for the first even on a busy
    # machine (at 400 ms all three had finished there before the stop).
    service = start_target(**celery_options("redis", celery_workers=1, item_latency_ms=2000,
                                            latency_sigma=0))
    jobs = [create_job(service.url, [new_item(), new_item()]) for _ in range(3)]
    wait_for_status(service.url, jobs[0]["job_id"], ("processing", "success"))
    assert service.stop(signal.SIGTERM) == 0, service.output
    # The first job finished in the warm shutdown or was cancelled; none is left active.
    database = json.loads(service.args[0])["database_url"].split("///", 1)[1]
    with sqlite3.connect(database) as conn:
        statuses = [row[0] for row in conn.execute("SELECT status FROM jobs")]
    assert len(statuses) == 3
    assert set(statuses) <= {"success", "cancelled"} and "cancelled" in statuses


def test_high_prefetch_and_celery_options_are_checked() -> None:
    settings = build_service_settings(queue="celery", broker=BROKERS["redis"],
                                      variants=("high_prefetch",))
    assert settings.celery.prefetch_multiplier == 16
    assert settings.celery.research_queue == "perfkit.research"
    assert settings.celery.callbacks_queue == "perfkit.callbacks"
    for bad in ({"queue": "celery"}, {"queue": "celery", "broker": "http://x"},
                {"queue": "sqs"}, {"broker": BROKERS["redis"]},
                {"variants": ("high_prefetch",)},
                {"queue": "celery", "broker": BROKERS["redis"], "celery_workers": 0}):
        with pytest.raises(ConfigError):
            build_service_settings(**bad)


def test_envelope_wraps_the_research_routes(start_target: StartTarget) -> None:
    service = start_target(fast=True, envelope=True)
    url = service.url
    created = httpx.post(url + API, json={"items": [new_item(), new_item()]})
    assert created.status_code == 201
    body = created.json()
    assert body["success"] is True and body["message"]
    assert body["data"]["status"] == "pending"
    assert body["data"]["metadata"]["total_items"] == 2
    job_id = body["data"]["job_id"]

    def finished() -> dict[str, Any] | None:
        status = httpx.get(f"{url}{API}/{job_id}/status").json()
        return status if status["data"]["status"] == "success" else None
    status = wait_until(finished, 30, "finished")
    assert status["success"] is True
    assert status["data"]["progress"] == 1.0 and status["data"]["metadata"]["total"] == 2

    results = httpx.get(f"{url}{API}/{job_id}").json()
    assert results["success"] is True
    assert [r["status"] for r in results["data"]["results"]] == ["success", "success"]

    missing = httpx.get(f"{url}{API}/{uuid.uuid4()}/status")
    assert missing.status_code == 404
    assert missing.json()["success"] is False and "not found" in missing.json()["message"]
    invalid = httpx.post(url + API, json={"items": []})
    assert invalid.status_code == 422
    assert invalid.json()["success"] is False
    assert ["body", "items"] in [error["loc"] for error in invalid.json()["detail"]]
    finished_cancel = httpx.delete(f"{url}{API}/{job_id}")
    assert finished_cancel.status_code == 400 and finished_cancel.json()["success"] is False
    # Health and metrics are not research routes: their shape is the dashboards' contract.
    assert httpx.get(url + "/api/v1/health").json()["envelope"] is True
    assert "total_requests" in read_metrics(url, "application")


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of this test's own on a free port, so the test can take it away."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    wait_until(lambda: ping(client), 10, "answering")
    client.close()
    yield url, server
    server.kill()
    server.wait(10)


def ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_a_job_the_broker_cannot_take_is_503_and_cancelled(
        start_target: StartTarget, own_redis: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, server = own_redis
    service = start_target(fast=True, queue="celery", broker=url, celery_workers=1)
    server.kill()
    server.wait(10)
    response = httpx.post(service.url + API, json={"items": [new_item()]}, timeout=60.0)
    assert response.status_code == 503, "\n".join(service.output[-30:])
    assert "queue is unreachable" in response.json()["detail"]
    database = json.loads(service.args[0])["database_url"].split("///", 1)[1]
    with sqlite3.connect(database) as conn:
        assert [row[0] for row in conn.execute("SELECT status FROM jobs")] == ["cancelled"]


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_perfkit_load_runs_the_research_flow_on_celery_workers(tmp_path: Path,
                                                              broker: str) -> None:
    """`perfkit load --queue celery`: every job created finishes (but those still in flight
    when the load stops), and the report shows the worker processes and the queue depth."""
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "perfkit", "load", "--fast", "--queue", "celery", "--broker",
         BROKERS[broker], "--celery-workers", "2", "--scenario", "research", "--users", "4",
         "--spawn-rate", "4", "--duration", "20s", "--warmup", "0s", "--out", str(run_dir)],
        capture_output=True, text=True, timeout=180)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    creates = summary["endpoints"]["POST /api/v1/research/products"]
    assert creates["count"] > 0 and creates["failures"] == 0
    finished = summary["jobs"]["job_completion"]["count"]
    assert creates["count"] - 4 <= finished <= creates["count"]
    resources = (run_dir / "resources.csv").read_text().splitlines()
    header = resources[0].split(",")
    procs = [int(line.split(",")[header.index("procs")]) for line in resources[1:]
             if line.split(",")[header.index("procs")]]
    assert max(procs) >= 3  # the web process and two Celery workers, sampled as one tree
    app = (run_dir / "app.csv").read_text().splitlines()
    columns = app[0].split(",")
    workers = {line.split(",")[columns.index("workers")] for line in app[1:]}
    assert "2" in workers or "2.0" in workers
    report = (run_dir / "report.html").read_text()
    assert 'id="queue"' in report and "Research queue and workers" in report


def test_jobs_end_when_a_worker_is_killed_and_the_broker_restarts(
        start_target: StartTarget, private_redis: tuple[str, subprocess.Popen[bytes]],
        tmp_path: Path) -> None:
    """Celery mode under faults. A research process SIGKILLed mid-job: its job is delivered
    again and researched to the end, its finished items kept. Then the broker (a redis-server
    of the test's own, without persistence) restarted while jobs are researched and queued:
    it comes back empty, their tasks are gone, and each such job ends `error` once it has
    made no progress for lost_after_s, instead of staying processing or pending for ever."""
    redis_url, redis_proc = private_redis
    service = start_target(fast=True, queue="celery", broker=redis_url, celery_workers=2,
                           concurrency=1, item_latency_ms=700, latency_sigma=0,
                           queue_prefix=f"perfkit-test-{uuid.uuid4().hex[:8]}")
    url = service.url
    jobs = [create_job(url, [new_item() for _ in range(2)])["job_id"] for _ in range(4)]
    wait_until(lambda: read_status(url, jobs[0])["status"] == "processing"
               and read_results(url, jobs[0])["metadata"]["successful"] == 1, 20,
               "half researched")
    pool_processes = [pid for pid in read_metrics(url, "application")["worker_pids"]
                      if psutil.Process(pid).ppid() != service.proc.pid]
    for pid in pool_processes:
        os.kill(pid, signal.SIGKILL)
    statuses = {job: wait_for_status(url, job, ("success", "error"), timeout_s=60)
                for job in jobs}
    assert [status["status"] for status in statuses.values()] == ["success"] * 4, statuses
    assert statuses[jobs[0]]["message"] == "researched 2 items: 2 successful, 0 failed"

    lost = [create_job(url, [new_item() for _ in range(2)])["job_id"] for _ in range(6)]
    wait_until(lambda: read_metrics(url, "application")["active_research"], 20, "researching")
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    redis_proc.kill()
    redis_proc.wait(10)
    restarted = subprocess.Popen(["redis-server", "--port", port, "--bind", "127.0.0.1",
                                  "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                                 stdout=subprocess.DEVNULL)
    try:
        ended = {job: wait_for_status(url, job, ("success", "error"), timeout_s=90)
                 for job in lost}
    finally:
        restarted.terminate()
        restarted.wait(10)
    errors = [status for status in ended.values() if status["status"] == "error"]
    assert errors, ended  # at least the jobs queued in the broker were lost with it
    assert all("research task was lost" in status["message"] for status in errors), errors
    # Every item of an ended job has its result: nothing is left without an answer.
    for job in lost:
        results = read_results(url, job)["results"]
        assert len(results) == 2 and all(result["status"] for result in results), results
