"""The Celery tasks, as they run inside a worker's pool process: one event loop per process,
with its database engine, cache and provider client made on the first task (after the fork,
so no connection is shared between processes) and kept for the process's life."""

import asyncio
import logging
from collections import Counter
from typing import Any

import uvloop
from celery import Celery

from .cache import open_cache
from .db import ACTIVE_STATUSES, fetch_rows, open_database
from .metrics import Metrics
from .provider import open_client
from .research import WorkerPool, build_pool, run_job, send_callback
from .settings import ServiceSettings
from .workers import CALLBACK_TASK, RESEARCH_TASK, CeleryQueue, build_celery

log = logging.getLogger(__name__)

# With each item, its result's status: a job delivered again (its worker was killed) researches
# only the items that have none.
ITEMS_SQL = ("SELECT items.id, product_name, category, price_exact, currency, seller_or_store, "
             "research_key, results.status FROM items "
             "LEFT JOIN results ON results.item_id = items.id "
             "WHERE job_id = $1 ORDER BY position")


async def open_worker_pool(settings: ServiceSettings, simulator_url: str) -> WorkerPool:
    metrics = Metrics(settings)
    db = open_database(settings.database_url, metrics, settings.statement_timeout_s)
    cache = await open_cache(settings.redis_url, settings.cache_ttl_s, metrics)
    provider = open_client(simulator_url, metrics, settings.profile, settings.provider_attempts,
                           settings.has("new_client_per_call"), settings.seed)
    pool = build_pool(settings, db, provider, cache, metrics)
    # Callbacks of the jobs researched here go to the callbacks queue, not inline.
    pool.queue = CeleryQueue(build_celery(settings.celery), settings.celery)
    return pool


async def research_job(pool: WorkerPool, job_id: str) -> None:
    jobs = await fetch_rows(pool.db, "SELECT status, priority, callback_url FROM jobs "
                                     "WHERE id = $1", job_id)
    if not jobs or jobs[0][0] not in ACTIVE_STATUSES:
        return  # cancelled while it waited in the queue (or by a restart)
    _, priority, callback_url = jobs[0]
    names = ("id", "product_name", "category", "price_exact", "currency", "seller_or_store",
             "research_key")
    rows = await fetch_rows(pool.db, ITEMS_SQL, job_id)
    items = [dict(zip(names, row[:-1], strict=True)) for row in rows if row[-1] is None]
    done = Counter(row[-1] for row in rows if row[-1] is not None)
    await run_job(pool, job_id, priority, callback_url, items, done)


def register_tasks(app: Celery, settings: ServiceSettings, simulator_url: str) -> None:
    state: dict[str, Any] = {}

    def pool_and_loop() -> tuple[WorkerPool, asyncio.AbstractEventLoop]:
        if "loop" not in state:
            loop = uvloop.new_event_loop()
            state["loop"] = loop
            state["pool"] = loop.run_until_complete(open_worker_pool(settings, simulator_url))
        return state["pool"], state["loop"]

    @app.task(name=RESEARCH_TASK)  # type: ignore[untyped-decorator]
    def research(job_id: str) -> None:
        pool, loop = pool_and_loop()
        loop.run_until_complete(research_job(pool, job_id))

    @app.task(name=CALLBACK_TASK, ignore_result=False)  # type: ignore[untyped-decorator]
    def callback(callback_url: str, body: dict[str, Any]) -> bool:
        pool, loop = pool_and_loop()
        return loop.run_until_complete(send_callback(pool, callback_url, body))
