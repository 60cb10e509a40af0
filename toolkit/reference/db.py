"""Tables, engine and schema of the reference service (SQLAlchemy 2 async; SQLite or PostgreSQL).

Indexes follow the service's guide: jobs by (status, created_at), a partial index on active
jobs, items by job_id, results by item_id. The `no_index` variant creates the same tables
without them.

The hot paths (create, status, results, the research writes) skip SQLAlchemy's statement
machinery and speak to the driver (aiosqlite or asyncpg) through connections leased from the
engine once: SQL written once with `$1` placeholders, one round trip per statement. The ORM
models remain for the schema, the rare writes and the `n_plus_one` variant's lazy reads."""

import asyncio
import functools
import importlib.util
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
    inspect,
    or_,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from ..errors import ConfigError
from .metrics import Metrics, record_query

log = logging.getLogger(__name__)

ACTIVE_STATUSES = ("pending", "processing")
FINISHED_STATUSES = ("success", "error", "cancelled")


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    metadata = MetaData()
    # Aware timestamps everywhere: PostgreSQL (asyncpg) refuses to mix them with naive columns.
    type_annotation_map = {datetime: DateTime(timezone=True)}


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    status: Mapped[str] = mapped_column(String(20))
    priority: Mapped[int] = mapped_column(Integer)
    callback_url: Mapped[str | None] = mapped_column(String(2048))
    message: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column()
    started_at: Mapped[datetime | None] = mapped_column()
    completed_at: Mapped[datetime | None] = mapped_column()
    # Which service instance accepted the job (settings.instance_id); NULL for jobs written
    # before the column existed.
    instance_id: Mapped[str | None] = mapped_column(String(100))
    items: Mapped[list["Item"]] = relationship(back_populates="job", order_by="Item.position")


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    product_name: Mapped[str] = mapped_column(String(500))
    category: Mapped[str] = mapped_column(String(100))
    price_exact: Mapped[float] = mapped_column(Float)
    currency: Mapped[str] = mapped_column(String(3))
    seller_or_store: Mapped[str | None] = mapped_column(String(200))
    item_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    # Unbounded: NFKC and case folding expand a 500-character name up to 18-fold (U+FDFA alone
    # becomes 18 characters), and a key cut short would merge different products in the cache.
    research_key: Mapped[str] = mapped_column(Text)
    job: Mapped[Job] = relationship(back_populates="items")
    result: Mapped["Result | None"] = relationship(back_populates="item", uselist=False)


class Result(Base):
    __tablename__ = "results"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(30))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(String(500))
    cached: Mapped[bool] = mapped_column()
    duration_s: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column()
    item: Mapped[Item] = relationship(back_populates="result")


def _guide_indexes(tables: dict[str, Table]) -> list[Index]:
    jobs, items, results = tables["jobs"], tables["items"], tables["results"]
    active = jobs.c.status.in_(ACTIVE_STATUSES)
    return [
        Index("ix_jobs_status_created_at", jobs.c.status, jobs.c.created_at),
        Index("ix_jobs_active", jobs.c.created_at, sqlite_where=active, postgresql_where=active),
        Index("ix_items_job_id", items.c.job_id),
        Index("ix_results_item_id", results.c.item_id, unique=True),
    ]


def build_engine(database_url: str, metrics: Metrics,
                 statement_timeout_s: float = 0.0) -> AsyncEngine:
    """An async engine whose every statement is timed into `metrics`; on PostgreSQL a statement
    running past `statement_timeout_s` (0: no limit) is cancelled by the server, and one the
    server does not answer at all (a hung host) by the driver 2 s later."""
    if not database_url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise ConfigError(f"unsupported --database-url {database_url!r}: use "
                          "sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB")
    sqlite = database_url.startswith("sqlite")
    if not sqlite and importlib.util.find_spec("asyncpg") is None:
        raise ConfigError("a PostgreSQL --database-url needs its driver: "
                          "pip install 'perfkit[postgres]'")
    # Every connection is handed back with its transaction ended (engine.begin(), or a driver
    # read outside any transaction), so the pool's rollback on return is a wasted round trip to
    # aiosqlite's thread on each request.
    options: dict[str, Any] = {"pool_reset_on_return": None}
    if not sqlite:
        # pre_ping: after a PostgreSQL restart every pooled connection is dead; a ping (one
        # round trip, on the rare writes that go through the engine) finds out before use.
        # A server that is restarting refuses at once; one that is unreachable must not hold
        # a request for asyncpg's default minute.
        connect_args: dict[str, Any] = {"timeout": 5}
        if statement_timeout_s:
            connect_args.update(
                server_settings={"statement_timeout": str(round(statement_timeout_s * 1000))},
                command_timeout=statement_timeout_s + 2)
        options.update(pool_size=16, max_overflow=20, pool_pre_ping=True,
                       connect_args=connect_args)
    else:
        # A fixed pool: an overflow connection is opened and closed per checkout (a new
        # aiosqlite thread and the pragmas each time), which was the reads' p99.
        options.update(pool_size=20, max_overflow=0)
    engine = create_async_engine(database_url, **options)
    sync_engine = engine.sync_engine

    if sqlite:
        @event.listens_for(sync_engine, "connect")
        def set_sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL lets the API read while the worker writes; busy_timeout makes concurrent
            # writers wait for the lock instead of failing with "database is locked".
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    @event.listens_for(sync_engine, "before_cursor_execute")
    def start_timer(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                    executemany: bool) -> None:
        conn.info.setdefault("query_started_at", []).append(time.perf_counter())

    @event.listens_for(sync_engine, "after_cursor_execute")
    def stop_timer(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                   executemany: bool) -> None:
        started_at = conn.info["query_started_at"].pop()
        record_query(metrics, statement, time.perf_counter() - started_at)

    @event.listens_for(sync_engine, "handle_error")
    def drop_timer(context: Any) -> None:
        stack = context.connection.info.get("query_started_at") if context.connection else None
        if stack:
            stack.pop()

    return engine


def create_index(sync_conn: Any, index: Index) -> None:
    index.create(sync_conn, checkfirst=True)


def read_columns(sync_conn: Any, table: str) -> dict[str, Any]:
    return {column["name"]: column["type"] for column in inspect(sync_conn).get_columns(table)}


async def upgrade_schema(conn: AsyncConnection) -> None:
    """Bring a database made by an earlier version up to these tables: create_all adds missing
    tables, never missing columns or wider types."""
    jobs = await conn.run_sync(read_columns, "jobs")
    if "instance_id" not in jobs:
        await conn.execute(text("ALTER TABLE jobs ADD COLUMN instance_id VARCHAR(100)"))
    if conn.dialect.name == "postgresql":
        items = await conn.run_sync(read_columns, "items")
        if not isinstance(items["research_key"], Text):
            # varchar to text needs no table rewrite on PostgreSQL.
            await conn.execute(text("ALTER TABLE items ALTER COLUMN research_key TYPE text"))


# pg_advisory_xact_lock's key for the schema: instances starting together on one database
# take turns, or both CREATE TABLE and one fails on PostgreSQL's catalog.
SCHEMA_LOCK_KEY = 0x7065726B  # "perk"


async def create_schema(engine: AsyncEngine, with_indexes: bool) -> None:
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(text(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK_KEY})"))
        await conn.run_sync(Base.metadata.create_all)
        await upgrade_schema(conn)
        if with_indexes:
            for index in _guide_indexes(dict(Base.metadata.tables)):
                await conn.run_sync(create_index, index)
        else:
            # A database reused from an indexed run must show the variant's schema too.
            for name in ("ix_jobs_status_created_at", "ix_jobs_active", "ix_items_job_id",
                         "ix_results_item_id"):
                await conn.execute(text(f"DROP INDEX IF EXISTS {name}"))


async def cancel_orphaned_jobs(db: "Database", instance_id: str, message: str) -> int:
    """Jobs this instance left active when it last stopped (and jobs from before instance ids)
    are marked cancelled, never left hanging. Another instance's active jobs are its own: it
    is still researching them."""
    owned = or_(Job.instance_id == instance_id, Job.instance_id.is_(None))
    async with writing(db) as conn:
        result = await conn.execute(
            update(Job).where(Job.status.in_(ACTIVE_STATUSES), owned)
            .values(status="cancelled", message=message, completed_at=utc_now()))
    return int(result.rowcount or 0)


@dataclass(eq=False)
class Lease:
    """A connection checked out of the engine for good, and its driver connection."""

    conn: AsyncConnection
    driver: Any


@dataclass
class Database:
    """The engine and what the hot paths need beside it: which driver answers (their SQL
    placeholders and value types differ), driver connections lent to the hot paths, and, on
    SQLite, the lock that makes writers take turns in the event loop instead of in SQLite's
    busy handler, whose back-off sleeps of up to 100 ms were the create endpoint's p99."""

    engine: AsyncEngine
    metrics: Metrics
    sqlite: bool
    write_lock: asyncio.Lock | None
    # Checked out of the engine's pool once, at startup: SQLAlchemy's async checkout costs
    # about 75 us of CPU per request (greenlets, pool bookkeeping), more than twice what a
    # status query itself costs on SQLite. None in the queue is a lease lost with its
    # connection (a database restart), opened again by the next request that draws it.
    drivers: asyncio.Queue[Lease | None] = field(default_factory=asyncio.Queue)
    leases: set[Lease] = field(default_factory=set)
    leased: int = 0
    # On SQLite, the hot paths' writes (creates, research) go through one writer.
    writer: "Writer | None" = None


# A write: statements in order, each with its parameter rows (SQL with $n placeholders).
Statements = list[tuple[str, list[tuple[Any, ...]]]]


@dataclass
class Writer:
    """SQLite's hot writes, committed together (group commit): writes that arrive while a
    transaction runs wait for it and then share the next one, all of it in one hop to the
    writer's own thread and connection, each write in a SAVEPOINT of its own so that one that
    fails fails alone. Before, each write held the write lock for two or three hops to
    aiosqlite's thread, each waiting for its turn in an event loop busy with requests: under a
    burst of creates the writes queued for over a second and the research pool drained 16 jobs
    a second instead of the 150 its five slots allow (bench/service_floor.py's create)."""

    path: str
    lock: asyncio.Lock  # Database.write_lock: the writer takes turns with the ORM's writes
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(
        1, thread_name_prefix="sqlite-writer"))
    pending: list[tuple[Statements, bool, "asyncio.Future[Any]"]] = field(default_factory=list)
    draining: "asyncio.Task[None] | None" = None
    conn: sqlite3.Connection | None = None  # made and used on the writer's thread only


def open_database(database_url: str, metrics: Metrics,
                  statement_timeout_s: float = 0.0) -> Database:
    sqlite = database_url.startswith("sqlite")
    lock = asyncio.Lock() if sqlite else None
    writer = Writer(str(make_url(database_url).database), lock) if lock is not None else None
    return Database(build_engine(database_url, metrics, statement_timeout_s), metrics, sqlite,
                    lock, writer=writer)


async def open_lease(db: Database) -> Lease:
    conn = await db.engine.connect()
    lease = Lease(conn, (await conn.get_raw_connection()).driver_connection)
    db.leases.add(lease)
    return lease


async def drop_lease(db: Database, lease: Lease) -> None:
    db.leases.discard(lease)
    try:
        await lease.conn.invalidate()
        await lease.conn.close()
    except Exception:  # the connection is gone already; nothing of it is worth keeping
        log.debug("closing a lost database connection failed", exc_info=True)


async def lease_drivers(db: Database, count: int) -> None:
    for _ in range(count):
        db.drivers.put_nowait(await open_lease(db))
    db.leased = count


async def close_database(db: Database) -> None:
    if db.writer is not None:
        await close_writer(db.writer)
    for lease in list(db.leases):
        try:
            await lease.conn.close()
        except Exception:  # a connection lost with the database; closing it cannot fail us
            log.debug("closing a database connection failed", exc_info=True)
    db.leases.clear()
    await db.engine.dispose()


@functools.cache
def driver_connection_errors() -> tuple[type[BaseException], ...]:
    """asyncpg's errors that mean the server is away (asyncpg is an optional extra).
    InternalClientError is a connection whose protocol the server cut off mid-statement
    ("cannot switch to state 12; another operation (2) is in progress", seen when PostgreSQL
    restarts): it is not closed, but no statement will ever run on it again."""
    try:
        import asyncpg
    except ImportError:
        return ()
    return (asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
            asyncpg.exceptions.OperatorInterventionError,
            asyncpg.exceptions.InsufficientResourcesError,
            asyncpg.exceptions.InternalClientError)


def is_closed_to_connections(exc: BaseException) -> bool:
    # A database closed to new connections (ALLOW_CONNECTIONS false, during maintenance).
    return (type(exc).__name__ == "ObjectNotInPrerequisiteStateError"
            and "accepting connections" in str(exc))


def is_unavailable(exc: BaseException) -> bool:
    """The database could not be reached or dropped the connection (down, restarting,
    refusing connections), as opposed to a statement it refused."""
    seen: BaseException | None = exc
    for _ in range(8):  # SQLAlchemy wraps the driver's error, which may wrap the socket's
        if seen is None:
            return False
        if isinstance(seen, BaseExceptionGroup):  # a TaskGroup's: any of them will do
            return any(is_unavailable(inner) for inner in seen.exceptions)
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        if isinstance(seen, (OSError, TimeoutError, *driver_connection_errors())):
            return True
        if is_closed_to_connections(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def is_lost(db: Database, driver: Any) -> bool:
    # aiosqlite's connection lives as long as the file; asyncpg's dies with the server.
    return not db.sqlite and bool(driver.is_closed())


@asynccontextmanager
async def lend_driver(db: Database) -> AsyncIterator[Any]:
    """A leased driver connection (aiosqlite or asyncpg), or, in a process that leased none
    (a Celery worker), one checked out for this use. A leased connection the database dropped
    is replaced, so a restart of PostgreSQL costs the requests in flight, not the process: one
    that reports itself closed, or one whose statement failed because the connection broke
    (it may look open with its protocol stuck)."""
    if not db.leased:
        async with db.engine.connect() as conn:
            yield (await conn.get_raw_connection()).driver_connection
        return
    lease = await db.drivers.get()
    broken = False
    try:
        if lease is None:
            lease = await open_lease(db)
        yield lease.driver
    except BaseException as exc:
        broken = is_unavailable(exc)
        raise
    finally:
        if lease is not None and (broken or is_lost(db, lease.driver)):
            await drop_lease(db, lease)
            lease = None
        db.drivers.put_nowait(lease)


@asynccontextmanager
async def writing(db: Database) -> AsyncIterator[AsyncConnection]:
    """One write transaction (SQLAlchemy Core), committed at the end."""
    lock: AbstractAsyncContextManager[Any] = db.write_lock or nullcontext()
    async with lock, db.engine.begin() as conn:
        yield conn


def sql_time(db: Database, moment: datetime) -> Any:
    # The text SQLAlchemy's SQLite DateTime writes and parses back; asyncpg takes the object.
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f") if db.sqlite else moment


def iso_time(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value).replace(" ", "T", 1)


def json_value(value: Any) -> Any:
    # Both drivers hand JSON columns over as text (SQLAlchemy registers asyncpg's json codec so).
    return json.loads(value) if isinstance(value, str | bytes) else value


def driver_sql(db: Database, sql: str) -> str:
    # Written with asyncpg's $1 placeholders; SQLite reads ?1 as the same numbered parameter.
    return sql.replace("$", "?") if db.sqlite else sql


async def fetch_rows(db: Database, sql: str, *params: Any) -> Sequence[Sequence[Any]]:
    """A read on the driver itself, outside any transaction: one hop to aiosqlite's thread
    (SQLAlchemy's cursor adapter takes four: cursor, execute, fetchall, close) or one asyncpg
    fetch. Timed into the metrics like every statement that goes through the engine."""
    async with lend_driver(db) as driver:
        started_at = time.perf_counter()
        if db.sqlite:
            rows: Sequence[Sequence[Any]] = await driver.execute_fetchall(
                driver_sql(db, sql), params)
        else:
            rows = await driver.fetch(sql, *params)
        record_query(db.metrics, sql, time.perf_counter() - started_at)
    return rows


async def probe_database(db: Database, timeout_s: float = 2.0) -> str | None:
    """None when the database answers `SELECT 1` within `timeout_s`, else why not."""
    try:
        await asyncio.wait_for(fetch_rows(db, "SELECT 1"), timeout_s)
    except Exception as exc:  # whatever the driver raises, health reports it
        return f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__
    return None


async def insert_job(db: Database, job: dict[str, Any], items: list[dict[str, Any]]
                     ) -> list[int]:
    """The job and its items in one transaction: one statement each (the items as one multi-row
    INSERT ... RETURNING); on SQLite through the writer, on PostgreSQL three round trips.
    Returns the item ids in position order."""
    job_sql = ("INSERT INTO jobs (id, status, priority, callback_url, message, created_at, "
               "instance_id) VALUES ($1, $2, $3, $4, $5, $6, $7)")
    job_params = (job["id"], job["status"], job["priority"], job["callback_url"],
                  job["message"], sql_time(db, job["created_at"]), job["instance_id"])
    columns = ("job_id", "position", "product_name", "category", "price_exact", "currency",
               "seller_or_store", "metadata", "research_key")
    rows = ", ".join("(" + ", ".join(f"${n * len(columns) + c + 1}" for c in range(len(columns)))
                     + ")" for n in range(len(items)))
    items_sql = (f"INSERT INTO items ({', '.join(columns)}) VALUES {rows} "
                 "RETURNING id, position")
    items_params = [value for item in items for value in (
        item["job_id"], item["position"], item["product_name"], item["category"],
        item["price_exact"], item["currency"], item["seller_or_store"],
        json.dumps(item["metadata"]), item["research_key"])]
    if db.writer is not None:
        returned = await write_together(db, [(job_sql, [job_params]),
                                             (items_sql, [tuple(items_params)])], fetch=True)
    else:
        async with lend_driver(db) as driver:
            started_at = time.perf_counter()
            async with driver.transaction():
                await driver.execute(job_sql, *job_params)
                job_done_at = time.perf_counter()
                returned = await driver.fetch(items_sql, *items_params)
            # Two statements reached the database: count both, as the server does.
            record_query(db.metrics, job_sql, job_done_at - started_at)
            record_query(db.metrics, items_sql, time.perf_counter() - job_done_at)
    return [item_id for item_id, _ in sorted(returned, key=lambda row: row[1])]


STATUS_SQL = (
    "SELECT j.status, j.message, r.status, count(i.id), j.created_at, j.completed_at FROM jobs j "
    "JOIN items i ON i.job_id = j.id LEFT JOIN results r ON r.item_id = i.id "
    "WHERE j.id = $1 GROUP BY j.status, j.message, r.status, j.created_at, j.completed_at")

RESULTS_SQL = (
    "SELECT j.status, j.priority, j.callback_url, j.message, j.created_at, j.started_at, "
    "j.completed_at, i.product_name, i.category, i.price_exact, i.currency, i.seller_or_store, "
    "i.metadata, r.status, r.data, r.error, r.cached, r.duration_s, r.created_at "
    "FROM jobs j JOIN items i ON i.job_id = j.id LEFT JOIN results r ON r.item_id = i.id "
    "WHERE j.id = $1 ORDER BY i.position")


async def write_rows(db: Database, statements: Statements) -> int:
    """Statements (each with one or more parameter rows) in one transaction; returns how many
    rows the last one changed. The research path's writes: on SQLite through the writer."""
    if db.writer is not None:
        changed: int = await write_together(db, statements)
        return changed
    changed = 0
    async with lend_driver(db) as driver:
        started_at = time.perf_counter()
        async with driver.transaction():
            for sql, rows in statements:
                if len(rows) > 1:
                    await driver.executemany(sql, rows)
                    changed = len(rows)
                else:
                    status = await driver.execute(sql, *rows[0])
                    changed = int(status.rsplit(" ", 1)[-1])
        duration_s = (time.perf_counter() - started_at) / len(statements)
        for sql, _ in statements:
            record_query(db.metrics, sql, duration_s)
    return changed


async def write_together(db: Database, statements: Statements, fetch: bool = False) -> Any:
    """One write through the SQLite writer, committed with whatever else is waiting: the rows
    the last statement returned (`fetch`), else how many it changed. A write whose caller is
    cancelled before its turn is never made."""
    assert db.writer is not None
    writer = db.writer
    done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    writer.pending.append((statements, fetch, done))
    if writer.draining is None or writer.draining.done():
        writer.draining = asyncio.create_task(drain_writes(writer))
    value, timings = await done
    for sql, duration_s in timings:
        record_query(db.metrics, sql, duration_s)
    return value


async def drain_writes(writer: Writer) -> None:
    loop = asyncio.get_running_loop()
    while writer.pending:
        batch: list[tuple[Statements, bool, asyncio.Future[Any]]] = []
        outcomes: list[tuple[Exception | None, Any]] = []
        try:
            async with writer.lock:
                # Taken once the lock is ours: what arrived while we waited for it joins.
                batch = [write for write in writer.pending if not write[2].done()]
                writer.pending = []
                if batch:
                    outcomes = await loop.run_in_executor(
                        writer.executor, run_batch, writer, [(s, f) for s, f, _ in batch])
        except BaseException as exc:
            for _, _, done in batch:
                if not done.done():
                    done.set_exception(exc if isinstance(exc, Exception)
                                       else RuntimeError("the SQLite writer stopped"))
            raise
        for (_, _, done), (error, value) in zip(batch, outcomes, strict=True):
            if done.done():
                continue
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(value)


def run_batch(writer: Writer, batch: list[tuple[Statements, bool]]
              ) -> list[tuple[Exception | None, Any]]:
    """On the writer's thread: every write of the batch in one transaction, each in its own
    SAVEPOINT; (error, (value, [(sql, seconds)])) per write."""
    if writer.conn is None:
        writer.conn = open_writer_connection(writer.path)
    conn = writer.conn
    outcomes: list[tuple[Exception | None, Any]] = []
    try:
        conn.execute("BEGIN IMMEDIATE")
        for statements, fetch in batch:
            conn.execute("SAVEPOINT write")
            try:
                outcomes.append((None, run_statements(conn, statements, fetch)))
                conn.execute("RELEASE write")
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK TO write")
                conn.execute("RELEASE write")
                outcomes.append((exc, None))
        conn.execute("COMMIT")
    except Exception as exc:  # the transaction itself failed: none of the batch was written
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        return [(exc, None)] * len(batch)
    return outcomes


def run_statements(conn: sqlite3.Connection, statements: Statements,
                   fetch: bool) -> tuple[Any, list[tuple[str, float]]]:
    value: Any = 0
    timings = []
    for sql, rows in statements:
        started_at = time.perf_counter()
        # SQLite reads asyncpg's $1 as ?1, the same numbered parameter.
        cursor = (conn.executemany(sql.replace("$", "?"), rows) if len(rows) > 1
                  else conn.execute(sql.replace("$", "?"), rows[0]))
        value = cursor.fetchall() if fetch else cursor.rowcount
        timings.append((sql, time.perf_counter() - started_at))
    return value, timings


def open_writer_connection(path: str) -> sqlite3.Connection:
    # Autocommit mode: the batch says BEGIN and COMMIT itself. The pragmas are the engine's.
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=10000",
                   "foreign_keys=ON"):
        conn.execute(f"PRAGMA {pragma}")
    return conn


async def close_writer(writer: Writer) -> None:
    if writer.draining is not None:
        await asyncio.wait([writer.draining])

    def close() -> None:
        if writer.conn is not None:
            writer.conn.close()
            writer.conn = None

    await asyncio.get_running_loop().run_in_executor(writer.executor, close)
    writer.executor.shutdown(wait=False)
