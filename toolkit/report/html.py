"""The self-contained HTML report of one run: verdict first, then the evidence.

One file that opens offline: inline CSS, charts as inline SVG, no scripts, no external
fonts. Everything from the run directory is escaped by jinja2's autoescape; only the SVG
that charts.py produced from matplotlib is inserted as markup.
"""

import base64
import dataclasses
import shlex
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import jinja2
import pandas as pd
from markupsafe import Markup

from ..analysis.availability import describe_fault, describe_lost_work
from ..analysis.digest import ChartSpan, LatencyDigest
from ..analysis.environment import describe_machine_load
from ..analysis.kpi import judged_postgres, judged_warmup_s, judged_window, worst_offender
from ..kpi_file import JOB_NAMES, METRICS, is_job
from ..result import KpiResult, RunMeta, RunResult
from ..units import format_percent, format_value
from . import charts
from .distributed import workers_section
from .endurance import report_section as endurance_section
from .observed import observed_context
from .stress import report_section as stress_section

PROFILE_SVG = "profile.svg"
MAX_TABLE_ROWS = 25
MAX_EXAMPLE_CHARS = 600

_LATENCY_METRICS = ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms")
_SEVERITY = {"fail": 0, "warn": 1, "missing": 2, "pass": 3}
_ENDPOINT_STATS = ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "p999_ms", "max_ms")


def render_html(run: RunResult) -> str:
    """report.html of a judged run."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("perfkit.report", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
        lstrip_blocks=True)
    env.filters["value"] = _format_or_dash
    template = env.get_template("report.html.j2")
    return template.render(**build_context(run))


def build_context(run: RunResult) -> dict[str, Any]:
    """Everything the template shows, already formatted: the template only lays it out."""
    meta, results, summary = run.meta, run.kpis, run.summary
    started_at = float(meta.started_at)
    ended_at = float(meta.ended_at or started_at)
    duration_s = max(ended_at - started_at, 0.0)
    warmup_s = judged_warmup_s(run)
    bucket_s = float(meta.settings.bucket_s or 1.0)
    window_s = charts.choose_window_s(duration_s, bucket_s)
    drawing = _Drawing(run, results, started_at, ended_at, duration_s, warmup_s, window_s,
                       bucket_s)

    endpoints = summary.get("endpoints") or {}
    return {
        "run_id": run.run_id,
        "simulated": bool(meta.simulated),
        "banner": _banner(meta, results, summary, duration_s),
        "loadgen": _loadgen(meta, run.timeline),
        "late": describe_lateness(meta.load),
        # Failures first: the first screen should show what went wrong.
        "kpis": [_kpi_row(r) for r in sorted(results, key=lambda r: _SEVERITY[r.verdict])],
        "endpoints": _endpoint_rows(endpoints, summary.get("totals")),
        "observed": observed_context(run),
        "jobs": _job_rows(summary.get("jobs") or {}),
        "window_s": window_s,
        "warmup_s": warmup_s,
        "sections": drawing.sections(),
        "slow_queries": _slow_queries(run, started_at),
        "failures": _failures(run.failures),
        "requests_recorded": not run.latency.empty,
        "skipped_lines": run.skipped_lines,
        # What skipped_lines counts: blocks of latency.bin, or lines of an older run's file.
        "latency_file": run.latency_file,
        "skipped_part": "line" if run.latency_file.endswith(".jsonl") else "block",
        "alarms": _alarms(run.alarms, started_at),
        "faults": faults_section(summary),
        "stress": stress_section(meta),
        "endurance": endurance_section(run),
        "workers": workers_section(meta),
        "profile": _profile(run),
        "collectors": _collectors(meta, duration_s),
        "environment": _environment(meta, duration_s),
        "generated_at": _utc(datetime.now(UTC).timestamp()),
    }


def _format_or_dash(value: float | None, unit: str = "") -> str:
    return format_value(value, unit)


def _utc(t: float | None) -> str:
    if t is None:
        return "—"
    return datetime.fromtimestamp(float(t), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min {secs:02d} s"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def _what(result: KpiResult) -> str:
    """How a sentence names the measured thing: 'GET /x p99', 'target memory RSS peak'."""
    kpi = result.kpi
    if kpi.endpoint:
        return f"{kpi.endpoint} {METRICS[kpi.metric].label}" if kpi.metric in METRICS \
            else kpi.name
    return kpi.name


def describe_offence(result: KpiResult) -> str:
    """One line: 'GET /api/v1/research/products p99 812 ms, 62 % over the 500 ms target'."""
    kpi = result.kpi
    reference, ref_name = ((kpi.target, "target") if kpi.target is not None
                           else (kpi.allowed, "allowed"))
    shown = format_value(result.value, kpi.unit)
    if result.margin_percent is None or reference is None:
        return f"{_what(result)} {shown}: {result.reason}"
    side = "over" if kpi.bound == "upper" else "under"
    text = (f"{_what(result)} {shown}, {format_percent(result.margin_percent)} {side} the "
            f"{format_value(reference, kpi.unit)} {ref_name}")
    if ref_name == "target" and kpi.allowed is not None:
        text += f" (allowed {format_value(kpi.allowed, kpi.unit)})"
    return text


def _banner(meta: RunMeta, results: Sequence[KpiResult], summary: dict[str, Any],
            duration_s: float) -> dict[str, Any]:
    verdict = str(summary.get("verdict") or "pass")
    counts = {v: sum(1 for r in results if r.verdict == v)
              for v in ("pass", "warn", "fail", "missing")}
    worst = worst_offender(list(results))
    reason = str(summary.get("verdict_reason") or "")
    # A stress run's verdict is its capacity result, whatever the whole-ramp KPIs say.
    if verdict == "error" or meta.stress is not None or (
            worst is not None and not reason.startswith(worst.kpi.name)):
        headline = _sentence(reason[:1].upper() + reason[1:])
    elif worst is not None:
        headline = describe_offence(worst)
    elif verdict in ("fail", "warn"):  # decided by no KPI: the run's state, endurance
        headline = reason
    elif results and not counts["pass"]:
        headline = f"None of the {len(results)} KPIs could be measured"
    elif results:
        headline = f"All {counts['pass']} measured KPIs met their targets"
    else:
        headline = "No KPI targets were evaluated"
    status = str(meta.status or "completed")
    planned_s = meta.settings.duration_s
    partial = ""
    if status != "completed":
        partial = f"Partial run: the figures cover {_duration(duration_s)}"
        if planned_s:
            partial += f" of the planned {_duration(float(planned_s))}"
        partial += "."
    return {
        "verdict": verdict,
        "label": verdict.upper(),
        "headline": headline,
        "worst_verdict": worst.verdict if worst else None,
        "counts": counts,
        "status": status,
        "status_label": status.replace("_", " ").upper(),
        "message": _sentence(str(meta.message or "")),
        "partial": partial,
        "command": meta.command or "",
        "scenario": meta.scenario or "",
        "target": meta.target or "",
        "started": _utc(meta.started_at),
        "duration": _duration(duration_s),
    }


def _sentence(text: str) -> str:
    text = text.strip()
    return text + "." if text and text[-1] not in ".!?" else text


def _loadgen(meta: RunMeta, timeline: pd.DataFrame | None) -> dict[str, Any]:
    """Was the load generator saturated? run.json says so; the timeline is the fallback."""
    info = meta.loadgen or {}
    max_cpu = info.get("max_cpu_percent")
    if max_cpu is None and timeline is not None and "loadgen_cpu_percent" in timeline:
        column = pd.to_numeric(timeline["loadgen_cpu_percent"], errors="coerce")
        max_cpu = float(column.max()) if column.notna().any() else None
    saturated = bool(info.get("saturated")) or (
        max_cpu is not None and max_cpu >= charts.SATURATED_CPU_PERCENT)
    return {"saturated": saturated, "max_cpu": format_value(max_cpu, "%"),
            "measured": max_cpu is not None,
            "threshold": format_value(charts.SATURATED_CPU_PERCENT, "%")}


def describe_lateness(load: dict[str, Any] | None) -> str:
    """What the generator's own lateness means, or '' when it kept the offered rate."""
    if not load or not load.get("late_iterations"):
        return ""
    return (f"{load['late_iterations']} of {load['iterations']} iterations of the open load "
            f"({format_value(load['offered_rate'], '/s')} offered by {load['users']} users) "
            f"started late by {format_value(load['generator_lateness_s'], 's')} in all, beyond "
            f"what the target caused: the flow's own sleeps or setup take longer than a user's "
            f"share of the rate allows. Use more --users; that lateness is not counted as "
            f"latency.")


def describe_stop(load: dict[str, Any] | None) -> str:
    """'N requests complete, M interrupted' and what that means, or '' for a run from before
    perfkit counted them."""
    if not load or load.get("complete") is None or load.get("interrupted") is None:
        return ""
    complete, interrupted = int(load["complete"]), int(load["interrupted"])
    timeout_s = load.get("stop_timeout_s")
    text = f"{complete:,} requests complete, {interrupted:,} interrupted"
    if not interrupted:
        return text + " (the stop let every request in flight finish)."
    stop = ("the users were stopped at once (stop timeout 0 s)" if not timeout_s else
            f"still unanswered when the {format_value(timeout_s, 's')} stop timeout ran out")
    return (text + f": sent, but {stop}, so no latency figure includes them "
            f"(--stop-timeout waits longer).")


def _limit(value: float | None, unit: str, bound: str) -> str:
    if value is None:
        return "—"
    return f"{'≤' if bound == 'upper' else '≥'} {format_value(value, unit)}"


def _kpi_row(result: KpiResult) -> dict[str, Any]:
    kpi = result.kpi
    margin = result.margin_percent
    if margin is None:
        margin_text = "—"
    else:
        beyond = "over" if kpi.bound == "upper" else "under"
        margin_text = (f"{format_percent(margin)} headroom" if margin >= 0
                       else f"{format_percent(margin)} {beyond}")
    return {
        "name": kpi.name,
        "metric": kpi.metric,
        "endpoint": kpi.endpoint or "",
        "value": "missing" if result.value is None else format_value(result.value, kpi.unit),
        "target": _limit(kpi.target, kpi.unit, kpi.bound),
        "allowed": _limit(kpi.allowed, kpi.unit, kpi.bound),
        "verdict": result.verdict,
        "margin": margin_text,
        "reason": result.reason,
        "source": kpi.source,
    }


def _endpoint_rows(endpoints: dict[str, dict[str, Any]],
                   totals: dict[str, Any] | None) -> dict[str, Any]:
    rows = []
    for name, data in endpoints.items():
        if is_job(name):
            continue
        rows.append({
            "name": name,
            "count": f"{int(data.get('count') or 0):,}",
            "failures": f"{int(data.get('failures') or 0):,}",
            "failed": bool(data.get("failures")),
            "error_rate": format_value(data.get("error_rate_percent"), "%"),
            "rps": format_value(data.get("rps"), ""),
            **{key: format_value(data.get(key), "") for key in _ENDPOINT_STATS},
        })
    total = None
    if totals and len(rows) > 1:
        total = {"count": f"{int(totals.get('count') or 0):,}",
                 "failures": f"{int(totals.get('failures') or 0):,}",
                 "failed": bool(totals.get("failures")),
                 "error_rate": format_value(totals.get("error_rate_percent"), "%"),
                 "rps": format_value(totals.get("rps"), "")}
    return {"rows": rows, "total": total}


def _job_rows(jobs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """summary.json's "jobs": per-job durations in seconds, and how they were measured."""
    return [{"name": name, "count": f"{int(data.get('count') or 0):,}",
             **{key: format_value(data.get(key), "s")
                for key in ("mean_s", "p50_s", "p95_s", "p99_s", "max_s")},
             "timing": describe_job_timing(data.get("timing"))}
            for name, data in jobs.items() if data.get("count")]


def describe_job_timing(timing: dict[str, Any] | None) -> str:
    """'from the job's timestamps', 'from polling, ±0.2 s', both with counts when mixed; ''
    where the run does not say (older run directories)."""
    if not timing:
        return ""
    stamped, polled = int(timing.get("timestamps") or 0), int(timing.get("polling") or 0)
    median, largest = timing.get("resolution_s_median"), timing.get("resolution_s_max")
    polling = "from polling"
    if largest is not None:
        polling += f", ±{format_value(largest, 's')}"
        if median is not None and median < largest:
            polling = (f"from polling, ±{format_value(median, 's')} "
                       f"(±{format_value(largest, 's')} at most)")
    if stamped and polled:
        return f"{stamped:,} from the job's timestamps, {polled:,} {polling}"
    if stamped:
        return "from the job's timestamps"
    return polling if polled else ""


def _kpi_lines(results: Sequence[KpiResult], metrics: Sequence[str], endpoint: str | None,
               scale: float = 1.0) -> list[charts.KpiLine]:
    """Horizontal lines for the KPIs on `metrics` (values × `scale` into the chart's unit)."""
    lines = []
    for result in results:
        kpi = result.kpi
        if kpi.metric not in metrics or kpi.endpoint != endpoint:
            continue
        label = METRICS[kpi.metric].label if kpi.metric in METRICS else kpi.metric
        for level, value in (("target", kpi.target), ("allowed", kpi.allowed)):
            if value is not None:
                lines.append(charts.KpiLine(
                    f"{label} {level} {format_value(value, kpi.unit)}", value * scale, level))
    return lines


class _Drawing:
    """The chart sections of one report; each is charts or a 'not measured' note."""

    def __init__(self, run: RunResult, results: Sequence[KpiResult], started_at: float,
                 ended_at: float, duration_s: float, warmup_s: float, window_s: float,
                 bucket_s: float) -> None:
        self.run = run
        self.results = results
        self.started_at = started_at
        self.ended_at = ended_at
        self.duration_s = duration_s
        self.warmup_s = warmup_s
        self.window_s = window_s
        self.bucket_s = bucket_s
        self.count = 0
        # --fault: a band on every time chart, from each fault's start to its end.
        self.faults = [(f["started_at_s"], f["ended_at_s"] or f["started_at_s"])
                       for f in run.summary.get("faults") or []
                       if f.get("started_at_s") is not None]

    def _digest(self) -> LatencyDigest | None:
        """The run's latency digest where it was computed for these charts' time axis."""
        digest = self.run.digest
        span = ChartSpan(self.started_at, self.ended_at, self.window_s, self.bucket_s)
        return digest if digest is not None and digest.span == span else None

    def _id(self) -> str:
        self.count += 1
        return f"c{self.count}"

    def _resample(self, frame: pd.DataFrame, how: str = "mean") -> pd.DataFrame:
        return charts.resample_frame(frame, self.started_at, self.ended_at, self.window_s, how)

    def _collector_note(self, name: str, default: str) -> str:
        info = (self.run.meta.collectors or {}).get(name) or {}
        note = str(info.get("note") or "").strip()
        return f"not measured: {note}" if note and note != "simulated" else \
            f"not measured: {default}"

    def sections(self) -> list[dict[str, Any]]:
        return [self._traffic(), self._load(), self._resources(), self._io(),
                self._database(), self._queue(), self._jobs()]

    def _section(self, key: str, title: str, charts_svg: list[Markup] | None = None,
                 note: str = "", lead: str = "") -> dict[str, Any]:
        return {"key": key, "title": title, "charts": charts_svg or [], "note": note,
                "lead": lead}

    def _traffic(self) -> dict[str, Any]:
        latency = self.run.latency
        requests = latency[~latency["name"].map(is_job).astype(bool)]
        if requests.empty:
            return self._section("traffic", "Throughput and latency over time",
                                 note="not measured: no requests were recorded")
        digest = self._digest()
        binned = digest.chart if digest is not None else charts.bin_latency(
            requests, self.started_at, self.ended_at, self.window_s, self.bucket_s)
        svgs = [Markup(charts.draw_throughput(
            binned, self.duration_s, self.warmup_s, self._id(),
            _kpi_lines(self.results, ["rps"], None), faults=self.faults))]
        for name in sorted(binned["name"].unique()):
            svgs.append(Markup(charts.draw_latency(
                binned, name, self.duration_s, self.warmup_s, self._id(),
                _kpi_lines(self.results, _LATENCY_METRICS, name), faults=self.faults)))
        lead = (f"One point per {format_value(self.window_s, 's')}; each point's percentiles "
                f"come from the merged histograms of its window (exact, not averaged).")
        return self._section("traffic", "Throughput and latency over time", svgs, lead=lead)

    def _load(self) -> dict[str, Any]:
        timeline = self.run.timeline
        if timeline is None or timeline.empty:
            return self._section("load", "Load: users, arrival rate, load-generator CPU",
                                 note="not measured: the run has no timeline.csv")
        binned = self._resample(timeline.drop(columns=["loadgen_cpu_percent"], errors="ignore"))
        if "loadgen_cpu_percent" in timeline:
            # The busiest second of a window decides whether it was saturated.
            cpu = self._resample(timeline[["t", "loadgen_cpu_percent"]], how="max")
            binned["loadgen_cpu_percent"] = cpu["loadgen_cpu_percent"]
        svg = charts.draw_load(binned, self.duration_s, self.warmup_s, self._id(),
                               faults=self.faults)
        return self._section("load", "Load: users, arrival rate, load-generator CPU",
                             [Markup(svg)], lead=describe_stop(self.run.meta.load))

    def _resources(self) -> dict[str, Any]:
        title = "Target CPU and memory"
        frame = self.run.resources
        if frame is None or frame.empty or not any(
                c in frame and frame[c].notna().any()
                for c in ("rss_mb", "cpu_busiest_percent", "cpu_percent", "sys_cpu_percent")):
            return self._section("resources", title, note=self._collector_note(
                "system", "no resource samples of the target (resources.csv absent)"))
        binned = self._resample(frame)
        svg = charts.draw_cpu_memory(
            binned, self.duration_s, self.warmup_s, self._id(),
            _kpi_lines(self.results, ["cpu_busiest_percent_mean", "cpu_busiest_percent_peak"],
                       None),
            _kpi_lines(self.results, ["rss_mb_mean", "rss_mb_peak"], None),
            cores=self.run.meta.machine.get("cpu_count"), faults=self.faults)
        return self._section("resources", title, [Markup(svg)],
                             lead="CPU in percent of one core, as top shows a process: the "
                                  "KPIs judge the busiest process of the target (one pinned "
                                  "core reads 100 %); memory of the target's process tree.")

    def _io(self) -> dict[str, Any]:
        title = "Disk I/O and network"
        frame = self.run.resources
        columns = ["read_mb_s", "write_mb_s", *charts.IO_SERIES, *charts.NET_SERIES]
        if frame is None or not any(c in frame and frame[c].notna().any() for c in columns):
            return self._section("io", title, note=self._collector_note(
                "system", "no disk or network samples (resources.csv absent)"))
        binned = self._resample(charts.add_io_totals(frame))
        svg = charts.draw_io_network(
            binned, self.duration_s, self.warmup_s, self._id(),
            _kpi_lines(self.results, ["disk_mb_s_mean", "disk_mb_s_peak"], None),
            _kpi_lines(self.results, ["net_mb_s_mean", "net_mb_s_peak"], None), faults=self.faults)
        return self._section("io", title, [Markup(svg)])

    def _queue(self) -> dict[str, Any]:
        title = "Research queue and workers"
        app = self.run.app
        if app is None or not any(c in app and app[c].notna().any()
                                  for c in ("queue_depth", "workers")):
            return self._section("queue", title, note="not measured: the target reports no "
                                                      "research queue (queue_depth, workers)")
        samples = app.assign(t_s=app["t"].astype(float) - self.started_at)
        if len(app) > charts.MAX_POINTS:
            samples = self._resample(app, how="max")
        svg = charts.draw_queue(samples, self.duration_s, self.warmup_s, self._id(),
                                faults=self.faults)
        return self._section("queue", title, [Markup(svg)],
                             lead="Jobs waiting for a research worker (the broker's queue, or "
                                  "the in-process pool's waiters) and the worker processes, "
                                  "as the target reports them.")

    def _database(self) -> dict[str, Any]:
        title = "Database: query time and rate"
        app = self.run.app
        if app is not None and _reports_database(app):
            samples, rate = app, charts.query_rate(app)
            lead = ("As the target reports them (/api/v1/metrics/database): mean and max "
                    "query time since it started; the query rate is the growth of its query "
                    "counter between samples.")
        else:
            # Most targets have no metrics endpoint of their own: PostgreSQL's statistics
            # (--db-url) say the same per interval, except the maximum, which it keeps only
            # since its statistics were reset.
            queries = charts.postgres_queries(self.run.postgres)
            if queries is None:
                return self._section("database", title, note=self._database_note())
            samples, rate = queries[["t", "db_average_ms"]], queries[["t", "db_queries_s"]]
            lead = ("From the target's PostgreSQL (pg_stat_statements, --db-url), as the "
                    "target reports no database metrics of its own: the mean execution time "
                    "and the rate of the statements that ran between two samples.")
        # The rate comes from consecutive raw samples first, then both are binned.
        samples, rate = self._resample(samples), self._resample(rate)
        svg = charts.draw_database(
            samples, rate, self.duration_s, self.warmup_s, self._id(),
            _kpi_lines(self.results, ["db_query_mean_ms"], None),
            _kpi_lines(self.results, ["db_capacity_qps"], None), faults=self.faults)
        return self._section("database", title, [Markup(svg)],
                             lead=lead + self._database_kpi_source())

    def _database_note(self) -> str:
        if "postgres" in (self.run.meta.collectors or {}):
            return self._collector_note("postgres", "fewer than two PostgreSQL samples with "
                                                    "statement timings")
        return self._collector_note(
            "app", "the target's metrics endpoints were not scraped (app.csv absent)")

    def _database_kpi_source(self) -> str:
        """Which numbers the database KPIs were judged on (analysis/kpi.py decides)."""
        if not any(result.kpi.metric.startswith("db_") for result in self.results):
            return ""
        start, end = judged_window(self.run)
        if judged_postgres(self.run, start, end) is not None:
            return (" The database KPIs are judged on PostgreSQL's own statistics "
                    "(pg_stat_statements; without it, pg_stat_database's transactions).")
        if self.run.app is not None:
            return " The database KPIs are judged on the target's /api/v1/metrics/database."
        return ""

    def _jobs(self) -> dict[str, Any]:
        title = "Job completion time"
        latency = self.run.latency
        digest = self._digest()
        series = {}
        for name in sorted(n for n in set(latency["name"]) if is_job(n)):
            if (latency["name"] == name).any():
                series[name] = (charts.values_of_counts_ms(digest.merged[name])
                                if digest is not None
                                else charts.merged_values_ms(latency, name))
        if not series or not any(counts.sum() for _, counts in series.values()):
            return self._section("jobs", title, note=(
                "not measured: no job_completion records (the scenario created no research "
                "jobs, or none finished)"))
        job_metrics = [m for m in METRICS if m.startswith(JOB_NAMES)
                       and not m.endswith(("_mean", "_p50"))]
        svg = charts.draw_distribution(series, self._id(),
                                       _kpi_lines(self.results, job_metrics, None))
        return self._section("jobs", title, [Markup(svg)],
                             lead="Every research job, from its creation to its last result "
                                  "(warm-up included). Timed from the job's own timestamps "
                                  "where the target's answers carry them, else by polling: "
                                  "within ± the stated resolution of the job's end.")


def _reports_database(app: pd.DataFrame) -> bool:
    """Whether the target reported database timings of its own (/api/v1/metrics/database)."""
    return "db_total_queries" in app and bool(app["db_total_queries"].notna().any())


def _slow_queries(run: RunResult, started_at: float) -> dict[str, Any]:
    """The target's own slow-query log; without one, PostgreSQL's slowest statements."""
    if run.app is not None and _reports_database(run.app):
        ordered = sorted(run.slow_queries, key=lambda q: -(q.get("time_ms") or 0.0))
        rows = [{"query": q.get("query") or "", "time": format_value(q.get("time_ms"), "ms"),
                 "at": _offset(q.get("timestamp"), started_at)}
                for q in ordered[:MAX_TABLE_ROWS]]
        return {"source": "app", "rows": rows, "more": max(0, len(ordered) - MAX_TABLE_ROWS),
                "lead": "As the target reports them (/api/v1/metrics/database).",
                "note": "" if rows else "No slow queries were reported by the target."}
    if run.pg_statements:
        ordered = sorted(run.pg_statements, key=lambda s: -(s.get("mean_ms") or 0.0))
        rows = [{"query": s.get("query") or "", "calls": f"{int(s.get('calls') or 0):,}",
                 "mean": format_value(s.get("mean_ms"), "ms"),
                 "max": ("" if s.get("max_in_run", True) else "≤ ")
                 + format_value(s.get("max_ms"), "ms"),
                 "total": format_value(s.get("total_ms"), "ms")}
                for s in ordered[:MAX_TABLE_ROWS]]
        return {"source": "postgres", "rows": rows,
                "more": max(0, len(ordered) - MAX_TABLE_ROWS),
                "lead": ("From the target's PostgreSQL (pg_stat_statements, --db-url), as the "
                         "target reports no slow queries of its own: the statements of the "
                         "whole run (warm-up included), slowest on average first. Max is the "
                         "slowest single execution; ≤ where PostgreSQL's maximum predates "
                         "the run (it keeps one since its statistics were reset)."),
                "note": ""}
    collectors = run.meta.collectors or {}
    entry = collectors.get("postgres")
    if entry is not None and entry.get("pg_stat_statements") and not entry.get("note"):
        note = "No statements ran in the target's database during the run (pg_stat_statements)."
    elif entry is not None:
        note = f"not measured: {entry.get('note') or 'no PostgreSQL samples'}"
    else:
        note = "not measured: " + ((collectors.get("app") or {}).get("note")
                                   or "the target's database metrics were not scraped")
    return {"source": None, "rows": [], "more": 0, "lead": "", "note": note}


def _offset(t: Any, started_at: float) -> str:
    try:
        offset_s = float(t) - started_at
    except (TypeError, ValueError):
        return "—"
    return f"+{_duration(offset_s)}" if offset_s >= 0 else _utc(float(t))


def _failures(failures: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(failures, key=lambda f: -int(f.get("count") or 0))
    rows = []
    for failure in ordered[:MAX_TABLE_ROWS]:
        example = str(failure.get("example") or "")
        rows.append({"name": failure.get("name") or "", "error": failure.get("error") or "",
                     "count": f"{int(failure.get('count') or 0):,}",
                     "example": example[:MAX_EXAMPLE_CHARS],
                     "cut": len(example) > MAX_EXAMPLE_CHARS})
    return {"rows": rows, "more": max(0, len(ordered) - MAX_TABLE_ROWS),
            "total": f"{sum(int(f.get('count') or 0) for f in failures):,}"}


def _alarms(alarms: list[dict[str, Any]], started_at: float) -> list[dict[str, Any]]:
    return [{"at": _offset(a.get("t"), started_at), "kpi": a.get("kpi") or "",
             "value": a.get("value"), "limit": a.get("limit"),
             "message": a.get("message") or ""} for a in alarms[:MAX_TABLE_ROWS * 4]]


def faults_section(summary: dict[str, Any]) -> dict[str, Any] | None:
    """"Faults and recovery": availability, then one line per fault (None without faults)."""
    faults = summary.get("faults") or []
    if not faults:
        return None
    available = summary.get("availability") or {}
    percent = available.get("percent")
    lead = (f"Availability {format_value(percent, '%')}: the target served inside its error "
            f"and latency KPIs for all but {format_value(available.get('down_s'), 's')} of "
            f"{available.get('judged_s')} judged seconds"
            if percent is not None else "Availability not measured: no judged seconds")
    rows = [{"status": "failed" if fault.get("problem") else
             "not-recovered" if fault.get("recovered") is False else
             fault.get("status") or "", "line": describe_fault(fault)} for fault in faults]
    return {"lead": lead, "rows": rows, "good_run_s": available.get("good_run_s"),
            "lost_work": describe_lost_work(summary.get("lost_work"))}



def _profile(run: RunResult) -> dict[str, Any]:
    path = run.run_dir / PROFILE_SVG
    if not path.is_file():
        return {"src": None, "note": "not captured (run with --profile to record a flamegraph "
                                     "of the target)"}
    # An <img> shows the flamegraph without running py-spy's script inside our page; the
    # interactive file sits next to the report.
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return {"src": f"data:image/svg+xml;base64,{data}", "note": "", "file": PROFILE_SVG}


def _collectors(meta: RunMeta, duration_s: float) -> list[dict[str, Any]]:
    rows = []
    for name, info in (meta.collectors or {}).items():
        info = info or {}
        cpu_s = info.get("cpu_s")
        share = None
        if cpu_s is not None and duration_s > 0:
            share = 100.0 * float(cpu_s) / duration_s
        rows.append({
            "name": name,
            "available": bool(info.get("available")),
            "cpu_s": format_value(cpu_s, "s"),
            "share": format_value(share, "% of one core") if share is not None else "—",
            "samples": info.get("samples") if info.get("samples") is not None else "—",
            "interval": format_value(info.get("interval_s"), "s"),
            "note": info.get("note") or "",
        })
    return rows


def _environment(meta: RunMeta, duration_s: float) -> list[tuple[str, str]]:
    settings = {k: v for k, v in dataclasses.asdict(meta.settings).items() if k != "steps"}
    machine = meta.machine or {}
    versions = meta.versions or {}
    argv = meta.argv or []
    target = str(meta.target or "—")
    if meta.target_managed:
        target += " (bundled reference service, started by perfkit)"
    if meta.target_pid:
        target += f", pid {meta.target_pid}"
    items = [
        ("command", str(meta.command or "—")),
        ("argv", shlex.join(str(a) for a in argv) if argv else "—"),
        ("scenario", str(meta.scenario or "—")),
        ("target", target),
        ("variants", ", ".join(meta.variants or []) or "none"),
        ("extra latency", ", ".join(meta.extra_latency) or "none"),
        ("latency profile", str(meta.latency_profile or "—")),
        ("settings", ", ".join(f"{k} {v}" for k, v in settings.items() if v is not None)
         or "—"),
        ("KPI file", str(meta.kpi_file or "defaults")),
        ("git revision", str(meta.git_revision or "—")),
        ("machine", ", ".join(f"{k} {v}" for k, v in machine.items()) or "—"),
        ("machine load", describe_machine_load(meta.environment)),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items()) or "—"),
        ("started", _utc(meta.started_at)),
        ("ended", _utc(meta.ended_at)),
        ("duration", _duration(duration_s)),
        ("status", str(meta.status or "—")),
    ]
    if meta.message:
        items.append(("message", str(meta.message)))
    if meta.simulated:
        items.append(("data", "SIMULATED (tests/synthetic.py), not a measurement"))
    return items
