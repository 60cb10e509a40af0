"""The latency digest (one streaming pass) gives what merging the buckets' histograms gives."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from perfkit import rundir
from perfkit.analysis import stats
from perfkit.analysis.digest import ChartSpan, LatencyChunk, digest_latency
from perfkit.analysis.kpi import judge_run, judged_latency, judged_window
from perfkit.kpi_file import JOB_NAMES, load_kpi_targets
from perfkit.report import charts
from perfkit.report.html import render_html
from tests.synthetic import START_T, EndpointSpec, RunSpec, make_run, rewrite_as_jsonl

SPEC = RunSpec(duration_s=150, warmup_s=10, seed=5, batch_10_completion_s=20.0, endpoints={
    "GET /a": EndpointSpec(rps=30, median_ms=5),
    "GET /b": EndpointSpec(rps=8, median_ms=50, sigma=1.2, error_rate=0.05)})


def chunks_of(latency: pd.DataFrame, rows_per_chunk: int) -> list[LatencyChunk]:
    """`latency` (with histograms) cut into chunks, as a run directory streams them."""
    chunks = []
    for begin in range(0, len(latency), rows_per_chunk):
        part = latency.iloc[begin:begin + rows_per_chunk].reset_index(drop=True)
        row, cell, count = stats.decode_cells(part["hist"].tolist())
        chunks.append(LatencyChunk(part.drop(columns=["hist"]), row, cell, count))
    return chunks


def assert_digest_matches_histograms(run: rundir.RunResult, chunks: list[LatencyChunk],
                                     window_s: float) -> None:
    start, end = judged_window(run)
    span = ChartSpan(float(run.meta.started_at), float(run.meta.ended_at), window_s)
    digest = digest_latency(chunks, (start, end), span, JOB_NAMES)

    expected = stats.summarize_endpoints(judged_latency(run), end - start)
    assert set(expected) == {"GET /a", "GET /b", "job_completion", "batch_10_completion"}
    assert digest.summaries == expected
    assert list(digest.summaries) == list(expected)  # sorted by name, as summary.json shows

    requests = run.latency[~run.latency["name"].isin(JOB_NAMES)]
    binned = charts.bin_latency(requests, span.started_at, span.ended_at, window_s)
    assert len(binned) == 2 * int(np.ceil(150 / window_s))
    assert binned["p99_ms"].notna().sum() > 20  # windows with requests, not an empty chart
    pd.testing.assert_frame_equal(digest.chart.reset_index(drop=True),
                                  binned.reset_index(drop=True))

    for name in ("job_completion", "GET /b"):
        values, counts = charts.values_of_counts_ms(digest.merged[name])
        expected_values, expected_counts = charts.merged_values_ms(run.latency, name)
        assert counts.sum() == run.latency.loc[run.latency["name"] == name, "count"].sum()
        np.testing.assert_array_equal(values, expected_values)
        np.testing.assert_array_equal(counts, expected_counts)


def test_the_digest_equals_the_merged_histograms(tmp_path: Path) -> None:
    make_run(tmp_path, SPEC)
    run = rundir.load_run(tmp_path)
    assert run.digest is not None
    for rows_per_chunk in (7, 100, len(run.latency)):
        assert_digest_matches_histograms(run, chunks_of(run.latency, rows_per_chunk), 8.0)


def test_late_buckets_reopen_their_window(tmp_path: Path) -> None:
    """A worker's late report is written after later buckets: a window the pass already
    left is reopened, and nothing is counted twice. Here the buckets come in random order."""
    make_run(tmp_path, SPEC)
    run = rundir.load_run(tmp_path)
    shuffled = run.latency.sample(frac=1.0, random_state=3).reset_index(drop=True)
    assert_digest_matches_histograms(run, chunks_of(shuffled, 20), 8.0)


def test_load_run_reads_the_digest_of_either_format(tmp_path: Path) -> None:
    """latency.bin and latency.jsonl of the same buckets give the same run and digest."""
    make_run(tmp_path / "bin", SPEC)
    make_run(tmp_path / "jsonl", SPEC)
    run = rundir.load_run(tmp_path / "bin")
    jsonl = tmp_path / "jsonl"
    rewrite_as_jsonl(jsonl)
    assert not (jsonl / rundir.LATENCY).exists()
    old = rundir.load_run(jsonl)
    assert old.digest is not None and run.digest is not None
    assert old.digest.summaries == run.digest.summaries
    pd.testing.assert_frame_equal(old.digest.chart, run.digest.chart)
    pd.testing.assert_frame_equal(old.latency, run.latency)
    without = rundir.load_run(jsonl, histograms=False)
    assert list(without.latency.columns) == ["t", "name", "count", "failures"]
    assert without.digest is not None and without.digest.summaries == run.digest.summaries


def test_a_block_cut_short_is_skipped_and_counted(tmp_path: Path) -> None:
    make_run(tmp_path, RunSpec(duration_s=150, seed=2))  # three blocks of a minute at most
    whole = rundir.load_run(tmp_path)
    data = (tmp_path / rundir.LATENCY).read_bytes()
    (tmp_path / rundir.LATENCY).write_bytes(data[:-50])  # a run killed while writing
    cut = rundir.load_run(tmp_path)
    assert cut.skipped_lines == 1
    assert cut.latency["t"].max() == START_T + 119  # the last block (seconds 120..149) lost
    assert len(cut.latency) == (whole.latency["t"] < START_T + 120).sum()

    damaged = bytearray(data)
    damaged[40] ^= 0xFF  # inside the first block's payload: its CRC no longer matches
    (tmp_path / rundir.LATENCY).write_bytes(bytes(damaged))
    run = rundir.load_run(tmp_path)
    assert run.skipped_lines == 1 and run.latency["t"].min() == START_T + 60
    assert "1 block of latency.bin could not be read" in " ".join(render_html(judge_run(
        run, load_kpi_targets(None))).split())


def test_leb128_and_hdr_bodies_round_trip() -> None:
    values = np.array([0, 1, 127, 128, 16383, 16384, 2**35 + 7, 2**55], np.uint64)
    decoded, starts = stats.decode_leb128(np.frombuffer(stats.encode_leb128(values), np.uint8))
    np.testing.assert_array_equal(decoded, values)
    assert starts.tolist()[:4] == [0, 1, 2, 3]

    hists = [stats.new_histogram() for _ in range(3)]
    for value_us, n in ((1, 2), (5, 1), (3001, 4), (59_000_000, 1)):
        hists[0].record_value(value_us, n)
    hists[2].record_value(700, 10**9)
    encoded = [stats.encode_histogram(h) for h in hists]
    row, cell, count = stats.decode_cells(encoded)
    bodies = stats.encode_bodies(row, cell, count, 3)
    assert bodies[1] == b""
    # The same bytes as HdrHistogram's own encoder writes into its payload.
    assert bodies[0] == stats._payload_body(encoded[0])
    for body, hist in zip(bodies, hists, strict=True):
        merged = stats.merge_histograms([body])
        assert merged.get_total_count() == hist.get_total_count()
        assert stats.summarize_histogram(merged) == stats.summarize_histogram(hist)
    assert stats.summarize_cells(np.zeros(stats.CELLS, np.int64))["p99_ms"] is None
    assert stats.summarize_histogram(hists[0]) == pytest.approx(
        stats.summarize_cells(np.bincount(cell[row == 0], count[row == 0],
                                          minlength=stats.CELLS).astype(np.int64)))
