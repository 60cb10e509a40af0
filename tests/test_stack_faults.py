"""Built-in faults of the stack perfkit starts itself (--fault stack=...): refused where their
part of the stack is not perfkit's, and, run against the bundled service, what they did to it."""

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from perfkit.run.stack import admin_url
from tests.targets import OUTAGE, running_target

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
BROKER = "redis://127.0.0.1:6379/13"


def perfkit(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "perfkit", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize(("options", "says"), [
    (("--fault", "at=1s,stack=service-restart", "--target", "TARGET"), "not on --target"),
    (("--fault", "at=1s,for=2s,stack=postgres-outage"), "--service-database-url postgresql"),
    (("--fault", "at=1s,for=2s,stack=postgres-outage", "--service-database-url",
      "sqlite+aiosqlite:///x.db"), "needs the bundled service on PostgreSQL"),
    (("--fault", "at=1s,for=2s,stack=redis-pause"), "needs a Redis perfkit started"),
    (("--fault", "at=1s,stack=celery-kill"), "--queue celery"),
])
def test_a_stack_fault_without_its_part_of_the_stack_is_refused_in_one_line(
        tmp_path: Path, options: tuple[str, ...], says: str) -> None:
    with running_target(OUTAGE, "--control", str(tmp_path / "unused")) as (url, _):
        result = perfkit("load", "--scenario", "health", "--duration", "2s",
                         "--out", str(tmp_path / "run"),
                         *(url if option == "TARGET" else option for option in options),
                         timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert not (tmp_path / "run" / "target.log").exists()  # refused before anything started


def test_a_postgres_outage_is_run_from_the_servers_postgres_database_as_the_service() -> None:
    assert admin_url("postgresql+asyncpg://app:s3cret@db.local:5433/research") == \
        ("postgresql://app:s3cret@db.local:5433/postgres", "research")
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        admin_url("sqlite+aiosqlite:///x.db")


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """A database of its own on the machine's PostgreSQL (an outage of it disturbs no one)."""
    name = f"perfkit_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def faults_of(run_dir: Path) -> tuple[list[dict], dict]:
    return (json.loads((run_dir / "run.json").read_text())["faults"],
            json.loads((run_dir / "summary.json").read_text()))


def test_a_service_restart_kills_the_bundled_service_and_starts_it_on_its_port_and_database(
        tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # 25 s: on a busy CI machine the restarted service took over 10 s to serve well again.
    result = perfkit("load", "--fast", "--scenario", "research", "--users", "4",
                     "--duration", "25s", "--warmup", "0s", "--out", str(run_dir),
                     "--fault", "at=5s,stack=service-restart")
    assert result.returncode in (0, 1), result.stdout + result.stderr
    faults, summary = faults_of(run_dir)
    (fault,) = faults
    assert fault["status"] == "done" and fault["what"] == "stack=service-restart"
    assert fault["do"]["exit_code"] == 0 and "healthy on port" in fault["do"]["output"]
    port = json.loads((run_dir / "run.json").read_text())["target"].rsplit(":", 1)[1]
    assert f"healthy on port {port} " in fault["do"]["output"]
    # The restarted service opened the run's database, where the first one left its jobs.
    assert (run_dir / "service.db").exists()
    (measured,) = summary["faults"]
    assert measured["recovered"], measured
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "completed", meta.get("message")


def test_a_celery_kill_kills_the_pool_processes_and_the_nodes_replace_them(
        tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = perfkit("load", "--fast", "--scenario", "research", "--users", "4",
                     "--duration", "14s", "--warmup", "0s", "--out", str(run_dir),
                     "--queue", "celery", "--broker", "redis://127.0.0.1:6379/13",
                     "--service-queue-prefix", f"perfkit-test-{uuid.uuid4().hex[:8]}",
                     "--fault", "at=5s,stack=celery-kill")
    assert result.returncode in (0, 1), result.stdout + result.stderr
    faults, summary = faults_of(run_dir)
    (fault,) = faults
    assert fault["status"] == "done", fault
    assert fault["do"]["output"].startswith("killed 2 Celery pool processes")
    assert summary["faults"][0]["recovered"], summary["faults"]


@pytest.mark.parametrize("queue", ["inprocess", "celery"])
def test_a_postgres_outage_in_a_research_run_is_recovered_from_and_loses_no_job(
        tmp_path: Path, postgres_database: str, queue: str) -> None:
    run_dir = tmp_path / "run"
    celery = ("--queue", "celery", "--broker", BROKER, "--service-queue-prefix",
              f"perfkit-test-{uuid.uuid4().hex[:8]}") if queue == "celery" else ()
    result = perfkit("load", "--fast", "--scenario", "research", "--users", "6",
                     "--duration", "30s", "--warmup", "0s", "--out", str(run_dir),
                     "--service-database-url", postgres_database, *celery,
                     "--fault", "at=10s,for=5s,stack=postgres-outage")
    assert result.returncode in (0, 1), result.stdout + result.stderr
    faults, summary = faults_of(run_dir)
    (fault,) = faults
    assert fault["status"] == "done", fault
    assert "refuses connections" in fault["do"]["output"]
    assert "accepts connections again" in fault["undo"]["output"]
    assert 4.9 <= fault["ended_at"] - fault["started_at"] <= 6.0
    (measured,) = summary["faults"]
    assert measured["recovered"] and measured["recovery_s"] is not None, measured
    assert measured["errors"] >= 1  # the service did notice its database was gone
    lost = summary["lost_work"]
    assert lost["accepted"] >= 10 and lost["lost"] == 0, lost
    kpis = {kpi["metric"]: kpi for kpi in summary["kpis"]}
    assert kpis["lost_jobs"]["verdict"] == "pass"
    html = (run_dir / "report.html").read_text()
    assert 'data-fault-status="done"' in html and "fault (--fault)" in html
    assert "Lost work: 0 of" in html
