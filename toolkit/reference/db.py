"""Tables, engine and schema of the reference service (SQLAlchemy 2 async; SQLite or PostgreSQL).

Indexes follow the service's guide: jobs by (status, created_at), a partial index on active
jobs, items by job_id, results by item_id. The `no_index` variant creates the same tables
without them."""

import time
import uuid
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
    event,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from ..errors import ConfigError
from .metrics import Metrics, record_query

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
    research_key: Mapped[str] = mapped_column(String(700))
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


def build_engine(database_url: str, metrics: Metrics) -> AsyncEngine:
    """An async engine whose every statement is timed into `metrics`."""
    if not database_url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise ConfigError(f"unsupported --database-url {database_url!r}: use "
                          "sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB")
    sqlite = database_url.startswith("sqlite")
    options: dict[str, Any] = {}
    if not sqlite:
        options.update(pool_size=10, max_overflow=20)
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


async def create_schema(engine: AsyncEngine, with_indexes: bool) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        if with_indexes:
            for index in _guide_indexes(dict(Base.metadata.tables)):
                await conn.run_sync(create_index, index)
        else:
            # A database reused from an indexed run must show the variant's schema too.
            for name in ("ix_jobs_status_created_at", "ix_jobs_active", "ix_items_job_id",
                         "ix_results_item_id"):
                await conn.execute(text(f"DROP INDEX IF EXISTS {name}"))


async def cancel_orphaned_jobs(sessions: async_sessionmaker[Any], message: str) -> int:
    """Jobs left active by a previous process are marked cancelled, never left hanging."""
    async with sessions.begin() as session:
        result = await session.execute(
            update(Job).where(Job.status.in_(ACTIVE_STATUSES))
            .values(status="cancelled", message=message, completed_at=utc_now()))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
