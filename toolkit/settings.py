"""Typed settings: the options of a command as the objects a run is driven by. Built once
(by the CLI or `perfkit.load`, from the values options.py's table gives, or by a test) and
passed down; nothing here reads the environment. The defaults are the table's.
"""

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .faults import Fault
from .kpi_file import KpiTarget, load_kpi_targets
from .options import default_value

# Locust's master port, where a master opened to other machines listens by default.
DEFAULT_MASTER_PORT = 5557


def _default(name: str, command: str = "load") -> Any:
    return default_value(command, name)


DEFAULT_REQUEST_TIMEOUT_S: float = _default("request_timeout")
# As k6's gracefulStop (Locust's own default is 0: users killed mid-request, their requests
# lost): requests in flight when the duration ends are waited for this long.
DEFAULT_STOP_TIMEOUT_S: float = _default("stop_timeout")


@dataclass(frozen=True)
class ServiceOptions:
    """The bundled service's architecture when perfkit starts it: where research runs (the
    in-process pool, or `celery_workers` Celery processes on `broker`) and whether it answers
    in the original backend's envelope."""

    queue: str = "inprocess"
    broker: str | None = None
    celery_workers: int = 2
    envelope: bool = False
    database_url: str | None = None
    queue_prefix: str = "perfkit"


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
    # --web: the live page (run/web.py); web_host None is loopback, anything else was asked for.
    web: bool = False
    web_host: str | None = None
    web_port: int = 8089


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
class LocustOutputs:
    """Locust's own outputs of a run (--csv, --csv-full-history, --html, --json,
    --json-file), written by Locust's writers where Locust writes them, beside the run
    directory; None or False: not asked for."""

    csv_prefix: str | None = None
    csv_full_history: bool = False
    html_file: str | None = None
    json_stdout: bool = False
    json_file: str | None = None


@dataclass(frozen=True)
class LoadSettings:
    """One run of load, stress, endurance or regression, as the user asked for it.

    `kpi_targets`: the KPI file's targets, read once when the settings are built (None: read
    `kpi_file`, or the defaults), so a bad KPI file fails before any load starts.
    `duration_given`: False when the duration is the default, which a locustfile's
    LoadTestShape then does not cut (it ends the run itself, as under Locust).
    """

    command: str = "load"
    target: str | None = None
    scenario: str = _default("scenario")
    users: int = _default("users")
    spawn_rate: float = _default("spawn_rate")
    duration_s: float = _default("duration")
    duration_given: bool = True
    rate: float | None = None
    kpi_file: Path | None = None
    out: Path | None = None
    workers: int = _default("workers")
    target_pid: int | None = None
    variants: tuple[str, ...] = ()
    latency_profile: str = "guide"
    extra_latency: tuple[str, ...] = ()  # the bundled service's --extra-latency, as written
    warmup_s: float | None = None
    profile: bool = False
    alert_webhook: str | None = None
    abort_on_fail: bool = False
    reports_dir: Path = _default("reports_dir")
    history: str = _default("history")
    argv: tuple[str, ...] = field(default_factory=tuple)
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    service: ServiceOptions = field(default_factory=ServiceOptions)
    kpi_targets: tuple[KpiTarget, ...] | None = None
    observe: Observability = field(default_factory=Observability)
    # Locust semantics (README "Locust compatibility"): task tags, User classes, and the
    # arguments perfkit does not know, for the locustfile's own init_command_line_parser
    # options: from the command line (`locustfile_args`) and from Locust's config files
    # (`locustfile_config`, (key, value) items, read below the environment as Locust does).
    tags: tuple[str, ...] = ()
    exclude_tags: tuple[str, ...] = ()
    user_classes: tuple[str, ...] = ()
    locustfile_args: tuple[str, ...] = ()
    locustfile_config: tuple[tuple[str, Any], ...] = ()
    config_users: tuple[str, ...] = ()
    equal_weights: bool = False
    # A master open to other machines (docs/distributed.md); None: loopback, local workers only.
    master_bind_host: str | None = None
    master_bind_port: int | None = None
    expect_workers: int = _default("expect_workers")
    expect_workers_timeout_s: float = _default("expect_workers_timeout")
    enable_rebalancing: bool = False
    # Locust's --stop-timeout: how long a stopping user may finish the task in hand.
    stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S
    arrivals: str = _default("arrivals")  # an open load's arrivals: evenly spread, or Poisson
    # A simultaneous A/B trial (perfkit ab --simultaneous): (label, base URL) of each arm. Every
    # user class then runs once per arm against its URL, and each request is recorded under
    # "[label] name"; `users` and `rate` are the whole run's, shared evenly by the arms.
    arms: tuple[tuple[str, str], ...] = ()
    # Locust's outputs, logging and reporting habits (options.py: their Locust meaning).
    locust_outputs: LocustOutputs = field(default_factory=LocustOutputs)
    loglevel: str | None = None
    logfile: str | None = None
    skip_log_setup: bool = False
    only_summary: bool = False
    reset_stats: bool = False
    exit_code_on_error: int | None = None
    # --fault: commands run at set times of the load (run/faults.py), judged for availability
    # and recovery (analysis/availability.py).
    faults: tuple[Fault, ...] = ()

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
            args += ["--queue-prefix", service.queue_prefix]
        args += ["--database-url", service.database_url] if service.database_url else []
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


DEFAULT_LEAK_THRESHOLD_MB_H: float = _default("leak_threshold", "endurance")


@dataclass(frozen=True)
class EnduranceSettings:
    load: LoadSettings
    leak_threshold_mb_h: float = DEFAULT_LEAK_THRESHOLD_MB_H


def build_load_settings(command: str, values: dict[str, Any], *,
                        given: frozenset[str] = frozenset(),
                        locustfile_args: tuple[str, ...] | list[str] = (),
                        locustfile_config: tuple[tuple[str, Any], ...] | list[Any] = (),
                        argv: tuple[str, ...] | list[str] = ()) -> LoadSettings:
    """LoadSettings from the option values of a load command (options.parse_options or
    click's, every option of the command present); `given`: the names the user set."""
    observe = Observability(
        metrics_path=values["metrics_path"], metrics_auth=parse_metrics_auth(
            values["metrics_auth"]), db_url=values["db_url"], redis_url=values["redis_url"],
        prometheus_port=values["prometheus_port"], otlp_endpoint=values["otlp_endpoint"],
        # perfkit ab runs many loads and has no live page: its options have no --web.
        web=values.get("web", False), web_host=values.get("web_host"),
        web_port=values.get("web_port", 8089))
    check_extras(observe)
    if values["csv_full_history"] and not values["csv"]:
        raise ConfigError("--csv-full-history needs --csv (as in Locust)")
    scenario = str(values["scenario"])
    if "," in scenario or scenario.startswith(("http://", "https://")):
        raise ConfigError(f"-f {scenario}: perfkit runs one locustfile, a path or a bundled "
                          f"scenario name (Locust also takes lists, packages and URLs)")
    workers = values["workers"]
    if workers == -1:  # Locust's --processes -1: one per core
        workers = os.cpu_count() or 1
    return LoadSettings(
        command=command, target=values["target"], scenario=scenario, users=values["users"],
        spawn_rate=values["spawn_rate"], duration_s=values["duration"],
        duration_given="duration" in given, rate=values["rate"], kpi_file=values["kpi"],
        out=values["out"], workers=workers, target_pid=values["target_pid"],
        variants=tuple(values["variants"]),
        latency_profile="fast" if values["fast"] else "guide",
        extra_latency=tuple(values["extra_latency"]), warmup_s=values["warmup"],
        profile=values["profile"], alert_webhook=values["alert_webhook"],
        abort_on_fail=values["abort_on_fail"], reports_dir=Path(values["reports_dir"]),
        history=values["history"], argv=tuple(argv),
        request_timeout_s=values["request_timeout"], service=ServiceOptions(
            queue=values["queue"], broker=values["broker"],
            celery_workers=values["celery_workers"], envelope=values["envelope"],
            database_url=values["service_database_url"],
            queue_prefix=values["service_queue_prefix"]),
        observe=observe, tags=split_tags(values["tags"]),
        exclude_tags=split_tags(values["exclude_tags"]),
        user_classes=split_tags(values["user_classes"]),
        locustfile_args=tuple(locustfile_args), locustfile_config=tuple(locustfile_config),
        config_users=tuple(values["config_users"]), equal_weights=values["equal_weights"],
        master_bind_host=values["master_bind_host"],
        master_bind_port=values["master_bind_port"], expect_workers=values["expect_workers"],
        expect_workers_timeout_s=values["expect_workers_timeout"],
        enable_rebalancing=values["enable_rebalancing"],
        stop_timeout_s=values["stop_timeout"], arrivals=values["arrivals"],
        locust_outputs=LocustOutputs(
            csv_prefix=values["csv"], csv_full_history=values["csv_full_history"],
            html_file=values["html"], json_stdout=values["json"],
            json_file=values["json_file"]),
        loglevel=values["loglevel"].upper() if values["loglevel"] else None,
        logfile=values["logfile"], skip_log_setup=values["skip_log_setup"],
        only_summary=values["only_summary"], reset_stats=values["reset_stats"],
        exit_code_on_error=values["exit_code_on_error"],
        faults=tuple(values.get("faults") or ()))  # regression and ab have no --fault


def split_tags(tags: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """`--tags a b`, `--tags a,b`, `--tags a --tags b` and Locust's `[a, b]` (a LOCUST_TAGS
    value) all mean (a, b)."""
    return tuple(t.strip("'\"") for text in tags
                 for t in str(text).strip("[]").replace(",", " ").split())
