"""The report stage: a run directory in, its verdict and report files out.

Writes summary.json (the machine-readable contract CI scripts read), summary.md, junit.xml
and report.html into the run directory, and the verdict into run.json.
"""

import importlib
import importlib.util
import logging
import math
from pathlib import Path
from typing import Any

from .. import rundir
from ..errors import ConfigError
from ..kpi import (
    JOB_NAMES,
    KpiResult,
    evaluate_kpis,
    load_kpi_targets,
    overall_verdict,
    summarize_judged,
)
from .junit import write_junit
from .markdown import render_markdown

log = logging.getLogger(__name__)

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
JUNIT_XML = "junit.xml"
REPORT_HTML = "report.html"

# A run that could not be carried to its end cannot pass, whatever its KPIs say.
FAILED_STATUSES = ("target_died", "failed")


def write_report(run_dir: Path, kpi_file: Path | None = None) -> tuple[str, Path]:
    """(verdict, path of report.html — or of summary.md while the HTML module is absent)."""
    run = rundir.load_run(run_dir)
    kpi_path = kpi_file if kpi_file is not None else _recorded_kpi_file(run)
    targets = load_kpi_targets(kpi_path)
    summaries = summarize_judged(run)
    results = evaluate_kpis(run, targets, summaries=summaries)
    summary = build_summary(run, results, summaries=summaries)
    summary["kpi_file"] = str(kpi_path) if kpi_path is not None else None
    verdict = summary["verdict"]

    rundir.write_json(run.path / SUMMARY_JSON, summary)
    (run.path / SUMMARY_MD).write_text(render_markdown(summary), "utf-8")
    cases: list[tuple[str, str | None, str | None]] = [
        (result.kpi.name, result.reason if result.verdict == "fail" else None,
         result.reason if result.verdict == "missing" else None)
        for result in results]
    status = summary["status"]
    cases.append(("run status", f"the run ended with status {status}: {summary['message']}"
                  if status in FAILED_STATUSES else None, None))
    write_junit(run.path / JUNIT_XML, f"perfkit {summary['run_id']}", cases)

    report_path = run.path / SUMMARY_MD
    # The HTML renderer is a separate module that may not be installed in every checkout yet;
    # an import error inside it is a real error and propagates.
    if importlib.util.find_spec(f"{__name__}.html") is not None:
        html = importlib.import_module(f"{__name__}.html")
        report_path = run.path / REPORT_HTML
        report_path.write_text(html.render_html(run, results, summary), "utf-8")
    else:
        log.warning("perfkit.report.html is not available: no report.html written")

    meta = dict(run.meta)
    meta["verdict"] = verdict
    rundir.write_json(run.path / rundir.RUN_JSON, meta)
    return verdict, report_path


def _recorded_kpi_file(run: rundir.Run) -> Path | None:
    recorded = run.meta.get("kpi_file")
    if not recorded:
        return None
    for candidate in (Path(recorded), run.path / recorded):
        if candidate.is_file():
            return candidate
    # Falling back to the defaults would judge the run by other targets than it ran with.
    raise ConfigError(f"{run.path}/run.json names KPI file {recorded}, which does not exist; "
                      f"pass --kpi FILE")


def build_summary(run: rundir.Run, results: list[KpiResult], *,
                  summaries: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The content of summary.json: field names are a contract (issue 4), add, never rename.
    `summaries`: kpi.summarize_judged(run), when the caller already has it."""
    start, end = rundir.judged_window(run)
    duration_s = end - start
    if summaries is None:
        summaries = summarize_judged(run)
    endpoints = {name: s for name, s in summaries.items() if name not in JOB_NAMES}
    jobs = {name: {"count": s["count"],
                   **{key.replace("_ms", "_s"): (None if s[key] is None else s[key] / 1000.0)
                      for key in ("mean_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms")}}
            for name, s in summaries.items() if name in JOB_NAMES}
    count = sum(ep["count"] for ep in endpoints.values())
    failures = sum(ep["failures"] for ep in endpoints.values())

    meta = run.meta
    status = meta.get("status") or "unknown"
    worst = worst_offender(results)
    verdict = overall_verdict(results)
    if status in FAILED_STATUSES:
        verdict = "fail"
        reason = f"the run ended with status {status}" + (
            f": {meta.get('message')}" if meta.get("message") else "")
    elif worst is not None:
        reason = f"{worst.kpi.name}: {worst.reason}"
    else:
        missing = sum(1 for result in results if result.verdict == "missing")
        reason = "every measured KPI met its target" + (
            f" ({missing} of {len(results)} could not be measured)" if missing else "")

    summary = {
        "run_id": meta.get("run_id") or run.path.name,
        "verdict": verdict,
        "verdict_reason": reason,
        "status": status,
        "message": meta.get("message") or "",
        "command": meta.get("command"),
        "scenario": meta.get("scenario"),
        "target": meta.get("target"),
        "simulated": bool(meta.get("simulated", False)),
        "window": {"start": start, "end": end, "duration_s": duration_s,
                   "warmup_s": start - float(meta["started_at"])},
        "totals": {"count": count, "failures": failures,
                   "rps": count / duration_s if duration_s > 0 else None,
                   "error_rate_percent": 100.0 * failures / count if count else None},
        "endpoints": endpoints,
        "jobs": jobs,
        "kpis": [kpi_record(result) for result in results],
        "counts": {v: sum(1 for r in results if r.verdict == v)
                   for v in ("pass", "warn", "fail", "missing")},
        "worst": kpi_record(worst) if worst is not None else None,
        "loadgen": meta.get("loadgen"),
        "kpi_file": meta.get("kpi_file"),
    }
    return _json_safe(summary)


def kpi_record(result: KpiResult) -> dict[str, Any]:
    kpi = result.kpi
    return {"name": kpi.name, "metric": kpi.metric, "endpoint": kpi.endpoint,
            "value": result.value, "target": kpi.target, "allowed": kpi.allowed,
            "unit": kpi.unit, "bound": kpi.bound, "verdict": result.verdict,
            "margin_percent": result.margin_percent, "reason": result.reason,
            "source": kpi.source}


def worst_offender(results: list[KpiResult]) -> KpiResult | None:
    """The failing KPI (else the warning one) furthest beyond its target, relatively."""
    for verdict in ("fail", "warn"):
        offenders = [result for result in results if result.verdict == verdict]
        if offenders:
            # No margin means a zero target: any excess over zero is infinitely relative.
            return max(offenders, key=lambda r: math.inf if r.margin_percent is None
                       else -r.margin_percent)
    return None


def _json_safe(value: Any) -> Any:
    """NaN is not JSON: what was not measured is null (docs/run-directory.md)."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item") and not isinstance(value, str):
        return _json_safe(value.item())  # numpy scalars
    return value
