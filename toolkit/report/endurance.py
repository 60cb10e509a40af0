"""The endurance section of report.html."""

import math
from typing import Any

from markupsafe import Markup

from ..analysis.endurance import MIN_SETTLED_S, describe_memory, signed
from ..result import RunResult
from ..units import format_value
from . import charts

# The pill of each memory verdict: inconclusive is its own outcome (it warns the run), not a
# failure and not a pass.
PILLS = {"leak": "fail", "no_leak": "pass", "inconclusive": "warn", "missing": "missing"}


def slope_text(trend: dict[str, Any], unit: str) -> str:
    """'+1.2 MB/h (CI -0.3 .. +2.7)'; a slope without a finite interval says so; none is —."""
    if trend.get("per_h") is None:
        return "—"
    low, high = trend.get("ci_low_per_h"), trend.get("ci_high_per_h")
    slope = f"{signed(trend['per_h'])} {unit}"
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{slope} (no interval: too few independent blocks)"
    return f"{slope} (CI {signed(low)} .. {signed(high)})"


def report_section(run: RunResult) -> dict[str, Any] | None:
    """What report.html shows of run.json "endurance" (None for other runs)."""
    meta = run.meta
    endurance = meta.endurance
    if not endurance:
        return None
    memory = endurance["memory"]
    budget = endurance["error_budget"]
    used = budget.get("used_percent")
    projection = memory.get("projection_24h_mb")
    return {
        "note": memory.get("note") or "",
        "verdict": memory["verdict"],
        "pill": PILLS.get(memory["verdict"], "missing"),
        "reason": memory.get("reason") or describe_memory(memory),
        "min_settled": f"{(memory.get('min_settled_s') or MIN_SETTLED_S) / 60:g} min",
        "threshold": format_value(memory.get("threshold_mb_h"), ""),
        "projection": "—" if not projection or projection.get("mb") is None else (
            f"{projection['mb']:,.0f} MB after {projection['hours']:g} h more at the deciding "
            f"slope" + (f" ({projection['low']:,.0f} .. {projection['high']:,.0f} MB)"
                        if projection.get("low") is not None
                        and projection.get("high") is not None else " (no interval)")),
        "chart": _memory_chart(run, memory, endurance["window"]),
        "drift": [{"name": name, "first": format_value(d["p95_first_ms"], "ms"),
                   "last": format_value(d["p95_last_ms"], "ms"),
                   "ratio": "—" if d["ratio"] is None else f"×{d['ratio']:.2f}"}
                  for name, d in endurance["drift"]["endpoints"].items()],
        "drift_percent": f"{100 * endurance['drift']['fraction']:.0f} %",
        "drift_verdict": endurance["drift"].get("verdict"),
        "budget": (f"{used:.0f} % used: {budget['failures']} failures of "
                   f"{budget['allowed_failures'] or 0:.1f} allowed ({budget['limit_percent']:g} "
                   f"% of {budget['requests']} requests)" if used is not None
                   else budget.get("note") or "not measurable"),
        "trends": [{"name": name, "first": format_value(t["first"], ""),
                    "last": format_value(t["last"], ""), "slope": slope_text(t, t["unit"])}
                   for name, t in endurance["trends"].items()],
    }


def _memory_chart(run: RunResult, memory: dict[str, Any],
                  window: dict[str, Any]) -> Markup | None:
    """The RSS curve with the fit; None without RSS samples."""
    frame = run.resources
    if memory["verdict"] == "missing" or frame is None or "rss_mb" not in frame.columns:
        return None
    started_at = float(run.meta.started_at)
    ended_at = float(run.meta.ended_at or started_at)
    rss = frame[["t", "rss_mb"]].assign(t_s=frame["t"].astype(float) - started_at)
    svg = charts.draw_memory_growth(
        rss, memory, float(window["start"]) - started_at, max(ended_at - started_at, 0.0),
        min(float(run.meta.settings.warmup_s), max(ended_at - started_at, 0.0)), "memory",
        faults=[(f["started_at_s"], f["ended_at_s"] or f["started_at_s"])
                for f in run.summary.get("faults") or [] if f.get("started_at_s") is not None])
    return Markup(svg)  # matplotlib's SVG, the same as every other chart of the report
