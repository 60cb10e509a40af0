"""Synthetic run directories for tests and benchmarks: SIMULATED data, labelled so in run.json.

Latencies are drawn from a log-normal distribution per endpoint with a fixed seed, so a test
knows the true distribution and can compare perfkit's figures with numpy's on the same samples.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from perfkit import rundir
from perfkit.analysis import stats
from perfkit.analysis.compare import RESOURCE_METRICS, TARGET
from perfkit.analysis.history import STORED_ENDPOINT_KEYS

START_T = 1_764_130_000
# Seconds of buckets per latency.bin block, as the recorder writes them.
BLOCK_S = 60


@dataclass
class EndpointSpec:
    rps: float = 50.0
    median_ms: float = 20.0
    sigma: float = 0.4           # log-normal shape
    error_rate: float = 0.0


@dataclass
class RunSpec:
    duration_s: int = 60
    endpoints: dict[str, EndpointSpec] = field(default_factory=lambda: {
        "GET /api/v1/health": EndpointSpec(rps=40, median_ms=3),
        "POST /api/v1/research/products": EndpointSpec(rps=5, median_ms=40),
        "GET /api/v1/research/products/{id}/status": EndpointSpec(rps=20, median_ms=8),
        "GET /api/v1/research/products/{id}": EndpointSpec(rps=5, median_ms=30),
    })
    job_completion_s: float | None = 20.0  # median, or None for no jobs
    batch_10_completion_s: float | None = None  # median of 10-item jobs, or None for none
    warmup_s: float = 0.0
    warmup_slowdown: float = 1.0  # request latency multiplier during the warm-up
    latency_factor: float = 1.0   # multiplies every request latency of the run (a slower build)
    noise_sigma: float = 0.0      # per-second log-normal factor on all latencies (machine noise)
    rss_mb: float = 120.0
    rss_growth_mb_per_h: float = 0.0
    cpu_percent: float = 20.0
    with_app: bool = True
    scenario: str = "research"
    seed: int = 1
    start_t: int = START_T        # when the run started (epoch s): a history's runs differ
    git_revision: str | None = None
    variants: tuple[str, ...] = ()


def make_run(path: Path, spec: RunSpec | None = None) -> dict[str, np.ndarray]:
    """Write a simulated run directory; returns the raw latency samples (ms) per name."""
    spec = spec or RunSpec()
    rng = np.random.default_rng(spec.seed)
    start_t = spec.start_t
    path.mkdir(parents=True, exist_ok=True)
    samples: dict[str, list[np.ndarray]] = {}
    lines: list[rundir.LatencyRecord] = []
    for t in range(start_t, start_t + spec.duration_s):
        if lines and (t - start_t) % BLOCK_S == 0:
            rundir.append_latency(path / rundir.LATENCY, lines)
            lines = []
        slowdown = spec.warmup_slowdown if t - start_t < spec.warmup_s else 1.0
        slowdown *= spec.latency_factor
        if spec.noise_sigma:
            slowdown *= rng.lognormal(0.0, spec.noise_sigma)
        for name, ep in spec.endpoints.items():
            count = rng.poisson(ep.rps)
            values = rng.lognormal(np.log(ep.median_ms * slowdown), ep.sigma, count)
            samples.setdefault(name, []).append(values)
            lines.append(_bucket(t, name, values, rng.binomial(count, ep.error_rate)))
        if spec.job_completion_s and (t - start_t) % 5 == 4:
            values = rng.lognormal(np.log(spec.job_completion_s * 1000), 0.2, 1)
            samples.setdefault("job_completion", []).append(values)
            lines.append(_bucket(t, "job_completion", values, 0))
        if spec.batch_10_completion_s and (t - start_t) % 10 == 9:
            values = rng.lognormal(np.log(spec.batch_10_completion_s * 1000), 0.2, 1)
            samples.setdefault("batch_10_completion", []).append(values)
            lines.append(_bucket(t, "batch_10_completion", values, 0))
    rundir.append_latency(path / rundir.LATENCY, lines)

    seconds = np.arange(spec.duration_s)
    rss = spec.rss_mb + spec.rss_growth_mb_per_h * seconds / 3600 + rng.normal(0, 1, seconds.size)
    cpu = np.clip(rng.normal(spec.cpu_percent, 3, seconds.size), 0, None)
    with (path / rundir.RESOURCES).open("w") as f:
        f.write("t,procs,cpu_percent,cpu_busiest_percent,cpu_machine_percent,rss_mb,uss_mb,"
                "threads,open_files,"
                "read_mb_s,write_mb_s,ctx_switches_s,sys_cpu_percent,sys_memory_percent,"
                "sys_disk_read_mb_s,sys_disk_write_mb_s,sys_net_sent_mb_s,sys_net_recv_mb_s\n")
        for i in seconds:
            f.write(f"{start_t + i},2,{cpu[i]:.1f},{cpu[i] * 0.75:.1f},{cpu[i] / 2:.1f},"
                    f"{rss[i]:.1f},{rss[i] * 0.8:.1f},"
                    f"12,9,0.0,0.1,150,{cpu[i] + 5:.1f},40.0,0.0,0.2,1.5,1.5\n")
    if spec.with_app:
        with (path / rundir.APP).open("w") as f:
            f.write("t,db_total_queries,db_average_ms,db_max_ms,db_slow_queries_count,"
                    "research_avg_ms,api_avg_ms,total_requests\n")
            for i in range(0, spec.duration_s, 5):
                f.write(f"{start_t + i},{i * 40},1.2,130.0,{i // 20},2500.0,9.0,{i * 70}\n")
        (path / rundir.SLOW_QUERIES).write_text(json.dumps(
            [{"query": "SELECT * FROM items WHERE job_id = ?", "time_ms": 130.0,
              "timestamp": start_t + 12}]))
    with (path / rundir.TIMELINE).open("w") as f:
        f.write("t,users,rate,loadgen_cpu_percent\n")
        for i in seconds:
            f.write(f"{start_t + i},10,,35.0\n")
    rundir.write_json(path / rundir.FAILURES, [])
    rundir.write_json(path / rundir.RUN_JSON, {
        "run_id": path.name, "command": "load", "simulated": True,
        "argv": ["tests/synthetic.py"], "scenario": spec.scenario,
        "target": "http://127.0.0.1:1 (simulated)", "target_managed": False, "target_pid": None,
        "variants": list(spec.variants), "latency_profile": None,
        "settings": {"users": 10, "spawn_rate": 10, "duration_s": spec.duration_s, "rate": None,
                     "workers": 0, "warmup_s": spec.warmup_s, "bucket_s": 1},
        "kpi_file": None, "git_revision": spec.git_revision,
        "machine": {"hostname": "simulated", "cpu_count": 2, "memory_mb": 24000,
                    "platform": "simulated"},
        "versions": {"perfkit": "0.1.0"},
        "started_at": float(start_t), "ended_at": float(start_t + spec.duration_s),
        "status": "completed", "message": "",
        "collectors": {"system": {"available": True, "cpu_s": 0.5, "samples": spec.duration_s,
                                  "interval_s": 1.0, "note": "simulated"},
                       "app": {"available": spec.with_app, "cpu_s": 0.1,
                               "note": "simulated" if spec.with_app else "not available"}},
        "loadgen": {"saturated": False, "max_cpu_percent": 35.0},
    })
    return {name: np.concatenate(parts) for name, parts in samples.items()}


def _bucket(t: int, name: str, values_ms: np.ndarray, failures: int) -> rundir.LatencyRecord:
    hist = stats.new_histogram()
    for value_us, n in zip(*np.unique(np.maximum(np.round(values_ms * 1000), 1).astype(np.int64),
                                      return_counts=True), strict=True):
        hist.record_value(int(value_us), int(n))
    return rundir.LatencyRecord(t, name, int(values_ms.size), int(failures),
                                *stats.cells_of(hist))


def simulated_history(n_runs: int, endpoints: int, seed: int = 0
                      ) -> tuple[list[dict[str, Any]], dict[tuple[str, str, str],
                                                            list[tuple[int, float]]]]:
    """A history store's runs and series as perfkit.history.list_runs/load_series return
    them, SIMULATED: `n_runs` runs an hour apart of one scenario with `endpoints` endpoints,
    every metric perfkit.analysis.history.run_metrics stores for each, values with noise in
    every digit (what a page of the history must carry)."""
    rng = np.random.default_rng(seed)
    runs = [{"run_id": f"2026-{i:04d}-load-research", "started_at": START_T + i * 3600,
             "git_revision": f"{rng.integers(16 ** 7):07x}", "git_branch": "main",
             "variants": "n_plus_one" if i % 7 == 0 else "", "verdict": "pass",
             "command": "load", "source": None} for i in range(n_runs)]
    series: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for e in range(endpoints):
        for metric in STORED_ENDPOINT_KEYS:
            values = rng.lognormal(3, 0.3, n_runs)
            series["research", f"GET /api/v1/endpoint-{e}", metric] = list(
                enumerate(values.tolist()))
    for metric in RESOURCE_METRICS:
        series["research", TARGET, metric] = list(enumerate(
            rng.lognormal(4, 0.1, n_runs).tolist()))
    return runs, series


def rewrite_as_jsonl(path: Path) -> None:
    """Turn the run directory at `path` into one of the format before latency.bin: one
    latency.jsonl line per bucket, its histogram base64-encoded by HdrHistogram."""
    latency = rundir.load_run(path).latency
    hists = [stats.encode_histogram(stats.merge_histograms([body])) for body in latency["hist"]]
    rundir.append_jsonl(path / rundir.LATENCY_JSONL, latency.assign(hist=hists).to_dict("records"))
    (path / rundir.LATENCY).unlink()
