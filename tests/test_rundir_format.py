"""The run directory's latency data across formats: a run written by an older perfkit still
reports the same."""

import json
import shutil
from pathlib import Path

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
    assert json.loads((run_dir / SUMMARY_JSON).read_text()) == expected
