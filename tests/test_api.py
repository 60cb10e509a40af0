"""The Python API: perfkit.load() runs like `perfkit load` and returns the judged RunResult;
reading the run directory back gives the same object (verdict once judged again)."""

import json
import subprocess
import sys
from pathlib import Path

from perfkit import rundir
from perfkit.analysis.kpi import judge_run
from perfkit.kpi_file import load_kpi_targets
from tests.targets import FIXED_DELAY, running_target

# Starting a load imports Locust, which monkey-patches the standard library: the API is used
# from a process of its own, as README's pytest example suggests.
SCRIPT = """
import json, sys
import perfkit

result = perfkit.load(target=sys.argv[1], scenario="health", users=2, duration="3s",
                      warmup=0, out=sys.argv[2], say=lambda line: None)
assert isinstance(result, perfkit.RunResult)
print(json.dumps({"verdict": result.verdict, "exit_code": result.exit_code,
                  "run_dir": str(result.run_dir), "status": result.meta.status,
                  "endpoints": result.endpoints, "kpis": [k.verdict for k in result.kpis],
                  "summary": result.summary}))
"""


def test_load_returns_the_judged_result_and_the_directory_reads_back_the_same(
        tmp_path: Path) -> None:
    with running_target(FIXED_DELAY, "--delay-ms", "1") as (url, _):
        done = subprocess.run([sys.executable, "-c", SCRIPT, url, str(tmp_path / "run")],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["run_dir"] == str(tmp_path / "run") and result["status"] == "completed"
    health = result["endpoints"]["GET /api/v1/health"]
    assert health["count"] > 0 and health["failures"] == 0
    assert result["verdict"] in ("pass", "warn") and result["exit_code"] == 0

    again = judge_run(rundir.load_run(tmp_path / "run"), load_kpi_targets(None))
    assert again.verdict == result["verdict"]
    assert again.meta.verdict == result["verdict"]  # run.json's second write holds it
    assert json.loads(json.dumps(again.summary)) == result["summary"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == result["summary"]
