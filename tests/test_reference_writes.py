"""The reference service's SQLite writes go through one writer that commits whatever waits
together (db.Writer): on a real database file, concurrent writes all land, a write that fails
fails alone, a write cancelled before its turn is never made, and a create gets its item ids.
And a burst of creates, each waiting for its turn to insert, stays within the queue's cap."""

import asyncio
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from perfkit.reference import db
from perfkit.reference.metrics import Metrics
from perfkit.reference.settings import build_service_settings

from .conftest import StartServices

API = "/api/v1/research/products"
JOB_SQL = ("INSERT INTO jobs (id, status, priority, callback_url, message, created_at, "
           "instance_id) VALUES ($1, 'pending', 5, NULL, 'queued', $2, 'test')")


def job_row(database: db.Database, job_id: str) -> tuple[Any, ...]:
    return (job_id, db.sql_time(database, db.utc_now()))


def open_database(path: Path) -> db.Database:
    url = f"sqlite+aiosqlite:///{path}"
    return db.open_database(url, Metrics(build_service_settings(database_url=url)))


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty database with the service's schema, made once (create_schema adds the guide's
    indexes to the shared table metadata: a process makes its schema once)."""
    path = tmp_path_factory.mktemp("schema") / "research.db"

    async def make() -> None:
        database = open_database(path)
        await db.create_schema(database.engine, with_indexes=True)
        await db.close_database(database)

    asyncio.run(make())
    return path


def read_ids(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM jobs")}


def test_concurrent_writes_land_together_and_a_failing_one_fails_alone(tmp_path: Path,
                                                                         schema: Path) -> None:
    path = Path(shutil.copy(schema, tmp_path / "research.db"))

    async def scenario() -> list[Any]:
        database = open_database(path)
        try:
            # The lock held, as a running transaction holds it: every write queues behind it,
            # then all of them share one transaction, the duplicate among them.
            async with database.write_lock:  # type: ignore[union-attr]
                writes = [asyncio.create_task(db.write_rows(
                    database, [(JOB_SQL, [job_row(database, f"job-{n}")])])) for n in range(50)]
                writes.append(asyncio.create_task(db.write_rows(
                    database, [(JOB_SQL, [job_row(database, "job-7")])])))
                await asyncio.sleep(0.05)
                assert not any(write.done() for write in writes)
            return await asyncio.gather(*writes, return_exceptions=True)
        finally:
            await db.close_database(database)

    outcomes = asyncio.run(scenario())
    assert outcomes[:50] == [1] * 50
    assert isinstance(outcomes[50], sqlite3.IntegrityError)
    assert read_ids(path) == {f"job-{n}" for n in range(50)}


def test_a_write_cancelled_before_its_turn_is_never_made(tmp_path: Path, schema: Path) -> None:
    path = Path(shutil.copy(schema, tmp_path / "research.db"))

    async def scenario() -> None:
        database = open_database(path)
        try:
            async with database.write_lock:  # type: ignore[union-attr]
                cancelled = asyncio.create_task(db.write_rows(
                    database, [(JOB_SQL, [job_row(database, "cancelled")])]))
                kept = asyncio.create_task(db.write_rows(
                    database, [(JOB_SQL, [job_row(database, "kept")])]))
                await asyncio.sleep(0.05)
                cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            assert await kept == 1
        finally:
            await db.close_database(database)

    asyncio.run(scenario())
    assert read_ids(path) == {"kept"}


def test_a_create_gets_its_item_ids_in_position_order(tmp_path: Path, schema: Path) -> None:
    path = Path(shutil.copy(schema, tmp_path / "research.db"))

    async def scenario() -> list[list[int]]:
        database = open_database(path)
        try:
            jobs = []
            for n in range(3):
                job = {"id": f"job-{n}", "status": "pending", "priority": 5,
                       "callback_url": None, "message": "queued", "created_at": db.utc_now(),
                       "instance_id": "test"}
                items = [{"job_id": job["id"], "position": position,
                          "product_name": f"item {position}", "category": "c",
                          "price_exact": 1.0, "currency": "KRW", "seller_or_store": None,
                          "metadata": None, "research_key": f"item {position}"}
                         for position in range(4 - n)]
                jobs.append(db.insert_job(database, job, items))
            return list(await asyncio.gather(*jobs))
        finally:
            await db.close_database(database)

    returned = asyncio.run(scenario())
    with sqlite3.connect(path) as conn:
        stored = [[row[0] for row in conn.execute(
            "SELECT id FROM items WHERE job_id = ? ORDER BY position", (f"job-{n}",))]
            for n in range(3)]
    assert returned == stored
    assert [len(ids) for ids in stored] == [4, 3, 2]


def test_a_burst_of_creates_never_queues_past_the_cap(
        start_reference_services: StartServices) -> None:
    """30 creates at once against a cap of 5: exactly 5 are accepted. Each waits for its insert
    after passing the queue check; those waiting count as queued, or all 30 passed together."""
    # Items of 5 s, one at a time: no job finishes (and frees a place) during the burst (0.2-0.5
    # s at load average 10), and the service's stop, which waits for the simulated provider's
    # answer in flight, stays short.
    (service,) = start_reference_services(["--fast", "--concurrency", "1", "--item-latency-ms",
                                           "5000", "--latency-sigma", "0",
                                           "--max-queued-jobs", "5"])

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
            responses = await asyncio.gather(*(client.post(API, json={"items": [{
                "product_name": f"Burst item {n}", "category": "test",
                "price_exact": 1000}]}) for n in range(30)))
        return [response.status_code for response in responses]

    codes = asyncio.run(burst())
    assert sorted(codes) == [201] * 5 + [503] * 25
