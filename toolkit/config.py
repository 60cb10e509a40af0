"""Typed settings and the KPI file: options and TOML in, typed objects out. No import-time state.

Settings are built once (by the CLI, `perfkit.load` or a test) and passed down; the KPI file is
read here, once per run, before the run starts, so a bad file fails before any load.
"""

import difflib
import importlib
import re
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .units import parse_duration, parse_quantity

DEFAULTS_PATH = Path(__file__).with_name("kpi_defaults.toml")

# Per-job records in latency.jsonl: not HTTP requests, so never counted in rps or error rate.
JOB_NAMES = ("job_completion", "batch_10_completion")

HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")

# The bundled API's request names: a KPI naming something close to one of these but not
# equal is a typo (a user's own endpoints elsewhere are accepted as written).
REFERENCE_ENDPOINTS = (
    "GET /api/v1/health",
    "POST /api/v1/research/products",
    "GET /api/v1/research/products/{id}",
    "GET /api/v1/research/products/{id}/status",
    "DELETE /api/v1/research/products/{id}",
    "GET /api/v1/metrics/system",
    "GET /api/v1/metrics/database",
    "GET /api/v1/metrics/application",
    "GET /metrics",
)


@dataclass(frozen=True)
class Metric:
    unit: str
    bound: str       # "upper": smaller is better; "lower": bigger is better
    endpoint: str    # "required", "optional" or "none"
    label: str       # how a reason sentence names the value: "p99", "throughput"


_LATENCY_STATS = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p999": 99.9}
_JOB_STATS = ("mean", "p50", "p90", "p95", "p99", "max")

METRICS: dict[str, Metric] = {
    **{f"{stat}_ms": Metric("ms", "upper", "required", stat)
       for stat in [*_LATENCY_STATS, "max", "mean"]},
    "rps": Metric("rps", "lower", "optional", "throughput"),
    "error_rate_percent": Metric("%", "upper", "optional", "error rate"),
    **{f"{job}_s_{stat}": Metric("s", "upper", "none", f"{stat} {job.replace('_', ' ')}")
       for job in JOB_NAMES for stat in _JOB_STATS},
    "rss_mb_mean": Metric("MB", "upper", "none", "mean RSS"),
    "rss_mb_peak": Metric("MB", "upper", "none", "peak RSS"),
    "cpu_busiest_percent_mean": Metric("%", "upper", "none",
                                       "mean CPU of the busiest process (% of one core)"),
    "cpu_busiest_percent_peak": Metric("%", "upper", "none",
                                       "peak CPU of the busiest process (% of one core)"),
    "cpu_machine_percent_mean": Metric("%", "upper", "none", "mean CPU"),
    "cpu_machine_percent_peak": Metric("%", "upper", "none", "peak CPU"),
    "disk_mb_s_mean": Metric("MB/s", "upper", "none", "mean disk I/O"),
    "disk_mb_s_peak": Metric("MB/s", "upper", "none", "peak disk I/O"),
    "net_mb_s_mean": Metric("MB/s", "upper", "none", "mean network"),
    "net_mb_s_peak": Metric("MB/s", "upper", "none", "peak network"),
    "db_query_mean_ms": Metric("ms", "upper", "none", "mean query time"),
    "db_capacity_qps": Metric("queries/s", "lower", "none", "database capacity"),
}


@dataclass(frozen=True)
class KpiTarget:
    name: str
    metric: str
    endpoint: str | None
    target: float | None
    allowed: float | None
    unit: str
    bound: str
    source: str


def load_kpi_targets(path: Path | None) -> list[KpiTarget]:
    """The defaults, replaced or extended by the KPI file at `path` (docs/kpi.md)."""
    _, defaults = _read_kpi_file(DEFAULTS_PATH, source="defaults")
    targets = [kpi for kpi, enabled, _ in defaults if enabled]
    if path is None:
        return targets
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"KPI file {path} not found")
    replace, entries = _read_kpi_file(path, source=str(path))
    if replace:
        return [kpi for kpi, enabled, _ in entries if enabled]
    by_key = {(kpi.metric, kpi.endpoint): i for i, kpi in enumerate(targets)}
    dropped: set[int] = set()
    for kpi, enabled, line in entries:
        index = by_key.get((kpi.metric, kpi.endpoint))
        if index is None and not enabled:
            raise ConfigError(f"{path}:{line}: enabled = false, but there is no default KPI "
                              f"{kpi.metric} {kpi.endpoint or ''}".rstrip() + " to disable")
        if index is None:
            targets.append(kpi)
        elif enabled:
            targets[index] = kpi
        else:
            dropped.add(index)
    return [kpi for i, kpi in enumerate(targets) if i not in dropped]


_TOP_KEYS = {"replace_defaults", "kpi"}
_KPI_KEYS = {"name", "metric", "endpoint", "target", "allowed", "enabled"}
_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]*?)\s*\]")
_KEY = re.compile(r"""^\s*(["']?)([^"'=\s]+)\1\s*=""")
_TOML_POSITION = re.compile(r"\(at line (\d+), column \d+\)")


def _read_kpi_file(path: Path, source: str) -> tuple[bool, list[tuple[KpiTarget, bool, int]]]:
    """(replace_defaults, [(target, enabled, line)]) of one KPI file."""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read KPI file {path}: {exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        position = _TOML_POSITION.search(str(exc))
        line = position.group(1) if position else "1"
        message = _TOML_POSITION.sub("", str(exc)).strip()
        raise ConfigError(f"{path}:{line}: bad TOML: {message}") from exc

    top_lines, block_lines = _key_lines(text)
    for key in data:
        if key not in _TOP_KEYS:
            raise ConfigError(f"{path}:{top_lines.get(key, 1)}: unknown key {key!r}; "
                              f"expected replace_defaults or [[kpi]] tables")
    replace = data.get("replace_defaults", False)
    if not isinstance(replace, bool):
        raise ConfigError(f"{path}:{top_lines.get('replace_defaults', 1)}: replace_defaults "
                          f"must be true or false")
    blocks = data.get("kpi", [])
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise ConfigError(f"{path}:{top_lines.get('kpi', 1)}: write each KPI as a [[kpi]] table")

    entries: list[tuple[KpiTarget, bool, int]] = []
    seen: dict[tuple[str, str | None], int] = {}
    for i, block in enumerate(blocks):
        lines = block_lines[i] if i < len(block_lines) else {}
        kpi, enabled = _parse_kpi(block, path, lines, source)
        line = lines.get("", 1)
        identity = (kpi.metric, kpi.endpoint)
        if identity in seen:
            raise ConfigError(f"{path}:{line}: {kpi.metric} {kpi.endpoint or ''}".rstrip()
                              + f" is already set at line {seen[identity]}")
        seen[identity] = line
        entries.append((kpi, enabled, line))
    return replace, entries


def _key_lines(text: str) -> tuple[dict[str, int], list[dict[str, int]]]:
    """Line numbers of top-level keys and of each [[kpi]] table's keys ("" = its header):
    tomllib reports where a syntax error is, but not where a valid key was written."""
    top: dict[str, int] = {}
    blocks: list[dict[str, int]] = []
    current: dict[str, int] = top
    for lineno, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            name = header.group(2).strip("\"'")
            if header.group(1) == "[[" and name == "kpi":
                blocks.append({"": lineno})
                current = blocks[-1]
            else:
                top.setdefault(name.split(".")[0], lineno)
                current = {}
            continue
        key = _KEY.match(line)
        if key:
            current.setdefault(key.group(2), lineno)
    return top, blocks


def _parse_kpi(block: dict[str, Any], path: Path, lines: dict[str, int],
               source: str) -> tuple[KpiTarget, bool]:
    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"{path}:{lines.get(key, lines.get('', 1))}: {message}")

    for key in block:
        if key not in _KPI_KEYS:
            close = difflib.get_close_matches(key, _KPI_KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise fail(key, f"unknown key {key!r} in [[kpi]]{hint} "
                            f"(keys: {', '.join(sorted(_KPI_KEYS))})")
    metric_name = block.get("metric")
    if not isinstance(metric_name, str):
        raise fail("metric", "every [[kpi]] needs metric = \"...\" (docs/kpi.md lists them)")
    metric = METRICS.get(metric_name)
    if metric is None:
        close = difflib.get_close_matches(metric_name, METRICS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise fail("metric", f"unknown metric {metric_name!r}{hint}")

    endpoint = block.get("endpoint")
    if endpoint is not None:
        if metric.endpoint == "none":
            raise fail("endpoint", f"metric {metric_name} is not per endpoint; remove endpoint")
        endpoint = _check_endpoint(endpoint, fail)
    elif metric.endpoint == "required":
        raise fail("metric", f"metric {metric_name} needs endpoint = \"GET /path\"")

    values: dict[str, float | None] = {}
    for key in ("target", "allowed"):
        if key not in block:
            values[key] = None
            continue
        try:
            values[key] = parse_quantity(block[key], metric.unit)
        except ConfigError as exc:
            raise fail(key, f"{key}: {exc}") from exc
    target, allowed = values["target"], values["allowed"]
    if target is None and allowed is None:
        raise fail("", "a KPI needs target, allowed or both")
    if target is not None and allowed is not None:
        looser = allowed >= target if metric.bound == "upper" else allowed <= target
        if not looser:
            side = "at or above" if metric.bound == "upper" else "at or below"
            raise fail("allowed", f"allowed must be {side} the target for {metric_name} "
                                  f"({'smaller' if metric.bound == 'upper' else 'bigger'} "
                                  f"is better)")

    enabled = block.get("enabled", True)
    if not isinstance(enabled, bool):
        raise fail("enabled", "enabled must be true or false")
    name = block.get("name")
    if name is None:
        name = f"{endpoint} {metric.label}" if endpoint else metric.label
    elif not isinstance(name, str) or not name.strip():
        raise fail("name", "name must be a non-empty string")
    line = lines.get("", 1)
    return KpiTarget(
        name=name, metric=metric_name, endpoint=endpoint, target=target, allowed=allowed,
        unit=metric.unit, bound=metric.bound,
        source="defaults" if source == "defaults" else f"{source}:{line}",
    ), enabled


def _check_endpoint(endpoint: object, fail: Any) -> str:
    if not isinstance(endpoint, str):
        raise fail("endpoint", "endpoint must be a string like \"GET /api/v1/health\"")
    method, _, path = endpoint.partition(" ")
    if method not in HTTP_METHODS or not path.startswith("/") or " " in path:
        raise fail("endpoint", f"endpoint {endpoint!r} is not a request name: write "
                               f"\"METHOD /path\" with METHOD one of {', '.join(HTTP_METHODS)}")
    if endpoint not in REFERENCE_ENDPOINTS:
        close = difflib.get_close_matches(endpoint, REFERENCE_ENDPOINTS, n=1, cutoff=0.85)
        if close:
            raise fail("endpoint", f"unknown endpoint {endpoint!r}; did you mean {close[0]!r}?")
    return endpoint


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


# Query parameters whose values are secrets (a webhook's token, a signed URL's signature).
_SECRET_PARAMS = re.compile(r"(token|key|secret|password|passwd|pwd|sig|signature|auth|"
                            r"credential|session)", re.IGNORECASE)


def redact_url(url: str | None) -> str | None:
    """`url` without its user:password and with secret-looking query values replaced, for
    every artefact (run.json, reports and baselines are meant to be shared and committed)."""
    if not url:
        return url
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = urllib.parse.urlencode(
        [(key, "***" if _SECRET_PARAMS.search(key) else value)
         for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)],
        safe="*")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


# Options whose whole value is a secret.
_SECRET_OPTIONS = ("--metrics-auth",)


def redact_argv(argv: tuple[str, ...] | list[str]) -> list[str]:
    """argv with every URL in it (an option's value, or --opt=URL) redacted, and the values
    of _SECRET_OPTIONS replaced."""
    redacted = []
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if (i and argv[i - 1] in _SECRET_OPTIONS) or (eq and name in _SECRET_OPTIONS):
            redacted.append(f"{name}=***" if eq else "***")
        elif eq and "://" in value:
            redacted.append(f"{name}={redact_url(value)}")
        else:
            redacted.append(str(redact_url(arg)) if "://" in arg else arg)
    return redacted
