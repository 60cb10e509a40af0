"""Histograms, percentiles and the statistics behind verdicts. Pure functions, no I/O."""

from collections.abc import Iterable

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


def mean_ms(hist: HdrHistogram) -> float | None:
    if hist.get_total_count() == 0:
        return None
    return hist.get_mean_value() / 1000.0
