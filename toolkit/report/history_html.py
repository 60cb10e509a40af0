"""history.html (every metric's series as small multiples, change points and commit ranges
marked; one self-contained file), history.md (a digest for a pull-request comment) and the
JSON of `perfkit history list/analyze`."""

import dataclasses
import datetime
import html
from pathlib import Path
from typing import Any

from .. import rundir
from ..analysis.history import TRACKED_METRICS, ChangePoint
from ..result import json_safe

HISTORY_HTML = "history.html"
HISTORY_MD = "history.md"
_PANEL_W, _PANEL_H, _PAD = 300, 110, 8


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


def _panel(key: tuple[str, str, str], points: list[tuple[int, float]], n_runs: int,
           marks: list[ChangePoint], runs: list[dict[str, Any]]) -> str:
    scenario, endpoint, metric = key
    values = [v for _, v in points]
    low, high = min(values), max(values)
    span = (high - low) or (abs(high) or 1.0)
    width = _PANEL_W - 2 * _PAD

    def x(i: int) -> float:
        return _PAD + (i / max(n_runs - 1, 1)) * width

    def y(v: float) -> float:
        return _PANEL_H - _PAD - (v - low) / span * (_PANEL_H - 2 * _PAD - 14)

    path = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in points)
    dots = "".join(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="1.8"><title>'
                   f'{html.escape(str(runs[i]["run_id"]))} ({runs[i].get("git_revision") or "?"})'
                   f': {v:.4g}</title></circle>' for i, v in points)
    lines = []
    for cp in marks:
        at = points[cp.index][0]
        colour = "#c62828" if cp.direction == "regression" else "#2e7d32"
        lines.append(f'<line x1="{x(at) - 0.5 * width / max(n_runs - 1, 1):.1f}" y1="14" '
                     f'x2="{x(at) - 0.5 * width / max(n_runs - 1, 1):.1f}" y2="{_PANEL_H}" '
                     f'stroke="{colour}" stroke-dasharray="3 2"><title>'
                     f'{html.escape(format_change_point(cp))}</title></line>')
    border = "#c62828" if any(cp.direction == "regression" for cp in marks) else "#ddd"
    label = html.escape(f"{endpoint} {metric}")
    return (f'<figure style="border:1px solid {border}"><svg width="{_PANEL_W}" '
            f'height="{_PANEL_H}" role="img" aria-label="{label}">'
            f'<text x="{_PAD}" y="11" font-size="10">{label}</text>'
            f'<text x="{_PANEL_W - _PAD}" y="11" font-size="9" text-anchor="end">'
            f'{low:.3g}–{high:.3g}</text>'
            f'<polyline points="{path}" fill="none" stroke="#1565c0" stroke-width="1"/>'
            f'{dots}{"".join(lines)}</svg><figcaption>{html.escape(scenario)}</figcaption>'
            f'</figure>')


def render_history_html(runs: list[dict[str, Any]],
                        series: dict[tuple[str, str, str], list[tuple[int, float]]],
                        change_points: list[ChangePoint]) -> str:
    by_key: dict[tuple[str, str, str], list[ChangePoint]] = {}
    for cp in change_points:
        by_key.setdefault((cp.scenario, cp.endpoint, cp.metric), []).append(cp)
    # series with a change first, then the rest in order; counts follow the offered load
    shown = (*TRACKED_METRICS, "error_rate_percent")
    keys = sorted((k for k in series if k[2] in shown), key=lambda k: (k not in by_key, k))
    panels = "".join(_panel(k, series[k], len(runs), by_key.get(k, []), runs) for k in keys
                     if series[k])
    rows = "".join(f"<tr><td>{cp.direction}</td><td>{html.escape(cp.endpoint)}</td>"
                   f"<td>{cp.metric}</td><td>{cp.before:.4g} → {cp.after:.4g}</td>"
                   f"<td>{cp.change_percent:+.1f} %</td><td>{html.escape(cp.previous_run_id)} → "
                   f"{html.escape(cp.run_id)}</td><td>{cp.revision_before or '?'}..."
                   f"{cp.revision_after or '?'}</td></tr>" for cp in change_points)
    span = (f"{len(runs)} runs, {_when(runs[0].get('started_at'))} to "
            f"{_when(runs[-1].get('started_at'))}" if runs else "no runs")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>perfkit history</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}}
.grid{{display:flex;flex-wrap:wrap;gap:6px}}figure{{margin:0;padding:2px}}
figcaption{{font-size:9px;color:#777}}table{{border-collapse:collapse}}
td,th{{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left}}</style></head><body>
<h1>perfkit history</h1><p>{span}; {len(change_points)} change points
(dashed lines: red a regression, green an improvement; hover for runs and commits).</p>
<table><tr><th>direction</th><th>endpoint</th><th>metric</th><th>level</th><th>change</th>
<th>runs</th><th>commits</th></tr>{rows}</table>
<div class="grid">{panels}</div></body></html>
"""


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
                         json_path: Path | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / HISTORY_HTML, out / HISTORY_MD]
    paths[0].write_text(render_history_html(runs, series, change_points), "utf-8")
    paths[1].write_text(render_history_markdown(runs, change_points), "utf-8")
    if json_path is not None:
        write_json(json_path, {"runs": len(runs),
                               "change_points": [change_point_record(cp) for cp in change_points]})
        paths.append(json_path)
    return paths
