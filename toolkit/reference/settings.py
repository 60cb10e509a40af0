"""Typed settings of one reference-service instance, built once by `server.serve_forever` (or a
test) and handed to the app; nothing here reads the environment."""

import re
import socket
import uuid
from dataclasses import dataclass, field

from ..errors import ConfigError

VARIANTS = ("n_plus_one", "no_index", "new_client_per_call", "no_cache", "unbounded",
            "high_prefetch")
QUEUES = ("inprocess", "celery")
# The guide's mistake: a worker that reserves many long tasks while its peers sit idle.
HIGH_PREFETCH_MULTIPLIER = 16

# Endpoint names accepted by --extra-latency, by (method, route template).
ENDPOINTS = {
    ("GET", "/api/v1/health"): "health",
    ("POST", "/api/v1/research/products"): "create",
    ("GET", "/api/v1/research/products/{job_id}"): "results",
    ("GET", "/api/v1/research/products/{job_id}/status"): "status",
    ("DELETE", "/api/v1/research/products/{job_id}"): "cancel",
}

# Sized for the 2-core machine this ships for: at the guide's latencies five slots research
# about 0.6 items/s, so 200 ten-item jobs are already an hour of backlog; a job queued behind
# them would miss the 60 s completion KPI by far. Each queued job holds its task and items
# (about 20 kB), so the cap also bounds memory at a few MB.
DEFAULT_MAX_QUEUED_JOBS = 200
# The largest valid create: 10 items of 500 + 100 + 200 characters and 10,000 characters of
# metadata, each character up to 6 bytes as a JSON escape, is about 650 kB.
DEFAULT_MAX_BODY_BYTES = 1_000_000
DEFAULT_STATEMENT_TIMEOUT_S = 10.0

_EXTRA = re.compile(r"^\s*(\w+)\s*[=:]\s*(\d+(?:\.\d+)?)\s*(ms|%)?\s*$")


@dataclass(frozen=True)
class LatencyProfile:
    """Simulated LLM behaviour per provider call: lognormal latency, transient errors, thin
    answers. `backoff_ms` is the first retry delay (doubled per retry); `shutdown_grace_s` is how
    long running jobs may go on after SIGINT/SIGTERM before they are marked cancelled."""

    name: str
    median_ms: float
    sigma: float
    max_ms: float
    error_rate: float
    insufficient_rate: float
    backoff_ms: float
    shutdown_grace_s: float
    # What a new connection to the real provider costs before its first answer (TCP and TLS
    # over the internet); loopback would hide it, and with it what a pooled client saves.
    connect_ms: float = 0.0


# The guide's figure: a 10-product batch on 5 slots takes 15-30 s on average. Two waves of five
# lognormal calls with median 8 s and sigma 0.3 give a mean of about 21 s (5th-95th percentile
# 17-26 s); the 2 % transient errors retried with a 1 s backoff add little.
GUIDE = LatencyProfile("guide", median_ms=8000.0, sigma=0.3, max_ms=20000.0,
                       error_rate=0.02, insufficient_rate=0.05, backoff_ms=1000.0,
                       shutdown_grace_s=10.0, connect_ms=150.0)
FAST = LatencyProfile("fast", median_ms=30.0, sigma=0.3, max_ms=200.0,
                      error_rate=0.0, insufficient_rate=0.0, backoff_ms=10.0,
                      shutdown_grace_s=2.0, connect_ms=15.0)


@dataclass(frozen=True)
class ExtraLatency:
    """A known slowdown injected into one endpoint: fixed milliseconds, or a fraction of the
    endpoint's own handling time (`results=20%`)."""

    endpoint: str
    fixed_ms: float = 0.0
    fraction: float = 0.0


@dataclass(frozen=True)
class CeleryTuning:
    """The guide's worker settings. One reserved task per process (`prefetch_multiplier` 1)
    and acknowledgement after the task (`acks_late`), so a long job never waits behind another
    in a busy worker and a crashed worker's job is delivered again; processes recycled after
    `max_tasks_per_child` tasks, so a leak cannot grow without bound; research and callbacks on
    separate queues, so slow callback receivers never hold up research."""

    broker_url: str = ""
    workers: int = 2
    prefetch_multiplier: int = 1
    acks_late: bool = True
    max_tasks_per_child: int = 100
    result_expires_s: float = 3600.0
    queue_prefix: str = "perfkit"

    @property
    def research_queue(self) -> str:
        return f"{self.queue_prefix}.research"

    @property
    def callbacks_queue(self) -> str:
        return f"{self.queue_prefix}.callbacks"


@dataclass(frozen=True)
class ServiceSettings:
    host: str = "127.0.0.1"
    port: int = 0
    database_url: str = ""
    redis_url: str | None = None
    variants: tuple[str, ...] = ()
    profile: LatencyProfile = GUIDE
    concurrency: int = 5
    cache_ttl_s: float = 3600.0
    slow_query_ms: float = 100.0
    provider_attempts: int = 3
    extra_latency: tuple[ExtraLatency, ...] = field(default_factory=tuple)
    seed: int | None = None
    queue: str = "inprocess"
    celery: CeleryTuning = field(default_factory=CeleryTuning)
    envelope: bool = False
    # Jobs not yet finished that this instance accepts before it answers 503: past it, a new
    # job would only wait behind work it cannot reach in time, and each queued job holds
    # memory (its task and items) until it runs.
    max_queued_jobs: int = DEFAULT_MAX_QUEUED_JOBS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # PostgreSQL's statement_timeout (and, a little later, the driver's own): a database that
    # hangs rather than refuses ends a request in a 503 within it instead of holding it.
    statement_timeout_s: float = DEFAULT_STATEMENT_TIMEOUT_S
    # Whose jobs these are in a database several instances share: a restart cancels only its
    # own. Stable across restarts when given (or when the port is fixed), else random.
    instance_id: str = ""

    def has(self, variant: str) -> bool:
        return variant in self.variants


def parse_extra_latency(text: str) -> ExtraLatency:
    """'results=20ms', 'results=20' (ms) or 'results:20%'."""
    match = _EXTRA.match(text)
    names = sorted(set(ENDPOINTS.values()))
    if not match or match.group(1) not in names:
        raise ConfigError(f"bad --extra-latency {text!r}: use ENDPOINT=MS or ENDPOINT=PCT% "
                          f"with ENDPOINT one of {', '.join(names)}")
    value = float(match.group(2))
    if match.group(3) == "%":
        return ExtraLatency(match.group(1), fraction=value / 100.0)
    return ExtraLatency(match.group(1), fixed_ms=value)


def build_service_settings(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    database_url: str = "",
    redis_url: str | None = None,
    variants: tuple[str, ...] = (),
    fast: bool = False,
    item_latency_ms: float | None = None,
    latency_sigma: float | None = None,
    error_rate: float | None = None,
    insufficient_rate: float | None = None,
    concurrency: int = 5,
    extra_latency: tuple[str, ...] = (),
    seed: int | None = None,
    slow_query_ms: float = 100.0,
    queue: str = "inprocess",
    broker: str | None = None,
    celery_workers: int = 2,
    prefetch_multiplier: int | None = None,
    max_tasks_per_child: int = 100,
    result_expires_s: float = 3600.0,
    queue_prefix: str = "perfkit",
    envelope: bool = False,
    max_queued_jobs: int = DEFAULT_MAX_QUEUED_JOBS,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    statement_timeout_s: float = DEFAULT_STATEMENT_TIMEOUT_S,
    instance_id: str | None = None,
) -> ServiceSettings:
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ConfigError(f"unknown variant {', '.join(unknown)}: "
                          f"choose from {', '.join(VARIANTS)}")
    for name, rate in (("error rate", error_rate), ("insufficient rate", insufficient_rate)):
        if rate is not None and not 0.0 <= rate <= 1.0:
            raise ConfigError(f"{name} must be between 0 and 1, got {rate}")
    if item_latency_ms is not None and item_latency_ms < 0:
        raise ConfigError(f"item latency must be >= 0 ms, got {item_latency_ms}")
    if latency_sigma is not None and latency_sigma < 0:
        raise ConfigError(f"latency sigma must be >= 0, got {latency_sigma}")
    if concurrency < 1:
        raise ConfigError(f"concurrency must be >= 1, got {concurrency}")
    if max_queued_jobs < 1:
        raise ConfigError(f"max queued jobs must be >= 1, got {max_queued_jobs}")
    if max_body_bytes < 1024:
        raise ConfigError(f"max body must be >= 1024 bytes, got {max_body_bytes}")
    if statement_timeout_s < 0:
        raise ConfigError(f"statement timeout must be >= 0 s, got {statement_timeout_s}")
    if instance_id is not None and not re.fullmatch(r"[\w.:\-]{1,100}", instance_id):
        raise ConfigError(f"bad instance id {instance_id!r}: 1-100 letters, digits, . : _ -")
    if not instance_id:
        instance_id = (f"{socket.gethostname()[:60]}:{port}" if port
                       else f"{socket.gethostname()[:60]}:{uuid.uuid4().hex[:12]}")
    celery = build_celery_tuning(queue, broker, variants, celery_workers, prefetch_multiplier,
                                 max_tasks_per_child, result_expires_s, queue_prefix)
    base = FAST if fast else GUIDE
    profile = LatencyProfile(
        name=base.name,
        median_ms=base.median_ms if item_latency_ms is None else item_latency_ms,
        sigma=base.sigma if latency_sigma is None else latency_sigma,
        max_ms=base.max_ms if item_latency_ms is None else max(base.max_ms, 4 * item_latency_ms),
        error_rate=base.error_rate if error_rate is None else error_rate,
        insufficient_rate=base.insufficient_rate if insufficient_rate is None
        else insufficient_rate,
        backoff_ms=base.backoff_ms,
        shutdown_grace_s=base.shutdown_grace_s,
        connect_ms=base.connect_ms,
    )
    return ServiceSettings(
        host=host,
        port=port,
        database_url=database_url,
        redis_url=redis_url,
        variants=tuple(dict.fromkeys(variants)),
        profile=profile,
        concurrency=concurrency,
        extra_latency=tuple(parse_extra_latency(text) for text in extra_latency),
        seed=seed,
        slow_query_ms=slow_query_ms,
        queue=queue,
        celery=celery,
        envelope=envelope,
        max_queued_jobs=max_queued_jobs,
        max_body_bytes=max_body_bytes,
        statement_timeout_s=statement_timeout_s,
        instance_id=instance_id,
    )


def build_celery_tuning(queue: str, broker: str | None, variants: tuple[str, ...], workers: int,
                        prefetch_multiplier: int | None, max_tasks_per_child: int,
                        result_expires_s: float, queue_prefix: str) -> CeleryTuning:
    if queue not in QUEUES:
        raise ConfigError(f"unknown --queue {queue!r}: choose from {', '.join(QUEUES)}")
    if queue != "celery":
        if broker or "high_prefetch" in variants:
            raise ConfigError("--broker and the high_prefetch variant need --queue celery")
        return CeleryTuning()
    if not broker or not broker.startswith(("redis://", "amqp://", "pyamqp://")):
        raise ConfigError(f"--queue celery needs --broker redis://HOST:6379/N or "
                          f"amqp://USER:PASSWORD@HOST:5672//, got {broker!r}")
    for name, value in (("celery workers", workers), ("max tasks per child",
                                                      max_tasks_per_child),
                        ("prefetch multiplier", prefetch_multiplier or 1)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    if result_expires_s <= 0:
        raise ConfigError(f"result expiry must be > 0 s, got {result_expires_s}")
    if not re.fullmatch(r"[\w.\-]+", queue_prefix):
        raise ConfigError(f"bad queue prefix {queue_prefix!r}: letters, digits, . _ - only")
    if prefetch_multiplier is None:
        prefetch_multiplier = HIGH_PREFETCH_MULTIPLIER if "high_prefetch" in variants else 1
    return CeleryTuning(broker_url=broker, workers=workers,
                        prefetch_multiplier=prefetch_multiplier,
                        max_tasks_per_child=max_tasks_per_child,
                        result_expires_s=result_expires_s, queue_prefix=queue_prefix)
