"""Histograms, percentiles and the statistics behind verdicts. Pure functions, no I/O."""

from collections.abc import Iterable
from typing import Any

import pandas as pd
from hdrh.histogram import HdrHistogram

# Microseconds, 1 µs .. 1 h, 3 significant digits: see docs/run-directory.md.
HIST_LOWEST_US = 1
HIST_HIGHEST_US = 3_600_000_000
HIST_DIGITS = 3


def new_histogram() -> HdrHistogram:
    return HdrHistogram(HIST_LOWEST_US, HIST_HIGHEST_US, HIST_DIGITS)


def record_ms(hist: HdrHistogram, latency_ms: float) -> None:
    value_us = min(max(round(latency_ms * 1000), HIST_LOWEST_US), HIST_HIGHEST_US)
    hist.record_value(value_us)


def encode_histogram(hist: HdrHistogram) -> str:
    return hist.encode().decode("ascii")


def decode_histogram(encoded: str) -> HdrHistogram:
    return HdrHistogram.decode(encoded.encode("ascii"))


def merge_histograms(encoded: Iterable[str]) -> HdrHistogram:
    merged = new_histogram()
    for item in encoded:
        merged.add(decode_histogram(item))
    return merged


def percentile_ms(hist: HdrHistogram, percentile: float) -> float | None:
    """The value at `percentile` (0-100) in ms; None for an empty histogram."""
    if hist.get_total_count() == 0:
        return None
    return hist.get_value_at_percentile(percentile) / 1000.0


def max_ms(hist: HdrHistogram) -> float | None:
    if hist.get_total_count() == 0:
        return None
    return hist.get_max_value() / 1000.0


def min_ms(hist: HdrHistogram) -> float | None:
    if hist.get_total_count() == 0:
        return None
    return hist.get_min_value() / 1000.0


def mean_ms(hist: HdrHistogram) -> float | None:
    if hist.get_total_count() == 0:
        return None
    return hist.get_mean_value() / 1000.0


SUMMARY_PERCENTILES = {"p50_ms": 50.0, "p90_ms": 90.0, "p95_ms": 95.0, "p99_ms": 99.0,
                       "p999_ms": 99.9}


def summarize_histogram(hist: HdrHistogram) -> dict[str, float | None]:
    summary = {key: percentile_ms(hist, q) for key, q in SUMMARY_PERCENTILES.items()}
    summary["max_ms"] = max_ms(hist)
    summary["mean_ms"] = mean_ms(hist)
    return summary


def summarize_endpoints(latency: pd.DataFrame, duration_s: float) -> dict[str, dict[str, Any]]:
    """Per name: count, failures, rps, error_rate_percent and percentiles of the given buckets.

    `latency` has the columns of latency.jsonl (t, name, count, failures, hist); `duration_s`
    is the length of the window those buckets cover (for rates).
    """
    summaries: dict[str, dict[str, Any]] = {}
    for name, rows in latency.groupby("name", sort=True):
        count = int(rows["count"].sum())
        failures = int(rows["failures"].sum())
        summaries[str(name)] = {
            "count": count,
            "failures": failures,
            "rps": count / duration_s if duration_s > 0 else None,
            "error_rate_percent": 100.0 * failures / count if count else None,
            **summarize_histogram(merge_histograms(rows["hist"])),
        }
    return summaries
