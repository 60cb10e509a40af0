"""KPI targets and the verdict of a run against them: pass / warn / fail / missing, with why.

Loading turns TOML into KpiTarget (docs/kpi.md is the format); evaluation is pure computation
on a loaded Run, so it is tested on fixed data.
"""

import difflib
import math
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from . import stats
from .config import parse_quantity
from .errors import ConfigError
from .rundir import Run, judged_latency, judged_window

DEFAULTS_PATH = Path(__file__).with_name("kpi_defaults.toml")

VERDICTS = ("pass", "warn", "fail", "missing")

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


@dataclass(frozen=True)
class KpiResult:
    kpi: KpiTarget
    value: float | None
    verdict: str
    margin_percent: float | None
    reason: str


def format_value(value: float | None, unit: str) -> str:
    """'812 ms', '42.1 ms', '0.05 %', '—' for missing: three significant digits at most."""
    if value is None or math.isnan(value):
        return "—"
    magnitude = abs(value)
    if magnitude >= 100 or value == int(value):
        text = f"{value:.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    elif magnitude >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".rstrip()


def format_percent(value: float) -> str:
    return f"{abs(value):.1f} %" if abs(value) < 1 else f"{abs(value):.0f} %"


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


def overall_verdict(results: list[KpiResult]) -> str:
    """A failed KPI fails the run, a warning warns; missing data never decides either way."""
    verdicts = {result.verdict for result in results}
    if "fail" in verdicts:
        return "fail"
    if "warn" in verdicts:
        return "warn"
    return "pass"


def judge_kpi(kpi: KpiTarget, value: float | None, missing_reason: str = "") -> KpiResult:
    """The verdict of one measured value. Limits are inclusive: a value equal to the target
    passes and one equal to the allowed level warns (histograms resolve 0.1 %, so "< 100 ms"
    and "≤ 100 ms" cannot be told apart anyway)."""
    if value is None or math.isnan(value):
        return KpiResult(kpi, None, "missing", None, missing_reason or "no data")
    label = METRICS[kpi.metric].label
    shown = format_value(value, kpi.unit)
    target, allowed = kpi.target, kpi.allowed
    reference = target if target is not None else allowed
    assert reference is not None  # load_kpi_targets refuses a KPI without either
    ref_name = "target" if target is not None else "allowed"
    upper = kpi.bound == "upper"

    def within(limit: float) -> bool:
        return value <= limit if upper else value >= limit

    margin = None
    if reference > 0:
        margin = 100.0 * ((reference - value) if upper else (value - reference)) / reference
    ref_text = f"the {format_value(reference, kpi.unit)} {ref_name}"
    beyond = "over" if upper else "under"
    excess = f"{format_percent(margin)} {beyond}" if margin is not None else beyond

    if within(reference):
        headroom = f" ({format_percent(margin)} headroom)" if margin is not None else ""
        verb = "is within" if upper else "meets"
        return KpiResult(kpi, value, "pass", margin, f"{label} {shown} {verb} {ref_text}{headroom}")
    if target is not None and allowed is not None:
        allowed_text = f"the {format_value(allowed, kpi.unit)} allowed"
        if within(allowed):
            return KpiResult(kpi, value, "warn", margin,
                             f"{label} {shown} is {excess} {ref_text}, within {allowed_text}")
        return KpiResult(kpi, value, "fail", margin,
                         f"{label} {shown} is {excess} {ref_text} and beyond {allowed_text}")
    return KpiResult(kpi, value, "fail", margin, f"{label} {shown} is {excess} {ref_text}")


def summarize_judged(run: Run) -> dict[str, dict[str, Any]]:
    """stats.summarize_endpoints of the judged window, per request and per-job name. Merging
    an hour of 1 s histograms takes seconds: compute it once and pass it on."""
    start, end = judged_window(run)
    return stats.summarize_endpoints(judged_latency(run), end - start)


def evaluate_kpis(run: Run, targets: list[KpiTarget], *,
                  summaries: dict[str, dict[str, Any]] | None = None) -> list[KpiResult]:
    """Judge `run` on the judged window (warm-up left out) against each target, in order.
    `summaries`: summarize_judged(run), when the caller already has it."""
    start, end = judged_window(run)
    duration_s = end - start
    latency = judged_latency(run)
    if summaries is None:
        summaries = summarize_judged(run)
    requests = latency[~latency["name"].isin(JOB_NAMES)]
    context = _Context(run, start, end, duration_s, summaries, requests)
    results = []
    for kpi in targets:
        result = judge_kpi(kpi, *_measure(kpi, context))
        if kpi.metric == "rps" and result.verdict in ("warn", "fail"):
            # A run only shows the throughput it was offered: say how much load that was.
            result = replace(result, reason=result.reason + _offered_load(run))
        results.append(result)
    return results


def _offered_load(run: Run) -> str:
    settings = run.meta.get("settings") or {}
    if settings.get("rate"):
        return f" (open load at {settings['rate']:g} iterations/s)"
    if settings.get("users"):
        return f" (closed load of {settings['users']} users)"
    return ""


@dataclass
class _Context:
    run: Run
    start: float
    end: float
    duration_s: float
    summaries: dict[str, dict[str, Any]]
    requests: pd.DataFrame


def _measure(kpi: KpiTarget, ctx: _Context) -> tuple[float | None, str]:
    """(value, why it is missing): the value is None when the run cannot tell."""
    metric = kpi.metric
    if ctx.duration_s <= 0:
        return None, "the judged window is empty (the run ended within its warm-up)"
    if kpi.endpoint is not None:
        summary = ctx.summaries.get(kpi.endpoint)
        if summary is None or not summary["count"]:
            return None, _no_requests(kpi.endpoint, ctx)
        if metric == "rps":
            return summary["rps"], ""
        if metric == "error_rate_percent":
            return summary["error_rate_percent"], ""
        return summary[metric], ""
    if metric == "rps":
        if ctx.run.latency.empty:
            # No records at all is a recorder that wrote nothing, not a target that served 0.
            return None, "no request records in this run (latency.jsonl empty or absent)"
        return float(ctx.requests["count"].sum()) / ctx.duration_s, ""
    if metric == "error_rate_percent":
        count = int(ctx.requests["count"].sum())
        if count == 0:
            return None, "no requests in the judged window"
        return 100.0 * float(ctx.requests["failures"].sum()) / count, ""
    for job in JOB_NAMES:
        if metric.startswith(f"{job}_s_"):
            return _measure_job(job, metric.removeprefix(f"{job}_s_"), ctx)
    if metric.startswith("db_"):
        return _measure_database(kpi, ctx)
    return _measure_resource(metric, ctx)


def _no_requests(endpoint: str, ctx: _Context) -> str:
    in_run = ctx.run.latency[ctx.run.latency["name"] == endpoint]
    if len(in_run):
        return f"no requests in the judged window ({int(in_run['count'].sum())} during warm-up)"
    seen = sorted(set(ctx.run.latency["name"]) - set(JOB_NAMES))
    close = difflib.get_close_matches(endpoint, seen, n=1, cutoff=0.8)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"no requests: this run never called {endpoint}{hint}"


def _measure_job(job: str, stat: str, ctx: _Context) -> tuple[float | None, str]:
    summary = ctx.summaries.get(job)
    if summary is None or not summary["count"]:
        return None, f"no {job.replace('_', ' ')} records in the judged window"
    value_ms = summary["mean_ms" if stat == "mean" else f"{stat}_ms"]
    return (None if value_ms is None else value_ms / 1000.0), ""


_RESOURCE_COLUMNS = {
    "rss_mb": ["rss_mb"],
    "cpu_machine_percent": ["cpu_machine_percent"],
    "disk_mb_s": ["read_mb_s", "write_mb_s"],
    "net_mb_s": ["sys_net_sent_mb_s", "sys_net_recv_mb_s"],
}


def _measure_resource(metric: str, ctx: _Context) -> tuple[float | None, str]:
    base, _, stat = metric.rpartition("_")
    columns = _RESOURCE_COLUMNS[base]
    frame = ctx.run.resources
    if frame is None:
        note = ctx.run.meta.get("collectors", {}).get("system", {}).get("note") or ""
        return None, "no resource samples (resources.csv absent" + (f": {note})" if note else ")")
    if any(column not in frame.columns for column in columns):
        return None, f"resources.csv has no {' / '.join(columns)} column"
    window = frame[(frame["t"] >= ctx.start) & (frame["t"] <= ctx.end)]
    # A sample with any part missing is a gap, not a zero (docs/run-directory.md).
    series = window[columns].dropna().sum(axis=1)
    if series.empty:
        return None, f"no {' / '.join(columns)} samples in the judged window"
    return float(series.max() if stat == "peak" else series.mean()), ""


def _measure_database(kpi: KpiTarget, ctx: _Context) -> tuple[float | None, str]:
    frame = ctx.run.app
    if frame is None:
        note = ctx.run.meta.get("collectors", {}).get("app", {}).get("note") or ""
        return None, "no database timings (app.csv absent" + (f": {note})" if note else ")")
    window = frame[(frame["t"] >= ctx.start) & (frame["t"] <= ctx.end)]
    window = window.dropna(subset=["db_total_queries", "db_average_ms"])
    if len(window) < 2:
        return None, "fewer than two database samples in the judged window"
    first, last = window.iloc[0], window.iloc[-1]
    queries = float(last["db_total_queries"] - first["db_total_queries"])
    elapsed_s = float(last["t"] - first["t"])
    # The target reports cumulative counts and a cumulative mean: the window's own mean
    # is the growth of total time over the growth of the count.
    total_ms = (float(last["db_total_queries"] * last["db_average_ms"])
                - float(first["db_total_queries"] * first["db_average_ms"]))
    mean_ms = total_ms / queries if queries > 0 else None
    if kpi.metric == "db_query_mean_ms":
        return (mean_ms, "") if mean_ms is not None else (None, "no queries in the judged window")
    observed_qps = queries / elapsed_s
    # Capacity is the most the database could serve; the run shows only what it was asked
    # for. Reaching the target proves it; falling short proves nothing either way.
    needed = kpi.target if kpi.target is not None else kpi.allowed
    if needed is not None and observed_qps >= needed:
        return observed_qps, ""
    estimate = ""
    if mean_ms:
        estimate = (f"; at {format_value(mean_ms, 'ms')} per query one connection would serve "
                    f"about {format_value(1000.0 / mean_ms, 'queries/s')} (an estimate, "
                    f"not judged)")
    return None, (f"capacity not measured: the run drove only "
                  f"{format_value(observed_qps, 'queries/s')}, a lower bound below the "
                  f"{format_value(needed, 'queries/s')} target{estimate}")

