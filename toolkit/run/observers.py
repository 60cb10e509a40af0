"""The run's view of the target beyond psutil and the research API's endpoints, and its own
numbers served live: which collectors and exporters `--metrics-path`, `--db-url`,
`--redis-url`, `--prometheus-port` and `--otlp-endpoint` start (docs/observability.md)."""

import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..collectors.postgres import PostgresCollector
from ..collectors.prometheus import PrometheusCollector, metrics_url
from ..collectors.redis_info import RedisCollector
from ..collectors.sampling import Sampler
from ..settings import Observability
from .exporter import LiveExport, Snapshot, request_tallies

if TYPE_CHECKING:
    from locust.env import Environment

    from .runner import Plan, RunState, Say

MB = 1024 * 1024


def make_observers(observe: Observability, target_url: str, run_dir: Path) -> dict[str, Sampler]:
    """The extra collectors of a run, by their run.json name (not started)."""
    observers: dict[str, Sampler] = {
        "prometheus": PrometheusCollector(metrics_url(target_url, observe.metrics_path), run_dir,
                                          authorization=observe.metrics_auth)}
    if observe.db_url:
        observers["postgres"] = PostgresCollector(observe.db_url, run_dir)
    if observe.redis_url:
        observers["redis"] = RedisCollector(observe.redis_url, run_dir)
    return observers


def read_target(state: "RunState") -> dict[str, float]:
    """The target's latest CPU and memory: psutil's where it samples a PID, else its own
    Prometheus process metrics."""
    sampled = state.system.latest() or {}
    if sampled.get("rss_mb") is not None:
        return {key: value for key, value in (
            ("cpu_percent", sampled.get("cpu_busiest_percent")),
            ("rss_bytes", sampled["rss_mb"] * MB)) if value is not None}
    prometheus = state.observers.get("prometheus")
    scraped = (prometheus.latest() if prometheus is not None else None) or {}
    found = {}
    if scraped.get("cpu_percent") is not None:
        found["cpu_percent"] = float(scraped["cpu_percent"])
    if scraped.get("rss_mb") is not None:
        found["rss_bytes"] = float(scraped["rss_mb"]) * MB
    return found


def start_export(observe: Observability, state: "RunState", env: "Environment", plan: "Plan",
                 labels: dict[str, str], say: "Say") -> LiveExport | None:
    if observe.prometheus_port is None and not observe.otlp_endpoint:
        return None

    def read() -> Snapshot:
        elapsed_s = max(0.0, time.time() - state.started_at)
        due = [step for step in plan.steps if step[0] <= elapsed_s]
        runner = env.runner
        return Snapshot(
            elapsed_s=elapsed_s,
            users=runner.user_count if runner is not None else 0,
            offered_rate=due[-1][2] if due else None,
            achieved_rps=state.recorder.rps(5),
            alarms=state.alarms.raised if state.alarms is not None else 0,
            endpoints=request_tallies(state.recorder.totals),
            target=read_target(state))

    return LiveExport(read, labels, observe.prometheus_port, observe.otlp_endpoint, say)
