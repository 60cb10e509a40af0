"""Report generation time, memory and size for a synthetic long run (issues 4 and 24).

    .venv/bin/python bench/report_time.py [--duration-s 3600] [--keep DIR] [--run-dir DIR]

A SIMULATED run directory (tests/synthetic.py): 500 RPS in total over 4 endpoints, 1 s buckets,
`--duration-s` long, resources every second, app metrics every 5 s. Writing it is not timed
(`--run-dir` reuses one, e.g. a latency.jsonl directory kept from an older perfkit).

The report stage — `perfkit.report.rebuild_report` as `perfkit report RUN` runs it: reading
the run, KPIs, summary.json, summary.md, junit.xml, report.html — runs in a child process of
its own, so its CPU time and peak memory (getrusage of the child: user + system CPU, max RSS)
are the stage's alone, not the benchmark's, which generated the data. Then, in this process,
the steps one after the other (wall and CPU): loading the run (with its latency digest),
KPI evaluation, judge_run, render_html.
"""

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from perfkit import rundir  # noqa: E402
from perfkit.analysis.kpi import evaluate_kpis, judge_run  # noqa: E402
from perfkit.kpi_file import load_kpi_targets  # noqa: E402
from perfkit.report import REPORT_HTML  # noqa: E402
from perfkit.report.html import render_html  # noqa: E402
from tests.synthetic import EndpointSpec, RunSpec, make_run  # noqa: E402

ENDPOINTS = {
    "GET /api/v1/health": EndpointSpec(rps=150, median_ms=3),
    "POST /api/v1/research/products": EndpointSpec(rps=50, median_ms=40, error_rate=0.001),
    "GET /api/v1/research/products/{id}/status": EndpointSpec(rps=250, median_ms=8),
    "GET /api/v1/research/products/{id}": EndpointSpec(rps=50, median_ms=30),
}
# The child prints its peak RSS: VmHWM of its own address space (Linux). getrusage's
# ru_maxrss would not do: a child forked from this process inherits its high-water mark.
REPORT_STAGE = ("import sys, pathlib; from perfkit.report import rebuild_report; "
                "rebuild_report(sys.argv[1]); "
                "print(next(line.split()[1] for line in pathlib.Path('/proc/self/status')"
                ".read_text().splitlines() if line.startswith('VmHWM:')))")


def timed(label: str, results: list[tuple[str, float, float]], function, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Wall and CPU time: on a shared machine the CPU time is the steadier figure."""
    started, started_cpu = time.perf_counter(), time.process_time()
    value = function(*args, **kwargs)
    results.append((label, time.perf_counter() - started, time.process_time() - started_cpu))
    return value


def measure_report_stage(path: Path) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MB) of `perfkit report`'s work on `path` (Python's start and
    perfkit's imports included), in a child process. The child's CPU is read with wait4, so
    nothing else this process started counts."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", REPORT_STAGE, str(path)], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)},
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    peak_kb = child.stdout.read().strip()
    _, status, usage = os.wait4(child.pid, 0)
    wall_s = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"the report stage failed with exit code {child.returncode}")
    return wall_s, usage.ru_utime + usage.ru_stime, int(peak_kb) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=int, default=3600)
    parser.add_argument("--keep", type=Path, help="write the run directory here and keep it")
    parser.add_argument("--run-dir", type=Path, help="report this run directory instead")
    args = parser.parse_args()

    base = args.keep or Path(tempfile.mkdtemp(prefix="perfkit-report-bench-"))
    path = args.run_dir or (base / "run" if args.keep else base)
    try:
        generation_s = None
        if args.run_dir is None:
            started = time.perf_counter()
            make_run(path, RunSpec(duration_s=args.duration_s, endpoints=ENDPOINTS,
                                   warmup_s=30, batch_10_completion_s=22.0, seed=7))
            generation_s = time.perf_counter() - started
        stored = [p for p in (path / rundir.LATENCY, path / rundir.LATENCY_JSONL) if p.exists()]

        stage_wall_s, stage_cpu_s, stage_rss_mb = measure_report_stage(path)
        size_bytes = (path / REPORT_HTML).stat().st_size

        times: list[tuple[str, float, float]] = []
        run = timed("load_run (one pass, digest)", times, rundir.load_run, path,
                    histograms=False)
        targets = load_kpi_targets(None)
        timed("evaluate_kpis", times, evaluate_kpis, run, targets)
        timed("judge_run (KPIs and summary)", times, judge_run, run, targets)
        summary = run.summary
        timed("render_html (incl. chart data)", times, render_html, run)

        duration_s = float(run.meta.ended_at or run.meta.started_at) - float(run.meta.started_at)
        assert run.digest is not None
        print(f"perfkit report benchmark — SIMULATED run, {duration_s:.0f} s, "
              f"{sum(e.rps for e in ENDPOINTS.values()):.0f} RPS over {len(ENDPOINTS)} "
              f"endpoints, 1 s buckets")
        print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}; python {platform.python_version()}")
        files = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in stored)
        generated = (f" (generated in {generation_s:.1f} s, not timed)"
                     if generation_s is not None else "")
        print(f"run data: {len(run.latency):,} histogram buckets, {files}, "
              f"{int(run.latency['count'].sum()):,} requests{generated}")
        chart = run.digest.chart
        print(f"chart resolution: {run.digest.span.window_s:g} s windows, "
              f"{chart['t_s'].nunique() if not chart.empty else 0} points per line")
        print()
        print(f"report stage (rebuild_report in a child process): {stage_cpu_s:.2f} s CPU, "
              f"{stage_wall_s:.2f} s wall, peak RSS {stage_rss_mb:.0f} MB")
        print(f"aim: < 10 s CPU and < 500 MB -> "
              f"{'OK' if stage_cpu_s < 10 and stage_rss_mb < 500 else 'MISSED'}")
        print()
        print(f"  {'step (in this process)':<36} {'wall':>8} {'CPU':>8}")
        for label, wall_s, cpu_s in times:
            print(f"  {label:<36} {wall_s:7.2f}s {cpu_s:7.2f}s")
        print()
        print(f"report.html: {size_bytes / 1e6:.2f} MB ({size_bytes:,} bytes), "
              f"verdict {summary['verdict']}")
        print(f"this process's own peak RSS (generation included): "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    finally:
        if not args.keep and args.run_dir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
