"""Scrapes the target's standard Prometheus endpoint: its process and its HTTP server histogram.

Most services expose `/metrics` (prometheus_client, an instrumentator, Micrometer, OTel's
exporter) rather than the research API's JSON endpoints. Two things in it are worth a run:
- the standard process metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
  `process_open_fds`), into target_metrics.csv: they judge the target's CPU and memory where
  perfkit cannot sample it with psutil (another machine, a container, no `--target-pid`);
- an HTTP server latency histogram per route (the first family of SERVER_HISTOGRAMS found),
  into server_latency.jsonl as cumulative bucket counts per scrape: the server's own time per
  request, which the report puts beside the client's (the difference is network and queueing).
Parsing is prometheus_client's. The process metrics describe the one process that serves
/metrics: a pre-fork server's workers are not in them.
"""

import http.client
import logging
import math
import time
import urllib.parse
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .. import rundir
from ..errors import RunError
from .app import MAX_BODY_BYTES, TIMEOUT_S, open_connection
from .sampling import CsvRows, Sampler

log = logging.getLogger(__name__)

COLUMNS = ["t", "cpu_percent", "rss_mb", "open_files", "cpu_s"]
MB = 1024 * 1024
# Histogram families of HTTP server time, most specific first, with their unit in seconds.
SERVER_HISTOGRAMS = {
    "http_server_request_duration_seconds": 1.0,     # OpenTelemetry semantic conventions
    "http_request_duration_seconds": 1.0,            # prometheus-fastapi-instrumentator, Go
    "http_server_requests_seconds": 1.0,             # Micrometer (Spring)
    "starlette_request_duration_seconds": 1.0,       # starlette_exporter
    "flask_http_request_duration_seconds": 1.0,      # prometheus-flask-exporter
    "django_http_requests_latency_seconds_by_view_method": 1.0,
    "perfkit_reference_request_seconds": 1.0,        # the bundled service
    "http_server_duration_milliseconds": 0.001,      # older OpenTelemetry
}
ROUTE_LABELS = ("http_route", "route", "handler", "path", "endpoint", "uri", "view")
METHOD_LABELS = ("http_request_method", "method", "http_method")
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


class Unusable(Exception):
    """The endpoint answered, but not with metrics perfkit can use: do not ask again."""


def metrics_url(target: str, path: str) -> str:
    """The URL to scrape: `path` relative to the target, or a full URL of its own."""
    if path.startswith(("http://", "https://")):
        return path
    return target.rstrip("/") + "/" + path.lstrip("/")


def without_credentials(url: str) -> str:
    """`url` as run.json may show it: no user or password."""
    parts = urllib.parse.urlsplit(url)
    if not parts.username and not parts.password:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def read_process(families: list[Any]) -> dict[str, float]:
    """{cpu_s, rss_bytes, fds} found among the standard process metrics (summed over series:
    a target may label them per process)."""
    wanted = {"process_cpu_seconds_total": "cpu_s", "process_resident_memory_bytes": "rss_bytes",
              "process_open_fds": "fds"}
    found: dict[str, float] = {}
    for family in families:
        for sample in family.samples:
            key = wanted.get(sample.name)
            if key is not None and math.isfinite(sample.value):
                found[key] = found.get(key, 0.0) + float(sample.value)
    return found


def _route_name(labels: dict[str, str]) -> str | None:
    route = next((labels[k] for k in ROUTE_LABELS if labels.get(k)), None)
    method = next((labels[k] for k in METHOD_LABELS if labels.get(k)), None)
    if route is None:
        return None
    if route.split(" ", 1)[0] in HTTP_METHODS:  # already "GET /path", as the bundled service
        return route
    return f"{method.upper()} {route}" if method else route


def read_server_histogram(families: list[Any]) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """(family name, {request name: {count, sum_s, buckets [[le_s, cumulative count]]}}) of
    the first known HTTP server histogram, summed over every other label (status, ...)."""
    by_name = {family.name: family for family in families if family.type == "histogram"}
    family_name = next((name for name in SERVER_HISTOGRAMS if name in by_name), None)
    if family_name is None:
        return None, {}
    scale = SERVER_HISTOGRAMS[family_name]
    routes: dict[str, dict[str, Any]] = {}
    for sample in by_name[family_name].samples:
        labels = dict(sample.labels)
        le = labels.pop("le", None)
        name = _route_name(labels)
        if name is None:
            continue
        entry = routes.setdefault(name, {"count": 0.0, "sum_s": 0.0, "buckets": {}})
        if sample.name.endswith("_bucket") and le is not None:
            bound = float(le)
            if math.isfinite(bound):
                key = round(bound * scale, 9)
                entry["buckets"][key] = entry["buckets"].get(key, 0.0) + sample.value
        elif sample.name.endswith("_count"):
            entry["count"] += sample.value
        elif sample.name.endswith("_sum"):
            entry["sum_s"] += sample.value * scale
    return family_name, {
        name: {"count": int(e["count"]), "sum_s": round(e["sum_s"], 6),
               "buckets": [[le, int(n)] for le, n in sorted(e["buckets"].items())]}
        for name, e in routes.items()}


class PrometheusCollector(Sampler):
    """Scrapes `url` every interval into target_metrics.csv and server_latency.jsonl.

    Each file is created with the first scrape that has its metrics, so a target without
    process metrics or without a server histogram leaves none (missing, not zero).
    `authorization`: the Authorization header's value (Bearer or Basic), if any.
    """

    def __init__(self, url: str, out_dir: Path, interval_s: float = 2.0,
                 authorization: str | None = None) -> None:
        super().__init__(interval_s)
        self.url = url
        self.out_dir = Path(out_dir)
        parts = urllib.parse.urlsplit(url)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers = {"Accept": "text/plain;version=0.0.4"}
        if authorization:
            self._headers["Authorization"] = authorization
        self._conn: http.client.HTTPConnection | None = None
        self._why_not = ""
        self._transient_failures = 0
        self._last_error = ""
        self._previous: tuple[float, float] | None = None  # (t, cpu_s)
        self._rows = CsvRows(self.out_dir / rundir.TARGET_METRICS, COLUMNS)
        self.process_samples = 0
        self.server_family: str | None = None
        self.routes: set[str] = set()
        self._counts: dict[str, int] = {}
        open_connection(url)  # a bad URL is a ConfigError now, not a note later

    def start(self) -> None:
        if not self.out_dir.is_dir():
            raise RunError(f"prometheus collector: {self.out_dir} is not a directory")
        super().start()

    def take_sample(self) -> dict[str, Any] | None:
        if self._why_not:
            return None
        try:
            text = self._scrape()
        except Unusable as exc:
            self._why_not = str(exc)
            return None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # ValueError: a TLS record cut short. The connection is dropped either way.
            self._transient_failures += 1
            self._last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self._close_connection()
            return None
        t = time.time()
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError as exc:
            self._why_not = f"GET {self._path}: not Prometheus text ({exc})"
            return None
        row = self._process_row(t, read_process(families))
        family, routes = read_server_histogram(families)
        if family is not None:
            self.server_family = family
            self.routes.update(routes)
            # A route whose count did not move adds nothing a reader needs (the previous
            # line stands for it): an hour of scrapes stays small.
            changed = {name: entry for name, entry in routes.items()
                       if self._counts.get(name) != entry["count"]}
            self._counts.update({name: entry["count"] for name, entry in changed.items()})
            rundir.append_jsonl(self.out_dir / rundir.SERVER_LATENCY, [
                {"t": round(t, 3), "name": name, **entry} for name, entry in changed.items()])
        if row is None and family is None:
            return None
        return row or {"t": round(t, 3)}

    def _scrape(self) -> str:
        if self._conn is None:
            self._conn = open_connection(self.url, TIMEOUT_S)
        self._conn.request("GET", self._path, headers=self._headers)
        response = self._conn.getresponse()
        body = response.read(MAX_BODY_BYTES)
        if response.status >= 500:
            raise OSError(f"GET {self._path}: {response.status}")
        if response.status != 200:
            raise Unusable(f"GET {self._path}: {response.status}")
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise Unusable(f"GET {self._path}: not UTF-8 text") from None

    def _process_row(self, t: float, process: dict[str, float]) -> dict[str, Any] | None:
        if not process:
            return None
        row: dict[str, Any] = {"t": round(t, 3)}
        cpu_s = process.get("cpu_s")
        if cpu_s is not None:
            row["cpu_s"] = round(cpu_s, 3)
            if self._previous is not None and cpu_s >= self._previous[1] and t > self._previous[0]:
                # process_cpu_seconds_total moves in clock ticks (10 ms): over a 2 s interval
                # a rate is exact to half a percent of a core.
                row["cpu_percent"] = round(
                    100.0 * (cpu_s - self._previous[1]) / (t - self._previous[0]), 2)
            self._previous = (t, cpu_s)
        if "rss_bytes" in process:
            row["rss_mb"] = round(process["rss_bytes"] / MB, 3)
        if "fds" in process:
            row["open_files"] = int(process["fds"])
        self._rows.write(row)
        self.process_samples += 1
        return row

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        self._close_connection()
        self._rows.close()

    def describe(self) -> dict[str, Any]:
        notes = [self._why_not]
        if self._transient_failures:
            notes.append(f"{self._transient_failures} scrapes failed (last: {self._last_error})")
        if self.samples and not self.process_samples:
            notes.append("no process_* metrics: target CPU and memory not measured here")
        if self.samples and self.server_family is None:
            notes.append("no HTTP server histogram: server-side latency not measured")
        return {
            **self.entry(notes),
            "url": without_credentials(self.url),
            "process": self.process_samples > 0,
            "server_histogram": self.server_family,
            "routes": sorted(self.routes),
        }
