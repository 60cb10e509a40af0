"""Typed settings: the options of a command as the objects a run is driven by. Built once
(by the CLI, `perfkit.load` or a test, from options.py's table) and passed down; no import-time
state, and nothing here reads the environment.
"""

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .kpi_file import KpiTarget, load_kpi_targets
from .units import parse_duration

DEFAULT_REQUEST_TIMEOUT_S = 60.0
DEFAULT_EXPECT_WORKERS_TIMEOUT_S = 60.0
DEFAULT_MASTER_PORT = 5557
# As k6's gracefulStop (Locust's own default is 0: users killed mid-request, their requests
# lost): requests in flight when the duration ends are waited for this long.
DEFAULT_STOP_TIMEOUT_S = 30.0
# How an open load's arrivals are spread over time (run/openloop.py).
ARRIVALS = ("even", "poisson")


@dataclass(frozen=True)
class ServiceOptions:
    """The bundled service's architecture when perfkit starts it: where research runs (the
    in-process pool, or `celery_workers` Celery processes on `broker`) and whether it answers
    in the original backend's envelope."""

    queue: str = "inprocess"
    broker: str | None = None
    celery_workers: int = 2
    envelope: bool = False


@dataclass(frozen=True)
class Observability:
    """What perfkit reads of the target beyond its requests, and where it shows its own
    numbers live (docs/observability.md). `metrics_auth`: the Authorization header's value
    for the target's /metrics ("Bearer TOKEN" or "Basic BASE64"), built by
    `parse_metrics_auth`."""

    metrics_path: str = "/metrics"
    metrics_auth: str | None = None
    db_url: str | None = None
    redis_url: str | None = None
    prometheus_port: int | None = None
    otlp_endpoint: str | None = None


def parse_metrics_auth(value: str | None) -> str | None:
    """`bearer:TOKEN` or `basic:USER:PASSWORD` as an Authorization header value."""
    if not value:
        return None
    kind, _, secret = value.partition(":")
    if kind.lower() == "bearer" and secret:
        return f"Bearer {secret}"
    if kind.lower() == "basic" and ":" in secret:
        import base64

        return "Basic " + base64.b64encode(secret.encode()).decode("ascii")
    raise ConfigError("--metrics-auth: write bearer:TOKEN or basic:USER:PASSWORD")


def require_extra(feature: str, extra: str, module: str) -> Any:
    """`module` imported, or one line naming the extra of pyproject.toml that brings it:
    `feature` (an option as the user wrote it) is refused when the settings are built, before
    any load starts, never a traceback or a collector failing every sample mid-run."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        # psycopg's own message runs over several lines (each implementation it tried).
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{feature} needs perfkit's {extra} extra ({reason}): "
                          f"pip install 'perfkit[{extra}]'") from None


def check_extras(observe: Observability) -> None:
    """The optional modules the options in `observe` need, checked once with the settings."""
    if observe.db_url:
        waiting = require_extra("--db-url", "postgres", "psycopg.waiting")
        # The collector waits in psycopg's C loop (collectors/postgres.py): the pure-Python
        # psycopg alone would pass the import and fail every sample.
        if getattr(waiting, "wait_c", None) is None:
            raise ConfigError("--db-url needs psycopg's C implementation (psycopg[binary]): "
                              "pip install 'perfkit[postgres]'")
    if observe.otlp_endpoint:
        for module in ("opentelemetry.sdk.metrics",
                       "opentelemetry.exporter.otlp.proto.http.metric_exporter"):
            require_extra("--otlp-endpoint", "otlp", module)


@dataclass(frozen=True)
class LoadSettings:
    """One run of load, stress, endurance or regression, as the user asked for it.

    `kpi_targets`: the KPI file's targets, read once when the settings are built (None: read
    `kpi_file`, or the defaults), so a bad KPI file fails before any load starts.
    """

    command: str = "load"
    target: str | None = None
    scenario: str = "research"
    users: int = 10
    spawn_rate: float = 10.0
    duration_s: float = 60.0
    rate: float | None = None
    kpi_file: Path | None = None
    out: Path | None = None
    workers: int = 0
    target_pid: int | None = None
    variants: tuple[str, ...] = ()
    latency_profile: str = "guide"
    extra_latency: tuple[str, ...] = ()  # the bundled service's --extra-latency, as written
    warmup_s: float | None = None
    profile: bool = False
    alert_webhook: str | None = None
    abort_on_fail: bool = False
    reports_dir: Path = Path("reports")
    argv: tuple[str, ...] = field(default_factory=tuple)
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    service: ServiceOptions = field(default_factory=ServiceOptions)
    kpi_targets: tuple[KpiTarget, ...] | None = None
    observe: Observability = field(default_factory=Observability)
    # Locust semantics (docs: README "Locust compatibility"): task tags, and the arguments
    # perfkit does not know, for the locustfile's own init_command_line_parser options.
    tags: tuple[str, ...] = ()
    exclude_tags: tuple[str, ...] = ()
    locustfile_args: tuple[str, ...] = ()
    # A master open to other machines (docs/distributed.md); None: loopback, local workers only.
    master_bind_host: str | None = None
    master_bind_port: int | None = None
    expect_workers: int = 0
    expect_workers_timeout_s: float = DEFAULT_EXPECT_WORKERS_TIMEOUT_S
    # Locust's --stop-timeout: how long a stopping user may finish the task in hand.
    stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S
    arrivals: str = "even"  # an open load's arrivals: evenly spread, or Poisson
    # A simultaneous A/B trial (perfkit ab --simultaneous): (label, base URL) of each arm. Every
    # user class then runs once per arm against its URL, and each request is recorded under
    # "[label] name"; `users` and `rate` are the whole run's, shared evenly by the arms.
    arms: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.kpi_targets is None:
            object.__setattr__(self, "kpi_targets", tuple(load_kpi_targets(self.kpi_file)))

    def serve_args(self) -> list[str]:
        """`perfkit serve` options of the bundled service for these settings."""
        args = ["--fast"] if self.latency_profile == "fast" else []
        for variant in self.variants:
            args += ["--variant", variant]
        service = self.service
        if service.queue != "inprocess":
            args += ["--queue", service.queue, "--celery-workers", str(service.celery_workers)]
            args += ["--broker", service.broker] if service.broker else []
        for extra in self.extra_latency:
            args += ["--extra-latency", extra]
        return args + (["--envelope"] if service.envelope else [])

    @property
    def targets(self) -> list[KpiTarget]:
        return list(self.kpi_targets or ())

    @property
    def effective_warmup_s(self) -> float:
        """Default warm-up: a tenth of the run, at most 30 s; shown in the report, not judged."""
        if self.warmup_s is not None:
            return self.warmup_s
        return min(30.0, self.duration_s / 10.0)


@dataclass(frozen=True)
class StressSettings:
    """A stress ramp. A closed load ramps users from `start_users` by `step_users` up to
    `load.users`, the peak; an open load ramps arrivals from `start_rate` by `step_rate` up to
    `load.rate`, the peak, with each step's users (the concurrency cap) sized from the rate
    and the latency seen, at most `load.users` when `users_given` (analysis/stress.py)."""

    load: LoadSettings
    start_users: int | None = None   # closed load; default: the step
    step_users: int | None = None    # closed load; default: reaches --users in max_steps
    start_rate: float | None = None  # open load; default: the step
    step_rate: float | None = None   # open load; default: reaches --rate in max_steps
    step_duration_s: float = 30.0
    max_steps: int = 10
    max_error_rate_percent: float = 1.0
    users_given: bool = True  # --users was given: with --rate it caps each step's users


DEFAULT_LEAK_THRESHOLD_MB_H = 10.0


@dataclass(frozen=True)
class EnduranceSettings:
    load: LoadSettings
    leak_threshold_mb_h: float = DEFAULT_LEAK_THRESHOLD_MB_H


def build_load_settings(command: str = "load", *, target: str | None = None,
                        scenario: str = "research", users: int = 10, spawn_rate: float = 10.0,
                        duration: float | str = "60s", rate: float | None = None,
                        kpi: Path | str | None = None, out: Path | str | None = None,
                        workers: int = 0, target_pid: int | None = None,
                        variants: tuple[str, ...] | list[str] = (), fast: bool = False,
                        warmup: float | str | None = None, profile: bool = False,
                        alert_webhook: str | None = None, abort_on_fail: bool = False,
                        reports_dir: Path | str = "reports",
                        request_timeout: float | str = DEFAULT_REQUEST_TIMEOUT_S,
                        argv: tuple[str, ...] = (),
                        observe: Observability | None = None,
                        service: ServiceOptions | None = None,
                        tags: tuple[str, ...] | list[str] = (),
                        exclude_tags: tuple[str, ...] | list[str] = (),
                        locustfile_args: tuple[str, ...] | list[str] = (),
                        master_bind_host: str | None = None,
                        master_bind_port: int | None = None, expect_workers: int = 0,
                        expect_workers_timeout: float | str = DEFAULT_EXPECT_WORKERS_TIMEOUT_S,
                        stop_timeout: float | str = DEFAULT_STOP_TIMEOUT_S,
                        extra_latency: tuple[str, ...] | list[str] = (),
                        arrivals: str = "even") -> LoadSettings:
    """LoadSettings from the options of `perfkit load` (durations as "30s" or seconds)."""
    check_extras(observe or Observability())
    if arrivals not in ARRIVALS:
        raise ConfigError(f"arrivals {arrivals!r}: choose {' or '.join(ARRIVALS)}")
    return LoadSettings(
        command=command, target=target, scenario=scenario, users=users, spawn_rate=spawn_rate,
        duration_s=_seconds(duration), rate=rate,
        kpi_file=None if kpi is None else Path(kpi), out=None if out is None else Path(out),
        workers=workers, target_pid=target_pid, variants=tuple(variants),
        latency_profile="fast" if fast else "guide",
        warmup_s=None if warmup is None else _seconds(warmup), profile=profile,
        alert_webhook=alert_webhook, abort_on_fail=abort_on_fail, reports_dir=Path(reports_dir),
        request_timeout_s=_seconds(request_timeout), argv=tuple(argv),
        observe=observe or Observability(), service=service or ServiceOptions(),
        tags=_split_tags(tags), exclude_tags=_split_tags(exclude_tags),
        locustfile_args=tuple(locustfile_args), master_bind_host=master_bind_host,
        master_bind_port=master_bind_port, expect_workers=expect_workers,
        expect_workers_timeout_s=_seconds(expect_workers_timeout),
        stop_timeout_s=_seconds(stop_timeout), extra_latency=tuple(extra_latency),
        arrivals=arrivals)


def _split_tags(tags: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """`--tags a b`, `--tags a,b` and `--tags a --tags b` all mean (a, b)."""
    return tuple(t for text in tags for t in str(text).replace(",", " ").split())


def _seconds(value: float | str) -> float:
    return float(value) if isinstance(value, int | float) else parse_duration(value)
