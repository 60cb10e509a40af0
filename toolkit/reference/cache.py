"""The research-result cache, keyed by normalised item: in-process with a TTL, or Redis."""

import asyncio
import json
import logging
import math
import time
import unicodedata
from collections import OrderedDict
from typing import Any, Protocol

from ..errors import ConfigError
from .metrics import Metrics, record_cache_error

log = logging.getLogger(__name__)

REDIS_PREFIX = "perfkit:research:"
LOG_INTERVAL_S = 10.0


def normalise_item_key(product_name: str, price_exact: float, currency: str) -> str:
    """Case, width and whitespace differences name the same product ('ＡＢＣ  tv' == 'abc TV');
    the price is part of the key because the same name at another price is another offer."""
    name = " ".join(unicodedata.normalize("NFKC", product_name).casefold().split())
    return f"{name}|{price_exact:.2f}|{currency}"


class Cache(Protocol):
    async def get_result(self, key: str) -> dict[str, Any] | None: ...

    async def set_result(self, key: str, value: dict[str, Any]) -> None: ...

    async def close(self) -> None: ...


class MemoryCache:
    """A TTL cache bounded in entries, so an endurance run cannot grow it without limit."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.entries: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()

    async def get_result(self, key: str) -> dict[str, Any] | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if expires_at < time.monotonic():
            del self.entries[key]
            return None
        return value

    async def set_result(self, key: str, value: dict[str, Any]) -> None:
        self.entries[key] = (time.monotonic() + self.ttl_s, value)
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)

    async def close(self) -> None:
        self.entries.clear()


class RedisCache:
    """Redis as a cache, never as a dependency: a lookup or write that fails or takes longer
    than `timeout_s` is a miss (logged, counted in `cache_errors`), and after a failure Redis
    is left alone for `retry_after_s`, so a paused or dead Redis costs each item nothing
    instead of a timeout."""

    def __init__(self, url: str, ttl_s: float, metrics: Metrics | None = None,
                 timeout_s: float = 0.5, retry_after_s: float = 5.0) -> None:
        self.ttl_s = ttl_s
        try:
            import redis.asyncio as aioredis
            from redis.exceptions import RedisError
        except ImportError:
            # perfkit depends on celery[redis], which brings it: only a broken install lacks it.
            raise ConfigError("--redis-url needs the redis client, which perfkit's install "
                              "brings (celery[redis]): pip install 'redis>=5'") from None
        # Errors that make a lookup a miss: the client's own, the socket's, a timeout.
        self.failures: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.client = aioredis.Redis.from_url(url, socket_timeout=timeout_s,
                                              socket_connect_timeout=timeout_s)
        self.down_until = 0.0
        self.logged_at = -math.inf
        self.unlogged_failures = 0

    async def get_result(self, key: str) -> dict[str, Any] | None:
        if time.monotonic() < self.down_until:
            self.count_failure(None)
            return None
        try:
            raw = await asyncio.wait_for(self.client.get(REDIS_PREFIX + key), self.timeout_s)
        except self.failures as exc:
            self.count_failure(exc)
            return None
        return None if raw is None else dict(json.loads(raw))

    async def set_result(self, key: str, value: dict[str, Any]) -> None:
        if time.monotonic() < self.down_until:
            return
        try:
            await asyncio.wait_for(self.client.set(REDIS_PREFIX + key, json.dumps(value),
                                                   ex=max(1, int(self.ttl_s))), self.timeout_s)
        except self.failures as exc:
            self.count_failure(exc)

    def count_failure(self, exc: BaseException | None) -> None:
        if self.metrics is not None:
            record_cache_error(self.metrics)
        if exc is None:
            return
        self.down_until = time.monotonic() + self.retry_after_s
        self.unlogged_failures += 1
        # Once per interval, not per item: a Redis outage under load would otherwise be
        # thousands of identical lines.
        if time.monotonic() - self.logged_at >= LOG_INTERVAL_S:
            log.warning("Redis cache unavailable (%d failures since the last report; lookups "
                        "are misses for %.0f s): %s: %s", self.unlogged_failures,
                        self.retry_after_s, type(exc).__name__, exc)
            self.logged_at = time.monotonic()
            self.unlogged_failures = 0

    async def close(self) -> None:
        await self.client.aclose()


async def open_cache(redis_url: str | None, ttl_s: float,
                     metrics: Metrics | None = None) -> Cache:
    if redis_url is None:
        return MemoryCache(ttl_s)
    cache = RedisCache(redis_url, ttl_s, metrics)
    try:
        await cache.client.ping()
    except Exception as exc:  # any connection failure is the user's environment, said once
        await cache.close()
        raise ConfigError(f"cannot reach Redis at {redis_url}: {exc}") from exc
    return cache
