"""compare.html / compare.md / compare.json of interleaved A/B trials (`perfkit ab`).

One self-contained page: the verdict, then per endpoint and metric the ratio B/A with its
interval and every pair's A and B value side by side (the runs are the samples).
"""

import html
import math
from pathlib import Path
from typing import Any

from .. import rundir
from ..result import json_safe
from ..units import format_value

COMPARE_HTML = "compare.html"
COMPARE_MD = "compare.md"
COMPARE_JSON = "compare.json"
_COLOURS = {"regressed": "#c62828", "improved": "#2e7d32", "unchanged": "#555",
            "inconclusive": "#b26a00", "missing": "#888"}


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.3g}"


def metric_unit(metric: str) -> str:
    """The unit a metric's name ends in: p50_ms → ms, error_rate_percent → %."""
    return {"ms": "ms", "percent": "%", "rps": "rps", "s": "s", "mb": "MB"}.get(
        metric.rsplit("_", 1)[-1], "")


def _pairs_svg(a_values: list[float], b_values: list[float], unit: str) -> str:
    """Each pair a line from A (left) to B (right) on a labelled value axis: a slowdown slopes
    up (red) in every pair. The pairs' numbers are in the table beside it."""
    if not a_values:
        return ""
    width, height, left, pad = 190, 80, 58, 8
    top = max(a_values + b_values)
    bottom = min(a_values + b_values)
    span = (top - bottom) or 1.0

    def y(v: float) -> float:
        return height - 14 - (v - bottom) / span * (height - 14 - pad)

    lines = "".join(f'<line x1="{left + 6}" y1="{y(a):.1f}" x2="{width - 6}" y2="{y(b):.1f}" '
                    f'stroke="{"#c62828" if b > a else "#1565c0"}" stroke-opacity="0.75"/>'
                    for a, b in zip(a_values, b_values, strict=True))
    higher = sum(b > a for a, b in zip(a_values, b_values, strict=True))
    label = (f"{len(a_values)} pairs from A to B, values {format_value(bottom, unit)} to "
             f"{format_value(top, unit)}; {higher} higher in B")
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(label)}">'
            f'<title>{html.escape(label)}</title>'
            f'<line x1="{left}" y1="{pad}" x2="{left}" y2="{height - 14}" stroke="#555"/>'
            f'<text x="{left - 4}" y="{y(top) + 4:.1f}" font-size="10" text-anchor="end">'
            f'{html.escape(format_value(top, unit))}</text>'
            f'<text x="{left - 4}" y="{y(bottom) + 4:.1f}" font-size="10" text-anchor="end">'
            f'{html.escape(format_value(bottom, unit))}</text>'
            f'<text x="{left + 6}" y="{height - 2}" font-size="10">A</text>'
            f'<text x="{width - 12}" y="{height - 2}" font-size="10">B</text>{lines}</svg>')


def _pairs_table(metric: dict[str, Any], orders: list[str], unit: str) -> str:
    """Every pair's A, B and B/A (and which arm ran first), folded under the chart."""
    rows = "".join(
        f"<tr><td>{i}</td><td>{html.escape(orders[i - 1]) if len(orders) >= i else ''}</td>"
        f"<td>{html.escape(format_value(a, unit))}</td>"
        f"<td>{html.escape(format_value(b, unit))}</td><td>{_fmt(b / a if a else None)}</td></tr>"
        for i, (a, b) in enumerate(zip(metric["a_values"], metric["b_values"], strict=True), 1))
    return (f"<details><summary>{len(metric['a_values'])} pairs</summary><table>"
            "<tr><th>pair</th><th>order</th><th>A</th><th>B</th><th>B/A</th></tr>"
            f"{rows}</table></details>")


def render_ab_html(record: dict[str, Any]) -> str:
    rows = []
    for m in record["metrics"]:
        colour = _COLOURS.get(m["verdict"], "#555")
        p_text = "-" if m["p_value"] is None else f"{m['p_value']:.2g}"
        rows.append(
            f"<tr><td>{html.escape(m['endpoint'])}</td><td>{m['metric']}</td>"
            f"<td>{_fmt(_mean(m['a_values']), 1)}</td><td>{_fmt(_mean(m['b_values']), 1)}</td>"
            f"<td>{_fmt(m['ratio'])}</td><td>{_fmt(m['ci_low'])} – {_fmt(m['ci_high'])}</td>"
            f"<td>{p_text}</td>"
            f"<td style='color:{colour};font-weight:bold'>{m['verdict']}</td>"
            f"<td>{_pairs_svg(m['a_values'], m['b_values'], metric_unit(m['metric']))}"
            f"{_pairs_table(m, record.get('pair_orders') or [], metric_unit(m['metric']))}</td>"
            f"<td>{html.escape(describe_order_effect(m, record.get('pair_orders') or []))}</td>"
            f"<td>{html.escape(m['note'])}</td></tr>")
    banner = {"regression": "#c62828", "no regression": "#2e7d32",
              "not judged": "#555"}.get(record["outcome"], "#b26a00")
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in record["notes"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>perfkit ab: {html.escape(record['headline'])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}}
table{{border-collapse:collapse}}td,th{{border-bottom:1px solid #ddd;padding:4px 8px;
text-align:left;vertical-align:middle}}.banner{{color:#fff;padding:.6em 1em;font-size:1.2em}}
</style></head><body>
<div class="banner" style="background:{banner}">{html.escape(record['headline'])}</div>
<p>A: <code>{html.escape(record['a'])}</code><br>B: <code>{html.escape(record['b'])}</code><br>
{record['pairs']} pairs of {_fmt(record['duration_s_per_run'], 0)} s runs, scenario
<code>{html.escape(str(record['scenario']))}</code>: {html.escape(record['design'])};
wall time {_fmt(record['wall_time_s'], 0)} s.</p>
<p>Ratio = geometric mean of B/A over the pairs; its interval is a paired t interval on
log(B/A) at the family-wise confidence {record['confidence']:.0%} (Bonferroni over the
metrics), so it holds the noise between runs. A metric regressed when the ratio exceeds
1 + {record['threshold']:.0%} and the interval lies wholly above 1. B/A by which arm ran
first: a ratio that follows the order (above 1 when A ran first, below when B did) is the
order's doing, which alternating the order cancels; a ratio above 1 both ways is B's.</p>
<ul>{notes}</ul>
<table><tr><th>endpoint</th><th>metric</th><th>A mean</th><th>B mean</th><th>B/A</th>
<th>interval</th><th>p</th><th>verdict</th><th>pairs</th><th>B/A by which arm ran first</th>
<th>note</th></tr>
{''.join(rows)}</table></body></html>
"""


def describe_order_effect(metric: dict[str, Any], orders: list[str]) -> str:
    """The geometric mean of B/A over the pairs in which A ran first, and over those in which
    B did ("A first x1.02 (3) · B first x0.99 (2)"); empty where a metric left pairs out."""
    if len(orders) != len(metric["a_values"]):
        return ""
    parts = []
    for first in ("A", "B"):
        logs = [math.log(b / a) for a, b, order in
                zip(metric["a_values"], metric["b_values"], orders, strict=True)
                if order.startswith(first)]
        if logs:
            parts.append(f"{first} first x{math.exp(sum(logs) / len(logs)):.3f} ({len(logs)})")
    return " · ".join(parts)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def render_ab_markdown(record: dict[str, Any]) -> str:
    lines = [f"**perfkit ab: {record['headline']}**", "",
             f"A: `{record['a']}` · B: `{record['b']}` · {record['pairs']} pairs, "
             f"{record['design']}", "",
             "| endpoint | metric | A | B | B/A | interval | verdict |",
             "|---|---|---|---|---|---|---|"]
    for m in record["metrics"]:
        lines.append(f"| {m['endpoint']} | {m['metric']} | {_fmt(_mean(m['a_values']), 1)} | "
                     f"{_fmt(_mean(m['b_values']), 1)} | {_fmt(m['ratio'])} | "
                     f"{_fmt(m['ci_low'])}–{_fmt(m['ci_high'])} | {m['verdict']} |")
    lines += [f"- {note}" for note in record["notes"]]
    return "\n".join(lines) + "\n"


def write_ab_report(record: dict[str, Any], out: Path) -> list[Path]:
    """compare.html, compare.md and compare.json in `out`."""
    record = json_safe(record)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / COMPARE_HTML, out / COMPARE_MD, out / COMPARE_JSON]
    paths[0].write_text(render_ab_html(record), "utf-8")
    paths[1].write_text(render_ab_markdown(record), "utf-8")
    rundir.write_json(paths[2], record)
    return paths
