"""The reference service on its other backends: the real PostgreSQL on 127.0.0.1:5432 (a
database created for the test and dropped after) and the real Redis on 127.0.0.1:6379."""

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator

import asyncpg
import httpx
import pytest
import redis

from .conftest import StartServices
from .test_reference import API, create_job, new_item, read_metrics, run_job, wait_for_status

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_PREFIX = "perfkit:research:"


async def run_admin_statement(statement: str) -> None:
    conn = await asyncpg.connect(POSTGRES_ADMIN, timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def fetch_rows(database: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{database}", timeout=10)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


@pytest.fixture
def postgres_database() -> Iterator[str]:
    name = f"perfkit_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(run_admin_statement(f'CREATE DATABASE "{name}"'))
    yield name
    asyncio.run(run_admin_statement(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.ping()
    yield client
    written = list(client.scan_iter(match=f"{REDIS_PREFIX}perfkit test *"))
    if written:
        client.delete(*written)
    client.close()


def test_postgresql_and_a_shared_redis_cache(start_reference_services: StartServices,
                                             postgres_database: str,
                                             redis_client: redis.Redis) -> None:
    database_url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{postgres_database}"
    on_postgres, on_sqlite = start_reference_services(
        ["--fast", "--database-url", database_url, "--redis-url", REDIS_URL],
        ["--fast", "--redis-url", REDIS_URL])
    name = f"Perfkit Test {uuid.uuid4().hex[:12]}"
    items = [new_item(name), new_item(), new_item(name.lower())]

    results = run_job(on_postgres.url, items)
    assert results["status"] == "success"
    assert [r["status"] for r in results["results"]] == ["success"] * 3
    assert results["metadata"]["successful"] == 3
    assert read_metrics(on_postgres.url, "application")["provider_calls"] == 2
    assert httpx.delete(f"{on_postgres.url}{API}/{results['job_id']}").status_code == 400
    cancelled = create_job(on_postgres.url, [new_item() for _ in range(10)])
    response = httpx.delete(f"{on_postgres.url}{API}/{cancelled['job_id']}")
    # A fast job may finish before the DELETE lands; either way it is never left active.
    assert response.status_code in (204, 400)
    wait_for_status(on_postgres.url, cancelled["job_id"], ("cancelled", "success"))

    rows = asyncio.run(fetch_rows(postgres_database, "SELECT status FROM jobs WHERE id = $1",
                                  results["job_id"]))
    assert [row["status"] for row in rows] == ["success"]
    indexes = {row["indexname"]: row["indexdef"] for row in asyncio.run(fetch_rows(
        postgres_database, "SELECT indexname, indexdef FROM pg_indexes "
                           "WHERE schemaname = 'public'"))}
    assert {"ix_jobs_status_created_at", "ix_jobs_active", "ix_items_job_id"} <= set(indexes)
    assert "WHERE" in indexes["ix_jobs_active"]
    database = read_metrics(on_postgres.url, "database")
    assert database["total_queries"] > 0 and database["average_time"] > 0

    # The cache lives in Redis, so another instance finds what the first one researched.
    key = f"{REDIS_PREFIX}{name.casefold()}|{19900:.2f}|KRW"
    assert redis_client.exists(key) == 1
    ttl_s = redis_client.ttl(key)
    assert isinstance(ttl_s, int) and 0 < ttl_s <= 3600
    again = run_job(on_sqlite.url, [new_item(name)])
    assert again["results"][0]["cached"] is True
    assert read_metrics(on_sqlite.url, "application")["provider_calls"] == 0
    assert read_metrics(on_sqlite.url, "application")["cache_hits"] == 1


@pytest.mark.parametrize(("args", "message"), [
    (["--redis-url", "redis://127.0.0.1:1/0"], "cannot reach Redis"),
    (["--database-url", "postgresql+asyncpg://postgres@127.0.0.1:5432/perfkit_no_such_db"],
     "does not exist"),
    (["--database-url", "mysql://localhost/x"], "unsupported --database-url"),
])
def test_unreachable_backends_are_one_line_errors(args: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "perfkit", "serve", "--port", "0", "--fast",
                             *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert message in result.stderr


def test_a_hung_postgresql_ends_in_503_within_the_statement_timeout(
        start_reference_services: StartServices, postgres_database: str) -> None:
    """A database that hangs rather than refuses: another session holds an exclusive lock on
    the jobs table, so every statement that reads it waits. With --statement-timeout 1 the
    server cancels such a statement after 1 s and the request is answered 503, where without
    a timeout it would hang as long as the lock is held."""
    database_url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{postgres_database}"
    service, = start_reference_services(["--fast", "--database-url", database_url,
                                         "--statement-timeout", "1"])
    job_id = run_job(service.url, [new_item()])["job_id"]

    async def hold_lock_while_reading() -> tuple[int, float]:
        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{postgres_database}",
                                     timeout=10)
        try:
            async with conn.transaction():
                await conn.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
                async with httpx.AsyncClient(timeout=30) as client:
                    started = asyncio.get_running_loop().time()
                    response = await client.get(f"{service.url}{API}/{job_id}")
                    return response.status_code, asyncio.get_running_loop().time() - started
        finally:
            await conn.close()

    status, waited_s = asyncio.run(hold_lock_while_reading())
    assert status == 503
    assert 1.0 <= waited_s < 10, waited_s  # cancelled by the timeout, not answered at once
    # The lock gone, the same connection pool serves again.
    assert httpx.get(f"{service.url}{API}/{job_id}", timeout=10).status_code == 200
