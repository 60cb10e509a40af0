"""The research-result cache, keyed by normalised item: in-process with a TTL, or Redis."""

import json
import logging
import time
import unicodedata
from collections import OrderedDict
from typing import Any, Protocol

from ..errors import ConfigError

log = logging.getLogger(__name__)

REDIS_PREFIX = "perfkit:research:"


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
    def __init__(self, url: str, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        try:
            import redis.asyncio as aioredis
        except ImportError:
            raise ConfigError("--redis-url needs the redis client: "
                              "pip install 'perfkit[redis]'") from None
        self.client = aioredis.Redis.from_url(url)

    async def get_result(self, key: str) -> dict[str, Any] | None:
        raw = await self.client.get(REDIS_PREFIX + key)
        return None if raw is None else dict(json.loads(raw))

    async def set_result(self, key: str, value: dict[str, Any]) -> None:
        await self.client.set(REDIS_PREFIX + key, json.dumps(value), ex=max(1, int(self.ttl_s)))

    async def close(self) -> None:
        await self.client.aclose()


async def open_cache(redis_url: str | None, ttl_s: float) -> Cache:
    if redis_url is None:
        return MemoryCache(ttl_s)
    cache = RedisCache(redis_url, ttl_s)
    try:
        await cache.client.ping()
    except Exception as exc:  # any connection failure is the user's environment, said once
        await cache.close()
        raise ConfigError(f"cannot reach Redis at {redis_url}: {exc}") from exc
    return cache
