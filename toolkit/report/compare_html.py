"""The artefacts of a comparison: compare.json, compare.md, junit.xml and compare.html.

Charts are matplotlib figures inlined as SVG, so the page opens offline.
"""

import io
import math
import re
from pathlib import Path
from typing import Any

import jinja2
import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from .. import rundir
from ..analysis import stats
from ..analysis.compare import (
    BETWEEN_RUNS,
    TARGET,
    Comparison,
    MetricComparison,
    comparison_record,
)
from ..analysis.environment import describe_machine_load
from ..analysis.kpi import judged_window
from ..result import RunResult
from .junit import write_junit

COMPARE_HTML = "compare.html"
COMPARE_MD = "compare.md"
COMPARE_JSON = "compare.json"
JUNIT_XML = "junit.xml"

BASELINE_COLOR = "#6b7280"
CURRENT_COLOR = "#2563eb"
_STYLE: dict[Any, Any] = {
    "svg.fonttype": "none", "svg.hashsalt": "perfkit", "text.parse_math": False,
    "font.size": 9.0, "axes.titlesize": 10.0, "axes.titleweight": "bold",
    "axes.titlelocation": "left", "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.color": "#e5e7eb", "legend.frameon": False,
}


def write_compare_report(comparison: Comparison, baselines: list[RunResult],
                         currents: list[RunResult], out_dir: Path) -> Path:
    """Write the four artefacts into out_dir; returns the path of compare.html."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_json(out_dir / COMPARE_JSON, comparison_record(comparison))
    rundir.write_text(out_dir / COMPARE_MD, render_compare_markdown(comparison))
    write_junit(out_dir / JUNIT_XML, f"perfkit compare {comparison.scenario}",
                [(f"{m.subject} {m.metric}", _describe(m) if m.verdict == "regressed" else None,
                  _describe(m) if m.verdict == "missing" else None)
                 for m in comparison.metrics])
    html_path = out_dir / COMPARE_HTML
    rundir.write_text(html_path, render_compare_html(comparison, baselines, currents))
    return html_path


def headline(comparison: Comparison) -> str:
    explained = comparison.environment.get("explained")
    if explained and not comparison.regressed:
        # the note (printed, and listed in the report) says by how much
        return (f"inconclusive: the machine was busier in the current run, which explains "
                f"{len(explained)} regressed metrics")
    if comparison.regressed:
        parts = []
        for subject in comparison.regressed_subjects:
            metrics = [m.metric for m in comparison.regressed if m.subject == subject]
            parts.append(f"{subject} ({', '.join(metrics)})")
        return "REGRESSION in " + "; ".join(parts)
    improved = [m for m in comparison.metrics if m.verdict == "improved"]
    return "no regression" + (f" ({len(improved)} metrics improved)" if improved else "")


def describe_evidence(comparison: Comparison) -> str:
    """Which noise the verdicts were judged against, in one phrase."""
    if comparison.evidence == BETWEEN_RUNS:
        return (f"between runs: the current run against the spread of the baseline's "
                f"{len(comparison.baseline_runs)} runs (t interval on per-run values)")
    runs = len(comparison.baseline_runs) + len(comparison.current_runs)
    return ("within runs: block bootstrap and Mann-Whitney U over time blocks"
            + (f" of {runs} pooled runs" if runs > 2 else ""))


def _environment_rows(comparison: Comparison) -> list[tuple[str, str]]:
    environment = comparison.environment
    rows = []
    for side, runs in (("baseline", comparison.baseline_runs),
                       ("current", comparison.current_runs)):
        for run, env in zip(runs, environment.get(side) or [None] * len(runs), strict=True):
            rows.append((f"{side} {Path(run).name}", describe_machine_load(env)))
    return rows


def _number(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "missing"
    return f"{value:.{digits}g}"


def _ratio(m: MetricComparison) -> str:
    if m.ratio is None:
        return "missing"
    text = f"{m.ratio:.3f}"
    if m.ci_low is not None and m.ci_high is not None:
        text += f" [{m.ci_low:.3f}, {m.ci_high:.3f}]"
    return text


def _describe(m: MetricComparison) -> str:
    text = (f"{m.subject} {m.metric}: baseline {_number(m.baseline)} {m.unit}, current "
            f"{_number(m.current)} {m.unit}, ratio {_ratio(m)} (threshold "
            f"{m.threshold:.0%}): {m.verdict}")
    return text + (f" ({m.note})" if m.note else "")


def render_compare_markdown(comparison: Comparison) -> str:
    lines = [f"## perfkit compare: {headline(comparison)}", "",
             f"Scenario `{comparison.scenario}`; baseline {', '.join(comparison.baseline_runs)}; "
             f"current {', '.join(comparison.current_runs)}. Ratio = current / baseline with its "
             f"confidence interval ({comparison.confidence:.0%} for the whole comparison); "
             f"evidence {describe_evidence(comparison)}.", "",
             "| endpoint | metric | baseline | current | ratio [CI] | threshold | verdict |",
             "|---|---|---:|---:|---|---:|---|"]
    for m in comparison.metrics:
        verdict = f"**{m.verdict}**" if m.verdict in ("regressed", "improved") else m.verdict
        lines.append(f"| `{m.subject}` | {m.metric} | {_number(m.baseline)} | "
                     f"{_number(m.current)} | {_ratio(m)} | {m.threshold:.0%} | {verdict}"
                     f"{' — ' + m.note if m.note else ''} |")
    for label, names in (("only in the baseline", comparison.only_in_baseline),
                         ("only in the current run", comparison.only_in_current)):
        if names:
            lines += ["", f"Endpoints {label}: " + ", ".join(f"`{n}`" for n in names)]
    if comparison.notes:
        lines += ["", *(f"- {note}" for note in comparison.notes)]
    return "\n".join(lines) + "\n"


def _to_svg(fig: Figure, id_prefix: str) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    # several charts share one page: their ids (clip paths) must not collide
    svg = re.sub(r'(\sid="|url\(#|href="#)', lambda m: f"{m.group(1)}{id_prefix}-", svg)
    return re.sub(r'<svg ([^>]*?)width="[^"]*" height="[^"]*"', r'<svg class="chart" \1', svg,
                  count=1)


def _merged_cdf(runs: list[RunResult], name: str) -> tuple[np.ndarray, np.ndarray]:
    blocks = []
    for run in runs:
        start, end = judged_window(run)
        rows = run.latency[(run.latency["name"] == name) & (run.latency["t"] >= start)
                           & (run.latency["t"] <= end)]
        blocks.append(list(rows["hist"]))
    values_us, counts = stats.block_counts(blocks)
    total = counts.sum()
    if total == 0:
        return np.empty(0), np.empty(0)
    return values_us / 1000.0, np.cumsum(counts.sum(axis=0)) / total


def _series(runs: list[RunResult], name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seconds since the start, p95 ms and requests/s of every bucket (runs one after another)."""
    t_all, p95_all, rps_all = [], [], []
    offset = 0.0
    for run in runs:
        rows = run.latency[run.latency["name"] == name].sort_values("t")
        started_at = float(run.meta.started_at)
        bucket_s = float(run.meta.settings.bucket_s or 1.0)
        values_us, counts = stats.block_counts([[h] for h in rows["hist"]])
        p95 = stats.percentiles_of_counts(values_us, counts, [95.0])[:, 0] / 1000.0
        t_all.append(rows["t"].to_numpy(float) - started_at + offset)
        p95_all.append(p95)
        rps_all.append(rows["count"].to_numpy(float) / bucket_s)
        offset += float(run.meta.ended_at or started_at) - started_at
    return np.concatenate(t_all), np.concatenate(p95_all), np.concatenate(rps_all)


def draw_endpoint(name: str, baselines: list[RunResult], currents: list[RunResult],
                  id_prefix: str) -> str:
    """Latency CDFs of both sides, and p95 and throughput over time, overlaid."""
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(9.0, 2.8), layout="constrained")
        ax_cdf, ax_p95, ax_rps = fig.subplots(1, 3)
        for runs, label, color in ((baselines, "baseline", BASELINE_COLOR),
                                   (currents, "current", CURRENT_COLOR)):
            values_ms, fraction = _merged_cdf(runs, name)
            if values_ms.size:
                ax_cdf.step(values_ms, fraction, where="post", color=color, label=label)
            t_s, p95, rps = _series(runs, name)
            ax_p95.plot(t_s, p95, color=color, linewidth=0.9, label=label)
            ax_rps.plot(t_s, rps, color=color, linewidth=0.9, label=label)
        ax_cdf.set_xscale("log")
        # plain numbers: with mathtext off (endpoint names may hold "$") 10^x would show raw
        ax_cdf.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
        ax_cdf.xaxis.set_minor_formatter(NullFormatter())
        ax_cdf.set_title("latency distribution (judged)")
        ax_cdf.set_xlabel("ms")
        ax_cdf.set_ylabel("fraction of requests ≤ x")
        ax_cdf.legend(loc="lower right")
        warmup_s = float(currents[0].meta.settings.warmup_s or 0.0)
        for ax in (ax_p95, ax_rps):
            if warmup_s > 0:
                ax.axvspan(0, warmup_s, color="#e5e7eb", alpha=0.7, lw=0, zorder=0)
        ax_p95.set_title("p95 per second (grey: warm-up)")
        ax_p95.set_xlabel("seconds since start")
        ax_p95.set_ylabel("ms")
        ax_p95.set_ylim(bottom=0)
        ax_rps.set_title("requests per second")
        ax_rps.set_xlabel("seconds since start")
        ax_rps.set_ylim(bottom=0)
        return _to_svg(fig, id_prefix)


def draw_resources(baselines: list[RunResult], currents: list[RunResult],
                   id_prefix: str) -> str | None:
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(9.0, 2.4), layout="constrained")
        ax_cpu, ax_rss = fig.subplots(1, 2)
        drawn = False
        for runs, label, color in ((baselines, "baseline", BASELINE_COLOR),
                                   (currents, "current", CURRENT_COLOR)):
            offset = 0.0
            for i, run in enumerate(runs):
                started_at = float(run.meta.started_at)
                if run.resources is not None and len(run.resources):
                    t_s = run.resources["t"].to_numpy(float) - started_at + offset
                    for ax, column in ((ax_cpu, "cpu_percent"), (ax_rss, "rss_mb")):
                        if column in run.resources:
                            ax.plot(t_s, run.resources[column], color=color, linewidth=0.9,
                                    label=label if i == 0 else "_")
                            drawn = True
                offset += float(run.meta.ended_at or started_at) - started_at
        ax_cpu.set_title("target CPU (% of one core)")
        ax_rss.set_title("target RSS (MB)")
        for ax in (ax_cpu, ax_rss):
            ax.set_xlabel("seconds since start")
            ax.set_ylim(bottom=0)
            ax.legend(loc="lower right")
        return _to_svg(fig, id_prefix) if drawn else None


def render_compare_html(comparison: Comparison, baselines: list[RunResult],
                        currents: list[RunResult]) -> str:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("perfkit.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined)
    subjects = list(dict.fromkeys(m.subject for m in comparison.metrics))
    sections = []
    for i, subject in enumerate(subjects):
        metrics = [m for m in comparison.metrics if m.subject == subject]
        chart = (draw_resources(baselines, currents, f"c{i}") if subject == TARGET
                 else draw_endpoint(subject, baselines, currents, f"c{i}"))
        sections.append({"subject": subject, "metrics": metrics, "chart": chart,
                         "regressed": any(m.verdict == "regressed" for m in metrics)})
    banner = ("fail" if comparison.regressed
              else "warn" if comparison.environment.get("explained") else "pass")
    return env.get_template("compare.html.j2").render(
        comparison=comparison, headline=headline(comparison), sections=sections,
        number=_number, ratio=_ratio, banner=banner, evidence=describe_evidence(comparison),
        between=comparison.evidence == BETWEEN_RUNS,
        machine_load=_environment_rows(comparison))
