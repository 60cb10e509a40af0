"""The endurance section of report.html."""

from typing import Any

from ..analysis.endurance import describe_memory
from ..result import RunMeta
from ..units import format_value


def report_section(meta: RunMeta) -> dict[str, Any] | None:
    """What report.html shows of run.json "endurance" (None for other runs)."""
    endurance = meta.endurance
    if not endurance:
        return None

    def trend_text(trend: dict[str, Any]) -> str:
        if trend.get("per_h") is None:
            return "—"
        unit = trend["unit"]
        return (f"{trend['per_h']:+,.1f} {unit} (CI {trend['ci_low_per_h']:+,.1f} .. "
                f"{trend['ci_high_per_h']:+,.1f})")

    budget = endurance["error_budget"]
    used = budget.get("used_percent")
    return {
        "memory": describe_memory(endurance["memory"]),
        "note": endurance["memory"].get("note") or "",
        "verdict": endurance["memory"]["verdict"],
        "drift": [{"name": name, "first": format_value(d["p95_first_ms"], "ms"),
                   "last": format_value(d["p95_last_ms"], "ms"),
                   "ratio": "—" if d["ratio"] is None else f"×{d['ratio']:.2f}"}
                  for name, d in endurance["drift"]["endpoints"].items()],
        "drift_percent": f"{100 * endurance['drift']['fraction']:.0f} %",
        "budget": (f"{used:.0f} % used: {budget['failures']} failures of "
                   f"{budget['allowed_failures']:.1f} allowed ({budget['limit_percent']:g} % "
                   f"of {budget['requests']} requests)" if used is not None
                   else budget.get("note") or "not measurable"),
        "trends": [{"name": name, "first": format_value(t["first"], ""),
                    "last": format_value(t["last"], ""), "slope": trend_text(t)}
                   for name, t in endurance["trends"].items()],
    }
