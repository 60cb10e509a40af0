"""history.html (every series of the history as a chart with axes and units, one point per run
with its date, commit and variants, thresholds and change points marked, filters, the numbers
in tables; one self-contained file drawn by its own script), history.md (a digest for a
pull-request comment) and the JSON of `perfkit history list/analyze`."""

import dataclasses
import datetime
import json
import os
import statistics
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2

from .. import rundir
from ..analysis.compare import TARGET
from ..analysis.history import TRACKED_METRICS, ChangePoint
from ..kpi_file import KpiTarget
from ..result import json_safe

HISTORY_HTML = "history.html"
HISTORY_MD = "history.md"
REPORT_HTML = "report.html"  # perfkit.report.REPORT_HTML (that package imports this one)

# metric -> (what the chart calls it, unit); in the order the filter lists them
METRIC_LABELS: dict[str, tuple[str, str]] = {
    "p50_ms": ("p50 latency", "ms"), "p95_ms": ("p95 latency", "ms"),
    "p99_ms": ("p99 latency", "ms"), "mean_ms": ("mean latency", "ms"),
    "max_ms": ("max latency", "ms"), "rps": ("throughput", "req/s"),
    "error_rate_percent": ("error rate", "%"), "count": ("requests", "requests"),
    "failures": ("failures", "requests"),
    "cpu_percent_mean": ("target CPU mean", "% of one core"),
    "rss_mb_peak": ("target RSS peak", "MB"),
}


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rundir.write_json(path, json_safe(data))


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M")


def format_run_line(run: dict[str, Any]) -> str:
    return (f"{_when(run.get('started_at'))}  {run['run_id']:40} {run.get('command') or '-':10} "
            f"{run.get('scenario') or '-':10} {run.get('git_revision') or '-':9} "
            f"{run.get('git_branch') or '-':12} variants {run.get('variants') or '-'}")


def format_change_point(cp: ChangePoint) -> str:
    revisions = ""
    if cp.revision_before or cp.revision_after:
        revisions = f"; commits {cp.revision_before or '?'}..{cp.revision_after or '?'}"
    return (f"{cp.direction:11} {cp.scenario} {cp.endpoint} {cp.metric}: "
            f"{cp.before:.4g} -> {cp.after:.4g} ({cp.change_percent:+.1f} %, p={cp.p_value:.2g}) "
            f"at run {cp.run_id} (after {cp.previous_run_id}{revisions})")


def change_point_record(cp: ChangePoint) -> dict[str, Any]:
    return dataclasses.asdict(cp)


def find_report_links(runs: list[dict[str, Any]], out: Path) -> list[str | None]:
    """Per run, the link from a page in `out` to the report.html in the run's directory (as
    the history recorded it, relative to the current directory), or None where that report
    is not on this machine (deleted, never written, or recorded elsewhere: a shared store)."""
    links: list[str | None] = []
    for run in runs:
        report = Path(str(run.get("source") or "")) / REPORT_HTML
        if not run.get("source") or not report.is_file():
            links.append(None)
            continue
        try:
            relative = os.path.relpath(report.resolve(), out.resolve())
        except ValueError:  # another drive on Windows: no relative link exists
            links.append(None)
            continue
        links.append(quote(Path(relative).as_posix()))
    return links


def series_thresholds(kpis: list[KpiTarget], endpoint: str, metric: str
                      ) -> list[dict[str, Any]]:
    """The KPI levels that apply to one history series: a KPI of the same metric on the same
    endpoint, or a target resource KPI of the same name (rss_mb_peak). The run-wide KPIs
    (throughput, error rate of all requests) judge a total the history does not keep per
    run, and the history's cpu_percent_mean is not the KPIs' busiest-process CPU: neither is
    drawn."""
    levels = []
    for kpi in kpis:
        applies = (kpi.endpoint == endpoint if kpi.endpoint is not None
                   else endpoint == TARGET)
        if kpi.metric != metric or not applies:
            continue
        for level, value in (("target", kpi.target), ("allowed", kpi.allowed)):
            if value is not None:
                levels.append({"kpi": kpi.name, "level": level, "value": value})
    return levels


def _round(value: float) -> float:
    """Four significant digits: what a chart or table shows, and a page of 1,000 runs small."""
    return float(f"{value:.4g}")


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _metric_order(metric: str) -> int:
    order = list(METRIC_LABELS)
    return order.index(metric) if metric in order else len(order)


def build_history_page(runs: list[dict[str, Any]],
                       series: dict[tuple[str, str, str], list[tuple[int, float]]],
                       change_points: list[ChangePoint], kpis: list[KpiTarget],
                       report_links: list[str | None]) -> dict[str, Any]:
    """What history.html shows: `data` (the page script's JSON: runs, series with their
    thresholds and change points) and the rows of its tables, already formatted."""
    by_key: dict[tuple[str, str, str], list[ChangePoint]] = {}
    for cp in change_points:
        by_key.setdefault((cp.scenario, cp.endpoint, cp.metric), []).append(cp)
    # series with a change first, then by scenario, endpoint (the target last) and metric
    keys = sorted((k for k, points in series.items() if points),
                  key=lambda k: (k not in by_key, k[0], k[1] == TARGET, k[1],
                                 _metric_order(k[2]), k[2]))
    data_runs = [{"id": str(run["run_id"]), "when": _when(run.get("started_at")),
                  "commit": run.get("git_revision") or "", "branch": run.get("git_branch") or "",
                  "variants": run.get("variants") or "", "verdict": run.get("verdict") or "",
                  "command": run.get("command") or "", "report": link}
                 for run, link in zip(runs, report_links, strict=True)]
    data_series: list[dict[str, Any]] = []
    rows = []
    for key in keys:
        scenario, endpoint, metric = key
        label, unit = METRIC_LABELS.get(metric, (metric, ""))
        points = series[key]
        values = [v for _, v in points]
        thresholds = series_thresholds(kpis, endpoint, metric)
        changes = by_key.get(key, [])
        indices = [i for i, _ in points]
        # A series of every run from its first on (the usual one) needs no list of run
        # indices: its first is enough, and a page of 1,000 runs about a third smaller.
        contiguous = indices == list(range(indices[0], indices[0] + len(indices)))
        data_series.append({
            "scenario": scenario, "endpoint": endpoint, "metric": metric, "label": label,
            "unit": unit, "higher_is_worse": TRACKED_METRICS.get(metric, metric != "rps"),
            **({"first": indices[0]} if contiguous else {"i": indices}),
            "v": [_round(v) for v in values],
            "thresholds": thresholds,
            "changes": [{"at": points[cp.index][0], "direction": cp.direction,
                         "before": _round(cp.before), "after": _round(cp.after),
                         "percent": round(cp.change_percent, 1), "p": float(f"{cp.p_value:.2g}"),
                         "commits": f"{cp.revision_before or '?'}..{cp.revision_after or '?'}"}
                        for cp in changes]})
        rows.append({"scenario": scenario, "endpoint": endpoint, "metric": metric,
                     "label": f"{label} ({unit})" if unit else label, "runs": len(points),
                     "newest": _number(values[-1]), "median": _number(statistics.median(values)),
                     "low": _number(min(values)), "high": _number(max(values)),
                     "kpi": ", ".join(f"{t['level']} {t['value']:g}" for t in thresholds) or "-",
                     "changes": ", ".join(f"{cp.direction} at {cp.run_id} "
                                          f"({cp.change_percent:+.1f} %)" for cp in changes)
                     or "-"})
    change_rows = [{"direction": cp.direction, "scenario": cp.scenario, "endpoint": cp.endpoint,
                    "metric": cp.metric, "level": f"{cp.before:.4g} → {cp.after:.4g}",
                    "change": f"{cp.change_percent:+.1f} %", "p": f"{cp.p_value:.2g}",
                    "runs": f"{cp.previous_run_id} → {cp.run_id}",
                    "commits": f"{cp.revision_before or '?'}..{cp.revision_after or '?'}"}
                   for cp in change_points]
    span = (f"{len(runs)} runs, {_when(runs[0].get('started_at'))} to "
            f"{_when(runs[-1].get('started_at'))} (UTC)" if runs else "no runs")
    metrics = sorted({(s["metric"], s["label"], s["unit"]) for s in data_series},
                     key=lambda m: (_metric_order(m[0]), m[0]))
    return {"data": {"runs": data_runs, "series": data_series,
                     "metrics": [(metric, f"{label} ({unit})" if unit else label)
                                 for metric, label, unit in metrics]}, "rows": rows,
            "change_rows": change_rows, "span": span,
            "regressions": sum(cp.direction == "regression" for cp in change_points),
            "improvements": sum(cp.direction == "improvement" for cp in change_points),
            "reports": sum(link is not None for link in report_links)}


def render_history_html(runs: list[dict[str, Any]],
                        series: dict[tuple[str, str, str], list[tuple[int, float]]],
                        change_points: list[ChangePoint], kpis: list[KpiTarget] | None = None,
                        report_links: list[str | None] | None = None) -> str:
    page = build_history_page(runs, series, change_points, kpis or [],
                              report_links or [None] * len(runs))
    # The data goes inside a <script> element: "</" would end it early, so it is escaped.
    data_json = json.dumps(json_safe(page.pop("data")), separators=(",", ":"),
                           ensure_ascii=False).replace("</", "<\\/")
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("perfkit.report", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
        lstrip_blocks=True)
    return env.get_template("history.html.j2").render(data_json=data_json, **page)


def render_history_markdown(runs: list[dict[str, Any]],
                            change_points: list[ChangePoint]) -> str:
    regressions = [cp for cp in change_points if cp.direction == "regression"]
    lines = [f"**perfkit history**: {len(runs)} runs, {len(regressions)} regression and "
             f"{len(change_points) - len(regressions)} improvement change points", ""]
    if change_points:
        lines += ["| | endpoint | metric | before → after | change | first run after | commits |",
                  "|---|---|---|---|---|---|---|"]
        for cp in change_points:
            mark = "🔴" if cp.direction == "regression" else "🟢"
            lines.append(f"| {mark} {cp.direction} | {cp.endpoint} | {cp.metric} | "
                         f"{cp.before:.4g} → {cp.after:.4g} | {cp.change_percent:+.1f} % | "
                         f"{cp.run_id} | {cp.revision_before or '?'}..{cp.revision_after or '?'} |")
    return "\n".join(lines) + "\n"


def write_history_report(runs: list[dict[str, Any]],
                         series: dict[tuple[str, str, str], list[tuple[int, float]]],
                         change_points: list[ChangePoint], out: Path,
                         json_path: Path | None = None,
                         kpis: list[KpiTarget] | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / HISTORY_HTML, out / HISTORY_MD]
    paths[0].write_text(render_history_html(runs, series, change_points, kpis,
                                            find_report_links(runs, out)), "utf-8")
    paths[1].write_text(render_history_markdown(runs, change_points), "utf-8")
    if json_path is not None:
        write_json(json_path, {"runs": len(runs),
                               "change_points": [change_point_record(cp) for cp in change_points]})
        paths.append(json_path)
    return paths
