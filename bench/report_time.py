"""Report generation time and size for a synthetic hour-long run (issue 4's benchmark).

    .venv/bin/python bench/report_time.py [--duration-s 3600] [--keep DIR]

A SIMULATED run directory (tests/synthetic.py): 500 RPS in total over 4 endpoints, 1 s buckets,
one hour, resources every second, app metrics every 5 s. Writing it is not timed. Then, timed
one after the other: loading the run, KPI evaluation, the chart data alone, render_html (the
chart data included), and the whole `perfkit.report.rebuild_report` (summary.json, summary.md,
junit.xml, report.html) as `perfkit report RUN` runs it. Prints the times and report.html's size.
"""

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perfkit import rundir  # noqa: E402
from perfkit.analysis.kpi import evaluate_kpis, judge_run  # noqa: E402
from perfkit.kpi_file import load_kpi_targets  # noqa: E402
from perfkit.report import REPORT_HTML, charts, rebuild_report  # noqa: E402
from perfkit.report.html import render_html  # noqa: E402
from tests.synthetic import EndpointSpec, RunSpec, make_run  # noqa: E402

ENDPOINTS = {
    "GET /api/v1/health": EndpointSpec(rps=150, median_ms=3),
    "POST /api/v1/research/products": EndpointSpec(rps=50, median_ms=40, error_rate=0.001),
    "GET /api/v1/research/products/{id}/status": EndpointSpec(rps=250, median_ms=8),
    "GET /api/v1/research/products/{id}": EndpointSpec(rps=50, median_ms=30),
}


def timed(label: str, results: list[tuple[str, float, float]], function, *args):  # type: ignore[no-untyped-def]
    """Wall and CPU time: on a shared machine the CPU time is the steadier figure."""
    started, started_cpu = time.perf_counter(), time.process_time()
    value = function(*args)
    results.append((label, time.perf_counter() - started, time.process_time() - started_cpu))
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=int, default=3600)
    parser.add_argument("--keep", type=Path, help="write the run directory here and keep it")
    args = parser.parse_args()

    base = args.keep or Path(tempfile.mkdtemp(prefix="perfkit-report-bench-"))
    path = base / "hour" if args.keep else base
    try:
        started = time.perf_counter()
        make_run(path, RunSpec(duration_s=args.duration_s, endpoints=ENDPOINTS, warmup_s=30,
                               batch_10_completion_s=22.0, seed=7))
        generation_s = time.perf_counter() - started
        latency_mb = (path / rundir.LATENCY).stat().st_size / 1e6

        times: list[tuple[str, float, float]] = []
        run = timed("load_run", times, rundir.load_run, path)
        targets = load_kpi_targets(None)
        timed("evaluate_kpis", times, evaluate_kpis, run, targets)
        timed("judge_run (KPIs and summary)", times, judge_run, run, targets)
        summary = run.summary
        start, end = float(run.meta.started_at), float(run.meta.ended_at or run.meta.started_at)
        window_s = charts.choose_window_s(end - start)
        requests = run.latency[~run.latency["name"].str.startswith(("job_", "batch_"))]
        binned = timed("chart data (bin_latency)", times, charts.bin_latency, requests, start,
                       end, window_s)
        html = timed("render_html (incl. chart data)", times, render_html, run)
        timed("rebuild_report (whole report stage)", times, rebuild_report, path)
        size_bytes = (path / REPORT_HTML).stat().st_size

        print(f"perfkit report benchmark — SIMULATED run, {args.duration_s} s, "
              f"{sum(e.rps for e in ENDPOINTS.values()):.0f} RPS over {len(ENDPOINTS)} "
              f"endpoints, 1 s buckets")
        print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}; python {platform.python_version()}")
        print(f"run data: {len(run.latency):,} histogram buckets, latency.jsonl "
              f"{latency_mb:.1f} MB, {int(run.latency['count'].sum()):,} requests "
              f"(generated in {generation_s:.1f} s, not timed)")
        print(f"chart resolution: {window_s:g} s windows, "
              f"{binned['t_s'].nunique()} points per line")
        print()
        print(f"  {'step':<36} {'wall':>8} {'CPU':>8}")
        for label, wall_s, cpu_s in times:
            print(f"  {label:<36} {wall_s:7.2f}s {cpu_s:7.2f}s")
        print()
        print(f"report.html: {size_bytes / 1e6:.2f} MB ({size_bytes:,} bytes; "
              f"render_html returned {len(html.encode()):,} bytes), verdict {summary['verdict']}")
        print(f"aim: generation in seconds, size < 2 MB -> "
              f"{'size OK' if size_bytes < 2e6 else 'TOO BIG'}")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
