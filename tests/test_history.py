"""Performance history (store, change points, history.html) and interleaved A/B trials.

Statistics on fixed data with known answers; the store and the commands on real runs of the
bundled service, in SQLite and in the PostgreSQL that runs on these machines.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from perfkit import rundir
from perfkit.analysis.history import (
    ChangePointSettings,
    TrialSettings,
    ab_exit_code,
    detect_change_points,
    find_breaks,
    judge_trials,
    regressions_in_newest,
    trial_order,
)
from tests.test_history_html import EXTERNAL

# What asserts measured latencies and ratios runs with nothing beside it (the serial phase).
measured = pytest.mark.serial

RESULTS = "GET /api/v1/research/products/{id}"
STATUS = "GET /api/v1/research/products/{id}/status"
HEALTH = "GET /api/v1/health"
MIX = Path(__file__).parent / "scenarios" / "history_mix.py"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_URL = "postgresql://postgres@127.0.0.1:5432/perfkit_history_test"


def perfkit(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "perfkit", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_a_level_shift_is_found_where_it_starts() -> None:
    rng = np.random.default_rng(3)
    values = np.r_[rng.normal(100, 2, 30), rng.normal(130, 2, 30)]
    assert find_breaks(values, ChangePointSettings()) == [30]


def test_noise_alone_has_no_change_point() -> None:
    for seed in range(20):
        values = np.random.default_rng(seed).normal(100, 3, 60)
        assert find_breaks(values, ChangePointSettings()) == [], seed


def test_a_shift_below_the_threshold_is_not_a_change_point() -> None:
    values = np.r_[np.full(20, 100.0), np.full(20, 105.0)] + np.tile([0.5, -0.5], 20)
    assert find_breaks(values, ChangePointSettings(min_change=0.10)) == []
    assert find_breaks(values, ChangePointSettings(min_change=0.03)) == [20]


def test_change_points_name_runs_direction_and_commits() -> None:
    runs = [{"run_id": f"r{i}", "git_revision": f"c{i}"} for i in range(10)]
    flat = [(i, 10.0 + 0.1 * (i % 2)) for i in range(10)]
    series = {
        ("s", RESULTS, "p50_ms"): [(i, 10.0 + 0.1 * (i % 2) if i < 6 else 30.0) for i in range(10)],
        ("s", HEALTH, "p50_ms"): flat,
        ("s", RESULTS, "rps"): [(i, 20.0 if i < 4 else 40.0 + 0.1 * (i % 2)) for i in range(10)],
    }
    found = detect_change_points(runs, series)
    assert [(cp.endpoint, cp.metric, cp.run_id, cp.direction) for cp in found] == [
        (RESULTS, "p50_ms", "r6", "regression"), (RESULTS, "rps", "r4", "improvement")]
    cp = found[0]
    assert (cp.previous_run_id, cp.revision_before, cp.revision_after) == ("r5", "c5", "c6")
    assert math.isclose(cp.change_percent, (30.0 / cp.before - 1) * 100)
    assert regressions_in_newest(found, runs, 4) == [cp]
    assert regressions_in_newest(found, runs, 3) == []


def _pairs(ratio: float, run_noise: float, n: int, seed: int) -> list:
    """Endpoint summaries of n pairs: a shared per-pair machine factor (drift), an own
    per-run factor of `run_noise`, and B's results endpoint `ratio` times slower."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        machine = math.exp(rng.normal(0, 0.15))
        sides = []
        for factor in (1.0, ratio):
            sides.append({name: {"count": 400, "p50_ms": base * machine * f
                                 * math.exp(rng.normal(0, run_noise)),
                                 "p95_ms": 3 * base * machine * f
                                 * math.exp(rng.normal(0, run_noise))}
                          for name, base, f in ((RESULTS, 20.0, factor), (STATUS, 5.0, 1.0))})
        pairs.append((sides[0], sides[1]))
    return pairs


def test_trials_catch_a_twenty_percent_slowdown_and_name_the_endpoint() -> None:
    caught = sum(judge_trials(_pairs(1.2, 0.03, 6, seed)).regressed_endpoints == [RESULTS]
                 for seed in range(20))
    assert caught >= 19


def test_trials_of_one_build_do_not_fail() -> None:
    verdicts = [judge_trials(_pairs(1.0, 0.03, 6, seed)).outcome for seed in range(40)]
    assert verdicts.count("regression") <= 1
    # with more pairs the interval narrows inside ±10 %: "no regression", not "inconclusive"
    verdicts = [judge_trials(_pairs(1.0, 0.03, 12, seed)).outcome for seed in range(40)]
    assert verdicts.count("regression") <= 1 and verdicts.count("no regression") >= 30


def test_noisy_trials_are_inconclusive_not_a_pass() -> None:
    verdict = judge_trials(_pairs(1.2, 0.4, 3, 1))
    assert verdict.outcome == "inconclusive"
    assert ab_exit_code(verdict, fail_on_inconclusive=False) == 0
    assert ab_exit_code(verdict, fail_on_inconclusive=True) == 1


def test_too_few_requests_for_a_percentile_is_inconclusive() -> None:
    pairs = _pairs(1.0, 0.01, 5, 0)
    for a, b in pairs:
        a[RESULTS]["count"] = b[RESULTS]["count"] = 50
    verdict = judge_trials(pairs, TrialSettings())
    p95 = next(m for m in verdict.metrics if m.endpoint == RESULTS and m.metric == "p95_ms")
    assert p95.verdict == "inconclusive" and "too few requests" in p95.note


def test_trials_alternate_which_arm_goes_first() -> None:
    assert trial_order(3) == ["A", "B", "B", "A", "A", "B"]


@pytest.fixture(scope="module")
def ten_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """Ten short real runs of the bundled service, the last five with n_plus_one, each
    appended to a SQLite history by `perfkit load --history` (the slow five also add 10 % to
    the results endpoint's handling, so the history shows both ways a run is varied)."""
    root = tmp_path_factory.mktemp("history")
    db = root / "history.db"
    dirs = []
    for i in range(1, 11):
        out = root / f"run-{i:02d}"
        variant = ["--variant", "n_plus_one", "--extra-latency", "results=10%"] if i > 5 else []
        done = perfkit("load", "--fast", "--scenario", str(MIX), "--users", "3", "--rate", "15",
                       "--duration", "8s", "--warmup", "2s", *variant, "--out", str(out),
                       "--history", str(db))
        assert done.returncode in (0, 1), done.stderr + done.stdout
        dirs.append(out)
    return db, dirs


@measured
def test_ten_real_runs_show_one_regression_at_run_six(ten_runs: tuple[Path, list[Path]],
                                                      tmp_path: Path) -> None:
    db, dirs = ten_runs
    listed = perfkit("history", "list", "--history", str(db), "--json", str(tmp_path / "l.json"))
    assert listed.returncode == 0, listed.stderr
    runs = json.loads((tmp_path / "l.json").read_text())["runs"]
    assert [run["run_id"] for run in runs] == [d.name for d in dirs]
    assert runs[5]["variants"] == "n_plus_one,extra-latency results=10%"
    assert runs[0]["variants"] == ""

    done = perfkit("history", "analyze", "--history", str(db), "--json",
                   str(tmp_path / "cp.json"), "--out", str(tmp_path), "--fail-on-regression")
    assert done.returncode == 1, done.stdout + done.stderr
    points = json.loads((tmp_path / "cp.json").read_text())["change_points"]
    p50 = [(p["direction"], p["run_id"]) for p in points
           if p["endpoint"] == RESULTS and p["metric"] == "p50_ms"]
    assert p50 == [("regression", "run-06")], done.stdout
    assert {p["run_id"] for p in points if p["endpoint"] == RESULTS} == {"run-06"}
    # Health and status did not change: no shift of their median or p95. (Their p99 rests on
    # the one or two slowest of ~50 requests per run, the machine's hiccups more than theirs.)
    assert [p for p in points if p["endpoint"] in (HEALTH, STATUS)
            and p["metric"] != "p99_ms"] == []
    page = (tmp_path / "history.html").read_text()
    # drawn by the page's own script (an <svg> per chart); nothing fetched from elsewhere
    assert "run-06" in page and "createElementNS" in page and not EXTERNAL.search(page)
    assert "run-06" in (tmp_path / "history.md").read_text()


def _postgres_database() -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(PG_ADMIN.replace("postgresql:", "postgresql+psycopg:"),
                              isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("DROP DATABASE IF EXISTS perfkit_history_test"))
            connection.execute(sa.text("CREATE DATABASE perfkit_history_test"))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is not reachable: {exc}")
    finally:
        engine.dispose()


@measured
def test_the_same_history_imported_into_postgresql(ten_runs: tuple[Path, list[Path]],
                                                   tmp_path: Path) -> None:
    db, dirs = ten_runs
    _postgres_database()
    imported = perfkit("history", "import", *map(str, dirs), "--history", PG_URL)
    assert imported.returncode == 0, imported.stderr
    again = perfkit("history", "import", str(dirs[0]), "--history", PG_URL)  # idempotent
    assert again.returncode == 0, again.stderr
    perfkit("history", "list", "--history", PG_URL, "--json", str(tmp_path / "pg.json"))
    perfkit("history", "list", "--history", str(db), "--json", str(tmp_path / "lite.json"))
    pg = json.loads((tmp_path / "pg.json").read_text())["runs"]
    lite = json.loads((tmp_path / "lite.json").read_text())["runs"]
    assert [r["run_id"] for r in pg] == [r["run_id"] for r in lite]
    done = perfkit("history", "analyze", "--history", PG_URL, "--json", str(tmp_path / "cp.json"),
                   "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    points = json.loads((tmp_path / "cp.json").read_text())["change_points"]
    assert {p["run_id"] for p in points if p["endpoint"] == RESULTS} == {"run-06"}


@measured
def test_ab_interleaves_fresh_targets_and_writes_its_reports(tmp_path: Path) -> None:
    out = tmp_path / "ab"
    # A through the bundled-service options, B through a command that starts a target on {port}
    b_cmd = (f"{sys.executable} -m perfkit serve --fast --variant n_plus_one "
             "--host 127.0.0.1 --port {port}")
    done = perfkit("ab", "--a=--fast", "--b-cmd", b_cmd, "--repeat", "2",
                   "--scenario", "results", "--users", "5", "--rate", "20", "--duration", "6s",
                   "--warmup", "1s", "--kpi", ".ci/regression-kpi.toml", "--out", str(out),
                   timeout=300)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    record = json.loads((out / "compare.json").read_text())
    assert record["order"] == ["A", "B", "B", "A"]
    assert record["outcome"] in ("regression", "inconclusive")
    p50 = next(m for m in record["metrics"] if m["endpoint"] == RESULTS and m["metric"] == "p50_ms")
    assert p50["ratio"] > 1.5  # N+1 queries: the results endpoint is several times slower
    assert (out / "compare.html").read_text().startswith("<!doctype html>")
    assert "INCONCLUSIVE" in done.stdout or "REGRESSION" in done.stdout


def _fixed_delay_cmd(delay_ms: float) -> str:
    target = Path(__file__).parent / "targets" / "fixed_delay.py"
    return f"{sys.executable} {target} --delay-ms {delay_ms} --port {{port}}"


@measured
@pytest.mark.parametrize("b_delay_ms, outcome", [(26.0, "regression"), (20.0, None)])
def test_simultaneous_trials_judge_a_target_perfkit_did_not_write(tmp_path: Path,
                                                                  b_delay_ms: float,
                                                                  outcome: str | None) -> None:
    """Two plain aiohttp targets (no metrics endpoint, not the research API), A answering in
    20 ms and B in 26 ms (+30 %) or also 20 ms (A/A): B is named slower, or not at all."""
    out = tmp_path / "ab"
    done = perfkit("ab", "--simultaneous", "--a-cmd", _fixed_delay_cmd(20.0),
                   "--b-cmd", _fixed_delay_cmd(b_delay_ms), "--repeat", "3",
                   "--scenario", "health", "--users", "2", "--duration", "4s", "--warmup", "1s",
                   "--out", str(out), timeout=240)
    record = json.loads((out / "compare.json").read_text())
    assert record["order"] == ["AB", "BA", "AB"]
    assert record["pairs"] == 3, record["notes"]
    p50 = next(m for m in record["metrics"] if m["endpoint"] == HEALTH
               and m["metric"] == "p50_ms")
    # the arms' requests were told apart in each trial's own run
    names = json.loads((out / "01-AB" / "summary.json").read_text())["endpoints"]
    assert {f"[A] {HEALTH}", f"[B] {HEALTH}"} <= set(names)
    if outcome == "regression":
        assert done.returncode == 1, done.stdout + done.stderr
        assert record["regressed_endpoints"] == [HEALTH]
        assert 1.15 < p50["ratio"] < 1.45
    else:
        assert done.returncode == 0, done.stdout + done.stderr
        assert record["outcome"] != "regression"
        assert 0.95 < p50["ratio"] < 1.05
    assert "simultaneous" in (out / "compare.md").read_text()


def _p50_by_arm(trial: Path) -> dict[str, float]:
    endpoints = json.loads((trial / "summary.json").read_text())["endpoints"]
    return {arm: endpoints[f"[{arm}] {HEALTH}"]["p50_ms"] for arm in "AB"}


@measured
def test_an_open_load_favours_neither_arm(tmp_path: Path) -> None:
    """A/A under an open load: two instances of one 10 ms target as arms, 30 iterations/s
    from 10 users per arm. Each trial's arms get the same p50, in the A B and the B A trial
    alike. Before, every user fired in the same instant and A's users (spawned first in
    every trial, as Locust orders user classes by name) sent first: B's p50 came out 17 %
    and 5 % above A's (B/A over both trials x1.11), p50s of 21-25 ms for a 10 ms target."""
    out = tmp_path / "ab"
    done = perfkit("ab", "--simultaneous", "--a-cmd", _fixed_delay_cmd(10.0),
                   "--b-cmd", _fixed_delay_cmd(10.0), "--repeat", "2", "--scenario", "health",
                   "--rate", "30", "--users", "10", "--duration", "8s", "--warmup", "2s",
                   "--out", str(out), timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    ratios = []
    for trial in ("01-AB", "02-BA"):
        p50 = _p50_by_arm(out / trial)
        ratios.append(p50["B"] / p50["A"])
        assert 0.93 < ratios[-1] < 1.07, (trial, p50)
    assert 0.96 < math.sqrt(ratios[0] * ratios[1]) < 1.04, ratios
    assert json.loads((out / "compare.json").read_text())["pair_orders"] == ["AB", "BA"]
    assert "A first x" in (out / "compare.html").read_text()


def test_the_arm_first_in_a_trials_order_is_spawned_first(tmp_path: Path) -> None:
    """One user per arm, spawned a second apart: the first is the arm the trial's order puts
    first (A in A B, B in B A), so that what being first does (the first phase of the
    arrival schedule, sending first when both are due) alternates with the order instead of
    falling on A in every trial."""
    out = tmp_path / "ab"
    done = perfkit("ab", "--simultaneous", "--a-cmd", _fixed_delay_cmd(1.0),
                   "--b-cmd", _fixed_delay_cmd(1.0), "--repeat", "2", "--scenario", "health",
                   "--users", "1", "--spawn-rate", "1", "--duration", "4s", "--warmup", "0s",
                   "--out", str(out), timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    for trial, first in (("01-AB", "A"), ("02-BA", "B")):
        started: dict[str, float] = {}
        for chunk in filter(None, rundir.read_latency(out / trial)):
            for name, t in zip(chunk.frame["name"], chunk.frame["t"], strict=True):
                started[name[1]] = min(started.get(name[1], math.inf), t)
        later = "B" if first == "A" else "A"
        assert started[first] < started[later], (trial, started)


def test_job_records_of_a_simultaneous_trial_name_their_arm(tmp_path: Path) -> None:
    """The research scenario's per-job records carry the arm as its requests do: each arm's
    jobs are its own (not merged into one unlabelled job_completion), and kept out of the
    endpoints and the request counts."""
    envelope = Path(__file__).parent / "targets" / "envelope.py"
    command = f"{sys.executable} {envelope} --job-ms 300 --port {{port}}"
    out = tmp_path / "ab"
    done = perfkit("ab", "--simultaneous", "--a-cmd", command, "--b-cmd", command,
                   "--repeat", "2", "--scenario", "research", "--users", "2", "--duration", "6s",
                   "--warmup", "0s", "--out", str(out), timeout=240)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    summary = json.loads((out / "01-AB" / "summary.json").read_text())
    assert {"[A] job_completion", "[B] job_completion"} <= set(summary["jobs"]), summary["jobs"]
    assert "job_completion" not in summary["jobs"]
    for arm in "AB":
        job = summary["jobs"][f"[{arm}] job_completion"]
        assert job["count"] > 0 and 0.25 < job["p50_s"] < 0.6, (arm, job)
    assert not [name for name in summary["endpoints"] if "job_completion" in name]


def test_a_simultaneous_trial_refuses_workers_and_stops_both_targets(tmp_path: Path) -> None:
    done = perfkit("ab", "--simultaneous", "--a-cmd", _fixed_delay_cmd(1.0),
                   "--b-cmd", _fixed_delay_cmd(1.0), "--repeat", "2", "--scenario", "health",
                   "--workers", "2", "--duration", "2s", "--out", str(tmp_path / "ab"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "perfkit: a simultaneous A/B trial runs in one process: no --workers"]
    leftover = subprocess.run(["pgrep", "-f", "fixed_delay.py --delay-ms 1.0"],
                              capture_output=True, text=True)
    assert leftover.stdout == ""


def test_trials_in_which_nothing_was_measured_are_not_judged(tmp_path: Path) -> None:
    """Both arms crash a second into every run (someone else's service, failing): no pair was
    measured, so there is nothing to judge: exit 3 and a report that says so, never a pass."""
    faulty = Path(__file__).parent / "targets" / "faulty.py"
    crashing = f"{sys.executable} {faulty} --die-after 1 --port {{port}}"
    out = tmp_path / "ab"
    done = perfkit("ab", "--a-cmd", crashing, "--b-cmd", crashing, "--repeat", "2",
                   "--scenario", "health", "--users", "2", "--duration", "4s", "--warmup", "0s",
                   "--out", str(out), timeout=240)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "NOT JUDGED" in done.stdout
    record = json.loads((out / "compare.json").read_text())
    assert record["outcome"] == "not judged" and record["pairs"] == 0
    assert len(record["notes"]) == 2 and all("target_died" in n for n in record["notes"])
    assert "NOT JUDGED" in (out / "compare.html").read_text()
