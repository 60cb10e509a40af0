"""What the service measures about itself: the JSON metrics that existing dashboards read (field
names are a contract) and the same facts in Prometheus text. One `Metrics` per app, built in
the lifespan; its Prometheus registry is private so two apps in one process never collide."""

import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from .settings import ServiceSettings

_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                      10.0, 30.0, 60.0)


@dataclass
class Metrics:
    settings: ServiceSettings
    started_at: float = field(default_factory=time.time)
    total_requests: int = 0
    request_time_s: float = 0.0
    total_queries: int = 0
    query_time_s: float = 0.0
    max_query_s: float = 0.0
    slow_queries_count: int = 0
    recent_slow_queries: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=5))
    researched_items: int = 0
    research_time_s: float = 0.0
    finished_jobs: int = 0
    job_time_s: float = 0.0
    provider_calls: int = 0
    provider_clients_created: int = 0
    provider_connections_opened: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    # Lookups and writes answered without Redis (failed, timed out, or skipped while it is
    # down); each failed lookup is a miss too.
    cache_errors: int = 0
    # Creates answered 503 because `max_queued_jobs` were queued; and the database's state.
    rejected_jobs: int = 0
    active_research: int = 0
    max_active_research: int = 0
    callbacks_sent: int = 0
    callbacks_failed: int = 0
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    # Labelled histogram children by (route, status): `labels()` builds and locks per call.
    request_series: dict[tuple[str, int], Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        reg = self.registry
        self.prom_requests = Histogram(
            "perfkit_reference_request_seconds", "API request latency", ["route", "status"],
            buckets=_LATENCY_BUCKETS_S, registry=reg)
        self.prom_jobs = Counter("perfkit_reference_jobs", "Finished jobs by outcome",
                                 ["status"], registry=reg)
        self.prom_items = Counter("perfkit_reference_items", "Researched items by outcome",
                                  ["status"], registry=reg)
        self.prom_provider = Histogram(
            "perfkit_reference_provider_seconds", "Simulated LLM call latency", ["outcome"],
            buckets=_LATENCY_BUCKETS_S, registry=reg)
        self.prom_cache = Counter("perfkit_reference_cache", "Result cache lookups", ["result"],
                                  registry=reg)
        self.prom_queries = Histogram("perfkit_reference_db_query_seconds", "Database query time",
                                      buckets=_LATENCY_BUCKETS_S, registry=reg)
        self.prom_clients = Counter("perfkit_reference_provider_clients_created",
                                    "HTTP clients created for the provider", registry=reg)
        self.prom_queue_depth = Gauge("perfkit_reference_queue_depth",
                                      "Research waiting for a worker", registry=reg)
        self.prom_rejected = Counter("perfkit_reference_rejected_jobs",
                                     "Creates answered 503: the queue was full", registry=reg)
        self.prom_workers = Gauge("perfkit_reference_workers", "Research worker processes",
                                  registry=reg)
        self.prom_active = Gauge("perfkit_reference_active_research",
                                 "Items being researched now", registry=reg,
                                 multiprocess_mode="livesum")
        info = Gauge("perfkit_reference_info", "Variants and latency profile of this instance",
                     ["variants", "latency_profile"], registry=reg)
        info.labels(",".join(self.settings.variants), self.settings.profile.name).set(1)
        # psutil's cpu_percent measures since its previous call; prime it so the first read of
        # /api/v1/metrics/system is a real figure, not psutil's documented 0.0.
        psutil.cpu_percent(interval=None)
        self.process = psutil.Process(os.getpid())
        self.process.cpu_percent(interval=None)


def record_request(metrics: Metrics, route: str, status: int, duration_s: float) -> None:
    metrics.total_requests += 1
    metrics.request_time_s += duration_s
    series = metrics.request_series.get((route, status))
    if series is None:
        series = metrics.prom_requests.labels(route, str(status))
        metrics.request_series[(route, status)] = series
    series.observe(duration_s)


def record_query(metrics: Metrics, statement: str, duration_s: float) -> None:
    metrics.total_queries += 1
    metrics.query_time_s += duration_s
    metrics.max_query_s = max(metrics.max_query_s, duration_s)
    metrics.prom_queries.observe(duration_s)
    if duration_s * 1000.0 >= metrics.settings.slow_query_ms:
        metrics.slow_queries_count += 1
        metrics.recent_slow_queries.append(
            {"query": " ".join(statement.split())[:200], "time": duration_s,
             "timestamp": time.time()})


def record_research(metrics: Metrics, status: str, duration_s: float) -> None:
    metrics.researched_items += 1
    metrics.research_time_s += duration_s
    metrics.prom_items.labels(status).inc()


def record_job(metrics: Metrics, status: str, duration_s: float) -> None:
    metrics.finished_jobs += 1
    metrics.job_time_s += duration_s
    metrics.prom_jobs.labels(status).inc()


def record_cache(metrics: Metrics, hit: bool) -> None:
    if hit:
        metrics.cache_hits += 1
    else:
        metrics.cache_misses += 1
    metrics.prom_cache.labels("hit" if hit else "miss").inc()


def record_rejected_job(metrics: Metrics) -> None:
    metrics.rejected_jobs += 1
    metrics.prom_rejected.inc()


def record_cache_error(metrics: Metrics) -> None:
    metrics.cache_errors += 1
    metrics.prom_cache.labels("error").inc()


def change_active_research(metrics: Metrics, delta: int) -> None:
    metrics.active_research += delta
    metrics.max_active_research = max(metrics.max_active_research, metrics.active_research)
    metrics.prom_active.set(metrics.active_research)


def _mean(total: float, count: int) -> float | None:
    # Nothing measured yet is missing (null), not a zero that a dashboard would plot.
    return total / count if count else None


def read_system_metrics(metrics: Metrics) -> dict[str, Any]:
    with metrics.process.oneshot():
        process = {
            "pid": metrics.process.pid,
            "cpu_percent": metrics.process.cpu_percent(interval=None),
            "rss_mb": metrics.process.memory_info().rss / 1e6,
            "threads": metrics.process.num_threads(),
        }
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory_percent": psutil.virtual_memory().percent,
        "disk_usage": psutil.disk_usage("/").percent,
        "network_io": psutil.net_io_counters()._asdict(),
        "uptime_seconds": time.time() - metrics.started_at,
        "process": process,
        "variants": list(metrics.settings.variants),
    }


def read_database_metrics(metrics: Metrics) -> dict[str, Any]:
    return {
        "total_queries": metrics.total_queries,
        "average_time": _mean(metrics.query_time_s, metrics.total_queries),
        "max_time": metrics.max_query_s if metrics.total_queries else None,
        "slow_queries_count": metrics.slow_queries_count,
        "recent_slow_queries": list(metrics.recent_slow_queries),
        "slow_query_threshold": metrics.settings.slow_query_ms / 1000.0,
        "variants": list(metrics.settings.variants),
    }


def read_application_metrics(metrics: Metrics) -> dict[str, Any]:
    return {
        "research_avg_time": _mean(metrics.research_time_s, metrics.researched_items),
        "api_avg_time": _mean(metrics.request_time_s, metrics.total_requests),
        "total_requests": metrics.total_requests,
        "job_avg_time": _mean(metrics.job_time_s, metrics.finished_jobs),
        "finished_jobs": metrics.finished_jobs,
        "researched_items": metrics.researched_items,
        "provider_calls": metrics.provider_calls,
        "provider_clients_created": metrics.provider_clients_created,
        "provider_connections_opened": metrics.provider_connections_opened,
        "cache_hits": metrics.cache_hits,
        "cache_misses": metrics.cache_misses,
        "cache_errors": metrics.cache_errors,
        "rejected_jobs": metrics.rejected_jobs,
        "instance_id": metrics.settings.instance_id,
        "active_research": metrics.active_research,
        "max_active_research": metrics.max_active_research,
        "concurrency_limit": None if metrics.settings.has("unbounded")
        else metrics.settings.concurrency,
        "callbacks_sent": metrics.callbacks_sent,
        "callbacks_failed": metrics.callbacks_failed,
        "variants": list(metrics.settings.variants),
        "latency_profile": metrics.settings.profile.name,
    }


# Counted where the research runs: under `--queue celery`, in the worker processes.
RESEARCH_FAMILIES = frozenset({
    "perfkit_reference_jobs", "perfkit_reference_items", "perfkit_reference_provider_seconds",
    "perfkit_reference_cache", "perfkit_reference_provider_clients_created",
    "perfkit_reference_active_research"})


@dataclass
class _Families:
    families: list[Any]

    def collect(self) -> list[Any]:
        return self.families


def read_worker_families(workers_dir: str) -> list[Any]:
    """The research families of the Celery research processes, summed over them."""
    return [family for family in MultiProcessCollector(None, workers_dir).collect()
            if family.name in RESEARCH_FAMILIES]


def read_worker_counts(workers_dir: str) -> dict[str, int]:
    """/api/v1/metrics/application's research counters from the Celery research processes."""
    values: dict[tuple[str, str], float] = {}
    for family in read_worker_families(workers_dir):
        for sample in family.samples:
            key = (sample.name, sample.labels.get("result", ""))
            values[key] = values.get(key, 0.0) + sample.value
    counts = {"finished_jobs": ("perfkit_reference_jobs_total", ""),
              "provider_calls": ("perfkit_reference_provider_seconds_count", ""),
              "provider_clients_created": ("perfkit_reference_provider_clients_created_total",
                                           ""),
              "cache_hits": ("perfkit_reference_cache_total", "hit"),
              "cache_misses": ("perfkit_reference_cache_total", "miss"),
              "active_research": ("perfkit_reference_active_research", "")}
    return {field: int(values.get(key, 0.0)) for field, key in counts.items()}


def render_prometheus(metrics: Metrics, workers_dir: str | None = None) -> bytes:
    """The exposition of this process's metrics. With `workers_dir` (the prometheus_client
    multiprocess directory the Celery research processes count into, `--queue celery`) the
    research families are theirs, summed over the processes, instead of this process's
    zeros."""
    if workers_dir is None:
        return generate_latest(metrics.registry)
    own = [family for family in metrics.registry.collect()
           if family.name not in RESEARCH_FAMILIES]
    return generate_latest(_Families(own + read_worker_families(workers_dir)))  # type: ignore[arg-type]
