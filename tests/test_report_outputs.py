"""summary.json, summary.md, junit.xml and `perfkit report` on synthetic run directories."""

import json
import stat
import subprocess
import sys
from pathlib import Path

import lxml.html
import pytest
from lxml import etree

from perfkit import rundir
from perfkit.analysis.kpi import evaluate_kpis, judge_run
from perfkit.errors import ConfigError
from perfkit.kpi_file import load_kpi_targets
from perfkit.report import rebuild_report
from perfkit.report.junit import write_junit
from perfkit.units import format_value
from tests.synthetic import EndpointSpec, RunSpec, make_run
from tests.targets import FIXED_DELAY, running_target

HEALTH = "GET /api/v1/health"
CREATE = "POST /api/v1/research/products"
JUNIT_XSD = Path(__file__).parent / "data" / "junit.xsd"


def validate_junit(path: Path) -> etree._Element:
    schema = etree.XMLSchema(etree.parse(str(JUNIT_XSD)))
    document = etree.parse(str(path))
    assert schema.validate(document), schema.error_log
    return document.getroot()


def run_perfkit(*args: str, umask: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "perfkit", *args]
    if umask is not None:
        command = ["sh", "-c", f'umask {umask} && exec "$@"', "sh", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def failing_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Create p99 near 1 s (fails 500 ms), health p99 ~ 150 ms (warns), no status calls;
    reported once (rendering is the slow part) and read by the tests below."""
    path = tmp_path_factory.mktemp("runs") / "failing"
    make_run(path, RunSpec(duration_s=30, warmup_s=3, endpoints={
        HEALTH: EndpointSpec(rps=60, median_ms=60, sigma=0.4),
        CREATE: EndpointSpec(rps=10, median_ms=400, sigma=0.4)}))
    assert rebuild_report(path).verdict == "fail"
    return path


def test_summary_json_is_the_ci_contract(failing_run: Path) -> None:
    verdict = json.loads((failing_run / "run.json").read_text())["verdict"]
    summary = json.loads((failing_run / "summary.json").read_text())
    assert verdict == summary["verdict"] == "fail"
    assert summary["run_id"] == "failing"
    assert summary["status"] == "completed"
    assert summary["window"]["warmup_s"] == 3 and summary["window"]["duration_s"] == 27
    assert set(summary["endpoints"]) == {HEALTH, CREATE}
    for endpoint in summary["endpoints"].values():
        assert {"count", "failures", "rps", "p50_ms", "p90_ms", "p95_ms", "p99_ms",
                "max_ms"} <= set(endpoint)
        assert endpoint["p50_ms"] <= endpoint["p99_ms"] <= endpoint["max_ms"]
    assert summary["jobs"]["job_completion"]["count"] > 0
    kpis = {k["name"]: k for k in summary["kpis"]}
    assert len(kpis) == 18
    for kpi in kpis.values():
        assert {"name", "value", "target", "allowed", "verdict", "unit", "margin_percent",
                "reason"} <= set(kpi)
    create = kpis[f"{CREATE} p99"]
    assert create["verdict"] == "fail" and create["value"] > 500 and create["target"] == 500
    assert kpis[f"{HEALTH} p99"]["verdict"] == "warn"
    status = kpis["GET /api/v1/research/products/{id}/status p99"]
    assert (status["verdict"], status["value"]) == ("missing", None)
    assert summary["counts"]["fail"] >= 1 and summary["counts"]["missing"] >= 1
    # The worst offender is a failing KPI, the one furthest beyond its target.
    failing = [k for k in summary["kpis"] if k["verdict"] == "fail"]
    assert summary["worst"]["name"] == min(failing, key=lambda k: k["margin_percent"])["name"]
    assert summary["worst"]["name"] in summary["verdict_reason"]
    assert json.loads((failing_run / "run.json").read_text())["verdict"] == "fail"


def test_summary_markdown_for_a_pull_request(failing_run: Path) -> None:
    summary = json.loads((failing_run / "summary.json").read_text())
    text = (failing_run / "summary.md").read_text()
    lines = text.splitlines()
    assert lines[0].startswith("### perfkit: ❌ FAIL — ")
    assert summary["worst"]["name"] in lines[0]
    assert "| KPI | value | target | allowed | verdict | margin |" in lines
    create_row = next(line for line in lines if line.startswith(f"| {CREATE} p99 |"))
    assert "| 500 ms |" in create_row and "❌ fail" in create_row
    assert any(line.startswith("- **missing** GET /api/v1/research/products/{id}/status p99: "
                               "no requests") for line in lines)
    assert f"| {HEALTH} | " in text  # the endpoint table
    assert "3 s warm-up" in text and "**simulated data**" in text


def test_junit_has_one_case_per_kpi_and_validates(failing_run: Path) -> None:
    root = validate_junit(failing_run / "junit.xml")
    summary = json.loads((failing_run / "summary.json").read_text())
    suite = root.find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [k["name"] for k in summary["kpis"]] + ["run status"]
    failed = {c.get("name"): c.find("failure") for c in cases if c.find("failure") is not None}
    skipped = {c.get("name") for c in cases if c.find("skipped") is not None}
    assert set(failed) == {k["name"] for k in summary["kpis"] if k["verdict"] == "fail"}
    assert skipped == {k["name"] for k in summary["kpis"] if k["verdict"] == "missing"}
    create = failed[f"{CREATE} p99"]
    assert create is not None and "over the 500 ms target" in (create.get("message") or "")
    assert suite.get("failures") == str(len(failed))
    assert suite.get("skipped") == str(len(skipped))
    assert suite.get("tests") == str(len(cases))


def test_write_junit_escapes_what_it_is_given(tmp_path: Path) -> None:
    path = tmp_path / "junit.xml"
    write_junit(path, 'suite "<&>"', [
        ("p99 < 100 ms & \"quoted\"", "812 ms > 500 ms — über", None),
        ("skipped one", None, "no requests"),
        ("passed one", None, None),
    ])
    root = validate_junit(path)
    cases = root.findall("testsuite/testcase")
    assert cases[0].get("name") == "p99 < 100 ms & \"quoted\""
    assert cases[0].find("failure").get("message") == "812 ms > 500 ms — über"  # type: ignore[union-attr]
    assert cases[1].find("skipped") is not None and len(cases[2]) == 0
    assert root.find("testsuite").get("failures") == "1"  # type: ignore[union-attr]
    # The schema does reject what CI readers would: a test case without a name.
    del cases[2].attrib["name"]
    assert not etree.XMLSchema(etree.parse(str(JUNIT_XSD))).validate(root.getroottree())


def test_a_run_whose_target_died_fails_whatever_its_kpis(tmp_path: Path) -> None:
    make_run(tmp_path / "died", RunSpec(duration_s=5))
    meta = json.loads((tmp_path / "died" / "run.json").read_text())
    meta.update(status="target_died", message="the target exited with code -9")
    (tmp_path / "died" / "run.json").write_text(json.dumps(meta))
    run = rundir.load_run(tmp_path / "died")
    results = evaluate_kpis(run, load_kpi_targets(None))
    assert "fail" not in {r.verdict for r in results}
    summary = judge_run(run, load_kpi_targets(None)).summary
    assert summary["verdict"] == "fail"
    assert "target_died" in summary["verdict_reason"]
    assert rebuild_report(tmp_path / "died").verdict == "fail"
    root = validate_junit(tmp_path / "died" / "junit.xml")
    status = root.find("testsuite/testcase[@name='run status']/failure")
    assert status is not None and "exited with code -9" in (status.get("message") or "")


def test_kpi_file_recorded_in_the_run_is_used(tmp_path: Path) -> None:
    make_run(tmp_path / "run", RunSpec(duration_s=5))
    kpi_file = tmp_path / "strict.toml"
    kpi_file.write_text('replace_defaults = true\n[[kpi]]\nmetric = "p50_ms"\n'
                        f'endpoint = "{HEALTH}"\ntarget = "1ms"\n')
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    meta["kpi_file"] = str(kpi_file)
    (tmp_path / "run" / "run.json").write_text(json.dumps(meta))
    assert rebuild_report(tmp_path / "run").verdict == "fail"  # health p50 is about 3 ms
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [k["name"] for k in summary["kpis"]] == [f"{HEALTH} p50"]
    assert summary["kpi_file"] == str(kpi_file)
    kpi_file.unlink()
    with pytest.raises(ConfigError, match="pass --kpi FILE"):
        rebuild_report(tmp_path / "run")


def test_perfkit_report_exit_codes(failing_run: Path, tmp_path: Path) -> None:
    result = run_perfkit("report", str(failing_run))
    assert result.returncode == 1, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "verdict: FAIL"
    last = Path(lines[-1].removeprefix("report: "))
    assert lines[-1].startswith("report: ") and last.is_file()
    # report.html once the HTML renderer is installed, summary.md until then.
    assert last.name in ("report.html", "summary.md")
    assert last.parent == failing_run

    # warn (like pass) does not fail the run
    warn_only = tmp_path / "warn.toml"
    warn_only.write_text(f'replace_defaults = true\n[[kpi]]\nmetric = "p99_ms"\n'
                         f'endpoint = "{CREATE}"\ntarget = "500ms"\nallowed = "5s"\n')
    result = run_perfkit("report", str(failing_run), "--kpi", str(warn_only))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("verdict: WARN")

    bad = tmp_path / "bad.toml"
    bad.write_text('[[kpi]]\nmetric = "p99_ms"\nendpoint = "GET /x"\ntarget = "100 msec"\n')
    result = run_perfkit("report", str(failing_run), "--kpi", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert f"{bad}:4: " in result.stderr and "unknown unit 'msec'" in result.stderr

    result = run_perfkit("report", str(tmp_path / "no-such-run"))
    assert result.returncode == 2
    assert "not a run directory" in result.stderr


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short real run, under umask 027: a start that is not on a whole second, and every
    file a run writes."""
    out = tmp_path_factory.mktemp("real") / "run"
    with running_target(FIXED_DELAY, "--delay-ms", "5") as (url, _):
        done = run_perfkit("load", "--target", url, "--scenario", "health", "--users", "2",
                           "--duration", "4s", "--warmup", "1500ms", "--out", str(out),
                           "--history", "off", umask="027")
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return out


def test_every_output_shows_the_one_warm_up_the_verdict_left_out(real_run: Path) -> None:
    summary = json.loads((real_run / "summary.json").read_text())
    window = summary["window"]
    started_at = json.loads((real_run / "run.json").read_text())["started_at"]
    assert window["warmup_s"] == pytest.approx(window["start"] - started_at)
    # No part of the asked 1.5 s is judged; the window starts on the next whole second.
    assert 1.5 <= window["warmup_s"] < 2.5 and window["start"] == int(window["start"])
    shown = format_value(window["warmup_s"], "s")
    page = lxml.html.fromstring((real_run / "report.html").read_text())
    kpis = " ".join(page.xpath('//*[@id="kpis"]')[0].text_content().split())
    assert f"Judged on the run without its warm-up ({shown})" in kpis
    assert f"after {shown} warm-up" in (real_run / "summary.md").read_text()


def test_outputs_are_written_with_the_users_umask(real_run: Path) -> None:
    files = sorted(path for path in real_run.iterdir() if path.is_file())
    assert {"report.html", "summary.json", "junit.xml", "run.json", "latency.bin"} <= {
        path.name for path in files}
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in files}
    assert modes == dict.fromkeys(modes, 0o640), {k: oct(v) for k, v in modes.items()}
    rebuilt = run_perfkit("report", str(real_run), umask="022")
    assert rebuilt.returncode in (0, 1), rebuilt.stderr
    for name in ("report.html", "summary.json", "summary.md", "junit.xml", "run.json"):
        assert stat.S_IMODE((real_run / name).stat().st_mode) == 0o644, name
