"""The in-process research worker pool: one asyncio task per job, items researched under a
shared semaphore (the guide's 5 slots; none under the `unbounded` variant) that hands free
slots to the highest job priority first, results cached by normalised item, every state change
written to the database as it happens."""

import asyncio
import heapq
import itertools
import json
import logging
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import aiohttp
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from .cache import Cache
from .callbacks import open_callback_session, post_callback
from .db import (
    ACTIVE_STATUSES,
    RESULTS_SQL,
    Database,
    Item,
    Job,
    Result,
    fetch_rows,
    is_unavailable,
    sql_time,
    utc_now,
    write_rows,
    writing,
)
from .metrics import Metrics, change_active_research, record_cache, record_job, record_research
from .provider import ProviderClient, ask_provider
from .settings import ServiceSettings

log = logging.getLogger(__name__)

FAILED_ITEM_STATUSES = ("insufficient_sources", "error")
# How long a failed job keeps trying to record its failure while the database is away.
FINISH_RETRY_S = 300.0
# How long a research write waits for the database before the job fails: a PostgreSQL
# restart takes 2-3 s on this machine.
RIDE_OUT_S = 8.0
# Under Celery, how often the service looks for jobs whose task was lost (end_lost_jobs).
SWEEP_S = 5.0


class PrioritySemaphore:
    """A semaphore whose waiters are served by priority (10 before 1), first come first served
    within one priority, so an urgent job does not queue behind a backlog of routine ones."""

    def __init__(self, slots: int) -> None:
        self.free = slots
        self.waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self.arrivals = itertools.count()

    @asynccontextmanager
    async def slot(self, priority: int) -> AsyncIterator[None]:
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()

    async def acquire(self, priority: int) -> None:
        if self.free > 0 and not self.waiters:
            self.free -= 1
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self.waiters, (-priority, next(self.arrivals), granted))
        try:
            await granted
        except asyncio.CancelledError:
            # Cancelled after release() chose us: pass the slot on instead of losing it.
            if granted.done() and not granted.cancelled():
                self.release()
            raise

    def release(self) -> None:
        while self.waiters:
            _, _, granted = heapq.heappop(self.waiters)
            if not granted.done():
                granted.set_result(None)
                return
        self.free += 1


@dataclass
class WorkerPool:
    settings: ServiceSettings
    db: Database
    sessions: async_sessionmaker[Any]
    provider: ProviderClient
    cache: Cache
    metrics: Metrics
    semaphore: PrioritySemaphore | None
    # The Celery side (`--queue celery`): jobs go to its worker processes instead of `tasks`.
    queue: Any = None
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    cancel_messages: dict[str, str] = field(default_factory=dict)
    accepting: bool = True
    draining: bool = False
    # Under Celery: the last count of this instance's unfinished jobs, and when it was read.
    queued_jobs: int = 0
    queued_read_at: float = -math.inf
    # Creates past the queue check whose job is not started yet: counted as queued, or a burst
    # of creates all waiting for their insert would pass the check together, past the cap.
    admitting: int = 0
    # What health last found of the database (None: it answered), and when it looked.
    database_error: str | None = None
    health_probed_at: float = -math.inf


def build_pool(settings: ServiceSettings, db: Database, provider: ProviderClient, cache: Cache,
               metrics: Metrics) -> WorkerPool:
    semaphore = None if settings.has("unbounded") else PrioritySemaphore(settings.concurrency)
    sessions = async_sessionmaker(db.engine, expire_on_commit=False)
    return WorkerPool(settings, db, sessions, provider, cache, metrics, semaphore)


def judge_answer(answer: dict[str, Any]) -> str:
    """`success` needs a rating, a review count, at least 3 sources and one official domain."""
    reviews = answer.get("reviews") or {}
    sources = answer.get("sources") or []
    if (reviews.get("rating") is not None and reviews.get("count") is not None
            and len(sources) >= 3 and any(source.get("official") for source in sources)):
        return "success"
    return "insufficient_sources"


def start_job(pool: WorkerPool, job: Mapping[str, Any], items: list[dict[str, Any]]) -> None:
    """Research a just-created job in the background; `items` are the rows just inserted (with
    their ids), so the worker does not read them back."""
    job_id = job["id"]
    task = asyncio.create_task(run_job(pool, job_id, job["priority"], job["callback_url"], items),
                               name=f"research-{job_id}")
    pool.tasks[job_id] = task
    task.add_done_callback(lambda _: pool.tasks.pop(job_id, None))


async def submit_job(pool: WorkerPool, job: Mapping[str, Any],
                     items: list[dict[str, Any]]) -> bool:
    """Start the job's research here or queue it for a Celery worker. False when the broker
    refused it: the job is then cancelled, never left pending with no task to run it."""
    if pool.queue is None:
        start_job(pool, job, items)
        return True
    from .workers import enqueue_job

    if await enqueue_job(pool.queue, job["id"]):
        return True
    await mark_cancelled(pool.db, [job["id"]], "cancelled: the research queue is unreachable")
    return False


async def count_queued_jobs(pool: WorkerPool) -> int:
    """Jobs this instance accepted that have not finished: its tasks in-process; under Celery,
    its active jobs in the database (read at most once a second: a create must not pay a
    count per request)."""
    if pool.queue is None:
        return len(pool.tasks) + pool.admitting
    now = time.monotonic()
    if now - pool.queued_read_at >= 1.0:
        rows = await fetch_rows(pool.db, "SELECT count(*) FROM jobs WHERE status IN "
                                         "('pending', 'processing') AND instance_id = $1",
                                pool.settings.instance_id)
        pool.queued_jobs = int(rows[0][0])
        pool.queued_read_at = now
    return pool.queued_jobs


async def read_queue_state(pool: WorkerPool) -> dict[str, Any]:
    """What a collector reads about the research backlog: items waiting for a slot in this
    process, or jobs waiting in the broker's research queue for a Celery worker."""
    if pool.queue is None:
        state: dict[str, Any] = {
            "queue": "inprocess",
            "queue_depth": len(pool.semaphore.waiters) if pool.semaphore else 0,
            "workers": 1, "worker_pids": [os.getpid()]}
    else:
        from .workers import read_celery_state

        state = await read_celery_state(pool.queue)
    if state["queue_depth"] is not None:
        pool.metrics.prom_queue_depth.set(state["queue_depth"])
    pool.metrics.prom_workers.set(state["workers"])
    state["queued_jobs"] = await count_queued_jobs(pool)
    state["max_queued_jobs"] = pool.settings.max_queued_jobs
    return state


async def cancel_job(pool: WorkerPool, job_id: str, message: str) -> bool:
    """Mark an active job cancelled; its items not yet researched never will be. False when the
    job had already finished."""
    async with writing(pool.db) as conn:
        result = await conn.execute(
            update(Job).where(Job.id == job_id, Job.status.in_(ACTIVE_STATUSES))
            .values(status="cancelled", message=message, completed_at=utc_now()))
    if not result.rowcount:
        return False
    task = pool.tasks.get(job_id)
    if task is not None:
        pool.cancel_messages[job_id] = message
        task.cancel()
    return True


async def drain_pool(pool: WorkerPool, grace_s: float) -> None:
    """Shutdown: running jobs get `grace_s` to finish; the rest are stopped and marked
    cancelled in a few bulk statements (a backlog of thousands of queued jobs must not turn
    into thousands of transactions while the process is asked to exit)."""
    pool.accepting = False
    running = list(pool.tasks.values())
    if running:
        await asyncio.wait(running, timeout=grace_s)
    unfinished = {job_id: task for job_id, task in pool.tasks.items() if not task.done()}
    if not unfinished:
        return
    pool.draining = True
    for task in unfinished.values():
        task.cancel()
    await asyncio.wait(unfinished.values(), timeout=10.0)
    await mark_cancelled(pool.db, list(unfinished), "cancelled: the service shut down")


async def run_job(pool: WorkerPool, job_id: str, priority: int, callback_url: str | None,
                  items: list[dict[str, Any]], done: Counter[str] | None = None) -> None:
    """Research `items` and end the job; `done` counts the outcomes of its items researched
    before (by a worker that was killed), which its summary includes."""
    started_at = time.perf_counter()
    # Duplicates within a job (same normalised name and price) are researched once.
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in items:
        groups[item["research_key"]].append(item)
    state = {"processing": False}
    outcomes: Counter[str] = Counter(done)
    try:
        async with asyncio.TaskGroup() as group:
            for key, same_items in groups.items():
                group.create_task(research_group(pool, job_id, priority, key, same_items,
                                                 state, outcomes))
    except asyncio.CancelledError:
        if not pool.draining:  # at shutdown drain_pool marks all of them at once
            await mark_cancelled(pool.db, [job_id],
                                 pool.cancel_messages.pop(job_id, "cancelled"))
        record_job(pool.metrics, "cancelled", time.perf_counter() - started_at)
        raise
    except Exception as exc:
        if is_unavailable(exc):
            log.error("job %s failed: the database became unavailable while researching "
                      "(%s)", job_id, exc)
            message = "error: the database became unavailable while researching"
        else:
            log.exception("job %s failed", job_id)
            message = "internal error while researching"
        await finish_failed_job(pool, job_id, message)
        record_job(pool.metrics, "error", time.perf_counter() - started_at)
        return
    status, message = summarise_job(outcomes)
    if await finish_job(pool, job_id, status, message):
        record_job(pool.metrics, status, time.perf_counter() - started_at)
        if callback_url:
            body = {"job_id": job_id, "status": status, "message": message,
                    "metadata": summarise_counts(outcomes)}
            if pool.queue is None:
                await send_callback(pool, callback_url, body)
            else:
                from .workers import enqueue_callback

                await enqueue_callback(pool.queue, callback_url, body)


async def research_group(pool: WorkerPool, job_id: str, priority: int, key: str,
                         items: list[dict[str, Any]], state: dict[str, bool],
                         outcomes: Counter[str]) -> None:
    """Research items that share a key: the cache first, then the provider in a research
    slot. The cache is read and written outside the slot: a slow or paused Redis must not hold
    one of the few slots while the provider sits idle."""
    use_cache = not pool.settings.has("no_cache")
    started_at = time.perf_counter()
    answer = await pool.cache.get_result(key) if use_cache else None
    if use_cache:
        record_cache(pool.metrics, answer is not None)
    cached = answer is not None
    error: str | None = None
    if answer is None:
        marking: asyncio.Task[int] | None = None
        try:
            async with (pool.semaphore.slot(priority) if pool.semaphore is not None
                        else nullcontext()):
                # The job is processing from the moment its first item holds a slot; that
                # write goes on beside the provider call instead of before it: waiting in
                # line for SQLite's write lock (behind a burst of creates) held the slot,
                # and with it a fifth of the research pool, idle.
                marking = start_marking(pool, job_id, state)
                started_at = time.perf_counter()
                change_active_research(pool.metrics, +1)
                try:
                    answer, error, _ = await ask_provider(pool.provider, {
                        name: items[0][name] for name in ("product_name", "category",
                                                          "price_exact", "currency",
                                                          "seller_or_store")})
                    duration_s = time.perf_counter() - started_at
                finally:
                    change_active_research(pool.metrics, -1)
        except BaseException:
            if marking is not None:
                marking.cancel()
                await asyncio.gather(marking, return_exceptions=True)
            raise
        if marking is not None:
            await marking
    else:
        await mark_processing(pool, job_id, state)
        duration_s = time.perf_counter() - started_at
    status = "error" if answer is None else judge_answer(answer)
    if answer is not None and not cached and use_cache:
        await pool.cache.set_result(key, answer)
    now = sql_time(pool.db, utc_now())
    data = json.dumps(answer or {})
    await write_research(pool, [(
        "INSERT INTO results (item_id, status, data, error, cached, duration_s, created_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
        [(item["id"], status, data, error, cached, duration_s, now) for item in items])])
    outcomes[status] += len(items)
    for _ in items:
        record_research(pool.metrics, status, duration_s)


def start_marking(pool: WorkerPool, job_id: str,
                  state: dict[str, bool]) -> asyncio.Task[int] | None:
    """The job's move to processing, written in the background; None when another of its
    items has started it already."""
    if state["processing"]:
        return None
    state["processing"] = True
    return asyncio.create_task(write_research(pool, [(
        "UPDATE jobs SET status = 'processing', started_at = $1 "
        "WHERE id = $2 AND status = 'pending'", [(sql_time(pool.db, utc_now()), job_id)])]))


async def mark_processing(pool: WorkerPool, job_id: str, state: dict[str, bool]) -> None:
    marking = start_marking(pool, job_id, state)
    if marking is not None:
        await marking


def summarise_job(outcomes: Counter[str]) -> tuple[str, str]:
    counts = summarise_counts(outcomes)
    message = (f"researched {counts['total']} items: {counts['successful']} successful, "
               f"{counts['failed']} failed")
    # The job itself failed only when no item got an answer at all.
    status = "error" if counts["total"] and outcomes["error"] == counts["total"] else "success"
    return status, message


async def write_research(pool: WorkerPool,
                         statements: list[tuple[str, list[tuple[Any, ...]]]]) -> int:
    """A research write that rides out a short database outage (a restart, a failover) for
    up to RIDE_OUT_S before it fails its job. Without it, under a backlog, every job that
    reached a slot during a restart failed, and each failure freed its slot for the next."""
    deadline = time.monotonic() + RIDE_OUT_S
    delay_s = 0.1
    while True:
        try:
            return await write_rows(pool.db, statements)
        except Exception as exc:
            if not is_unavailable(exc) or time.monotonic() + delay_s > deadline:
                raise
        await asyncio.sleep(delay_s)
        delay_s = min(delay_s * 2, 1.0)


async def finish_job(pool: WorkerPool, job_id: str, status: str, message: str) -> bool:
    return bool(await write_research(pool, [(
        "UPDATE jobs SET status = $1, message = $2, completed_at = $3 "
        "WHERE id = $4 AND status IN ('pending', 'processing')",
        [(status, message, sql_time(pool.db, utc_now()), job_id)])]))


async def finish_failed_job(pool: WorkerPool, job_id: str, message: str) -> None:
    """Mark the job `error`, waiting for the database if that is what failed: a job must end,
    never stay `processing` because the write that would end it failed too. Gives up after
    FINISH_RETRY_S (a restart of this instance then cancels it) or once the pool drains."""
    deadline = time.monotonic() + FINISH_RETRY_S
    delay_s = 0.2
    while True:
        try:
            await finish_job(pool, job_id, "error", message)
            return
        except Exception as exc:
            if not is_unavailable(exc) or pool.draining or time.monotonic() > deadline:
                log.error("job %s could not be marked error: %s", job_id, exc)
                return
        await asyncio.sleep(delay_s)
        delay_s = min(delay_s * 2, 5.0)


async def mark_cancelled(db: Database, job_ids: list[str], message: str,
                         status: str = "cancelled") -> None:
    """Active jobs become cancelled (or `status`) and their items without a result get a
    result of that status."""
    for start in range(0, len(job_ids), 500):  # well under SQLite's bound-parameter limit
        chunk = job_ids[start:start + 500]
        async with writing(db) as session:
            missing = (await session.scalars(
                select(Item.id).outerjoin(Result)
                .where(Item.job_id.in_(chunk), Result.id.is_(None)))).all()
            if missing:
                now = utc_now()
                await session.execute(insert(Result), [
                    {"item_id": item_id, "status": status, "data": {}, "error": message,
                     "cached": False, "duration_s": None, "created_at": now}
                    for item_id in missing])
            await session.execute(
                update(Job).where(Job.id.in_(chunk), Job.status.in_(ACTIVE_STATUSES))
                .values(status=status, message=message, completed_at=utc_now()))


def lost_after_s(settings: ServiceSettings) -> float:
    """How long a processing job may go without a researched item before its task counts as
    lost: twice an item's longest research (every provider attempt at the profile's longest
    call, with its backoff), and at least 15 s."""
    profile = settings.profile
    item_s = settings.provider_attempts * (profile.max_ms + profile.backoff_ms) / 1000
    return max(15.0, 2 * item_s)


async def end_lost_jobs(pool: WorkerPool, research_queue_depth: int | None) -> list[str]:
    """Under Celery, jobs of this instance whose task is gone end `error` instead of staying
    active for ever: processing with no item researched for `lost_after_s` (its worker lost
    the broker and stopped, and the broker lost the unacknowledged task, as a Redis without
    persistence does when it restarts), or pending that long while the research queue is
    empty (the broker lost the queued task). A worker killed mid-job is not one of them: its
    task is delivered again (task_reject_on_worker_lost) and the job goes on. Should a task
    thought lost still run, it finds its job ended and writes nothing over it."""
    cutoff = sql_time(pool.db, utc_now() - timedelta(seconds=lost_after_s(pool.settings)))
    rows = await fetch_rows(
        pool.db,
        "SELECT jobs.id, jobs.status FROM jobs LEFT JOIN items ON items.job_id = jobs.id "
        "LEFT JOIN results ON results.item_id = items.id "
        "WHERE jobs.status IN ('pending', 'processing') AND jobs.instance_id = $1 "
        "GROUP BY jobs.id, jobs.status, jobs.created_at, jobs.started_at "
        "HAVING coalesce(max(results.created_at), jobs.started_at, jobs.created_at) < $2",
        pool.settings.instance_id, cutoff)
    lost = [job_id for job_id, status in rows
            if status == "processing" or research_queue_depth == 0]
    if lost:
        log.error("%d jobs ended error: their research task was lost (no progress for %.0f s)",
                  len(lost), lost_after_s(pool.settings))
        await mark_cancelled(pool.db, lost, "error: the research task was lost (a worker or "
                             "broker failure); no progress for "
                             f"{lost_after_s(pool.settings):.0f} s", status="error")
    return lost


async def watch_lost_jobs(pool: WorkerPool) -> None:
    """Under Celery, end_lost_jobs every SWEEP_S for as long as the service runs."""
    from .workers import read_queue_depths

    assert pool.queue is not None
    while True:
        await asyncio.sleep(SWEEP_S)
        try:
            depths = await asyncio.to_thread(read_queue_depths, pool.queue)
            await end_lost_jobs(pool, depths[pool.queue.tuning.research_queue])
        except Exception as exc:  # the next round tries again
            if is_unavailable(exc):
                log.warning("looking for lost jobs: %s", exc)
            else:
                log.exception("looking for lost jobs failed")


async def load_result_rows(pool: WorkerPool, job_id: str) -> Sequence[Sequence[Any]]:
    """The job's items with their results, as `RESULTS_SQL` rows (none: no such job). One
    statement on the driver; under `n_plus_one`, the lazy ORM loop the guide warns about: the
    job, its items, then one query per item for its result."""
    if not pool.settings.has("n_plus_one"):
        return await fetch_rows(pool.db, RESULTS_SQL, job_id)
    async with pool.sessions() as session:
        job = await session.scalar(select(Job).where(Job.id == job_id))
        if job is None:
            return []
        items = (await session.scalars(
            select(Item).where(Item.job_id == job_id).order_by(Item.position))).all()
        rows = []
        for item in items:
            result = await session.scalar(select(Result).where(Result.item_id == item.id))
            outcome = (None,) * 6 if result is None else (
                result.status, result.data, result.error, result.cached, result.duration_s,
                result.created_at)
            rows.append((job.status, job.priority, job.callback_url, job.message,
                         job.created_at, job.started_at, job.completed_at, item.product_name,
                         item.category, item.price_exact, item.currency, item.seller_or_store,
                         item.item_metadata, *outcome))
        return rows


async def send_callback(pool: WorkerPool, callback_url: str, body: dict[str, Any]) -> bool:
    """POST the final status to the job's callback_url; failures are logged, never retried.
    callbacks.py says where a callback may not go."""
    try:
        async with open_callback_session() as session:
            await post_callback(session, callback_url, body)
        pool.metrics.callbacks_sent += 1
        return True
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        pool.metrics.callbacks_failed += 1
        log.warning("callback for job %s to %s failed: %s", body["job_id"], callback_url, exc)
        return False


async def cancel_active_jobs(pool: WorkerPool, message: str) -> None:
    """Every job still active (its task queued or cut short) becomes cancelled, with its
    unresearched items."""
    rows = await fetch_rows(pool.db, "SELECT id FROM jobs WHERE status IN ('pending', "
                                     "'processing') AND instance_id = $1",
                            pool.settings.instance_id)
    await mark_cancelled(pool.db, [row[0] for row in rows], message)


def summarise_counts(counts: Mapping[str, int]) -> dict[str, int]:
    return {
        "total": sum(counts.values()),
        "successful": counts.get("success", 0),
        "failed": sum(counts.get(status, 0) for status in FAILED_ITEM_STATUSES),
        "cancelled": counts.get("cancelled", 0),
    }
