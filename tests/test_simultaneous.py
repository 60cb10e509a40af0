"""A simultaneous A/B trial (perfkit ab --simultaneous) names each request by its arm. The
trials themselves (one copy of each user class per arm, one pair per trial) run in
tests/test_history.py; Locust is not imported here, as it would monkey-patch this process."""

from pathlib import Path

from perfkit import rundir
from perfkit.kpi_file import is_job
from perfkit.report.ab_html import describe_order_effect, render_ab_html
from perfkit.run.recorder import ARM, Recorder


def test_requests_of_an_arm_are_recorded_under_its_label(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / rundir.LATENCY)
    recorder.on_request("GET", "/x", 5.0, None, context={ARM: "A"})
    recorder.on_request("GET", "/x", 7.0, None, context={ARM: "B"})
    recorder.on_request("GET", "/x", 6.0, None, context={})
    assert sorted(recorder.totals) == ["GET /x", "[A] GET /x", "[B] GET /x"]
    recorder.flush(final=True)
    names = {name for chunk in rundir.read_latency(tmp_path) if chunk
             for name in chunk.frame["name"]}
    assert {"[A] GET /x", "[B] GET /x"} <= names


def test_an_arms_job_records_are_jobs_not_requests() -> None:
    assert is_job("job_completion") and is_job("[A] job_completion")
    assert is_job("[B] batch_10_completion")
    assert not is_job("[A] GET /job_completion") and not is_job("GET /x")
    assert not is_job("[A] GET /x")


def test_the_ab_report_splits_b_over_a_by_which_arm_ran_first() -> None:
    metric = {"a_values": [10.0, 10.0, 10.0], "b_values": [11.0, 9.0, 11.0]}
    assert (describe_order_effect(metric, ["AB", "BA", "AB"])
            == "A first x1.100 (2) · B first x0.900 (1)")
    # a pair left out of this metric: which is which is unknown
    assert describe_order_effect(metric, ["AB", "BA"]) == ""


def test_the_ab_pages_pair_chart_has_a_labelled_axis_and_every_pair_in_a_table() -> None:
    record = {"headline": "no regression", "outcome": "no regression", "a": "a", "b": "b",
              "pairs": 3, "duration_s_per_run": 6, "scenario": "results", "design": "d",
              "wall_time_s": 40, "confidence": 0.95, "threshold": 0.1, "notes": [],
              "pair_orders": ["AB", "BA", "AB"],
              "metrics": [{"endpoint": "GET /x", "metric": "p50_ms", "verdict": "unchanged",
                           "a_values": [10.0, 12.5, 10.0], "b_values": [11.0, 9.0, 30.0],
                           "ratio": 1.1, "ci_low": 0.5, "ci_high": 2.0, "p_value": 0.4,
                           "note": ""}]}
    page = render_ab_html(record)
    # The value axis runs from the lowest to the highest value of the pairs, with its unit.
    assert ">30 ms</text>" in page and ">9 ms</text>" in page
    assert 'aria-label="3 pairs from A to B, values 9 ms to 30 ms; 2 higher in B"' in page
    assert "<td>2</td><td>BA</td><td>12.5 ms</td><td>9 ms</td><td>0.720</td>" in page
