"""Chart data (pandas) and charts (matplotlib) for the HTML report, as inline SVG.

Time charts show elapsed time since the start of the run. An hour of 1 s buckets is binned
into at most MAX_POINTS windows; a window's percentiles come from the merged histograms of
its buckets, so they are exact to the histogram's precision (never averages of percentiles).
Figures are drawn on `matplotlib.figure.Figure` objects directly, without pyplot, so no GUI
backend and no global figure registry are involved.
"""

import io
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, MultipleLocator, NullLocator

from ..analysis import stats
from ..analysis.digest import CHART_PERCENTILES as PERCENTILES
from ..analysis.digest import MAX_POINTS, chart_frame, choose_window_s

__all__ = ["MAX_POINTS", "PERCENTILES", "choose_window_s"]  # beside the drawing functions

SATURATED_CPU_PERCENT = 90.0

PALETTE = ["#2563eb", "#d97706", "#059669", "#7c3aed", "#db2777", "#0891b2", "#65a30d",
           "#9333ea", "#475569", "#b45309"]
PERCENTILE_COLORS = {"p50_ms": "#2563eb", "p95_ms": "#d97706", "p99_ms": "#dc2626"}
TARGET_COLOR = "#dc2626"
ALLOWED_COLOR = "#7f1d1d"
WARMUP_COLOR = "#e5e7eb"
WARMUP_LABEL = "warm-up (not judged)"
FAULT_COLOR = "#f59e0b"
FAULT_LABEL = "fault (--fault)"

_STYLE: Any = {  # matplotlib types rc keys as Literals
    # Text stays text (small files, selectable); the page's CSS picks the font.
    "svg.fonttype": "none",
    "svg.hashsalt": "perfkit",
    # Endpoint names are user data: a "$" must not start mathtext.
    "text.parse_math": False,
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#9ca3af",
    "axes.grid": True,
    "grid.color": "#e5e7eb",
    "grid.linewidth": 0.6,
    "xtick.color": "#4b5563",
    "ytick.color": "#4b5563",
    "legend.frameon": False,
    "legend.fontsize": 8.0,
    "lines.linewidth": 1.2,
    "path.simplify_threshold": 0.3,
}
# Figure geometry in inches: every time chart has the same plot width and a legend column on
# the right, so the time axes of all charts line up on the page.
_WIDTH_IN = 11.0
_LEFT_IN = 0.8
_LEGEND_IN = 2.9
_TOP_IN = 0.34
_BOTTOM_IN = 0.48
_GAP_IN = 0.22
# A KPI line further above the data than this factor would flatten the data into the axis:
# it stays in the legend, marked as above the chart.
_KPI_ZOOM = 4.0
_LEGEND_CHARS = 40
_MARKER_POINTS = 150
_TICK_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
                 21600, 43200, 86400)


@dataclass(frozen=True)
class KpiLine:
    """A KPI level drawn as a horizontal line on a chart."""

    label: str
    value: float
    level: str  # "target" or "allowed"


def bin_latency(latency: pd.DataFrame, started_at: float, ended_at: float,
                window_s: float, bucket_s: float = 1.0) -> pd.DataFrame:
    """Per (name, window): t_s (window middle, s since start), count, failures, rps,
    failures_s and p50/p95/p99_ms of the window's merged histograms.

    Every window from the start to the end appears for every name; a window without requests
    has rps 0 and NaN percentiles, so lines break there instead of inventing values.
    """
    columns = ["t_s", "name", "count", "failures", "rps", "failures_s", *PERCENTILES]
    if latency.empty:
        return pd.DataFrame(columns=columns)
    duration_s = max(ended_at - started_at, window_s)
    n_windows = max(1, math.ceil(duration_s / window_s))
    window = ((latency["t"].to_numpy(float) - started_at) // window_s).astype(np.int64)
    # Bucket times are whole seconds and the run's start and end are not: a bucket just
    # outside belongs to the first or last window; one further out to none.
    inside = (window >= -1) & (window <= n_windows)
    latency, window = latency[inside], np.clip(window[inside], 0, n_windows - 1)
    names, name_id = np.unique(latency["name"].astype(str).to_numpy(), return_inverse=True)
    n_groups = names.size * n_windows
    group_of_row = name_id * n_windows + window
    values_ms = np.full((n_groups, len(PERCENTILES)), math.nan)
    hists, window_of = latency["hist"].tolist(), window.tolist()
    for name in range(names.size):
        # One name at a time: windows × cells of one name stays small, of all names it need not.
        blocks: list[list[str]] = [[] for _ in range(n_windows)]
        for i in np.flatnonzero(name_id == name).tolist():
            blocks[window_of[i]].append(hists[i])
        values_us, cell_counts = stats.block_counts(blocks)
        values_ms[name * n_windows:(name + 1) * n_windows] = stats.percentiles_of_counts(
            values_us, cell_counts, list(PERCENTILES.values())) / 1000.0
    counts = np.bincount(group_of_row, weights=latency["count"].to_numpy(float),
                         minlength=n_groups)
    failures = np.bincount(group_of_row, weights=latency["failures"].to_numpy(float),
                           minlength=n_groups)
    return chart_frame(names, n_windows, window_s, bucket_s, duration_s, counts, failures,
                       values_ms)


def merged_values_ms(latency: pd.DataFrame, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(value ms, count) of every non-empty histogram cell of `name`, over all its buckets."""
    encoded = latency.loc[latency["name"] == name, "hist"].tolist()
    _, cell, count = stats.decode_cells(encoded)
    return values_of_counts_ms(np.bincount(cell, weights=count, minlength=stats.CELLS)
                               .astype(np.int64))


def values_of_counts_ms(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(value ms, count) of every non-empty cell of a counts array."""
    unique = np.flatnonzero(counts)
    totals = counts[unique]
    # The middle of each cell, as HdrHistogram's own mean does.
    return stats.cell_values_us(unique, where="middle") / 1000.0, totals


# Samples further apart than this many of their intervals are a gap (the collector or the
# target stopped): the line breaks there rather than drawing values nobody measured. One
# late or missed sample is not.
GAP_INTERVALS = 2.5


def resample_frame(frame: pd.DataFrame, started_at: float, ended_at: float, window_s: float,
                   how: str = "mean") -> pd.DataFrame:
    """Samples with a `t` column → rows of t_s (s since start) and the values' mean (or max)
    over runs of consecutive samples that span about `window_s`, each drawn at its samples'
    mean time: bins follow the samples, never a fixed grid, on which a sampler slightly
    slower than the grid (1.004 s against 1 s) leaves windows empty (false gaps) and others
    doubled. Where samples stop for more than GAP_INTERVALS of their median interval, a NaN
    row between breaks the line: a real gap stays one."""
    duration_s = max(ended_at - started_at, window_s)
    t = frame["t"].astype(float).to_numpy()
    inside = (t >= started_at) & (t < started_at + math.ceil(duration_s / window_s) * window_s)
    order = np.argsort(t[inside], kind="stable")
    t = t[inside][order]
    values = frame.drop(columns=["t"]).apply(pd.to_numeric, errors="coerce")
    values = values[inside].iloc[order].reset_index(drop=True)
    if not t.size:
        return pd.DataFrame(columns=["t_s", *values.columns], dtype=float)
    steps = np.diff(t)
    interval_s = float(np.median(steps)) if steps.size else 0.0
    if interval_s <= 0:
        interval_s = window_s
    per_group = max(1, round(window_s / interval_s))
    gap = np.concatenate([[False], steps > GAP_INTERVALS * interval_s])
    segment = np.cumsum(gap)
    position = np.arange(t.size) - np.flatnonzero(gap | (np.arange(t.size) == 0))[segment]
    # Groups of per_group consecutive samples, none across a gap.
    _, group = np.unique(segment * t.size + position // per_group, return_inverse=True)
    grouped = values.groupby(group)
    binned = grouped.max() if how == "max" else grouped.mean()
    binned.insert(0, "t_s", pd.Series(t - started_at).groupby(group).mean())
    breaks = np.flatnonzero(gap)
    if breaks.size:
        # Between the two samples either side of the gap, with every value missing.
        holes = pd.DataFrame({"t_s": (t[breaks - 1] + t[breaks]) / 2 - started_at})
        binned = pd.concat([binned, holes], ignore_index=True).sort_values("t_s", kind="stable")
    return binned.reset_index(drop=True)


def postgres_queries(postgres: pd.DataFrame | None) -> pd.DataFrame | None:
    """t, db_average_ms and db_queries_s between consecutive postgres.csv samples: the mean
    execution time and the rate of the statements that ran in each interval (cumulative
    pg_stat_statements sums; a reset gives NaN, not < 0). None without two timed samples."""
    if postgres is None or not {"calls", "exec_ms"} <= set(postgres.columns):
        return None
    timed = postgres.dropna(subset=["calls", "exec_ms"])
    if len(timed) < 2:
        return None
    t = timed["t"].astype(float)
    calls, exec_ms = timed["calls"].astype(float).diff(), timed["exec_ms"].astype(float).diff()
    calls[calls < 0] = math.nan
    mean_ms = (exec_ms / calls).where(calls > 0)
    return pd.DataFrame({"t": t, "db_average_ms": mean_ms,
                         "db_queries_s": calls / t.diff()}).iloc[1:].reset_index(drop=True)


def query_rate(app: pd.DataFrame) -> pd.DataFrame:
    """t and db queries per second, from the cumulative counter (a reset gives NaN, not < 0)."""
    t = app["t"].astype(float)
    queries = pd.to_numeric(app["db_total_queries"], errors="coerce")
    rate = queries.diff() / t.diff()
    rate[rate < 0] = math.nan
    return pd.DataFrame({"t": t, "db_queries_s": rate})


@contextmanager
def _style() -> Iterator[None]:
    with matplotlib.rc_context(_STYLE):
        yield


def _new_figure(panel_heights_in: Sequence[float],
                titled: bool = False) -> tuple[Figure, list[Axes]]:
    """Stacked panels sharing the x axis, with fixed margins (room for a title if `titled`).

    Fixed margins, not constrained layout: that draws every figure twice, and an hour-long
    report has a dozen figures.
    """
    top_in = _TOP_IN if titled else 0.12
    gaps_in = _GAP_IN * (len(panel_heights_in) - 1)
    height_in = top_in + sum(panel_heights_in) + gaps_in + _BOTTOM_IN
    fig = Figure(figsize=(_WIDTH_IN, height_in))
    fig.subplots_adjust(left=_LEFT_IN / _WIDTH_IN, right=1 - _LEGEND_IN / _WIDTH_IN,
                        top=1 - top_in / height_in, bottom=_BOTTOM_IN / height_in,
                        hspace=_GAP_IN / (sum(panel_heights_in) / len(panel_heights_in)))
    axes = fig.subplots(len(panel_heights_in), 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": list(panel_heights_in)})
    return fig, [ax for (ax,) in axes]


def _short(label: str) -> str:
    """Legend text that fits the legend column: wrapped once, then cut."""
    if len(label) <= _LEGEND_CHARS:
        return label
    cut = label.rfind(" ", 0, _LEGEND_CHARS)
    if cut <= 0:
        return label[:_LEGEND_CHARS - 1] + "…"
    rest = label[cut + 1:]
    if len(rest) > _LEGEND_CHARS:
        rest = rest[:_LEGEND_CHARS - 1] + "…"
    return f"{label[:cut]}\n  {rest}"


def _time_axis(axes: list[Axes], duration_s: float, warmup_s: float,
               faults: Sequence[tuple[float, float]] = ()) -> None:
    """Elapsed time on the x axis (minutes for long runs), the warm-up shaded and each fault
    a band from its start to its end (offsets in s; at least a second wide, so an instant
    fault shows)."""
    minutes = duration_s >= 600
    scale = 60.0 if minutes else 1.0
    # Ticks on round seconds, minutes or hours, at most ten: matplotlib's ticks are costly
    # objects, and a dozen figures with many ticks take seconds to draw.
    step_s = next((s for s in _TICK_STEPS_S if duration_s / s <= 10), _TICK_STEPS_S[-1])
    for i, ax in enumerate(axes):
        ax.set_xlim(0, max(duration_s, 1.0))
        ax.xaxis.set_major_locator(MultipleLocator(step_s))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x / scale:g}"))
        if warmup_s > 0:
            ax.axvspan(0, min(warmup_s, duration_s), color=WARMUP_COLOR, lw=0, zorder=0,
                       label=WARMUP_LABEL if i == 0 else "_nolegend_")
        for j, (start_s, end_s) in enumerate(faults):
            ax.axvspan(start_s, max(end_s, start_s + 1.0), color=FAULT_COLOR, alpha=0.35, lw=0,
                       zorder=0, label=FAULT_LABEL if i == 0 and j == 0 else "_nolegend_")
    axes[-1].set_xlabel("minutes since start" if minutes else "seconds since start",
                        color="#4b5563")


def _finish(ax: Axes, data_max: float, lines: Sequence[KpiLine] = (),
            ylabel: str = "", fixed_top: float | None = None) -> None:
    """KPI lines, a y range from 0 that shows the data, and the legend beside the panel."""
    if fixed_top is not None:
        top = fixed_top
    else:
        top = data_max if math.isfinite(data_max) and data_max > 0 else 0.0
        near = [line.value for line in lines
                if top == 0.0 or line.value <= top * _KPI_ZOOM]
        top = max([top, *near]) * 1.12 or 1.0
    for line in lines:
        above = line.value > top
        ax.axhline(line.value, color=TARGET_COLOR if line.level == "target" else ALLOWED_COLOR,
                   linestyle="--" if line.level == "target" else ":", linewidth=1.2, zorder=3,
                   label=line.label + (" (off chart)" if above else ""))
    ax.set_ylim(0, top)
    figure = ax.get_figure(root=True)
    panel_in = ax.get_position().height * (figure.get_figheight() if figure else 2.0)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=max(2, round(panel_in * 3)),
                                           steps=[1, 2, 2.5, 5, 10]))
    if ylabel:
        ax.set_ylabel(ylabel)
    _legend(ax)


def _legend(ax: Axes) -> None:
    """Beside the panel, the warm-up entry last."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    order = sorted(range(len(labels)), key=lambda i: labels[i] == WARMUP_LABEL)
    ax.legend([handles[i] for i in order], [_short(labels[i]) for i in order],
              loc="upper left", bbox_to_anchor=(1.015, 1.0), borderaxespad=0.0,
              handlelength=1.8)


def _empty_note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes,
            color="#6b7280", fontsize=8.5)


def _nanmax(values: Sequence[float] | np.ndarray | pd.Series | pd.DataFrame) -> float:
    array = np.asarray(values, float)
    return float(np.nanmax(array)) if np.isfinite(array).any() else math.nan


def _markers(series: pd.Series) -> dict[str, Any]:
    """Dots on sparse series: a point between two gaps is invisible as a line."""
    if series.notna().sum() <= _MARKER_POINTS:
        return {"marker": "o", "markersize": 2.5}
    return {}


def _has(frame: pd.DataFrame, column: str) -> bool:
    return column in frame and bool(frame[column].notna().any())


_ID = re.compile(r'\sid="([^"]+)"')
_REF = re.compile(r'(url\(#|href="#)([^)"]+)')


def _to_svg(fig: Figure, id_prefix: str, title: str) -> str:
    """Inline SVG: no XML prolog or metadata, ids unique on the page, size set by CSS."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    referenced = {m.group(2) for m in _REF.finditer(svg)}
    # Several charts share one page: ids must be unique there, and unreferenced ones are
    # dead weight (matplotlib names every group).
    svg = _ID.sub(lambda m: f' id="{id_prefix}-{m.group(1)}"' if m.group(1) in referenced
                  else "", svg)
    svg = _REF.sub(lambda m: f"{m.group(1)}{id_prefix}-{m.group(2)}", svg)
    svg = re.sub(r"font-family: [^;\"]*;?\s*", "", svg)
    svg = re.sub(r'<svg ([^>]*?)width="[^"]*" height="[^"]*"',
                 lambda m: f'<svg class="chart" role="img" aria-label="{_attr(title)}" '
                           f'{m.group(1)}', svg, count=1)
    return svg.strip()


def _attr(text: str) -> str:
    return (text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
            .replace(">", "&gt;"))


def draw_throughput(binned: pd.DataFrame, duration_s: float, warmup_s: float,
                    id_prefix: str, kpi_lines: Sequence[KpiLine] = (),
                    faults: Sequence[tuple[float, float]] = ()) -> str:
    title = "Requests per second and failures per second"
    with _style():
        fig, (ax_rps, ax_fail) = _new_figure([2.2, 0.8], titled=True)
        total = binned.groupby("t_s", sort=True)[["rps", "failures_s"]].sum()
        ax_rps.plot(total.index, total["rps"], color="#111827", linewidth=1.4, label="total")
        for i, (name, part) in enumerate(binned.groupby("name", sort=True)):
            ax_rps.plot(part["t_s"], part["rps"], color=PALETTE[i % len(PALETTE)],
                        linewidth=0.9, label=str(name), **_markers(part["rps"]))
        ax_rps.set_title(title)
        _time_axis([ax_rps, ax_fail], duration_s, warmup_s, faults)
        _finish(ax_rps, _nanmax(total["rps"]), kpi_lines, "requests/s")
        if (total["failures_s"] > 0).any():
            ax_fail.fill_between(total.index, total["failures_s"], color="#dc2626", alpha=0.25,
                                 linewidth=0)
            ax_fail.plot(total.index, total["failures_s"], color="#dc2626", linewidth=1.0,
                         label="failures/s")
        else:
            _empty_note(ax_fail, "no failed requests")
        _finish(ax_fail, _nanmax(total["failures_s"]), (), "failures/s")
        return _to_svg(fig, id_prefix, title)


def draw_latency(binned: pd.DataFrame, name: str, duration_s: float, warmup_s: float,
                 id_prefix: str, kpi_lines: Sequence[KpiLine] = (),
                 faults: Sequence[tuple[float, float]] = ()) -> str:
    title = f"{name}: latency"
    part = binned[binned["name"] == name]
    with _style():
        fig, (ax,) = _new_figure([1.9], titled=True)
        for column in PERCENTILES:
            ax.plot(part["t_s"], part[column], color=PERCENTILE_COLORS[column],
                    label=column.removesuffix("_ms"), **_markers(part[column]))
        ax.set_title(title)
        _time_axis([ax], duration_s, warmup_s, faults)
        _finish(ax, _nanmax(part["p99_ms"]), kpi_lines, "ms")
        return _to_svg(fig, id_prefix, title)


def draw_load(timeline: pd.DataFrame, duration_s: float, warmup_s: float,
              id_prefix: str,
              faults: Sequence[tuple[float, float]] = ()) -> str:
    """Users and/or arrival rate, and the load generator's CPU with its saturation marked."""
    title = "Load: users / arrival rate and load-generator CPU"
    panels = [c for c in ("users", "rate") if _has(timeline, c)]
    with _style():
        fig, axes = _new_figure([1.2] * len(panels) + [1.2])
        _time_axis(axes, duration_s, warmup_s, faults)
        for ax, column in zip(axes, panels, strict=False):
            label = "users" if column == "users" else "target arrival rate"
            ax.plot(timeline["t_s"], timeline[column],
                    color=PALETTE[3 if column == "users" else 0], label=label,
                    drawstyle="steps-mid")
            _finish(ax, _nanmax(timeline[column]), (),
                    "users" if column == "users" else "requests/s")
        ax_cpu = axes[-1]
        if _has(timeline, "loadgen_cpu_percent"):
            cpu = timeline["loadgen_cpu_percent"]
            ax_cpu.plot(timeline["t_s"], cpu, color="#111827", linewidth=1.0,
                        label="busiest Locust process")
            saturated = (cpu >= SATURATED_CPU_PERCENT).to_numpy()
            if saturated.any():
                ax_cpu.fill_between(timeline["t_s"], 0, 1, where=saturated, color="#dc2626",
                                    alpha=0.2, linewidth=0, step="mid",
                                    transform=ax_cpu.get_xaxis_transform(),
                                    label="saturated: latencies\nnot trustworthy")
            ax_cpu.axhline(SATURATED_CPU_PERCENT, color=TARGET_COLOR, linestyle="--",
                           linewidth=1.0, label=f"saturation {SATURATED_CPU_PERCENT:g} %")
            top = max(_nanmax(cpu), 100.0) * 1.08
        else:
            _empty_note(ax_cpu, "load-generator CPU not measured")
            top = 100.0
        _finish(ax_cpu, math.nan, (), "CPU, % of a core", fixed_top=top)
        return _to_svg(fig, id_prefix, title)


def draw_cpu_memory(resources: pd.DataFrame, duration_s: float, warmup_s: float,
                    id_prefix: str, cpu_lines: Sequence[KpiLine] = (),
                    memory_lines: Sequence[KpiLine] = (), cores: int | None = None,
                    faults: Sequence[tuple[float, float]] = ()) -> str:
    """CPU in percent of one core, as `top` (the KPIs' unit): the target's busiest process,
    its whole tree and, with `cores`, the whole machine; memory of the target tree."""
    title = "Target CPU and memory"
    with _style():
        fig, (ax_cpu, ax_mem) = _new_figure([1.5, 1.5])
        cpu_columns = []
        if _has(resources, "cpu_busiest_percent"):
            ax_cpu.plot(resources["t_s"], resources["cpu_busiest_percent"], color=PALETTE[0],
                        label="busiest target process")
            cpu_columns.append(resources["cpu_busiest_percent"])
        if _has(resources, "cpu_percent"):
            ax_cpu.plot(resources["t_s"], resources["cpu_percent"], color=PALETTE[1],
                        linewidth=0.9, label="target process tree")
            cpu_columns.append(resources["cpu_percent"])
        if cores and _has(resources, "sys_cpu_percent"):
            machine = resources["sys_cpu_percent"] * cores
            ax_cpu.plot(resources["t_s"], machine, color="#9ca3af", linewidth=0.9,
                        label=f"whole machine ({cores} cores = {100 * cores} %)")
            cpu_columns.append(machine)
        if not ax_cpu.lines:
            _empty_note(ax_cpu, "CPU not measured")
        if _has(resources, "rss_mb"):
            ax_mem.plot(resources["t_s"], resources["rss_mb"], color=PALETTE[3], label="RSS")
        if _has(resources, "uss_mb"):
            ax_mem.plot(resources["t_s"], resources["uss_mb"], color=PALETTE[4], linewidth=0.9,
                        label="USS")
        if not ax_mem.lines:
            _empty_note(ax_mem, "memory not measured")
        _time_axis([ax_cpu, ax_mem], duration_s, warmup_s, faults)
        top = max([_nanmax(c) for c in cpu_columns if c.notna().any()] + [100.0]) * 1.08
        _finish(ax_cpu, math.nan, cpu_lines, "CPU, % of one core", fixed_top=top)
        _finish(ax_mem, _nanmax(resources[[c for c in ("rss_mb", "uss_mb") if c in resources]]),
                memory_lines, "MB")
        return _to_svg(fig, id_prefix, title)


IO_SERIES = {"target_disk_mb_s": "target read + write", "sys_disk_read_mb_s": "machine disk read",
             "sys_disk_write_mb_s": "machine disk write"}
NET_SERIES = {"sys_net_mb_s": "machine sent + received", "sys_net_sent_mb_s": "machine sent",
              "sys_net_recv_mb_s": "machine received"}


def add_io_totals(resources: pd.DataFrame) -> pd.DataFrame:
    """The sums the I/O KPIs judge: target read + write, machine network sent + received.

    A sample with one part missing gives NaN (a gap), never a partial sum.
    """
    frame = resources.copy()
    for total, parts in (("target_disk_mb_s", ["read_mb_s", "write_mb_s"]),
                         ("sys_net_mb_s", ["sys_net_sent_mb_s", "sys_net_recv_mb_s"])):
        if all(part in frame for part in parts):
            frame[total] = frame[parts].sum(axis=1, min_count=len(parts))
    return frame


def draw_io_network(resources: pd.DataFrame, duration_s: float, warmup_s: float,
                    id_prefix: str, io_lines: Sequence[KpiLine] = (),
                    net_lines: Sequence[KpiLine] = (),
                    faults: Sequence[tuple[float, float]] = ()) -> str:
    title = "Disk I/O and network"
    with _style():
        fig, (ax_io, ax_net) = _new_figure([1.4, 1.4])
        _time_axis([ax_io, ax_net], duration_s, warmup_s, faults)
        for ax, series, lines, label in ((ax_io, IO_SERIES, io_lines, "disk MB/s"),
                                         (ax_net, NET_SERIES, net_lines, "network MB/s")):
            present = [c for c in series if _has(resources, c)]
            for i, column in enumerate(present):
                ax.plot(resources["t_s"], resources[column], color=PALETTE[i % len(PALETTE)],
                        linewidth=1.3 if i == 0 else 0.8, label=series[column])
            if not present:
                _empty_note(ax, f"{label}: not measured")
            _finish(ax, _nanmax(resources[present]) if present else math.nan, lines, label)
        return _to_svg(fig, id_prefix, title)


def draw_queue(app: pd.DataFrame, duration_s: float, warmup_s: float, id_prefix: str,
               faults: Sequence[tuple[float, float]] = ()) -> str:
    """The target's research queue: jobs waiting for a worker, and its worker processes."""
    title = "Research queue and workers"
    with _style():
        fig, (ax_queue, ax_workers) = _new_figure([1.4, 0.9])
        _time_axis([ax_queue, ax_workers], duration_s, warmup_s, faults)
        for ax, column, label, color in ((ax_queue, "queue_depth", "jobs waiting", PALETTE[0]),
                                         (ax_workers, "workers", "worker processes",
                                          PALETTE[2])):
            if _has(app, column):
                ax.step(app["t_s"], app[column], where="post", color=color, label=label)
            else:
                _empty_note(ax, f"{label}: not reported by the target")
            _finish(ax, _nanmax(app[column]) if _has(app, column) else math.nan, (), label)
        return _to_svg(fig, id_prefix, title)


def draw_database(app: pd.DataFrame, rate: pd.DataFrame, duration_s: float, warmup_s: float,
                  id_prefix: str, time_lines: Sequence[KpiLine] = (),
                  rate_lines: Sequence[KpiLine] = (),
                  faults: Sequence[tuple[float, float]] = ()) -> str:
    """Query time as the target reports it (mean and max since it started) and query rate."""
    title = "Database: query time and query rate"
    with _style():
        fig, (ax_time, ax_rate) = _new_figure([1.5, 1.3])
        for column, label, color in (("db_average_ms", "mean query time", PALETTE[0]),
                                     ("db_max_ms", "max query time", PALETTE[1])):
            if _has(app, column):
                ax_time.plot(app["t_s"], app[column], color=color, label=label,
                             **_markers(app[column]))
        if _has(rate, "db_queries_s"):
            ax_rate.plot(rate["t_s"], rate["db_queries_s"], color=PALETTE[2],
                         label="queries/s", **_markers(rate["db_queries_s"]))
        else:
            _empty_note(ax_rate, "query rate not measured (fewer than two samples)")
        _time_axis([ax_time, ax_rate], duration_s, warmup_s, faults)
        time_max = _nanmax(app[[c for c in ("db_average_ms", "db_max_ms") if c in app]])
        mean_max = _nanmax(app["db_average_ms"]) if "db_average_ms" in app else math.nan
        if time_max > 0 and mean_max > 0 and time_max / mean_max > 20:
            # The max is typically 100× the mean: on a linear axis the mean would be flat.
            for line in time_lines:
                ax_time.axhline(line.value, color=TARGET_COLOR, linestyle="--",
                                label=line.label)
            ax_time.set_yscale("log")
            # Plain numbers: with mathtext off, the default log labels would print "$10^{2}$".
            ax_time.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
            ax_time.yaxis.set_minor_locator(NullLocator())
            ax_time.set_ylabel("ms (log scale)")
            _legend(ax_time)
        else:
            _finish(ax_time, time_max, time_lines, "ms")
        _finish(ax_rate, _nanmax(rate["db_queries_s"]), rate_lines, "queries/s")
        return _to_svg(fig, id_prefix, title)


def draw_distribution(series: dict[str, tuple[np.ndarray, np.ndarray]], id_prefix: str,
                      kpi_lines: Sequence[KpiLine] = ()) -> str:
    """Histogram of per-job durations in seconds; `series` maps a name to (values_ms, counts)."""
    title = "Job completion time (create → finished)"
    with _style():
        fig, (ax,) = _new_figure([1.9])
        everything = np.concatenate([values for values, _ in series.values()]) / 1000.0
        high = float(everything.max()) if everything.size else 1.0
        near = [line.value for line in kpi_lines if line.value <= high * _KPI_ZOOM]
        bins = np.linspace(0, max([high, *near]) * 1.05, 41)
        for i, (name, (values_ms, counts)) in enumerate(series.items()):
            heights, _ = np.histogram(values_ms / 1000.0, bins=bins, weights=counts)
            # One outline per series, not a patch per bar: far cheaper to draw and to ship.
            ax.stairs(heights, bins, fill=True, alpha=0.6, color=PALETTE[i % len(PALETTE)],
                      label=f"{name} ({int(counts.sum()):,} jobs)")
        for line in kpi_lines:
            above = line.value > bins[-1]
            ax.axvline(line.value, color=TARGET_COLOR if line.level == "target"
                       else ALLOWED_COLOR, linestyle="--" if line.level == "target" else ":",
                       label=line.label + (" (off chart)" if above else ""))
        ax.set_xlim(0, bins[-1])
        ax.set_xlabel("seconds", color="#4b5563")
        ax.set_ylabel("jobs")
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        _legend(ax)
        return _to_svg(fig, id_prefix, title)


def draw_memory_growth(rss: pd.DataFrame, memory: dict[str, Any], window_start_s: float,
                       duration_s: float, warmup_s: float, id_prefix: str,
                       faults: Sequence[tuple[float, float]] = ()) -> str:
    """perfkit endurance: the target's RSS (`rss` has t_s and rss_mb) with the fitted
    segments of the leak analysis (times in `memory` count from the judged window's start,
    `window_start_s` after the run's), the warm-up growth if it stopped, and below it the
    projection of the deciding slope to 24 h with its interval."""
    title = "Target memory: RSS, fitted segments and the projection to 24 h"
    with _style():
        height_in = _TOP_IN + 1.9 + 1.4 + 2 * _GAP_IN + 2 * _BOTTOM_IN
        fig = Figure(figsize=(_WIDTH_IN, height_in))
        fig.subplots_adjust(left=_LEFT_IN / _WIDTH_IN, right=1 - _LEGEND_IN / _WIDTH_IN,
                            top=1 - _TOP_IN / height_in, bottom=_BOTTOM_IN / height_in,
                            hspace=(2 * _GAP_IN + _BOTTOM_IN) / 1.65)
        ax_run, ax_day = fig.subplots(2, 1, gridspec_kw={"height_ratios": [1.9, 1.4]})
        ax_run.set_title(title)
        _time_axis([ax_run], duration_s, warmup_s, faults)
        if _has(rss, "rss_mb"):
            ax_run.plot(rss["t_s"], rss["rss_mb"], color=PALETTE[3], label="RSS",
                        **_markers(rss["rss_mb"]))
        else:
            _empty_note(ax_run, "memory not measured")
        segments = memory.get("segments") or []
        plateau = memory.get("plateau")
        if plateau and segments:
            early = segments[0]
            ax_run.axvspan(window_start_s + early["start_s"], window_start_s + early["end_s"],
                           color="#fef3c7", lw=0, zorder=0.5,
                           label=f"warm-up growth: +{plateau['grew_mb']:.1f} MB, flat after")
        for i, segment in enumerate(segments):
            deciding = i == len(segments) - 1
            # The deciding slope as the verdict states it (its trend of the samples, which
            # can differ a little from this line through the block means).
            per_h = memory["per_h"] if deciding and memory.get("per_h") is not None \
                else segment["per_h"]
            ax_run.plot([window_start_s + segment["start_s"], window_start_s + segment["end_s"]],
                        [segment["start_mb"], segment["end_mb"]],
                        color="#111827" if deciding else "#6b7280",
                        linestyle="--", linewidth=1.6 if deciding else 1.1, zorder=4,
                        label=f"{'fit, deciding' if deciding else 'fit, early'}: "
                              f"{round(per_h, 1) + 0.0:+,.1f} MB/h")
        data_max = _nanmax(rss["rss_mb"]) if _has(rss, "rss_mb") else math.nan
        _finish(ax_run, data_max, (), "MB")
        _draw_projection(ax_day, memory)
        return _to_svg(fig, id_prefix, title)


def _draw_projection(ax: Axes, memory: dict[str, Any]) -> None:
    projection = memory.get("projection_24h_mb")
    ax.set_xlabel("hours after the end of the run, at the deciding slope", color="#4b5563")
    ax.set_xlim(0, 24)
    ax.xaxis.set_major_locator(MultipleLocator(4))
    if not projection or projection.get("mb") is None:
        _empty_note(ax, "no projection: no memory trend")
        _finish(ax, math.nan, (), "MB")
        return
    hours = np.array([0.0, float(projection["hours"])])
    level = float(projection["from_mb"])
    ax.plot(hours, [level, projection["mb"]], color="#111827", linewidth=1.4,
            label=f"projected: {projection['mb']:,.0f} MB in {projection['hours']:g} h")
    tops = [level, float(projection["mb"])]
    if projection.get("low") is not None and projection.get("high") is not None:
        ax.fill_between(hours, [level, projection["low"]], [level, projection["high"]],
                        color="#9ca3af", alpha=0.35, linewidth=0,
                        label=f"{100 * memory['confidence']:.0f} % interval: "
                              f"{projection['low']:,.0f} .. {projection['high']:,.0f} MB")
        tops.append(float(projection["high"]))
    else:
        ax.plot([], [], " ", label="no interval (too few independent blocks)")
    threshold = memory.get("threshold_mb_h")
    if threshold is not None:
        ax.plot(hours, [level, level + threshold * projection["hours"]], color=TARGET_COLOR,
                linestyle=":", linewidth=1.2, label=f"growth at the {threshold:g} MB/h threshold")
        tops.append(level + threshold * projection["hours"])
    _finish(ax, max(tops), (), "MB")
