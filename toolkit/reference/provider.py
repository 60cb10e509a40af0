"""The simulated web-search LLM: a small aiohttp server on loopback that answers like the real
provider (structured product data, transient 429/503/504 errors, lognormal latency), and the
client side that calls it over real HTTP with retries and backoff.

The client is pooled (one `aiohttp.ClientSession` for the app's lifetime) unless the
`new_client_per_call` variant asks for a fresh session, with its own TCP connection, per call."""

import asyncio
import hashlib
import logging
import math
import random
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from .metrics import Metrics
from .settings import LatencyProfile

log = logging.getLogger(__name__)

MODEL_NAME = "perfkit-simulated-llm"
_TRANSIENT_STATUSES = (429, 503, 504)
_STORES = ("coupang.com", "11st.co.kr", "gmarket.co.kr", "danawa.com", "amazon.com",
           "bestbuy.com", "rakuten.co.jp", "ebay.com")


@dataclass
class Simulator:
    runner: web.AppRunner
    url: str


@dataclass
class ProviderClient:
    url: str
    metrics: Metrics
    profile: LatencyProfile
    attempts: int
    new_client_per_call: bool
    session: aiohttp.ClientSession | None = None
    rng: random.Random = field(default_factory=random.Random)


def sample_latency_s(profile: LatencyProfile, rng: random.Random) -> float:
    latency_ms = profile.median_ms * math.exp(rng.gauss(0.0, profile.sigma))
    return min(latency_ms, profile.max_ms) / 1000.0


def build_answer(item: dict[str, Any], insufficient: bool, rng: random.Random) -> dict[str, Any]:
    """Structured product data in the shape the real provider returns. Deterministic per item
    (seeded by its name) so a cached answer and a fresh one agree."""
    name = str(item.get("product_name", ""))
    item_rng = random.Random(hashlib.sha256(name.encode("utf-8", "replace")).digest())
    brand = (name.split() or ["Generic"])[0][:40]
    official = f"{''.join(ch for ch in brand.lower() if ch.isalnum()) or 'brand'}.com"
    stores = item_rng.sample(_STORES, 4)
    sources = [{"url": f"https://www.{official}/products/{item_rng.randrange(10**6)}",
                "domain": official, "title": f"{name} - official page", "official": True}]
    sources += [{"url": f"https://www.{store}/item/{item_rng.randrange(10**8)}", "domain": store,
                 "title": f"{name} at {store}", "official": False} for store in stores]
    reviews: dict[str, Any] = {
        "rating": round(item_rng.uniform(3.0, 5.0), 1),
        "count": item_rng.randrange(5, 20_000),
        "summary": f"Buyers of {name} mostly praise its value for money.",
    }
    if insufficient:
        # What a thin answer looks like: few sources, none official, sometimes no reviews.
        sources = sources[1:1 + rng.randrange(0, 3)]
        if rng.random() < 0.5:
            reviews = {"rating": None, "count": None, "summary": ""}
    return {
        "model": MODEL_NAME,
        "simulated": True,
        "product": {
            "name": name,
            "brand": brand,
            "category": item.get("category"),
            "price": {"amount": item.get("price_exact"), "currency": item.get("currency")},
            "specs": {"model_year": 2020 + item_rng.randrange(7),
                      "weight_kg": round(item_rng.uniform(0.1, 30.0), 2),
                      "warranty_months": item_rng.choice((6, 12, 24))},
        },
        "reviews": reviews,
        "sources": sources,
    }


async def start_simulator(profile: LatencyProfile, metrics: Metrics,
                          seed: int | None) -> Simulator:
    rng = random.Random(seed)
    seen_connections: weakref.WeakSet[Any] = weakref.WeakSet()

    async def research(request: web.Request) -> web.Response:
        # Counted on the server side, so the pooled client's connection reuse is a fact the
        # simulator observed, not something the client claims.
        transport = request.transport
        if transport is not None and transport not in seen_connections:
            seen_connections.add(transport)
            metrics.provider_connections_opened += 1
            await asyncio.sleep(profile.connect_ms / 1000.0)
        item = await request.json()
        await asyncio.sleep(sample_latency_s(profile, rng))
        if rng.random() < profile.error_rate:
            status = rng.choice(_TRANSIENT_STATUSES)
            return web.json_response({"error": {"code": status, "simulated": True}}, status=status)
        return web.json_response(build_answer(item, rng.random() < profile.insufficient_rate, rng))

    app = web.Application()
    app.router.add_post("/v1/research", research)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return Simulator(runner=runner, url=f"http://127.0.0.1:{port}/v1/research")


async def stop_simulator(simulator: Simulator) -> None:
    await simulator.runner.cleanup()


def open_client(url: str, metrics: Metrics, profile: LatencyProfile, attempts: int,
                new_client_per_call: bool, seed: int | None) -> ProviderClient:
    client = ProviderClient(url=url, metrics=metrics, profile=profile,
                            attempts=attempts, new_client_per_call=new_client_per_call,
                            rng=random.Random(seed))
    if not new_client_per_call:
        client.session = _new_session(client)
    return client


async def close_client(client: ProviderClient) -> None:
    if client.session is not None:
        await client.session.close()


def _new_session(client: ProviderClient) -> aiohttp.ClientSession:
    client.metrics.provider_clients_created += 1
    client.metrics.prom_clients.inc()
    timeout = aiohttp.ClientTimeout(total=client.profile.max_ms / 1000.0 + 10.0)
    return aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=100))


async def _post_once(client: ProviderClient, session: aiohttp.ClientSession,
                     item: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with session.post(client.url, json=item) as response:
        return response.status, await response.json()


async def ask_provider(client: ProviderClient, item: dict[str, Any]) -> tuple[dict[str, Any] | None,
                                                                             str | None, int]:
    """Research one item: (answer, error, attempts). Transient failures (429, 5xx, timeouts,
    dropped connections) are retried with exponential backoff and jitter."""
    error = "no attempt made"
    for attempt in range(1, client.attempts + 1):
        client.metrics.provider_calls += 1
        started_at = time.perf_counter()
        outcome = "error"
        try:
            if client.session is not None:
                status, body = await _post_once(client, client.session, item)
            else:
                async with _new_session(client) as session:
                    status, body = await _post_once(client, session, item)
            if status == 200:
                outcome = "ok"
                return body, None, attempt
            outcome = str(status)
            error = f"provider returned HTTP {status}"
            if status not in _TRANSIENT_STATUSES:
                return None, error, attempt
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome = "exception"
            error = f"provider call failed: {type(exc).__name__}: {exc}"[:500]
        finally:
            client.metrics.prom_provider.labels(outcome).observe(time.perf_counter() - started_at)
        if attempt < client.attempts:
            backoff_ms = client.profile.backoff_ms * 2 ** (attempt - 1)
            await asyncio.sleep(backoff_ms * client.rng.uniform(0.5, 1.5) / 1000.0)
    return None, error, client.attempts
