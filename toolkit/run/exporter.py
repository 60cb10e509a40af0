"""perfkit's own numbers, live, for Prometheus (and OpenTelemetry) while a run goes on.

`--prometheus-port PORT` serves /metrics from prometheus_client's own HTTP server with a
registry of its own (the global one would also carry whatever a user's locustfile
registers). Nothing is counted twice: at each scrape the collector below reads what the run
already keeps (the recorder's whole-run tallies, the runner's user count, the collectors'
latest samples), so a scrape costs the run nothing between scrapes. The server's thread is a
greenlet where Locust has patched threading, so a scrape reads the run's state in the same
event loop that changes it.

`--otlp-endpoint URL` pushes the same numbers (latency as p50/p95/p99 gauges: observable
instruments carry no histograms) with the OpenTelemetry SDK, an optional extra.

Every series carries `run_id` and `scenario` labels; docs/grafana/perfkit.json charts them.
"""

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..analysis import stats
from ..errors import ConfigError
from ..kpi_file import is_job
from .recorder import Tally

log = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# After the load ends, how long a scraped exporter stays up for the scrape that sees the
# final counts: this many of the scrape intervals seen, at most FINAL_SCRAPE_MAX_S.
FINAL_SCRAPE_INTERVALS = 2.5
FINAL_SCRAPE_MAX_S = 30.0
OTLP_INTERVAL_S = 5.0


@dataclass
class Snapshot:
    """What the run shows at one moment (read by both exporters)."""

    elapsed_s: float
    users: int
    offered_rate: float | None
    achieved_rps: float
    alarms: int
    endpoints: dict[str, Tally]
    target: dict[str, float] = field(default_factory=dict)  # cpu_percent, rss_bytes


def cumulative_buckets(tally: Tally,
                       bounds_s: tuple[float, ...] = LATENCY_BUCKETS_S) -> list[int]:
    """Requests at or below each bound, from the tally's HDR histogram (µs)."""
    counts = [0] * len(bounds_s)
    for item in tally.hist.get_recorded_iterator():
        value_s = item.value_iterated_to / 1e6
        for i, bound in enumerate(bounds_s):
            if value_s <= bound:
                counts[i] += item.count_added_in_this_iter_step
                break
    running = 0
    for i, n in enumerate(counts):
        running += n
        counts[i] = running
    return counts


class RunCollector(Collector):
    """A prometheus_client collector over `read()`, labelled with the run's labels."""

    def __init__(self, read: Callable[[], Snapshot], labels: dict[str, str]) -> None:
        self.read = read
        self.label_names = list(labels)
        self.label_values = list(labels.values())
        self.scraped_at: list[float] = []

    def collect(self) -> Iterator[Metric]:
        self.scraped_at = [*self.scraped_at[-9:], time.time()]
        snap = self.read()
        names, values = self.label_names, self.label_values
        per_endpoint = [*names, "endpoint"]

        def gauge(name: str, text: str, value: float | None) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, text, labels=names)
            if value is not None:
                family.add_metric(values, value)
            return family

        yield gauge("perfkit_run_elapsed_seconds", "Seconds since the load started",
                    snap.elapsed_s)
        yield gauge("perfkit_users", "Locust users running", snap.users)
        yield gauge("perfkit_offered_rate", "Arrival rate an open load offers (iterations/s)",
                    snap.offered_rate)
        yield gauge("perfkit_achieved_rps", "Requests per second over the last 5 s",
                    snap.achieved_rps)
        yield gauge("perfkit_target_cpu_percent",
                    "CPU of the target (busiest process, % of one core)",
                    snap.target.get("cpu_percent"))
        yield gauge("perfkit_target_rss_bytes", "Resident memory of the target",
                    snap.target.get("rss_bytes"))
        alarms = CounterMetricFamily("perfkit_alarms", "KPI alarms raised", labels=names)
        alarms.add_metric(values, snap.alarms)
        yield alarms
        requests = CounterMetricFamily("perfkit_requests", "Requests sent",
                                       labels=per_endpoint)
        failures = CounterMetricFamily("perfkit_failures", "Requests that failed",
                                       labels=per_endpoint)
        latency = HistogramMetricFamily(
            "perfkit_request_duration_seconds",
            "Client-side latency (from the intended send time under an open load)",
            labels=per_endpoint)
        for endpoint, tally in sorted(snap.endpoints.items()):
            requests.add_metric([*values, endpoint], tally.count)
            failures.add_metric([*values, endpoint], tally.failures)
            counts = cumulative_buckets(tally)
            buckets = [(f"{bound:g}", n) for bound, n in zip(LATENCY_BUCKETS_S, counts,
                                                           strict=True)]
            buckets.append(("+Inf", tally.count))
            sum_s = tally.hist.get_mean_value() * tally.hist.get_total_count() / 1e6
            latency.add_metric([*values, endpoint], buckets, sum_s)
        yield requests
        yield failures
        yield latency


class LiveExport:
    """The running exporters of one run; `stop()` ends them (idempotent)."""

    def __init__(self, read: Callable[[], Snapshot], labels: dict[str, str],
                 prometheus_port: int | None, otlp_endpoint: str | None,
                 say: Callable[[str], None]) -> None:
        self.read = read
        self.collector = RunCollector(read, labels)
        self.server: Any = None
        self.port: int | None = None
        self.otlp: Any = None
        self.load_ended_at: float | None = None
        if prometheus_port is not None:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(self.collector)
            try:
                self.server, _ = start_http_server(prometheus_port, addr="0.0.0.0",
                                                   registry=registry)
            except OSError as exc:
                raise ConfigError(f"--prometheus-port {prometheus_port}: {exc}") from exc
            self.port = int(self.server.server_address[1])
            say(f"perfkit: live metrics at http://127.0.0.1:{self.port}/metrics")
        if otlp_endpoint:
            self.otlp = start_otlp(otlp_endpoint, read, labels, say)

    def stop(self, load_ended_at: float | None = None) -> dict[str, Any]:
        """Stop serving, once a Prometheus that scraped during the run has scraped the final
        numbers (or waited long enough); flush OTLP. Returns run.json's "export" entry."""
        import gevent

        scraped = list(self.collector.scraped_at)
        if self.server is not None and load_ended_at is not None and len(scraped) >= 2:
            interval_s = (scraped[-1] - scraped[0]) / (len(scraped) - 1)
            deadline = time.time() + min(FINAL_SCRAPE_INTERVALS * interval_s,
                                         FINAL_SCRAPE_MAX_S)
            while time.time() < deadline and self.collector.scraped_at[-1] <= load_ended_at:
                gevent.sleep(0.1)
        entry: dict[str, Any] = {"prometheus_port": self.port,
                                 "scrapes": len(self.collector.scraped_at),
                                 "otlp": None}
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self.otlp is not None:
            entry["otlp"] = self.otlp.stop()
            self.otlp = None
        return entry


class OtlpExport:
    def __init__(self, provider: Any, endpoint: str) -> None:
        self.provider = provider
        self.endpoint = endpoint

    def stop(self) -> dict[str, Any]:
        try:
            flushed = bool(self.provider.force_flush(timeout_millis=5000))
        finally:
            self.provider.shutdown()
        return {"endpoint": self.endpoint, "flushed": flushed}


def start_otlp(endpoint: str, read: Callable[[], Snapshot], labels: dict[str, str],
               say: Callable[[str], None]) -> OtlpExport | None:
    """Push the snapshot's numbers to an OTLP/HTTP endpoint every OTLP_INTERVAL_S; None with
    a message when the optional extra is not installed."""
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.metrics import CallbackOptions, Observation
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
    except ImportError:
        say("perfkit: --otlp-endpoint needs the OpenTelemetry extra: "
            "pip install 'perfkit[otlp]'; not exporting to OTLP")
        return None

    url = endpoint.rstrip("/")
    if not url.endswith("/v1/metrics"):
        url += "/v1/metrics"
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=url),
                                           export_interval_millis=OTLP_INTERVAL_S * 1000)
    provider = MeterProvider(resource=Resource.create({"service.name": "perfkit", **labels}),
                             metric_readers=[reader])
    meter = provider.get_meter("perfkit")

    def per_endpoint(value: Callable[[Tally], float]) -> Callable[[CallbackOptions],
                                                                  list[Observation]]:
        def observe(options: CallbackOptions) -> list[Observation]:
            return [Observation(value(tally), {**labels, "endpoint": name})
                    for name, tally in read().endpoints.items()]
        return observe

    def run_gauge(value: Callable[[Snapshot], float | None]) -> Callable[[CallbackOptions],
                                                                         list[Observation]]:
        def observe(options: CallbackOptions) -> list[Observation]:
            number = value(read())
            return [] if number is None else [Observation(number, labels)]
        return observe

    meter.create_observable_counter("perfkit.requests", [per_endpoint(lambda t: t.count)])
    meter.create_observable_counter("perfkit.failures", [per_endpoint(lambda t: t.failures)])
    def percentile(q: float) -> Callable[[Tally], float]:
        return lambda tally: stats.percentile_ms(tally.hist, q) or 0.0

    for q in (50, 95, 99):
        meter.create_observable_gauge(f"perfkit.latency.p{q}", [per_endpoint(percentile(q))],
                                      unit="ms")
    meter.create_observable_gauge("perfkit.users", [run_gauge(lambda s: s.users)])
    meter.create_observable_gauge("perfkit.achieved_rps", [run_gauge(lambda s: s.achieved_rps)])
    meter.create_observable_gauge("perfkit.offered_rate", [run_gauge(lambda s: s.offered_rate)])
    meter.create_observable_counter("perfkit.alarms", [run_gauge(lambda s: s.alarms)])
    meter.create_observable_gauge("perfkit.target.cpu_percent",
                                  [run_gauge(lambda s: s.target.get("cpu_percent"))])
    meter.create_observable_gauge("perfkit.target.rss_bytes",
                                  [run_gauge(lambda s: s.target.get("rss_bytes"))])
    say(f"perfkit: pushing live metrics to {url} every {OTLP_INTERVAL_S:g} s")
    return OtlpExport(provider, url)


def request_tallies(totals: dict[str, Tally]) -> dict[str, Tally]:
    """The recorder's whole-run tallies of HTTP requests (per-job records are not requests)."""
    return {name: tally for name, tally in totals.items() if not is_job(name)}
