"""Availability and recovery on fixed per-second data with known answers
(perfkit.analysis.availability)."""

import pandas as pd
import pytest

from perfkit.analysis import stats
from perfkit.analysis.availability import describe_fault, judge_seconds, summarize_availability
from perfkit.kpi_file import KpiTarget

HEALTH = "GET /api/v1/health"
TARGETS = [
    KpiTarget("error rate", "error_rate_percent", None, 0.1, None, "%", "upper", "test"),
    KpiTarget("health p99", "p99_ms", HEALTH, 100.0, 200.0, "ms", "upper", "test"),
]


def bucket(t: int, latencies_ms: list[float], failures: int = 0,
           name: str = HEALTH) -> dict[str, object]:
    hist = stats.new_histogram()
    for latency_ms in latencies_ms:
        stats.record_ms(hist, latency_ms)
    return {"t": t, "name": name, "count": len(latencies_ms), "failures": failures,
            "hist": stats.encode_histogram(hist)}


def timeline(seconds: range, bad: dict[int, str] = {},  # noqa: B006 - read only
             silent: tuple[int, ...] = ()) -> pd.DataFrame:
    """Ten 10 ms requests a second; "fail": all ten failed, "slow": half took 300 ms,
    "blip": one took 300 ms, "one failed": one failed."""
    rows = []
    for t in seconds:
        if t in silent:
            continue
        kind = bad.get(t)
        slow = {"slow": 5, "blip": 1}.get(kind or "", 0)
        rows.append(bucket(t, [10.0] * (10 - slow) + [300.0] * slow,
                           failures={"fail": 10, "one failed": 1}.get(kind or "", 0)))
    return pd.DataFrame(rows)


def test_a_second_is_good_only_inside_the_error_and_latency_kpis() -> None:
    latency = timeline(range(100, 106), {101: "fail", 103: "slow"})
    latency.loc[len(latency)] = bucket(104, [10.0] * 999, failures=0) | {"name": "GET /other"}
    latency.loc[len(latency)] = bucket(105, [10.0] * 999, failures=1) | {"name": "GET /other"}
    seconds = judge_seconds(latency, TARGETS, 100.0, 105.5)
    assert seconds["t"].tolist() == [100, 101, 102, 103, 104, 105]
    assert seconds["good"].tolist() == [True, False, True, False, True, True]
    assert seconds["why"].tolist()[1] == "error rate 100 %"
    assert seconds["why"].tolist()[3] == f"{HEALTH} p99: 5 of 10 over 200 ms"
    # 1 failure in 1,009 requests is 0.099 %: inside the 0.1 % KPI.
    assert seconds.loc[seconds["t"] == 105, "failures"].item() == 1


def test_a_second_is_judged_as_a_sample_of_few_requests() -> None:
    """One slow request in ten (a 10 % chance under a p99 KPI) or one failure in ten under
    0.1 % (1 %) is what a healthy target does now and then: good. Two failures in twenty (0.02 %
    chance), or a max KPI's limit passed once, is not."""
    latency = timeline(range(100, 104), {100: "blip", 101: "one failed"})
    latency.loc[len(latency)] = bucket(102, [10.0] * 10, failures=2) | {"name": "GET /x"}
    seconds = judge_seconds(latency, TARGETS, 100.0, 103.5)
    assert seconds["good"].tolist() == [True, True, False, True]
    assert seconds["why"].tolist()[2] == "error rate 10 %"
    strict = [*TARGETS, KpiTarget("health max", "max_ms", HEALTH, 200.0, None, "ms", "upper",
                                  "test")]
    assert judge_seconds(latency, strict, 100.0, 103.5)["good"].tolist() == [
        False, True, False, True]


def test_recovery_and_availability_of_a_three_second_outage_begun_mid_second() -> None:
    # Down from 110.4 to 113.4: seconds 110..113 hold failures, 114 on is good.
    latency = timeline(range(100, 130), {t: "fail" for t in range(110, 114)})
    seconds = judge_seconds(latency, TARGETS, 100.0, 130.0)
    fault = {"index": 1, "spec": "at=10.4s,do=x", "what": "x", "at_s": 10.4, "for_s": None,
             "status": "done", "started_at": 110.4, "ended_at": 110.42,
             "do": {"command": "x", "exit_code": 0, "output": ""}, "undo": None}
    result = summarize_availability(seconds, [fault], 100.0, 100.0, 130.0)
    entry = result["faults"][0]
    assert entry["recovered"] and entry["bad_s"] == 4
    assert entry["recovery_from_start_s"] == pytest.approx(3.1)  # 113.5 - 110.4: ±0.5 s
    assert entry["recovery_s"] == pytest.approx(3.08)
    assert (entry["errors"], entry["requests"]) == (40, 40)
    availability = result["availability"]
    assert availability["judged_s"] == 30 and availability["bad_s"] == 4
    assert availability["down_s"] == pytest.approx(3.1)
    assert availability["percent"] == pytest.approx(100.0 * (30 - 3.1) / 30)
    assert "4 s bad, recovered 3.08 s after its end" in describe_fault(entry)


def test_a_silent_target_is_down_during_a_fault_a_quiet_second_elsewhere_not_judged() -> None:
    latency = timeline(range(100, 140), {120: "fail"}, silent=(105, *range(121, 126)))
    seconds = judge_seconds(latency, TARGETS, 100.0, 140.0)
    fault = {"index": 1, "what": "blackhole", "at_s": 20.0, "for_s": 5.0, "status": "done",
             "started_at": 120.0, "ended_at": 125.0, "do": {"exit_code": 0}, "undo": None}
    result = summarize_availability(seconds, [fault], 100.0, 100.0, 140.0)
    entry = result["faults"][0]
    # 120 failed, 121..125 answered nothing, 126 on good: recovered in 125's middle.
    assert entry["bad_s"] == 6 and entry["recovery_s"] == pytest.approx(0.5)
    availability = result["availability"]
    assert availability["silent_s"] == 5
    assert availability["judged_s"] == 39 - 5 + 5  # second 105 not judged
    assert availability["down_s"] == pytest.approx(5.5)


def test_a_fault_never_recovered_from_is_said_with_a_lower_bound() -> None:
    latency = timeline(range(100, 120), {t: "fail" for t in range(110, 120)})
    seconds = judge_seconds(latency, TARGETS, 100.0, 120.0)
    fault = {"index": 2, "what": "kill", "at_s": 10.0, "status": "done", "started_at": 110.0,
             "ended_at": 110.0, "do": {"exit_code": 0}, "undo": None}
    entry = summarize_availability(seconds, [fault], 100.0, 100.0, 120.0)["faults"][0]
    assert entry["recovered"] is False and entry["recovery_s"] == 10.0
    assert "not recovered by the end of the run (over 10" in describe_fault(entry)


def test_a_run_without_faults_has_availability_alone() -> None:
    """Without a fault, a second with failures is down, a slow second without any is not (the
    latency KPIs judge slowness over the run)."""
    latency = timeline(range(100, 110), {104: "fail", 106: "slow"})
    result = summarize_availability(judge_seconds(latency, TARGETS, 100.0, 110.0), None,
                                    100.0, 100.0, 110.0)
    assert result["faults"] == []
    assert result["availability"]["percent"] == pytest.approx(90.0)


def test_the_next_fault_cuts_a_recovery_short_but_not_the_end_of_the_run() -> None:
    # Fault 1 bad 110..112, good 113..114, fault 2 from 115 bad to the end of the run.
    latency = timeline(range(100, 125), {t: "fail" for t in [110, 111, 112, *range(115, 125)]})
    seconds = judge_seconds(latency, TARGETS, 100.0, 125.0)
    faults = [{"index": i, "what": "x", "status": "done", "started_at": at, "ended_at": at,
               "do": {"exit_code": 0}, "undo": None} for i, at in ((1, 110.0), (2, 115.0))]
    first, second = summarize_availability(seconds, faults, 100.0, 100.0, 125.0)["faults"]
    assert first["recovered"] and first["recovery_s"] == pytest.approx(2.5)
    assert second["recovered"] is False


def test_slow_seconds_from_a_fault_to_its_recovery_are_down() -> None:
    """A latency fault is an outage of its own: half the requests over the p99 limit in 105
    and 106, the fault begun at 105.0, is down until the recovery (106.5)."""
    latency = timeline(range(100, 120), {105: "slow", 106: "slow"})
    fault = {"index": 1, "spec": "at=5s,for=0.5s,net=latency:300ms", "what": "latency",
             "at_s": 5.0, "for_s": 0.5, "status": "done", "started_at": 105.0,
             "ended_at": 105.5, "do": None, "undo": None}
    result = summarize_availability(judge_seconds(latency, TARGETS, 100.0, 120.0), [fault],
                                    100.0, 100.0, 120.0)
    (entry,) = result["faults"]
    assert entry["recovered"] and entry["bad_s"] == 2
    assert entry["recovery_s"] == pytest.approx(1.0)
    assert result["availability"]["percent"] == pytest.approx(92.5)
