"""The built-in scenarios against a target that is not ours (issue 10): real `perfkit load` runs
against tests/targets/envelope.py, whose answers are checked against what it says it served."""

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from perfkit import rundir
from tests.targets import ENVELOPE, FAULTY, running_target

USERS = 4
CREATE = "POST /api/v1/research/products"
STATUS = "GET /api/v1/research/products/{id}/status"
RESULTS = "GET /api/v1/research/products/{id}"


def perfkit_load(url: str, scenario: str, out: Path,
                 duration: str = "8s") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "perfkit", "load", "--target", url, "--scenario", scenario,
         "--users", str(USERS), "--duration", duration, "--warmup", "0s", "--out", str(out)],
        capture_output=True, text=True, timeout=120)


def served_counts(url: str) -> dict[str, int]:
    with urllib.request.urlopen(url + "/_served", timeout=5) as response:
        return {name: int(count) for name, count in json.load(response).items()}


def recorded_totals(run_dir: Path) -> dict[str, dict[str, int]]:
    """Every request perfkit recorded over the whole run (latency.jsonl), by name."""
    latency = rundir.load_run(run_dir).latency
    totals = latency.groupby("name")[["count", "failures"]].sum()
    return {str(name): {"count": int(row["count"]), "failures": int(row["failures"])}
            for name, row in totals.iterrows()}


def summary_of(run_dir: Path) -> dict[str, Any]:
    return dict(json.loads((run_dir / "summary.json").read_text()))


def assert_served_were_recorded(served: dict[str, int], recorded: dict[str, dict[str, int]],
                                names: list[str]) -> None:
    # Killed at the end, each user may leave one request the target answered unrecorded.
    for name in names:
        count = recorded.get(name, {"count": 0})["count"]
        assert served[name] - USERS <= count <= served[name], (name, served, recorded)


@pytest.mark.parametrize("scenario, names", [
    ("create", [CREATE]),
    ("status", [CREATE, STATUS]),
    ("results", [CREATE, STATUS, RESULTS]),
    ("research", [CREATE, STATUS, RESULTS]),
])
def test_every_answer_of_an_envelope_target_is_recorded(tmp_path: Path, scenario: str,
                                                        names: list[str]) -> None:
    with running_target(ENVELOPE, "--job-ms", "500") as (url, _):
        result = perfkit_load(url, scenario, tmp_path / "run")
        served = served_counts(url)
    assert result.returncode in (0, 1), result.stderr
    assert "Traceback" not in result.stderr
    recorded = recorded_totals(tmp_path / "run")
    locust_counts = rundir.load_run(tmp_path / "run").meta.locust_counts
    for name in names:
        assert served[name] > 0, (name, served)
        assert recorded[name]["count"] == locust_counts[name]
    assert_served_were_recorded(served, recorded, names)
    assert sum(entry["failures"] for entry in recorded.values()) == 0, recorded
    assert summary_of(tmp_path / "run")["totals"]["failures"] == 0
    if scenario == "research":
        assert recorded["job_completion"]["count"] > 0


def test_jobs_of_the_bundled_services_flat_shape_complete(tmp_path: Path) -> None:
    with running_target(ENVELOPE, "--job-ms", "500", "--shape", "flat") as (url, _):
        result = perfkit_load(url, "research", tmp_path / "run")
        served = served_counts(url)
    assert result.returncode in (0, 1), result.stderr
    recorded = recorded_totals(tmp_path / "run")
    assert_served_were_recorded(served, recorded, [CREATE, STATUS, RESULTS])
    assert sum(entry["failures"] for entry in recorded.values()) == 0, recorded
    assert recorded["job_completion"]["count"] > 0


def test_an_unknown_create_answer_is_a_recorded_failure(tmp_path: Path) -> None:
    with running_target(ENVELOPE, "--shape", "bare-id") as (url, _):
        result = perfkit_load(url, "create", tmp_path / "run", duration="5s")
        served = served_counts(url)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    recorded = recorded_totals(tmp_path / "run")
    assert_served_were_recorded(served, recorded, [CREATE])
    assert recorded[CREATE]["failures"] == recorded[CREATE]["count"] > 0
    create = summary_of(tmp_path / "run")["endpoints"][CREATE]
    assert create["failures"] == create["count"] > 0
    failures = json.loads((tmp_path / "run" / rundir.FAILURES).read_text())
    assert [(f["name"], f["error"]) for f in failures] == [
        (CREATE, "create: no job_id in the answer (fields: id)")]


def test_a_target_that_is_not_the_api_and_then_dies_gives_failures_with_reasons(
        tmp_path: Path) -> None:
    # The faulty target answers every request `200 ok` in plain text, then exits after 2 s:
    # first answers of the wrong shape, then no answers at all.
    with running_target(FAULTY, "--die-after", "2") as (url, _):
        result = perfkit_load(url, "create", tmp_path / "run", duration="5s")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    recorded = recorded_totals(tmp_path / "run")
    locust_counts = rundir.load_run(tmp_path / "run").meta.locust_counts
    assert recorded[CREATE]["failures"] == recorded[CREATE]["count"] == locust_counts[CREATE]
    failures = json.loads((tmp_path / "run" / rundir.FAILURES).read_text())
    examples = [failure["example"] for failure in failures]
    assert "create: answered 200, expected 201" in examples
    # After the exit, the connection error itself, not a status code of 0.
    assert any("Connection refused" in example for example in examples), examples
    assert not any("answered 0" in example for example in examples), examples


def test_summary_json_counts_every_create_served(tmp_path: Path) -> None:
    with running_target(ENVELOPE) as (url, _):
        result = perfkit_load(url, "create", tmp_path / "run", duration="4s")
        served = served_counts(url)
    assert result.returncode in (0, 1), result.stderr
    count = summary_of(tmp_path / "run")["endpoints"][CREATE]["count"]
    assert served[CREATE] - USERS <= count <= served[CREATE]
