"""One pass over a run's latency buckets: everything the report reads from their histograms.

A day-long run holds 371,520 one-second buckets (bench/report_time.py). Decoding them for each
use (KPI values, summary.json, the chart lines, the job-time distribution) took most of a
minute and kept every histogram in memory. `digest_latency` takes the buckets chunk by chunk,
as the run directory streams them, decodes each chunk once (vectorised, stats.decode_cells)
and keeps only counts arrays: per name over the judged window, per name over the whole run,
and per name and chart window. Every figure equals the one computed from the merged
HdrHistograms (tests/test_digest.py).
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from . import stats

# Points per chart line at most: a day of 1 s buckets is drawn in 144 s windows.
MAX_POINTS = 600
CHART_PERCENTILES = {"p50_ms": 50.0, "p95_ms": 95.0, "p99_ms": 99.0}


def choose_window_s(duration_s: float, bucket_s: float = 1.0,
                    max_points: int = MAX_POINTS) -> float:
    """The chart window: a whole number of buckets, so no bucket is split between windows."""
    buckets = max(1, math.ceil(duration_s / (bucket_s * max_points)))
    return buckets * bucket_s


@dataclass
class LatencyChunk:
    """Some buckets of a run: `frame` holds their t, name, count and failures; `row`, `cell`
    and `count` every non-empty histogram cell of them (row: the bucket's position in
    `frame`; cell: its index in new_histogram()'s counts array)."""

    frame: pd.DataFrame
    row: np.ndarray
    cell: np.ndarray
    count: np.ndarray


@dataclass(frozen=True)
class ChartSpan:
    """The time axis of the report's charts."""

    started_at: float
    ended_at: float
    window_s: float
    bucket_s: float = 1.0


@dataclass
class LatencyDigest:
    """`summaries`: stats.summarize_endpoints of the buckets in `judged_window` (per name,
    sorted); `merged`: per name, the counts array of all its buckets (warm-up included);
    `chart`: per request name (names in `excluded` left out) and chart window, what
    report.charts.bin_latency returns."""

    judged_window: tuple[float, float]
    span: ChartSpan
    summaries: dict[str, dict[str, Any]]
    merged: dict[str, np.ndarray]
    chart: pd.DataFrame


class _Grow:
    """A (names × columns) array that gains a row per new name."""

    def __init__(self, columns: int, dtype: Any) -> None:
        self.array = np.zeros((0, columns), dtype)

    def fit(self, names: int) -> np.ndarray:
        if self.array.shape[0] < names:
            extra = np.zeros((names - self.array.shape[0], self.array.shape[1]),
                             self.array.dtype)
            self.array = np.vstack([self.array, extra])
        return self.array


def digest_latency(chunks: Iterable[LatencyChunk], judged_window: tuple[float, float],
                   span: ChartSpan, excluded: Iterable[str] = ()) -> LatencyDigest:
    start, end = judged_window
    duration_s = max(span.ended_at - span.started_at, span.window_s)
    n_windows = max(1, math.ceil(duration_s / span.window_s))
    excluded = set(excluded)
    names: dict[str, int] = {}
    whole = _Grow(stats.CELLS, np.int64)
    judged = _Grow(stats.CELLS, np.int64)
    judged_rows = _Grow(2, np.int64)  # buckets in the judged window, count + failures
    judged_seen = _Grow(1, bool)
    window_rows = _Grow(2 * n_windows, np.int64)  # count per window, then failures
    charted = _Grow(1, bool)
    # Chart windows' cell counts: dense (names × cells) while buckets still arrive for them,
    # then kept sparse (flat index, count): a day has 600 windows of ~3,000 filled cells per
    # name, far less than 600 dense arrays. Buckets come in time order, give or take a late
    # worker report, which reopens its window.
    open_windows: dict[int, np.ndarray] = {}
    closed_windows: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    for chunk in chunks:
        frame = chunk.frame
        if frame.empty:
            continue
        codes, uniques = pd.factorize(frame["name"].astype(str))
        ids = np.array([names.setdefault(name, len(names)) for name in uniques], np.int64)
        name_id = ids[codes]
        n_names = len(names)
        t = frame["t"].to_numpy(float)
        counts = frame["count"].to_numpy(np.int64)
        failures = frame["failures"].to_numpy(np.int64)
        row_name = name_id[chunk.row]
        flat = row_name * stats.CELLS + chunk.cell
        cell_counts = chunk.count.astype(np.int64)
        np.add.at(whole.fit(n_names).ravel(), flat, cell_counts)

        in_judged = (t >= start) & (t <= end)
        judged_seen.fit(n_names)[name_id[in_judged], 0] = True
        rows = judged_rows.fit(n_names)
        np.add.at(rows[:, 0], name_id[in_judged], counts[in_judged])
        np.add.at(rows[:, 1], name_id[in_judged], failures[in_judged])
        cells_judged = in_judged[chunk.row]
        np.add.at(judged.fit(n_names).ravel(), flat[cells_judged], cell_counts[cells_judged])

        window = ((t - span.started_at) // span.window_s).astype(np.int64)
        # As bin_latency: a bucket just outside the run belongs to the first or last window.
        inside = ((window >= -1) & (window <= n_windows)
                  & ~frame["name"].isin(excluded).to_numpy())
        window = np.clip(window, 0, n_windows - 1)
        charted.fit(n_names)[name_id[inside], 0] = True
        per_window = window_rows.fit(n_names)
        np.add.at(per_window, (name_id[inside], window[inside]), counts[inside])
        np.add.at(per_window, (name_id[inside], n_windows + window[inside]), failures[inside])
        cells_inside = inside[chunk.row]
        cell_window = window[chunk.row]
        for w in np.unique(window[inside]).tolist():
            pick = cells_inside & (cell_window == w)
            dense = open_windows.get(w)
            if dense is None:
                dense = _reopen(closed_windows.pop(w, None), n_names)
            elif dense.shape[0] < n_names:
                dense = np.vstack([dense, np.zeros((n_names - dense.shape[0], stats.CELLS),
                                                   np.int64)])
            np.add.at(dense.ravel(), flat[pick], cell_counts[pick])
            open_windows[w] = dense
        if inside.any():
            oldest = int(window[inside].min())
            for w in [w for w in open_windows if w < oldest - 1]:
                closed_windows[w] = _close(open_windows.pop(w))

    for w, dense in open_windows.items():
        closed_windows[w] = _close(dense)
    n_names = len(names)
    seen, rows, cells = judged_seen.fit(n_names), judged_rows.fit(n_names), judged.fit(n_names)
    summaries = {}
    for name in sorted(names):
        i = names[name]
        if seen[i, 0]:
            count, failed = int(rows[i, 0]), int(rows[i, 1])
            summaries[name] = {"count": count, "failures": failed,
                               **stats.request_rates(count, failed, end - start),
                               **stats.summarize_cells(cells[i])}
    merged = {name: whole.fit(n_names)[i] for name, i in names.items()}
    drawn = sorted(name for name, i in names.items() if charted.fit(n_names)[i, 0])
    chart = _chart_frame(drawn, names, window_rows.fit(n_names), closed_windows, n_windows,
                         duration_s, span)
    return LatencyDigest((start, end), span, summaries, merged, chart)


def _close(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A window's (names × cells) counts as (flat index, count) of its filled cells, in the
    smallest integers that hold them: a day keeps 600 of these."""
    flat = dense.ravel()
    filled = np.flatnonzero(flat)
    counts = flat[filled]
    small = counts.max(initial=0) < np.iinfo(np.uint32).max
    return filled.astype(np.uint32), counts.astype(np.uint32) if small else counts


def _reopen(closed: tuple[np.ndarray, np.ndarray] | None, n_names: int) -> np.ndarray:
    dense = np.zeros((n_names, stats.CELLS), np.int64)
    if closed is not None:
        dense.ravel()[closed[0].astype(np.int64)] = closed[1]
    return dense


def _chart_frame(charted: list[str], names: dict[str, int], window_rows: np.ndarray,
                 windows: dict[int, tuple[np.ndarray, np.ndarray]], n_windows: int,
                 duration_s: float, span: ChartSpan) -> pd.DataFrame:
    columns = ["t_s", "name", "count", "failures", "rps", "failures_s", *CHART_PERCENTILES]
    if not charted:
        return pd.DataFrame(columns=columns)
    _, highest = stats.cell_bounds_us()
    position = {names[name]: k for k, name in enumerate(charted)}
    values_ms = np.full((len(charted) * n_windows, len(CHART_PERCENTILES)), math.nan)
    for w, (filled, counts) in windows.items():
        filled = filled.astype(np.int64)
        name_of = filled // stats.CELLS
        bounds = np.searchsorted(name_of, np.arange(name_of.max() + 2) if name_of.size else [0])
        for i, k in position.items():
            if i + 1 >= bounds.size:
                continue
            piece = slice(bounds[i], bounds[i + 1])
            cumulative = np.cumsum(counts[piece], dtype=np.int64)
            if cumulative.size == 0 or cumulative[-1] == 0:
                continue
            total = int(cumulative[-1])
            targets = [max(int(min(p, 100.0) * total / 100 + 0.5), 1)
                       for p in CHART_PERCENTILES.values()]
            found = np.minimum(np.searchsorted(cumulative, targets), cumulative.size - 1)
            cells = filled[piece][found] % stats.CELLS
            values_ms[k * n_windows + w] = highest[cells] / 1000.0
    ids = np.array([names[name] for name in charted], np.int64)
    counts_w = window_rows[ids, :n_windows].astype(float).ravel()
    failures_w = window_rows[ids, n_windows:].astype(float).ravel()
    return chart_frame(np.array(charted), n_windows, span.window_s, span.bucket_s, duration_s,
                       counts_w, failures_w, values_ms)


def chart_frame(names: np.ndarray, n_windows: int, window_s: float, bucket_s: float,
                duration_s: float, counts: np.ndarray, failures: np.ndarray,
                values_ms: np.ndarray) -> pd.DataFrame:
    """The chart lines' frame: per name (outer) and window, its middle, counts, rates and
    CHART_PERCENTILES (`values_ms` columns, in that order)."""
    starts = np.arange(n_windows) * window_s
    # The last window may be cut short by the end of the run, but holds whole buckets.
    widths = np.maximum(np.minimum(window_s, np.ceil((duration_s - starts) / bucket_s)
                                   * bucket_s), bucket_s)
    widths_all = np.tile(widths, names.size)
    frame = pd.DataFrame({
        "t_s": np.tile(starts + widths / 2, names.size),
        "name": np.repeat(names, n_windows),
        "count": counts.astype(np.int64),
        "failures": failures.astype(np.int64),
        "rps": counts / widths_all,
        "failures_s": failures / widths_all,
    })
    for column, key in enumerate(CHART_PERCENTILES):
        frame[key] = values_ms[:, column]
    return frame
