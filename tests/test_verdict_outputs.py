"""One verdict in every output: report.html's banner, summary.json's "verdict", summary.md's
first line, junit.xml's failures and errors, and the exit code say the same thing, for every
verdict (pass, warn, fail, error) of load, stress and endurance runs.

Real short runs against purpose-built targets where that is cheap; the many other
combinations from run directories written from fixed data and judged and reported through
the same code every run uses (rebuild_report: judge_run, then write_report)."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lxml.html
import numpy as np
import pandas as pd
import pytest
from lxml import etree

from perfkit import rundir
from perfkit.analysis import stats
from perfkit.analysis.endurance import analyze_endurance
from perfkit.analysis.stress import judge_step, summarize_stress
from perfkit.kpi_file import load_kpi_targets
from perfkit.report import rebuild_report
from perfkit.settings import LoadSettings, StressSettings
from tests.synthetic import START_T, EndpointSpec, RunSpec, make_run, rewrite_as_jsonl
from tests.targets import FIXED_DELAY, start_target, stop_target

EXIT_CODES = {"pass": 0, "warn": 0, "fail": 1, "error": 3}
HEALTH = "GET /api/v1/health"
_MD_FIRST_LINE = re.compile(r"### perfkit: \S+ (PASS|WARN|FAIL|ERROR) — \S")


def read_outputs(run_dir: Path) -> dict[str, Any]:
    """What each output of a run directory says its verdict is."""
    page = lxml.html.fromstring((run_dir / "report.html").read_text("utf-8"))
    banner = page.xpath('//*[@id="verdict"]')[0]
    label = " ".join(banner.xpath('.//*[@class="verdict"]')[0].text_content().split())
    first_line = (run_dir / "summary.md").read_text("utf-8").splitlines()[0]
    match = _MD_FIRST_LINE.match(first_line)
    assert match, first_line
    suite = etree.parse(str(run_dir / "junit.xml")).getroot().find("testsuite")
    assert suite is not None
    return {"banner": banner.get("data-verdict"), "banner_class": banner.get("class"),
            "label": label, "summary_json": json.loads((run_dir / "summary.json").read_text())[
                "verdict"], "summary_md": match.group(1).lower(),
            "run_json": json.loads((run_dir / "run.json").read_text())["verdict"],
            "junit_failures": int(suite.get("failures") or 0),
            "junit_errors": int(suite.get("errors") or 0)}


def assert_outputs_agree(run_dir: Path, exit_code: int, verdict: str | None = None) -> str:
    """Every output of `run_dir` and `exit_code` say one verdict (`verdict`, when given);
    returns it. junit.xml: an error case exactly for error, a failure exactly for fail."""
    said = read_outputs(run_dir)
    found = said["summary_json"]
    context = f"{run_dir}: {said}, exit code {exit_code}"
    assert found in EXIT_CODES, context
    if verdict is not None:
        assert found == verdict, context
    assert said["banner"] == said["summary_md"] == said["run_json"] == found, context
    assert said["label"] == found.upper() and found in said["banner_class"].split(), context
    assert (said["junit_errors"] > 0) == (found == "error"), context
    if found != "error":
        assert (said["junit_failures"] > 0) == (found == "fail"), context
    assert exit_code == EXIT_CODES[found], context
    return found


def write_kpis(run_dir: Path, body: str) -> Path:
    path = run_dir / "kpi.toml"
    path.write_text("replace_defaults = true\n" + body, "utf-8")
    return path


ERROR_RATE = '[[kpi]]\nmetric = "error_rate_percent"\ntarget = "1%"\n'
HEALTH_P99 = f'[[kpi]]\nmetric = "p99_ms"\nendpoint = "{HEALTH}"\ntarget = "1ms"\n'
THROUGHPUT = '[[kpi]]\nmetric = "rps"\ntarget = "50rps"\n'


def fixed_run(run_dir: Path, command: str, kpis: str, spec: RunSpec | None = None,
              **meta: Any) -> Path:
    """A simulated run directory of `command` judged against the KPIs `kpis`; `meta` is
    written into run.json (status, stress, failures ...)."""
    make_run(run_dir, spec or RunSpec(duration_s=30))
    data = json.loads((run_dir / rundir.RUN_JSON).read_text())
    data.update(command=command, kpi_file=str(write_kpis(run_dir, kpis)), **meta)
    rundir.write_json(run_dir / rundir.RUN_JSON, data)
    return run_dir


def scenario_raised(run_dir: Path) -> Path:
    rundir.write_json(run_dir / rundir.FAILURES, [{
        "name": HEALTH, "kind": "scenario_error", "error": "KeyError: 'job_id'", "count": 3,
        "location": "mine.py:11 in create", "example": "Traceback ..."}])
    return run_dir


def endurance_run(run_dir: Path, kpis: str, rss_mb: np.ndarray, spec: RunSpec) -> Path:
    """A simulated endurance run: its RSS series replaced by `rss_mb` (one sample a second),
    then analysed as `perfkit endurance` analyses a run."""
    fixed_run(run_dir, "endurance", kpis, spec)
    resources = pd.read_csv(run_dir / rundir.RESOURCES)
    resources["rss_mb"] = rss_mb[:len(resources)]
    resources.to_csv(run_dir / rundir.RESOURCES, index=False)
    run = rundir.load_run(run_dir)
    endurance = analyze_endurance(run, load_kpi_targets(run_dir / "kpi.toml"), 10.0)
    data = json.loads((run_dir / rundir.RUN_JSON).read_text())
    rundir.write_json(run_dir / rundir.RUN_JSON, {**data, "endurance": endurance})
    return run_dir


def stress_step(step: int, rps: int, t0: int, previous: dict | None = None,
                error_percent: int = 0, cpu_percent: float | None = None) -> dict[str, Any]:
    """One ramp step judged by analysis.stress from 10 s of fixed records, as perfkit stress
    judges each step: an error rate over --max-error-rate (1 %) breaks it, and so does a
    target CPU over the default KPI's allowed peak."""
    records = []
    for t in range(t0, t0 + 10):
        hist = stats.new_histogram()
        for _ in range(rps):
            stats.record_ms(hist, 5.0)
        records.append({"t": t, "name": HEALTH, "count": rps,
                        "failures": rps * error_percent // 100,
                        "hist": stats.encode_histogram(hist)})
    resources = None if cpu_percent is None else pd.DataFrame(
        {"t": np.arange(t0, t0 + 11, dtype=float), "cpu_busiest_percent": cpu_percent})
    return judge_step(step, 10 * step, None, records, resources, t0, t0 + 10,
                      load_kpi_targets(None), previous, 1.0)


def ramp(*steps: tuple[int, int, float | None]) -> dict[str, Any]:
    """run.json "stress" of a ramp whose steps serve (rps, error %, CPU %)."""
    judged: list[dict[str, Any]] = []
    for index, (rps, error_percent, cpu_percent) in enumerate(steps):
        judged.append(stress_step(index + 1, rps, START_T + 10 * index,
                                  judged[-1] if judged else None, error_percent, cpu_percent))
    broke = any(not step["held"] for step in judged)
    return summarize_stress(StressSettings(LoadSettings()), judged,
                            "broke" if broke else "max_steps")


FLAT_S = 200

FIXED = {
    # name: (expected verdict, builder of the run directory)
    "load pass": ("pass", lambda d: fixed_run(d, "load", ERROR_RATE)),
    "load warn": ("warn", lambda d: fixed_run(d, "load", HEALTH_P99 + 'allowed = "10s"\n')),
    "load fail": ("fail", lambda d: fixed_run(d, "load", HEALTH_P99)),
    "load error: no requests": ("error", lambda d: fixed_run(
        d, "load", ERROR_RATE, RunSpec(duration_s=10, endpoints={}))),
    "load error: never ended": ("error", lambda d: fixed_run(
        d, "load", ERROR_RATE, status="running", ended_at=None)),
    # A run that did not complete exits 1, so it is never a pass, whatever its KPIs say.
    "load degraded": ("fail", lambda d: fixed_run(
        d, "load", ERROR_RATE, status="degraded", message="lost 1 of 2 workers")),
    "load aborted": ("fail", lambda d: fixed_run(
        d, "load", ERROR_RATE, status="aborted", message="--abort-on-fail: a KPI alarm")),
    "load target died": ("fail", lambda d: fixed_run(
        d, "load", ERROR_RATE, status="target_died", message="the target exited")),
    # What the scenario's own code raised fails the run; junit.xml has no KPI case for it.
    "load fail: scenario raised": ("fail", lambda d: scenario_raised(fixed_run(
        d, "load", ERROR_RATE))),
    "stress pass": ("pass", lambda d: fixed_run(
        d, "stress", THROUGHPUT, stress=ramp((60, 0, None), (120, 0, None), (150, 10, None)))),
    "stress fail": ("fail", lambda d: fixed_run(
        d, "stress", THROUGHPUT, stress=ramp((20, 0, None), (30, 10, None)))),
    "endurance pass": ("pass", lambda d: endurance_run(
        d, ERROR_RATE, np.full(FLAT_S, 80.0), RunSpec(duration_s=FLAT_S))),
    "endurance warn: inconclusive": ("warn", lambda d: endurance_run(
        d, ERROR_RATE, np.full(60, 80.0), RunSpec(duration_s=60))),
    "endurance warn: drift": ("warn", lambda d: drifting_run(d)),
    "endurance fail: leak": ("fail", lambda d: endurance_run(
        d, ERROR_RATE, 80.0 + np.arange(FLAT_S) * 0.2, RunSpec(duration_s=FLAT_S))),
    "endurance fail: error budget": ("fail", lambda d: endurance_run(
        d, ERROR_RATE, np.full(FLAT_S, 80.0), RunSpec(duration_s=FLAT_S, endpoints={
            HEALTH: EndpointSpec(rps=20, median_ms=5, error_rate=0.05)}))),
    "endurance error": ("error", lambda d: endurance_run(
        d, ERROR_RATE, np.full(FLAT_S, 80.0), RunSpec(duration_s=FLAT_S, endpoints={}))),
    # The first step already breaks the CPU KPI: the capacity (~84 rps at 80 % of a core,
    # above the 50 rps KPI) can only be estimated from the CPU each request costs.
    "stress warn: estimated capacity": ("warn", lambda d: fixed_run(
        d, "stress", THROUGHPUT, stress=ramp((100, 0, 95.0)))),
    "stress error: no step completed": ("error", lambda d: fixed_run(
        d, "stress", THROUGHPUT, stress=ramp())),
}


@pytest.mark.parametrize("name", FIXED)
def test_every_output_says_the_one_verdict_of_fixed_runs(tmp_path: Path, name: str) -> None:
    verdict, build = FIXED[name]
    build(tmp_path)
    result = rebuild_report(tmp_path)
    assert_outputs_agree(tmp_path, result.exit_code, verdict)
    summary = json.loads((tmp_path / "summary.json").read_text())
    if name.startswith("endurance"):
        leak = summary["endurance"]["leak_verdict"]
        reason = summary["verdict_reason"]
        expected_lead = {"pass": "no memory leak", "warn: inconclusive": "memory growth "
                         "inconclusive", "warn: drift": "latency drift",
                         "fail: leak": "memory leak", "fail: error budget": "error budget",
                         "error": "no requests"}[name.removeprefix("endurance ")]
        assert reason.startswith(expected_lead), reason
        if verdict == "warn" and leak == "inconclusive":
            assert "too short to tell" in reason and "2 min" in reason


def drifting_run(run_dir: Path) -> None:
    """An endurance run whose health checks slow from 5 ms to 50 ms in its second half."""
    endurance_run(run_dir, ERROR_RATE, np.full(FLAT_S, 80.0), RunSpec(
        duration_s=FLAT_S, endpoints={HEALTH: EndpointSpec(rps=20, median_ms=5)}))
    rewrite_as_jsonl(run_dir)  # lines are easier to edit than blocks
    lines = [json.loads(line) for line in (run_dir / rundir.LATENCY_JSONL).read_text().splitlines()]
    slow = stats.new_histogram()
    for _ in range(20):
        stats.record_ms(slow, 50.0)
    for line in lines:
        if line["t"] >= START_T + FLAT_S // 2 and line["name"] == HEALTH:
            line.update(count=20, failures=0, hist=stats.encode_histogram(slow))
    (run_dir / rundir.LATENCY_JSONL).write_text("".join(json.dumps(line) + "\n" for line in lines))
    run = rundir.load_run(run_dir)
    data = json.loads((run_dir / rundir.RUN_JSON).read_text())
    data["endurance"] = analyze_endurance(run, load_kpi_targets(run_dir / "kpi.toml"), 10.0)
    rundir.write_json(run_dir / rundir.RUN_JSON, data)


def perfkit_process(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "perfkit", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_every_output_says_the_one_verdict_of_real_runs(tmp_path: Path) -> None:
    """Short real runs at once against fixed_delay targets: pass, warn, fail on errors, fail
    because the target died mid-run, error because the scenario never sent a request, and a
    stress ramp (whatever its verdict, all its outputs say it)."""
    failing_setup = tmp_path / "setup_fails.py"
    failing_setup.write_text(
        "from locust import HttpUser, constant, task\n\n\nclass Mine(HttpUser):\n"
        "    wait_time = constant(0.05)\n\n    def on_start(self):\n"
        "        raise RuntimeError('login failed')\n\n    @task\n    def index(self):\n"
        "        self.client.get('/')\n")
    common = ["--scenario", "health", "--users", "2", "--warmup", "0s"]
    # name: (expected verdict or None for any, target arguments, KPI file, perfkit arguments)
    cases: dict[str, tuple[str | None, tuple[str, ...], str, list[str]]] = {
        "pass": ("pass", (), ERROR_RATE, ["load", *common, "--duration", "3s"]),
        "warn": ("warn", ("--delay-ms", "2"), HEALTH_P99 + 'allowed = "10s"\n',
                 ["load", *common, "--duration", "3s"]),
        "fail": ("fail", ("--fail-every", "5"), ERROR_RATE,
                 ["load", *common, "--duration", "3s"]),
        "target died": ("fail", (), ERROR_RATE, ["load", *common, "--duration", "10s",
                                                 "--target-pid", "{pid}"]),
        "error": ("error", (), ERROR_RATE, ["load", "--scenario", str(failing_setup),
                                            "--users", "2", "--warmup", "0s", "--duration",
                                            "3s"]),
        "stress": (None, ("--delay-ms", "2"), THROUGHPUT + ERROR_RATE, [
            "stress", *common, "--step-users", "2", "--step-duration", "3s", "--max-steps",
            "2"]),
    }
    targets, runs = {}, {}
    try:
        for name, (_, target_args, kpis, args) in cases.items():
            proc, url = start_target(FIXED_DELAY, *target_args)
            targets[name] = proc
            run_dir = tmp_path / name.replace(" ", "-")
            run_dir.mkdir()
            runs[name] = perfkit_process(
                *[a.replace("{pid}", str(proc.pid)) for a in args], "--target", url,
                "--kpi", str(write_kpis(run_dir, kpis)), "--out", str(run_dir / "run"))
        # The target dies once the run has sent requests for a few seconds, a few seconds
        # before its end (timeline.csv: a row a second; latency.bin is written a minute at a
        # time).
        timeline = tmp_path / "target-died" / "run" / rundir.TIMELINE
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and not (
                timeline.is_file() and sum(line.split(",")[1] not in ("", "0") for line in
                                           timeline.read_text().splitlines()[1:]) >= 3):
            time.sleep(0.2)
        stop_target(targets["target died"])
        outputs = {name: run.communicate(timeout=120)[0] for name, run in runs.items()}
    finally:
        for run in runs.values():
            run.kill()
            run.wait()
            if run.stdout is not None:
                run.stdout.close()
        for proc in targets.values():
            stop_target(proc)
    for name, (verdict, *_) in cases.items():
        run_dir = tmp_path / name.replace(" ", "-") / "run"
        assert (run_dir / "report.html").is_file(), outputs[name]
        found = assert_outputs_agree(run_dir, runs[name].returncode, verdict)
        assert f"verdict {found.upper()}" in outputs[name], outputs[name]
    died = json.loads((tmp_path / "target-died" / "run" / "run.json").read_text())
    assert died["status"] == "target_died"
