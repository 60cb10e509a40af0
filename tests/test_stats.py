import numpy as np
import pytest
from hdrh.histogram import HdrHistogram

from perfkit import rundir
from perfkit.analysis import stats
from perfkit.analysis.kpi import judged_latency
from tests.synthetic import EndpointSpec, RunSpec, make_run


def test_percentiles_of_a_hand_computed_set() -> None:
    hist = stats.new_histogram()
    for value_ms in range(1, 101):  # 1..100 ms, one each
        stats.record_ms(hist, float(value_ms))
    assert stats.percentile_ms(hist, 50) == pytest.approx(50.0, rel=1e-3)
    assert stats.percentile_ms(hist, 99) == pytest.approx(99.0, rel=1e-3)
    assert stats.max_ms(hist) == pytest.approx(100.0, rel=1e-3)
    assert stats.mean_ms(hist) == pytest.approx(50.5, rel=1e-3)


def test_empty_histogram_is_missing_not_zero() -> None:
    assert stats.percentile_ms(stats.new_histogram(), 99) is None
    assert stats.summarize_histogram(stats.new_histogram())["max_ms"] is None


def test_sub_millisecond_values_keep_microsecond_resolution() -> None:
    hist = stats.new_histogram()
    stats.record_ms(hist, 0.137)
    assert stats.max_ms(hist) == 0.137


def test_merge_is_exact() -> None:
    a, b = stats.new_histogram(), stats.new_histogram()
    whole = stats.new_histogram()
    for i, value in enumerate(np.random.default_rng(3).lognormal(3, 1, 5000)):
        stats.record_ms(a if i % 2 else b, value)
        stats.record_ms(whole, value)
    merged = stats.merge_histograms([stats.encode_histogram(a), stats.encode_histogram(b)])
    assert merged.get_total_count() == whole.get_total_count()
    for q in (50, 90, 99, 99.9, 100):
        assert stats.percentile_ms(merged, q) == stats.percentile_ms(whole, q)


def test_decode_cells_reads_what_hdrh_wrote() -> None:
    """The numpy decoder against hdrh's own, on edge values, huge counts and empty buckets."""
    crafted = [[], [(1, 1)], [(2047, 3), (2048, 1), (2049, 7)],
               [(1, 5), (3_600_000_000, 2), (123_456, 10**12), (999, 300)],
               [(v, 1 + v % 7) for v in range(1, 200_000, 997)]]
    encoded = []
    for values in crafted:
        hist = stats.new_histogram()
        for value, count in values:
            hist.record_value(value, count)
        encoded.append(stats.encode_histogram(hist))
    row, cell, count = stats.decode_cells(encoded)
    for i, item in enumerate(encoded):
        counts = np.ctypeslib.as_array(stats.decode_histogram(item).counts)
        expected = np.flatnonzero(counts)
        assert cell[row == i].tolist() == expected.tolist(), i
        assert count[row == i].tolist() == counts[expected].tolist(), i


def test_summaries_of_a_synthetic_run_match_numpy(tmp_path) -> None:
    spec = RunSpec(duration_s=20, endpoints={"GET /x": EndpointSpec(rps=200, median_ms=15,
                                                                    error_rate=0.1)})
    samples = make_run(tmp_path / "run", spec)
    run = rundir.load_run(tmp_path / "run")
    summary = stats.summarize_endpoints(run.latency, 20.0)["GET /x"]
    raw = samples["GET /x"]
    assert summary["count"] == raw.size
    assert summary["rps"] == pytest.approx(raw.size / 20)
    assert 0 < summary["failures"] < raw.size
    ordered = np.sort(raw)
    for key, q in stats.SUMMARY_PERCENTILES.items():
        # HdrHistogram takes the sample of rank round(q% * n): the nearest-rank percentile.
        rank = max(int(q / 100 * raw.size + 0.5), 1)
        assert summary[key] == pytest.approx(ordered[rank - 1], rel=1e-3)


def test_warmup_is_left_out_of_the_judged_window(tmp_path) -> None:
    make_run(tmp_path / "run", RunSpec(duration_s=30, warmup_s=10))
    run = rundir.load_run(tmp_path / "run")
    judged = judged_latency(run)
    assert judged["t"].min() == run.meta.started_at + 10
    assert len(judged) < len(run.latency)


def test_block_counts_read_a_histogram_of_another_layout() -> None:
    """A bucket written with other precision goes through hdrh, onto perfkit's cells."""
    other = HdrHistogram(1, 60_000_000, 2)
    ours = stats.new_histogram()
    for value_us in (5, 1_234, 1_250, 98_765, 4_000_000):
        other.record_value(value_us, 3)
        ours.record_value(other.get_highest_equivalent_value(value_us), 3)
    values_us, counts = stats.block_counts([[other.encode().decode("ascii")]])
    found = stats.percentiles_of_counts(values_us, counts, [10, 50, 90, 100])[0]
    for q, value_us in zip([10, 50, 90, 100], found, strict=True):
        assert value_us / 1000.0 == stats.percentile_ms(ours, q)
