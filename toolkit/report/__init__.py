"""The report stage: a judged RunResult in, its files out.

Writes summary.json (the machine-readable contract CI scripts read), summary.md, junit.xml and
report.html into the run directory. `rebuild_report` judges a run directory read back from
disk (`perfkit report`) and writes the same files.
"""

import logging
from pathlib import Path

from .. import rundir
from ..analysis.availability import latency_limits
from ..analysis.endurance import describe_memory
from ..analysis.kpi import judge_run
from ..analysis.stats import HistogramError
from ..errors import ConfigError, ReportError
from ..kpi_file import load_kpi_targets
from ..result import RunMeta, RunResult
from .html import render_html
from .junit import write_junit
from .markdown import render_markdown
from .stress import CHART_SVG, draw_stress_chart

log = logging.getLogger(__name__)

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
JUNIT_XML = "junit.xml"
REPORT_HTML = "report.html"


def write_report(run: RunResult) -> Path:
    """Write the report files of a judged run; returns the path of report.html."""
    assert run.verdict is not None, "judge the run (analysis.kpi.judge_run) before reporting"
    rundir.write_json(run.run_dir / SUMMARY_JSON, run.summary)
    rundir.write_text(run.run_dir / SUMMARY_MD, render_markdown(run.summary))
    stress = run.meta.stress
    cases: list[tuple[str, str | None, str | None]] = [
        (result.kpi.name, result.reason if result.verdict == "fail" else None,
         result.reason if result.verdict == "missing" else None)
        for result in run.kpis] if stress is None else [
        # A stress run's KPIs cover the whole ramp, breaking step included: information, so
        # junit fails with the verdict (the capacity result) and not with them.
        (result.kpi.name, None, None if result.verdict == "pass" else
         f"{result.verdict} over the whole ramp, breaking step included (information): "
         f"{result.reason}") for result in run.kpis]
    status = run.meta.status
    # A run that did not complete fails (exit code 1); an interrupted one is judged as it is.
    cases.append(("run status", f"the run ended with status {status}: {run.meta.message}"
                  if status not in ("completed", "interrupted") else None, None))
    if stress is not None:
        cases.append(("stress capacity", run.verdict_reason if run.verdict == "fail" else None,
                      None))
    if run.meta.endurance is not None:
        memory, budget = run.meta.endurance["memory"], run.meta.endurance["error_budget"]
        cases.append(("endurance memory growth",
                      describe_memory(memory) if memory["verdict"] == "leak" else None,
                      describe_memory(memory) if memory["verdict"] in ("inconclusive", "missing")
                      else None))
        used = budget.get("used_percent")
        cases.append(("endurance error budget",
                      f"{budget['failures']} failures, {budget['allowed_failures'] or 0:.1f} "
                      f"allowed" if used is not None and used > 100.0 else None,
                      None if used is not None else budget.get("note") or "not measurable"))
    for fault in run.summary.get("faults") or []:
        # A fault whose command failed fails the verdict (analysis/kpi.py); one the run ended
        # before is skipped; its recovery is the recovery KPI's case.
        cases.append((f"fault {fault['index']}: {fault['what']}",
                      fault["problem"] or None,
                      "not reached: the run ended first"
                      if fault["status"] == "not_reached" else None))
    # junit.xml fails exactly when the verdict does: a failing verdict no case above explains
    # (the scenario raised, say) is a case of its own.
    if run.verdict == "fail" and not any(failure for _, failure, _ in cases):
        cases.append(("verdict", run.verdict_reason, None))
    errors = [("verdict", run.verdict_reason)] if run.verdict == "error" else []
    write_junit(run.run_dir / JUNIT_XML, f"perfkit {run.run_id}", cases, errors)
    if run.meta.stress is not None:
        rundir.write_text(run.run_dir / CHART_SVG, draw_stress_chart(run.meta.stress))
    report_path = run.run_dir / REPORT_HTML
    rundir.write_text(report_path, render_html(run))
    return report_path


def rebuild_report(run_dir: Path, kpi_file: Path | None = None) -> RunResult:
    """`perfkit report`: judge a run directory again (with `kpi_file`, else the KPI file the
    run recorded) and rewrite its report files and run.json's verdict."""
    run_dir = Path(run_dir)
    meta = rundir.load_meta(run_dir)
    kpi_path = kpi_file if kpi_file is not None else _recorded_kpi_file(run_dir, meta)
    targets = load_kpi_targets(kpi_path)
    # The report reads the latency digest and the availability's counts, computed in one
    # pass over the buckets, not each bucket's histogram.
    run = rundir.load_run(run_dir, meta, histograms=False,
                          latency_limits=latency_limits(targets))
    try:
        judge_run(run, targets)
        run.summary["kpi_file"] = str(kpi_path) if kpi_path is not None else None
        write_report(run)
    except HistogramError as exc:
        raise ReportError(f"{run_dir}/{rundir.LATENCY} holds a damaged histogram: {exc}") \
            from exc
    run.meta.verdict = run.verdict
    rundir.write_meta(run.run_dir, run.meta)
    return run


def _recorded_kpi_file(run_dir: Path, meta: RunMeta) -> Path | None:
    recorded = meta.kpi_file
    if not recorded:
        return None
    for candidate in (Path(recorded), run_dir / recorded):
        if candidate.is_file():
            return candidate
    # Falling back to the defaults would judge the run by other targets than it ran with.
    raise ConfigError(f"{run_dir}/run.json names KPI file {recorded}, which does not "
                      f"exist; pass --kpi FILE")
