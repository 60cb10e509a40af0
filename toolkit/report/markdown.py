"""summary.md: the verdict and the KPI table, small enough for a pull-request comment."""

from typing import Any

from ..analysis.availability import describe_fault
from ..units import format_value

VERDICT_MARK = {"pass": "✅ pass", "warn": "⚠️ warn", "fail": "❌ fail", "missing": "⚪ missing",
                "error": "⛔ error"}


def render_markdown(summary: dict[str, Any]) -> str:
    """Built from summary.json alone, so a CI job can rebuild it without the run's data."""
    verdict = summary["verdict"]
    lines = [f"### perfkit: {VERDICT_MARK[verdict].split(' ')[0]} {verdict.upper()} — "
             f"{_cell(summary['verdict_reason'])}", ""]
    window = summary["window"]
    details = [f"run `{summary['run_id']}`", str(summary.get("command") or ""),
               f"scenario {summary.get('scenario')}",
               f"judged {format_value(window['duration_s'], 's')}"
               + (f" after {format_value(window['warmup_s'], 's')} warm-up"
                  if window["warmup_s"] else ""),
               f"status {summary['status']}"]
    if summary.get("simulated"):
        details.append("**simulated data**")
    lines += [" · ".join(part for part in details if part), ""]
    lines += [*_stress_lines(summary.get("stress")), *_endurance_lines(summary.get("endurance")),
              *_fault_lines(summary)]

    lines += ["| KPI | value | target | allowed | verdict | margin |",
              "|---|---:|---:|---:|---|---:|"]
    for kpi in summary["kpis"]:
        margin = kpi["margin_percent"]
        lines.append(f"| {_cell(kpi['name'])} | {format_value(kpi['value'], kpi['unit'])} | "
                     f"{format_value(kpi['target'], kpi['unit'])} | "
                     f"{format_value(kpi['allowed'], kpi['unit'])} | "
                     f"{VERDICT_MARK[kpi['verdict']]} | "
                     f"{'—' if margin is None else f'{margin:+.0f} %'} |")
    notes = [kpi for kpi in summary["kpis"] if kpi["verdict"] != "pass"]
    if notes:
        lines.append("")
        lines += [f"- **{kpi['verdict']}** {_cell(kpi['name'])}: {_cell(kpi['reason'])}"
                  for kpi in notes]

    if summary["endpoints"]:
        lines += ["", "| endpoint | requests | failures | rps | p50 | p95 | p99 | max |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, ep in summary["endpoints"].items():
            lines.append(f"| {_cell(name)} | {ep['count']} | {ep['failures']} | "
                         f"{format_value(ep['rps'], '')} | "
                         + " | ".join(format_value(ep[key], "ms")
                                      for key in ("p50_ms", "p95_ms", "p99_ms", "max_ms"))
                         + " |")
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _cell(text: str) -> str:
    """Table-safe: a pipe or a newline in a request name would break the row."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _stress_lines(stress: dict[str, Any] | None) -> list[str]:
    if not stress:
        return []
    capacity, broke = stress["capacity"], stress["broke_at"]
    if capacity is None:
        found = "none within the KPIs" + (
            f": step {broke['step']} served {format_value(broke.get('rps'), 'rps')} at p95 "
            f"{format_value(broke.get('p95_ms'), 'ms')} and already broke" if broke else "")
    elif capacity["basis"] == "estimated":
        estimate = stress.get("estimate") or {}
        found = (f"~{format_value(capacity['rps'], 'rps')}, **estimated**: "
                 f"{_cell(estimate.get('text') or '')}")
    else:
        found = (f"step {capacity['step']}, {format_value(capacity['rps'], 'rps')}, p95 "
                 f"{format_value(capacity['p95_ms'], 'ms')}")
    lines = ["**Stress capacity:** " + found + " · **broke:** " + (
        f"step {broke['step']}: {_cell(broke['reason'])}" if broke
        else f"never, within {len(stress['steps'])} steps")]
    knee = stress.get("knee") or {}
    if knee.get("note"):
        lines.append(f"**Knee:** {_cell(knee['note'])}")
    if stress.get("suggestion"):
        lines.append(f"**Next:** {_cell(stress['suggestion'])}")
    lines.append("KPIs below: over the whole ramp, breaking step included (information; the "
                 "verdict is the capacity result).")
    return [item for line in lines for item in (line, "")]  # one paragraph each


def _endurance_lines(endurance: dict[str, Any] | None) -> list[str]:
    if not endurance:
        return []
    verdict = endurance["leak_verdict"]
    reason = endurance.get("leak_reason")
    if not reason:  # a summary.json written before the reason was stored
        low, high = endurance["ci_mb_per_h"]
        slope = endurance["slope_mb_per_h"]
        reason = ("not measured" if slope is None else f"{slope:+.1f} MB/h" + (
            f" ({100 * endurance['confidence']:.0f} % CI {low:+.1f} .. {high:+.1f})"
            if low is not None and high is not None else " (no interval)"))
    return [f"**Memory growth:** **{verdict.replace('_', ' ')}**: {_cell(reason)}", ""]


def _fault_lines(summary: dict[str, Any]) -> list[str]:
    """Faults and recovery: availability and one line per fault (summaries from before
    --fault have neither)."""
    faults = summary.get("faults") or []
    if not faults:
        return []
    available = summary.get("availability") or {}
    lines = [f"**Faults and recovery:** availability "
             f"{format_value(available.get('percent'), '%')} "
             f"({format_value(available.get('down_s'), 's')} down of "
             f"{available.get('judged_s')} judged seconds)", ""]
    lines += [f"- {_cell(describe_fault(fault))}" for fault in faults]
    return [*lines, ""]
