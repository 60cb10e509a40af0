"""The KPI file: TOML in, typed KPI targets out (docs/kpi.md). No import-time state.

The file is read once per run, when the settings are built, before any load starts, so a bad
file fails first, with the file and line in the message.
"""

import difflib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .units import parse_quantity

DEFAULTS_PATH = Path(__file__).with_name("kpi_defaults.toml")

# Per-job records in latency.jsonl: not HTTP requests, so never counted in rps or error rate.
JOB_NAMES = ("job_completion", "batch_10_completion")
# A simultaneous A/B trial names each record by its arm: "[A] GET /x", "[B] job_completion".
_ARM_PREFIX = re.compile(r"^\[[^\]]*\] ")


def is_job(name: str) -> bool:
    """Whether a latency record of this name is a job's time (JOB_NAMES, an arm's too), not
    an HTTP request."""
    return _ARM_PREFIX.sub("", name, count=1) in JOB_NAMES


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
    # analysis/availability.py: the guide's availability and recovery-time KPIs.
    "availability_percent": Metric("%", "lower", "none", "availability"),
    "recovery_s_max": Metric("s", "upper", "none", "slowest recovery after a fault"),
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
