"""The run directory's latency data across formats: a run written by an older perfkit still
reports the same."""

import json
import shutil
from pathlib import Path
from typing import Any

from perfkit import rundir
from perfkit.analysis import stats
from perfkit.report import SUMMARY_JSON, rebuild_report

DATA = Path(__file__).parent / "data"
# Written by perfkit before the compact latency format (latency.jsonl, one base64 HdrHistogram
# per line), with the summary.json that perfkit wrote for it then. SIMULATED data
# (tests/synthetic.py, run.json says so).
RUN_V1 = DATA / "run_v1"
RUN_V1_SUMMARY = DATA / "run_v1_summary.json"


def test_a_run_directory_of_the_jsonl_format_gives_the_same_summary(tmp_path: Path) -> None:
    run_dir = tmp_path / "run_v1"
    shutil.copytree(RUN_V1, run_dir)
    rebuild_report(run_dir)
    expected = json.loads(RUN_V1_SUMMARY.read_text())
    assert expected["totals"]["count"] > 1000 and expected["endpoints"]  # not an empty run
    assert_same_summary(json.loads((run_dir / SUMMARY_JSON).read_text()), expected)


def assert_same_summary(summary: dict[str, Any], expected: dict[str, Any]) -> None:
    """The same summary, KPIs added to the defaults since the fixture was written (the
    availability and lost work of issue 22) aside: every KPI it had is there with the same value and
    verdict, and everything else is equal."""
    old_kpis = {kpi["name"] for kpi in expected["kpis"]}
    assert [kpi for kpi in summary["kpis"] if kpi["name"] in old_kpis] == expected["kpis"]
    added = {key for key in summary if key not in expected}
    assert added <= {"availability", "faults", "lost_work"}, added
    ignored = {"kpis", "counts", *added}
    assert ({key: value for key, value in summary.items() if key not in ignored}
            == {key: value for key, value in expected.items() if key not in ignored})


def test_the_same_buckets_in_latency_bin_give_the_same_summary(tmp_path: Path) -> None:
    run_dir = tmp_path / "run_v1"
    shutil.copytree(RUN_V1, run_dir)
    latency = rundir.load_run(run_dir).latency
    records = []
    for item in latency.itertuples():
        _, cells, counts = stats.decode_cells([item.hist])
        records.append(rundir.LatencyRecord(item.t, item.name, item.count, item.failures,
                                            cells, counts))
    rundir.append_latency(run_dir / rundir.LATENCY, records[:100])
    rundir.append_latency(run_dir / rundir.LATENCY, records[100:])
    (run_dir / rundir.LATENCY_JSONL).unlink()
    assert (run_dir / rundir.LATENCY).stat().st_size < (RUN_V1 / rundir.LATENCY_JSONL).stat(
        ).st_size / 2
    rebuild_report(run_dir)
    assert_same_summary(json.loads((run_dir / SUMMARY_JSON).read_text()),
                        json.loads(RUN_V1_SUMMARY.read_text()))
