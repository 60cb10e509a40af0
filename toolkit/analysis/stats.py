"""Histograms, percentiles and the statistics behind verdicts. Pure functions, no I/O."""

import base64
import functools
import math
import struct
import zlib
from collections.abc import Iterable, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
from hdrh.codec import HdrCookieException, HdrLengthException
from hdrh.histogram import HdrHistogram

# Microseconds, 1 µs .. 1 h, 3 significant digits: see docs/run-directory.md.
HIST_LOWEST_US = 1
HIST_HIGHEST_US = 3_600_000_000
HIST_DIGITS = 3
# Cells in the counts array of new_histogram().
CELLS = 23_552


def new_histogram() -> HdrHistogram:
    return HdrHistogram(HIST_LOWEST_US, HIST_HIGHEST_US, HIST_DIGITS)


def record_ms(hist: HdrHistogram, latency_ms: float) -> None:
    value_us = min(max(round(latency_ms * 1000), HIST_LOWEST_US), HIST_HIGHEST_US)
    hist.record_value(value_us)


def cells_of(hist: HdrHistogram) -> tuple[np.ndarray, np.ndarray]:
    """(cells, counts): the non-empty cells of a histogram of new_histogram()'s layout."""
    view = np.ctypeslib.as_array(hist.counts)[:hist.counts_len]
    cells = np.flatnonzero(view)
    return cells, view[cells].astype(np.int64)


def encode_histogram(hist: HdrHistogram) -> str:
    return hist.encode().decode("ascii")


class HistogramError(ValueError):
    """An encoded histogram that is not an HdrHistogram (a damaged latency.jsonl)."""


# What decoding a damaged payload raises, from base64, struct, zlib and hdrh alike.
_DECODE_ERRORS = (ValueError, struct.error, zlib.error, UnicodeError, HdrCookieException,
                  HdrLengthException)


def decode_histogram(encoded: str) -> HdrHistogram:
    try:
        return HdrHistogram.decode(encoded.encode("ascii"))
    except _DECODE_ERRORS as exc:
        raise HistogramError(f"not an HdrHistogram: {type(exc).__name__}: {exc}") from exc


def merge_histograms(encoded: Iterable[str | bytes]) -> HdrHistogram:
    """One histogram of many encoded ones (or HDR bodies, see decode_cells)."""
    merged = new_histogram()
    _, cells, counts = decode_cells(list(encoded))
    totals = np.bincount(cells, weights=counts, minlength=merged.counts_len)
    filled = np.flatnonzero(totals)
    add_cells(merged, filled, totals[filled].astype(np.int64))
    return merged


def add_cells(hist: HdrHistogram, cells: np.ndarray, counts: np.ndarray) -> None:
    """Add counts to cells (distinct, non-empty, of new_histogram()'s layout) of `hist`,
    keeping the totals HdrHistogram.add keeps. Its counts array is a ctypes array (unsigned),
    written in place; the extremes are the cells' own, as a decoded histogram has them."""
    if cells.size == 0:
        return
    view = np.ctypeslib.as_array(hist.counts)
    view[cells] += counts.astype(view.dtype)
    hist.total_count += int(counts.sum())
    lowest = hist.get_value_from_index(int(cells.min()))
    highest = hist.get_highest_equivalent_value(hist.get_value_from_index(int(cells.max())))
    hist.min_value = min(hist.min_value, lowest)
    hist.max_value = max(hist.max_value, highest)


def percentile_ms(hist: HdrHistogram, percentile: float) -> float | None:
    """The value at `percentile` (0-100) in ms; None for an empty histogram."""
    if hist.get_total_count() == 0:
        return None
    # hdrh's get_value_at_percentile, with the running count taken by numpy instead of a
    # Python loop over every cell below the answer (same target count, same cell, same value).
    target = hist.get_target_count_at_percentile(percentile)
    counts = np.ctypeslib.as_array(hist.counts)[:hist.counts_len]
    reached = np.flatnonzero(np.cumsum(counts) >= target)
    if reached.size == 0:
        return 0.0
    value = hist.get_value_from_index(int(reached[0]))
    if percentile:
        return hist.get_highest_equivalent_value(value) / 1000.0
    return hist.get_lowest_equivalent_value(value) / 1000.0


def max_ms(hist: HdrHistogram) -> float | None:
    if hist.get_total_count() == 0:
        return None
    return hist.get_max_value() / 1000.0


def min_ms(hist: HdrHistogram) -> float | None:
    if hist.get_total_count() == 0:
        return None
    return hist.get_min_value() / 1000.0


def mean_ms(hist: HdrHistogram) -> float | None:
    """hdrh's get_mean_value, summed over the recorded cells only: hdrh walks every cell up to
    the maximum in Python (~0.2 s for a wide histogram, too slow for a live alarm window).
    Each cell counts at its median equivalent value, in integers, so the result is identical."""
    if hist.get_total_count() == 0:
        return None
    counts = np.ctypeslib.as_array(hist.counts)[:hist.counts_len]
    total = 0
    for index in np.flatnonzero(counts).tolist():
        lowest = hist.get_value_from_index(index)
        highest = hist.get_highest_equivalent_value(lowest)
        total += int(counts[index]) * (lowest + ((highest - lowest + 1) >> 1))
    return float(total) / hist.get_total_count() / 1000.0


SUMMARY_PERCENTILES = {"p50_ms": 50.0, "p90_ms": 90.0, "p95_ms": 95.0, "p99_ms": 99.0,
                       "p999_ms": 99.9}


@functools.cache
def cell_bounds_us() -> tuple[np.ndarray, np.ndarray]:
    """(lowest, highest) equivalent value in µs of every cell of new_histogram()."""
    reference = new_histogram()
    lowest = np.array([reference.get_value_from_index(cell)
                       for cell in range(reference.counts_len)], np.int64)
    highest = np.array([reference.get_highest_equivalent_value(value)
                        for value in lowest.tolist()], np.int64)
    return lowest, highest


def summarize_cells(counts: np.ndarray) -> dict[str, float | None]:
    """summarize_histogram of the histogram whose counts array (new_histogram()'s layout) is
    `counts`: the same percentiles, max and mean, in integers where hdrh uses integers."""
    total = int(counts.sum())
    if total == 0:
        return {**{key: None for key in SUMMARY_PERCENTILES}, "max_ms": None, "mean_ms": None}
    lowest, highest = cell_bounds_us()
    filled = np.flatnonzero(counts)
    cumulative = np.cumsum(counts[filled])
    summary: dict[str, float | None] = {}
    for key, percentile in SUMMARY_PERCENTILES.items():
        target = max(int(min(percentile, 100.0) * total / 100 + 0.5), 1)
        cell = filled[min(int(np.searchsorted(cumulative, target)), filled.size - 1)]
        summary[key] = int(highest[cell]) / 1000.0
    summary["max_ms"] = int(highest[filled[-1]]) / 1000.0
    middles = lowest[filled] + ((highest[filled] - lowest[filled] + 1) >> 1)
    weighted = sum(int(count) * int(middle)
                   for count, middle in zip(counts[filled].tolist(), middles.tolist(),
                                            strict=True))
    summary["mean_ms"] = float(weighted) / total / 1000.0
    return summary


def summarize_histogram(hist: HdrHistogram) -> dict[str, float | None]:
    summary = {key: percentile_ms(hist, q) for key, q in SUMMARY_PERCENTILES.items()}
    summary["max_ms"] = max_ms(hist)
    summary["mean_ms"] = mean_ms(hist)
    return summary


def request_rates(count: int, failures: int, duration_s: float) -> dict[str, float | None]:
    """rps and error_rate_percent of `count` requests, `failures` of them failed, in
    `duration_s`; None where there is nothing to divide by."""
    return {"rps": count / duration_s if duration_s > 0 else None,
            "error_rate_percent": 100.0 * failures / count if count else None}


def summarize_endpoints(latency: pd.DataFrame, duration_s: float) -> dict[str, dict[str, Any]]:
    """Per name: count, failures, rps, error_rate_percent and percentiles of the given buckets.

    `latency` has the columns of latency.jsonl (t, name, count, failures, hist); `duration_s`
    is the length of the window those buckets cover (for rates).
    """
    summaries: dict[str, dict[str, Any]] = {}
    for name, rows in latency.groupby("name", sort=True):
        count = int(rows["count"].sum())
        failures = int(rows["failures"].sum())
        _, cells, counts = decode_cells(rows["hist"].tolist())
        summaries[str(name)] = {
            "count": count,
            "failures": failures,
            **request_rates(count, failures, duration_s),
            **summarize_cells(np.bincount(cells, weights=counts, minlength=CELLS)
                              .astype(np.int64)),
        }
    return summaries


# Many histograms at once: a report or a comparison reads thousands of 1 s buckets.

_COMPRESSION_COOKIE_BASE = 0x1C849304
_ENCODING_COOKIE_BASE = 0x1C849303
_COOKIE_WORD_SIZE_BITS = 0xF0
_EXTERNAL_HEADER = struct.Struct(">II")
_PAYLOAD_HEADER = struct.Struct(">IIIIQQd")


def decode_cells(encoded: Sequence[str | bytes]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, cell, count): every non-empty counts-array cell of many encoded histograms.

    An item may also be the bytes of a histogram's body (its ZigZag LEB128 counts, as in the
    compact latency format, docs/run-directory.md), which is decoded directly.

    `row` is the histogram's position in `encoded`, `cell` its index in the counts array of
    new_histogram(). HdrHistogram's V2 wire format is base64 of a header and a
    zlib-compressed payload of ZigZag LEB128 counts (runs of empty cells as negative numbers);
    the payloads of all histograms are decoded in one numpy pass. hdrh's own decode builds a
    23,552-cell histogram object per 1 s bucket, and an hour-long run has 14,400 buckets: that
    took seconds. A histogram of another layout than new_histogram() goes through hdrh.
    """
    bodies: list[bytes] = []
    rows: list[int] = []
    foreign: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for row, item in enumerate(encoded):
        if isinstance(item, bytes):
            if item:
                bodies.append(item)
                rows.append(row)
            continue
        try:
            body = _payload_body(item)
        except _DECODE_ERRORS as exc:
            raise HistogramError(f"not an HdrHistogram: {type(exc).__name__}: {exc}") from exc
        if body is None:
            cells, counts = _cells_by_hdrh(item)
            foreign.append((np.full(cells.size, row, np.int64), cells, counts))
        elif body:
            bodies.append(body)
            rows.append(row)
    parts = [_decode_bodies(bodies, rows), *foreign]
    row_all, cell_all, count_all = (np.concatenate([part[i] for part in parts])
                                    for i in range(3))
    return row_all, cell_all, count_all


def _payload_body(encoded: str) -> bytes | None:
    """The varint counts of one histogram; None for a layout other than perfkit's."""
    raw = base64.b64decode(encoded)
    cookie, length = _EXTERNAL_HEADER.unpack_from(raw)
    if (cookie & ~_COOKIE_WORD_SIZE_BITS) != _COMPRESSION_COOKIE_BASE \
            or length != len(raw) - _EXTERNAL_HEADER.size:
        raise ValueError("not an HdrHistogram V2 compressed histogram")
    payload = zlib.decompress(raw[_EXTERNAL_HEADER.size:])
    cookie, body_len, offset, digits, lowest, highest, _ = _PAYLOAD_HEADER.unpack_from(payload)
    if ((cookie & ~_COOKIE_WORD_SIZE_BITS) != _ENCODING_COOKIE_BASE or offset != 0
            or (lowest, highest, digits) != (HIST_LOWEST_US, HIST_HIGHEST_US, HIST_DIGITS)):
        return None
    return payload[_PAYLOAD_HEADER.size:_PAYLOAD_HEADER.size + body_len]


def decode_leb128(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, first byte of each) of unsigned LEB128 numbers packed in `data` (uint8),
    which ends with a whole number. Values stay below 2^56 (eight bytes), far above any
    count or cell index."""
    # A byte below 0x80 ends a number.
    ends = np.flatnonzero(data < 0x80)
    starts = np.empty_like(ends)
    if ends.size:
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
    shifts = 7 * (np.arange(data.size) - np.repeat(starts, ends - starts + 1))
    values = np.bitwise_or.reduceat((data & 0x7F).astype(np.uint64)
                                    << shifts.astype(np.uint64), starts) \
        if ends.size else np.empty(0, np.uint64)
    return values, starts


def encode_leb128(values: np.ndarray) -> bytes:
    """Unsigned LEB128 of each of `values` (non-negative integers below 2^56), packed."""
    values = np.asarray(values, np.uint64)
    lengths = np.ones(values.size, np.int64)
    for k in range(1, 8):
        lengths += values >= np.uint64(1 << (7 * k))
    index = np.repeat(np.arange(values.size), lengths)
    place = np.arange(index.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    data = ((values[index] >> (7 * place).astype(np.uint64)) & np.uint64(0x7F)).astype(np.uint8)
    data |= ((place < lengths[index] - 1) << 7).astype(np.uint8)
    return data.tobytes()


def _decode_bodies(bodies: list[bytes],
                   rows: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    empty = np.empty(0, np.int64)
    if not bodies:
        return empty, empty, empty
    data = np.frombuffer(b"".join(bodies), np.uint8)
    byte_row = np.repeat(np.asarray(rows, np.int64), [len(body) for body in bodies])
    unsigned, starts = decode_leb128(data)
    signed = ((unsigned >> np.uint64(1)).astype(np.int64)
              ^ -(unsigned & np.uint64(1)).astype(np.int64))
    row = byte_row[starts]
    steps = np.where(signed < 0, -signed, 1)
    position = np.cumsum(steps) - steps
    # Cell index = position relative to the first number of the same histogram.
    first = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
    cell = position - np.repeat(position[first], np.diff(np.r_[first, row.size]))
    filled = signed > 0
    return row[filled], cell[filled], signed[filled]


def encode_bodies(row: np.ndarray, cell: np.ndarray, count: np.ndarray,
                  rows: int) -> list[bytes]:
    """The HdrHistogram body (ZigZag LEB128 counts, runs of empty cells as one negative
    number) of each of `rows` histograms given as (row, cell, count) sorted by row and cell,
    as decode_cells reads them back."""
    if row.size == 0:
        return [b""] * rows
    first = np.r_[True, row[1:] != row[:-1]]
    previous = np.where(first, -1, np.r_[-1, cell[:-1]])
    skipped = cell - previous - 1
    # Per cell: the run of empty cells before it (if any), then its count, ZigZag encoded.
    numbers = np.stack([np.where(skipped > 0, 2 * skipped - 1, -1), 2 * count], axis=1).ravel()
    keep = numbers >= 0
    data = np.frombuffer(encode_leb128(numbers[keep]), np.uint8)
    lengths = np.ones(numbers.size, np.int64)
    for k in range(1, 8):
        lengths += numbers >= (1 << (7 * k))
    lengths[~keep] = 0
    per_row = np.bincount(np.repeat(row, 2), weights=lengths, minlength=rows).astype(np.int64)
    offsets = np.r_[0, np.cumsum(per_row)].tolist()
    raw = data.tobytes()
    return [raw[offsets[i]:offsets[i + 1]] for i in range(rows)]


def _cells_by_hdrh(encoded: str) -> tuple[np.ndarray, np.ndarray]:
    hist = decode_histogram(encoded)
    reference = new_histogram()
    cells, counts = [], []
    for item in hist.get_recorded_iterator():
        cells.append(reference.get_counts_array_index(item.value_iterated_to))
        counts.append(item.count_at_value_iterated_to)
    return np.array(cells, np.int64), np.array(counts, np.int64)


def cell_values_us(cells: np.ndarray, where: str = "highest") -> np.ndarray:
    """The value of each cell of new_histogram(): its highest equivalent value (what
    HdrHistogram reports for a percentile) or its middle."""
    unique, inverse = np.unique(cells, return_inverse=True)
    reference = new_histogram()
    values = []
    for cell in unique.tolist():
        lowest = reference.get_value_from_index(cell)
        highest = reference.get_highest_equivalent_value(lowest)
        values.append(highest if where == "highest" else (lowest + highest) / 2)
    return np.asarray(values, float)[inverse]


def block_counts(blocks: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Counts per block on the union of the recorded HdrHistogram cells.

    `blocks` holds, per block (a time block, a chart window), the encoded histograms of its
    buckets (possibly none). Returns (values_us, counts): the highest equivalent value of each
    recorded cell, ascending, and an int64 array [block, cell]. Percentiles read from these
    with percentiles_of_counts equal `percentile_ms` of the merged histograms.
    """
    encoded = [item for block in blocks for item in block]
    block_of = np.repeat(np.arange(len(blocks), dtype=np.int64),
                         [len(block) for block in blocks])
    row, cell, count = decode_cells(encoded)
    cells, columns = np.unique(cell, return_inverse=True)
    counts = np.zeros(len(blocks) * cells.size, dtype=np.int64)
    # on a flat index: numpy's fast path of add.at, several times faster than on (block, cell)
    np.add.at(counts, block_of[row] * cells.size + columns, count)
    return cell_values_us(cells), counts.reshape(len(blocks), cells.size)


def percentiles_of_counts(values_us: np.ndarray, counts: np.ndarray,
                          percentiles: Sequence[float]) -> np.ndarray:
    """Percentiles (µs) of each row of `counts` (rows × cells): rows × len(percentiles).

    Same rule as HdrHistogram.get_value_at_percentile; NaN for an empty row.
    """
    counts = np.atleast_2d(counts)
    result = np.full((counts.shape[0], len(percentiles)), np.nan)
    if values_us.size == 0:
        return result
    cumulative = np.cumsum(counts, axis=1)
    totals = cumulative[:, -1]
    for j, percentile in enumerate(percentiles):
        targets = np.maximum((min(percentile, 100.0) * totals / 100 + 0.5).astype(np.int64), 1)
        cells = (cumulative < targets[:, None]).sum(axis=1)
        result[:, j] = values_us[np.minimum(cells, values_us.size - 1)]
    result[totals == 0] = np.nan
    return result


# The regression test (docs/regression.md): block bootstrap over time buckets of
# histogram counts, Mann-Whitney U on per-block values as a second opinion.

BOOTSTRAP_BIN_WIDTH = 0.005  # log bins 0.5 % wide: far finer than any threshold we judge


def coarsen_counts(values_us: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge cells into log bins BOOTSTRAP_BIN_WIDTH wide, so a long run bootstraps fast."""
    if values_us.size == 0:
        return values_us, counts
    keys = np.floor(np.log(values_us) / np.log1p(BOOTSTRAP_BIN_WIDTH)).astype(np.int64)
    unique_keys, inverse = np.unique(keys, return_inverse=True)
    merged = np.zeros((counts.shape[0], unique_keys.size), dtype=counts.dtype)
    np.add.at(merged.T, inverse, counts.T)
    bin_values = np.zeros(unique_keys.size)
    np.maximum.at(bin_values, inverse, values_us)
    return bin_values, merged


def bootstrap_weights(blocks_per_run: Sequence[int], resamples: int,
                      rng: np.random.Generator) -> np.ndarray:
    """How often each block is drawn in each resample (resamples × all blocks).

    Blocks of several runs lie one run after another. Runs are resampled first, then blocks
    within each drawn run, so the spread between runs enters the interval too.
    """
    runs = len(blocks_per_run)
    draws = rng.multinomial(runs, np.full(runs, 1.0 / runs), size=resamples)  # resample × run
    parts = [rng.multinomial(draws[:, r] * n, np.full(n, 1.0 / n))
             for r, n in enumerate(blocks_per_run) if n > 0]
    return np.concatenate(parts, axis=1)


def ratio_interval(baseline: np.ndarray, current: np.ndarray, ratio: float,
                   confidence: float) -> tuple[float | None, float | None]:
    """Interval of the ratio current/baseline at `confidence`, normal on the log scale around
    the measured ratio with the spread of the bootstrap log-ratios (independent resamples of
    each side, paired up). Normal rather than percentile, because the family-wise level asks
    for tails far thinner than a few thousand resamples can show."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratios = np.log(current) - np.log(baseline)
    log_ratios = log_ratios[np.isfinite(log_ratios)]
    if log_ratios.size < 0.9 * len(baseline) or ratio <= 0:  # too many empty resamples
        return None, None
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    spread = z * float(np.std(log_ratios, ddof=1))
    return float(ratio * math.exp(-spread)), float(ratio * math.exp(spread))


def family_confidence(confidence: float, tests: int) -> float:
    """Per-test level that keeps the chance of any false alarm among `tests` below
    1 - confidence (Bonferroni)."""
    return 1.0 - (1.0 - confidence) / max(tests, 1)


def mann_whitney(current: np.ndarray, baseline: np.ndarray) -> tuple[float | None, float | None]:
    """Two-sided p-value of Mann-Whitney U (normal approximation, tie-corrected) and the
    probability that a current value exceeds a baseline value (ties count half)."""
    current = np.asarray(current, dtype=float)
    baseline = np.asarray(baseline, dtype=float)
    current, baseline = current[np.isfinite(current)], baseline[np.isfinite(baseline)]
    n1, n2 = current.size, baseline.size
    if n1 < 2 or n2 < 2:
        return None, None
    pooled = np.concatenate([current, baseline])
    unique, inverse, ties = np.unique(pooled, return_inverse=True, return_counts=True)
    mean_ranks = np.cumsum(ties) - (ties - 1) / 2.0
    u_current = mean_ranks[inverse[:n1]].sum() - n1 * (n1 + 1) / 2.0
    n = n1 + n2
    variance = n1 * n2 / 12.0 * ((n + 1) - (ties**3 - ties).sum() / (n * (n - 1)))
    prob_greater = float(u_current / (n1 * n2))
    if variance <= 0:
        return 1.0, prob_greater
    z = (abs(u_current - n1 * n2 / 2.0) - 0.5) / math.sqrt(variance)
    return float(min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2.0)))), prob_greater


VERDICTS = ("regressed", "improved", "unchanged", "inconclusive", "missing")


def judge_ratio(ratio: float | None, ci_low: float | None, ci_high: float | None,
                p_value: float | None, prob_greater: float | None, threshold: float,
                confidence: float, higher_is_worse: bool) -> str:
    """The verdict of one metric; the rule is spelled out in docs/regression.md."""
    if ratio is None or not math.isfinite(ratio):
        return "missing"
    if ci_low is None or ci_high is None:
        return "inconclusive"
    alpha = 1.0 - confidence
    significant = p_value is not None and p_value < alpha
    if ci_low >= 1.0 - threshold and ci_high <= 1.0 + threshold:
        return "unchanged"
    higher = ratio > 1.0 + threshold and ci_low > 1.0 and significant and (prob_greater or 0) > 0.5
    # 0.0 (every current block below every baseline block) is the strongest "lower"
    lower = (ratio < 1.0 - threshold and ci_high < 1.0 and significant
             and (1.0 if prob_greater is None else prob_greater) < 0.5)
    if higher:
        return "regressed" if higher_is_worse else "improved"
    if lower:
        return "improved" if higher_is_worse else "regressed"
    return "inconclusive"


# Trends of resource series (endurance): OLS on block means, autocorrelation-aware t-interval.

def t_quantile(probability: float, df: float) -> float:
    """Quantile of Student's t with `df` (> 0, not necessarily whole) degrees of freedom,
    by bisection on the CDF integrated numerically (exact to ~1e-6; no scipy needed)."""
    if not 0.0 < probability < 1.0 or df <= 0:
        raise ValueError("probability must be in (0, 1) and df > 0")
    if probability < 0.5:
        return -t_quantile(1.0 - probability, df)
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float) -> float:
        grid = np.linspace(0.0, x, 4001)
        density = np.exp(log_norm - (df + 1) / 2 * np.log1p(grid * grid / df))
        return 0.5 + float(np.trapezoid(density, grid))

    low, high = 0.0, 1.0
    while cdf(high) < probability:
        high *= 2.0
        if high > 1e6:
            return math.inf
    for _ in range(60):
        middle = (low + high) / 2
        if cdf(middle) < probability:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def block_means(t_s: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray,
                max_blocks: int = 60) -> tuple[np.ndarray, np.ndarray] | None:
    """(block times, block means) of `values` (NaN left out) in at most `max_blocks` equal
    time blocks, empty blocks left out; None with fewer than 5 samples or no time span."""
    t = np.asarray(t_s, dtype=float)
    y = np.asarray(values, dtype=float)
    keep = np.isfinite(t) & np.isfinite(y)
    t, y = t[keep], y[keep]
    if t.size < 5:
        return None
    span = float(t.max() - t.min())
    if span <= 0:
        return None
    blocks = min(max_blocks, t.size)
    index = np.minimum(((t - t.min()) / span * blocks).astype(int), blocks - 1)
    filled = np.unique(index)
    return (np.array([t[index == i].mean() for i in filled]),
            np.array([y[index == i].mean() for i in filled]))


def fit_two_segments(t: np.ndarray, y: np.ndarray, min_first: int = 3,
                     min_second: int = 5) -> int | None:
    """The breakpoint of a two-segment least-squares fit of the points (t, y), sorted by t:
    the index k for which separate straight lines through [:k] and [k:] leave the smallest
    total squared residual, each segment holding at least `min_first` / `min_second` points;
    None when there are too few points for both.

    Separate lines, not a hinge, so that a step (a pool or cache filled at once) is one
    change as well as a ramp that flattens is."""
    n = t.size
    best_k, best_sse = None, math.inf
    for k in range(max(min_first, 2), n - max(min_second, 2) + 1):
        sse = _line_sse(t[:k], y[:k]) + _line_sse(t[k:], y[k:])
        if sse < best_sse:
            best_k, best_sse = k, sse
    return best_k


def _line_sse(t: np.ndarray, y: np.ndarray) -> float:
    t_centered = t - t.mean()
    sxx = float((t_centered ** 2).sum())
    slope = float((t_centered * (y - y.mean())).sum() / sxx) if sxx > 0 else 0.0
    return float(((y - y.mean() - slope * t_centered) ** 2).sum())


def trend_interval(t_s: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray,
                   confidence: float = 0.95,
                   max_blocks: int = 60) -> tuple[float, float, float, int] | None:
    """Slope of `values` over time (units per second) with its two-sided interval:
    (slope, low, high, blocks); None with fewer than 5 blocks of data.

    The samples (NaN left out) are averaged in at most `max_blocks` equal time blocks — a 1 h
    run gives per-minute means, a 30 s run per-second samples — which removes the
    second-to-second noise (a GC sawtooth, allocator steps). The slope is ordinary least
    squares on the block means; its standard error is widened for the lag-1 autocorrelation r
    of the residuals (effective n = n (1 - r) / (1 + r), r > 0 only), as slow cycles longer
    than a block would otherwise make the interval too narrow, and the t quantile uses
    n_eff - 2 degrees of freedom. With fewer than 3 effective points the interval is infinite.
    """
    means = block_means(t_s, values, max_blocks)
    if means is None or means[0].size < 5:
        return None
    block_t, block_y = means
    n = block_t.size
    t_centered = block_t - block_t.mean()
    sxx = float((t_centered ** 2).sum())
    slope = float((t_centered * (block_y - block_y.mean())).sum() / sxx)
    residuals = block_y - block_y.mean() - slope * t_centered
    rss = float((residuals ** 2).sum())
    lag1 = 0.0
    # Residuals at rounding level (a constant series: block means of equal floats differ in
    # the last bits) are an exact line, not an autocorrelated one.
    if rss > 1e-20 * float((block_y ** 2).sum()):
        lag1 = float((residuals[1:] * residuals[:-1]).sum() / rss)
    n_eff = n * (1 - lag1) / (1 + lag1) if lag1 > 0 else float(n)
    if n_eff <= 3:
        return slope, -math.inf, math.inf, n
    standard_error = math.sqrt(rss / (n - 2) / sxx) * math.sqrt(n / n_eff)
    half = t_quantile(0.5 + confidence / 2, n_eff - 2) * standard_error
    return slope, slope - half, slope + half, n
