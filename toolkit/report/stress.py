"""The stress section of report.html and its throughput-latency chart (stress.svg)."""

import base64
import io
import math
from typing import Any

from matplotlib.figure import Figure

from ..analysis.stress import describe_breach, describe_capacity, describe_end
from ..result import RunMeta
from ..units import format_value

CHART_SVG = "stress.svg"


def draw_stress_chart(stress: dict[str, Any]) -> str:
    """SVG of throughput (x) against p95 and p99 latency (y, log scale) per step; held steps
    in green, the broken one in red, each labelled with its step number."""
    steps = [s for s in stress["steps"] if s["rps"] is not None]
    fig = Figure(figsize=(7.0, 3.6), dpi=100)
    ax = fig.add_subplot()
    xs = [s["rps"] for s in steps]
    for key, style in (("p95_ms", "o-"), ("p99_ms", "s--")):
        ys = [s[key] if s[key] is not None else math.nan for s in steps]
        ax.plot(xs, ys, style, color="#555555", label=key.replace("_ms", ""), markersize=4,
                zorder=1)
        ax.scatter(xs, ys, c=["#2e7d32" if s["held"] else "#c62828" for s in steps], zorder=2,
                   s=30)
    for s in steps:
        if s["p95_ms"] is not None:
            ax.annotate(f"{s['step']}", (s["rps"], s["p95_ms"]), textcoords="offset points",
                        xytext=(4, -12), fontsize=8)
    capacity = stress.get("capacity")
    if capacity is not None and capacity.get("rps"):
        estimated = capacity["basis"] == "estimated"
        ax.axvline(capacity["rps"], color="#2e7d32", linestyle="--" if estimated else "-",
                   linewidth=1, label="capacity (estimated)" if estimated else "capacity")
    latencies = [s[key] for s in steps for key in ("p95_ms", "p99_ms") if s[key]]
    if latencies and max(latencies) > 10 * min(latencies):  # a log axis for a wide range only
        ax.set_yscale("log")
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title("stress: throughput against latency per step (green held, red broke)",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    out = io.StringIO()
    fig.savefig(out, format="svg")
    return out.getvalue()


def report_section(meta: RunMeta) -> dict[str, Any] | None:
    """What report.html shows of run.json "stress" (None for other runs): the capacity, how it
    broke, the estimate at a resource limit, the knee, one row per step and the chart, redrawn
    from run.json."""
    stress = meta.stress
    if not stress:
        return None
    capacity, estimate, knee = stress.get("capacity"), stress.get("estimate"), stress.get("knee")
    chart = base64.b64encode(draw_stress_chart(stress).encode("utf-8")).decode("ascii")
    return {
        "capacity": describe_capacity(stress).removeprefix("capacity "),
        "basis": capacity["basis"] if capacity else "none",
        "broke": describe_end(stress),
        # The estimate at the limit, where it is not the capacity itself (other KPIs broke too,
        # or a step held above it): shown, not judged.
        "estimate": estimate["text"] if estimate and (
            capacity is None or capacity["basis"] == "measured") else None,
        "knee": (knee or {}).get("note") or "",
        "knee_status": (knee or {}).get("status") or "too_few_steps",
        "suggestion": stress.get("suggestion"),
        "rows": [{"step": s["step"], "users": s["users"],
                  "rate": format_value(s["rate"], "/s") if s["rate"] is not None else "—",
                  "rps": format_value(s["rps"], ""), "p50": format_value(s["p50_ms"], ""),
                  "p95": format_value(s["p95_ms"], ""), "p99": format_value(s["p99_ms"], ""),
                  "concurrency": format_value(s.get("concurrency"), ""),
                  "cpu": format_value(s.get("cpu_busiest_mean_percent"), "%"),
                  "demand": format_value(s.get("cpu_ms_per_request"), "ms"),
                  "errors": format_value(s["error_rate_percent"], "%"), "held": s["held"],
                  "why": "; ".join(describe_breach(b) for b in s["breaches"])}
                 for s in stress["steps"]],
        "chart_src": f"data:image/svg+xml;base64,{chart}",
    }
