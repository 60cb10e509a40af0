"""--fault: the spec, the commands run during a real load, and what they did to a target that
goes down for a known time when a fault touches it (tests/targets/outage.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from perfkit import rundir
from perfkit.analysis import stats
from perfkit.errors import ConfigError
from perfkit.faults import Fault, NetFault, parse_fault, schedule_faults
from perfkit.units import format_value
from tests.targets import FIXED_DELAY, OUTAGE, running_target


def perfkit(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "perfkit", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_a_fault_spec_is_read_with_commas_inside_its_commands() -> None:
    fault = parse_fault("at=30s, for=10s, do=docker pause a,b ,undo=docker unpause a,b")
    assert fault == Fault(text="at=30s, for=10s, do=docker pause a,b ,undo=docker unpause a,b",
                          at_s=30.0, do="docker pause a,b", undo="docker unpause a,b",
                          for_s=10.0)
    assert parse_fault("at=1m,every=10m,timeout=5s,do=kill -9 1").every_s == 600.0
    for bad, why in (("for=10s,do=x", "at=TIME"), ("at=1s", "do=COMMAND"),
                     ("at=1s,do=x,undo=y", "undo needs for"), ("at=soon,do=x", "at: bad"),
                     ("at=1s,whenever=2s,do=x", "not KEY=VALUE"), ("at=1s,at=2s,do=x", "twice"),
                     ("at=1s,for=10s,every=5s,do=x", "every must be longer than for")):
        with pytest.raises(ConfigError, match=why):
            parse_fault(bad)


def test_a_network_fault_is_one_of_four_kinds_and_lasts_a_given_time() -> None:
    assert parse_fault("at=20s,for=15s,net=latency:300ms").net == NetFault("latency", 0.3)
    assert parse_fault("at=1s,for=2s,net=bandwidth:100KB/s").net == \
        NetFault("bandwidth", 102400.0)
    assert parse_fault("at=1s,for=2s,net=blackhole").what == "net=blackhole"
    for bad, why in (("at=1s,net=reset", "needs for"),
                     ("at=1s,for=2s,net=reset,do=x", "not both"),
                     ("at=1s,for=2s,net=latency", "write net=latency:300ms"),
                     ("at=1s,for=2s,net=bandwidth:fast", "write net=latency:300ms")):
        with pytest.raises(ConfigError, match=why):
            parse_fault(bad)


def test_a_stack_fault_names_a_built_in_one_and_outages_last_a_given_time() -> None:
    assert parse_fault("at=20s,stack=service-restart").what == "stack=service-restart"
    assert parse_fault("at=20s,for=5s,stack=postgres-outage").for_s == 5.0
    for bad, why in (("at=1s,stack=postgres-outage", "needs for"),
                     ("at=1s,for=2s,stack=redis-pause", None),
                     ("at=1s,stack=reboot", "write one of service-restart"),
                     ("at=1s,stack=celery-kill,do=x", "not several"),
                     ("at=1s,for=2s,stack=celery-kill,net=reset", "not several")):
        if why is None:
            assert parse_fault(bad).stack == "redis-pause"
            continue
        with pytest.raises(ConfigError, match=why):
            parse_fault(bad)


def test_a_repeated_fault_recurs_within_the_run_only() -> None:
    fault = parse_fault("at=5m,every=10m,do=x")
    assert [at for at, _ in schedule_faults([fault], 3600.0)] == \
        [300.0, 900.0, 1500.0, 2100.0, 2700.0, 3300.0]
    late = parse_fault("at=2h,do=x")  # listed once, to be reported as not reached
    assert [at for at, _ in schedule_faults([late], 3600.0)] == [7200.0]


def test_fault_commands_run_on_time_and_failures_are_recorded_not_swallowed(
        tmp_path: Path) -> None:
    undone = tmp_path / "undone"
    with running_target(OUTAGE, "--control", str(tmp_path / "unused")) as (url, _):
        result = perfkit(
            "load", "--target", url, "--scenario", "health", "--users", "2", "--duration",
            "5s", "--warmup", "0s", "--out", str(tmp_path / "run"),
            "--fault", f"at=1s,for=2s,do=echo on,undo=touch {undone}",
            "--fault", "at=1s,do=echo boom; exit 3",
            "--fault", "at=2s,timeout=1s,do=sleep 30",
            "--fault", "at=1h,do=echo never")
    assert result.returncode == 1, result.stdout + result.stderr  # a fault failed
    faults = json.loads((tmp_path / "run" / "run.json").read_text())["faults"]
    by_do = {fault["do"]["command"] if fault["do"] else fault["what"]: fault
             for fault in faults}
    undo = by_do["echo on"]
    assert undo["status"] == "done" and undone.exists()
    assert undo["do"]["output"] == "on\n" and undo["undo"]["exit_code"] == 0
    assert 1.9 <= undo["ended_at"] - undo["started_at"] <= 2.5
    failed = by_do["echo boom; exit 3"]
    assert failed["status"] == "failed" and failed["do"]["exit_code"] == 3
    assert failed["do"]["output"] == "boom\n"
    slow = by_do["sleep 30"]
    assert slow["status"] == "failed" and slow["do"]["timed_out"]
    assert slow["do"]["exit_code"] is None and slow["do"]["duration_s"] < 5
    assert by_do["echo never"]["status"] == "not_reached"
    assert "fault 2 do (exit 3): echo boom; exit 3 -- boom" in result.stdout
    # ... and in every output: the verdict, summary.md, junit.xml, the report.
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["verdict"] == "fail"
    assert "fault 2 failed: do command `echo boom; exit 3` exited 3: boom" in \
        summary["verdict_reason"]
    assert "fault 3 failed: do command `sleep 30` timed out after 1 s" in \
        summary["verdict_reason"]
    assert [f["status"] for f in summary["faults"]] == ["done", "failed", "failed",
                                                        "not_reached"]
    markdown = (tmp_path / "run" / "summary.md").read_text()
    assert "do command `echo boom; exit 3` exited 3: boom" in markdown
    assert "fault 4 due at 3600 s (`echo never`): not reached, the run ended first" in markdown
    junit = (tmp_path / "run" / "junit.xml").read_text()
    assert 'name="fault 2: echo boom; exit 3"' in junit
    assert '<skipped message="not reached: the run ended first"' in junit
    html = (tmp_path / "run" / "report.html").read_text()
    assert html.count('data-fault-status="failed"') == 2
    assert html.count('data-fault-status="not_reached"') == 1


def test_an_outage_of_three_seconds_is_measured_and_fails_the_availability_kpi(
        tmp_path: Path) -> None:
    control = tmp_path / "down"
    run_dir = tmp_path / "run"
    # Seconds judged on the error rate alone: on a busy test machine one slow request makes
    # its second bad under a latency KPI (tested on fixed data in test_availability.py).
    kpis = tmp_path / "kpis.toml"
    kpis.write_text('replace_defaults = true\n'
                    '[[kpi]]\nmetric = "error_rate_percent"\ntarget = "0.1%"\n'
                    '[[kpi]]\nmetric = "availability_percent"\ntarget = "99.9%"\n'
                    '[[kpi]]\nmetric = "recovery_s_max"\ntarget = "5min"\n')
    with running_target(OUTAGE, "--control", str(control), "--outage-s", "3") as (url, _):
        result = perfkit("load", "--target", url, "--scenario", "health", "--rate", "10",
                         "--users", "4", "--duration", "40s", "--warmup", "0s",
                         "--kpi", str(kpis), "--out", str(run_dir),
                         "--fault", f"at=12s,do=touch {control}", timeout=180)
    assert result.returncode == 1, result.stdout + result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    (fault,) = summary["faults"]
    assert fault["status"] == "done" and fault["recovered"]
    assert abs(fault["recovery_s"] - 3.0) <= 1.0
    assert abs(fault["recovery_from_start_s"] - 3.0) <= 1.0
    assert 15 <= fault["errors"] <= fault["requests"] <= 45  # 10/s for about 3 s
    judged_s = summary["availability"]["judged_s"]
    assert abs(summary["availability"]["percent"] - 100.0 * (judged_s - 3) / judged_s) <= 1.0
    kpis = {kpi["metric"]: kpi for kpi in summary["kpis"]}
    assert kpis["availability_percent"]["verdict"] == "fail"
    assert kpis["recovery_s_max"]["verdict"] == "pass"
    assert kpis["availability_percent"]["reason"].startswith("availability 9")
    html = (run_dir / "report.html").read_text()
    assert "Faults and recovery" in html and 'data-fault-status="done"' in html
    assert "fault (--fault)" in html  # the band's legend on the time charts
    assert f"recovered {format_value(fault['recovery_s'], 's')} after its end" in \
        (run_dir / "summary.md").read_text()
    # The same run judged against an availability the outage stays within passes it.
    loose = tmp_path / "loose.toml"
    loose.write_text('[[kpi]]\nmetric = "availability_percent"\ntarget = "90%"\n')
    again = perfkit("report", str(run_dir), "--kpi", str(loose))
    assert again.returncode in (0, 1), again.stderr
    rejudged = json.loads((run_dir / "summary.json").read_text())
    kpis = {kpi["metric"]: kpi for kpi in rejudged["kpis"]}
    assert kpis["availability_percent"]["verdict"] == "pass"
    assert kpis["availability_percent"]["value"] == summary["availability"]["percent"]


def test_network_faults_through_the_proxy_show_in_their_own_window_only(
        tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with running_target(FIXED_DELAY, "--delay-ms", "1") as (url, _):
        result = perfkit("load", "--target", url, "--scenario", "health", "--rate", "20",
                         "--users", "10", "--duration", "20s", "--warmup", "0s",
                         "--out", str(run_dir),
                         "--fault", "at=4s,for=4s,net=latency:300ms",
                         "--fault", "at=11s,for=2s,net=reset")
    assert result.returncode in (0, 1), result.stdout + result.stderr
    assert "fault proxy on 127.0.0.1:" in result.stdout
    run = rundir.load_run(run_dir)
    latency_fault, reset_fault = run.meta.faults or []
    assert latency_fault["what"] == "net=latency:300ms" and latency_fault["status"] == "done"
    assert 3.9 <= latency_fault["ended_at"] - latency_fault["started_at"] <= 4.5
    per_second = run.latency.groupby("t").agg(
        count=("count", "sum"), failures=("failures", "sum"),
        hist=("hist", list)).reset_index()

    def during(t: int, fault: dict, margin_s: float) -> bool:
        return fault["started_at"] - margin_s <= t <= fault["ended_at"] + margin_s

    slow_seconds = fast_seconds = 0
    for t, failures, hists in zip(per_second["t"], per_second["failures"], per_second["hist"],
                                  strict=True):
        p50 = stats.percentile_ms(stats.merge_histograms(hists), 50)
        assert p50 is not None
        if during(t, latency_fault, -1.0):  # whole seconds well inside the latency fault
            assert p50 >= 300.0, t
            slow_seconds += 1
        elif not during(t, latency_fault, 1.0) and not during(t, reset_fault, 1.0):
            assert p50 < 100.0, t
            fast_seconds += 1
        if failures:  # connections reset: in the reset fault's window only
            assert during(t, reset_fault, 1.0), t
    assert slow_seconds >= 2 and fast_seconds >= 5
    assert per_second["failures"].sum() > 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [fault["recovered"] for fault in summary["faults"]] == [True, True]


def test_endurance_repeats_a_fault_and_stress_runs_one(tmp_path: Path) -> None:
    control = tmp_path / "down"
    with running_target(OUTAGE, "--control", str(control), "--outage-s", "1") as (url, _):
        endurance = perfkit("endurance", "--target", url, "--scenario", "health", "--rate",
                            "10", "--users", "2", "--duration", "14s", "--warmup", "0s",
                            "--out", str(tmp_path / "endurance"),
                            "--fault", "at=2s,every=5s,do=echo hit")
        # A step with errors beyond the error-rate KPI or --max-error-rate breaks and ends
        # the ramp: here neither judges, for the outage's recovery to be seen.
        latency_only = tmp_path / "kpis.toml"
        latency_only.write_text('replace_defaults = true\n[[kpi]]\nmetric = "p99_ms"\n'
                                'endpoint = "GET /api/v1/health"\ntarget = "1s"\n')
        stress = perfkit("stress", "--target", url, "--scenario", "health", "--rate", "20",
                         "--start-rate", "10", "--step-rate", "10", "--step-duration", "5s",
                         "--max-error-rate", "50%", "--kpi", str(latency_only),
                         "--out", str(tmp_path / "stress"),
                         "--fault", f"at=2s,do=touch {control}")
    assert endurance.returncode in (0, 1), endurance.stdout + endurance.stderr
    faults = json.loads((tmp_path / "endurance" / "summary.json").read_text())["faults"]
    assert [round(fault["at_s"]) for fault in faults] == [2, 7, 12]
    assert all(fault["status"] == "done" for fault in faults)
    assert all(0.0 <= fault["started_at_s"] - fault["at_s"] <= 0.5 for fault in faults)
    assert stress.returncode in (0, 1), stress.stdout + stress.stderr
    (fault,) = json.loads((tmp_path / "stress" / "summary.json").read_text())["faults"]
    assert fault["status"] == "done" and fault["recovered"] and fault["errors"] > 0
    assert abs(fault["recovery_s"] - 1.0) <= 1.0


def test_a_blackhole_is_down_while_nothing_comes_back_and_bandwidth_slows(
        tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with running_target(FIXED_DELAY, "--delay-ms", "1") as (url, _):
        result = perfkit("load", "--target", url, "--scenario", "health", "--rate", "10",
                         "--users", "40", "--duration", "20s", "--warmup", "0s",
                         "--request-timeout", "2s", "--out", str(run_dir),
                         "--fault", "at=4s,for=3s,net=blackhole",
                         "--fault", "at=13s,for=4s,net=bandwidth:1KB/s")
    assert result.returncode == 1, result.stdout + result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    blackhole, bandwidth = summary["faults"]
    # Requests sent into the hole time out 2 s later: seconds without answers, then failures.
    assert blackhole["recovered"] and blackhole["errors"] >= 20
    assert summary["availability"]["silent_s"] >= 1
    assert 3.0 <= blackhole["recovery_from_start_s"] <= 3.0 + 2.0 + 1.0
    # A request and its answer are a few hundred bytes each: at 1 KB/s each way, 0.2 s or more.
    run = rundir.load_run(run_dir)
    start = run.meta.started_at + bandwidth["started_at_s"]
    inside = run.latency[(run.latency["t"] >= start + 1) & (run.latency["t"] <= start + 3)]
    p50 = stats.percentile_ms(stats.merge_histograms(inside["hist"]), 50)
    assert p50 is not None and p50 >= 200.0
    assert bandwidth["errors"] == 0
