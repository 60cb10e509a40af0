"""Locust's own example locustfiles (tests/data/locust_examples/, vendored unchanged) run under
`locust --headless` and under `perfkit load` the same way, each against its own instance of
tests/targets/counting.py, which counts what it served: the same requests and failures, hooks
in the same order on the master and the workers, module-level code once per process tree with
--processes, users over time driven by a shape that ends the run, the locustfile's own
arguments from the environment and a --config file, User classes named on the command line,
and Locust's own outputs in Locust's formats.

The runs start in two waves of six or seven in one module-scoped fixture (a few seconds of
load each; all at once, their processes starved each other on a busy 2-core machine); the
tests read what they left behind.
"""

import csv
import json
import os
import re
import subprocess
import sys
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from perfkit import rundir
from tests.targets import TARGETS_DIR, start_target, stop_target

EXAMPLES = Path(__file__).parent / "data" / "locust_examples"
COUNTING = TARGETS_DIR / "counting.py"
# Locust's default stop timeout is 0: a request in flight when the run ends is lost from its
# statistics (not from the target's count). 10 s lets them finish, as perfkit's default does.
LOCUST = [str(Path(sys.executable).with_name("locust")), "-s", "10"]
PERFKIT = [sys.executable, "-m", "perfkit", "load"]

# custom_shape/stages.py with stages of seconds instead of minutes (2 users, then 4, then the
# shape returns None): its StagesShape and User, unchanged, from the vendored file.
SHORT_STAGES = """\
import sys
sys.path.insert(0, {directory!r})
from stages import *  # noqa: F401,F403 - Locust's example, unchanged

StagesShape.stages = [{{"duration": 2, "users": 2, "spawn_rate": 10}},
                      {{"duration": 4, "users": 4, "spawn_rate": 10}}]
"""
# A default duration shorter than the shape (2 s against its 4 s; the command's default is
# 60 s), not given by the user: the shape ends the run all the same.
SHAPE_PAST_DEFAULT = """\
import sys
from pathlib import Path
from perfkit.run import runner
from perfkit.settings import LoadSettings

shape, url, out, kpi = sys.argv[1:]
runner.run_load(LoadSettings(scenario=shape, target=url, duration_s=2.0, duration_given=False,
                             out=Path(out), kpi_file=Path(kpi), history="off"), print)
"""
# The KPI of Locust's own verdict only (failures fail): the default KPIs judge the whole
# machine too (its network, its CPU), which other work on it can fail.
ERRORS_KPI = 'replace_defaults = true\n[[kpi]]\nmetric = "error_rate_percent"\ntarget = "0.1%"\n'
# add_command_line_argument.py's task prints, with no wait: one second of it is plenty.
ARGUMENTS_CONF = ("users = 1\nrun-time = 1s\nheadless = true\nmy-argument = fromconf\n"
                  "env = staging\n")


@dataclass
class Run:
    argv: list[str]
    wave: int
    target_args: tuple[str, ...] = ("--delay-ms", "20")
    env: dict[str, str] = field(default_factory=dict)
    url: str = ""
    dir: Path = Path()
    returncode: int | None = None
    counts: dict[str, Any] = field(default_factory=dict)

    @property
    def stdout(self) -> str:
        return (self.dir / "stdout.txt").read_text("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return (self.dir / "stderr.txt").read_text("utf-8", "replace")

    def routes(self, route: str) -> int:
        return int(self.counts["routes"].get(route, 0))


def plan(base: Path) -> dict[str, Run]:
    """Each run's command line: {URL} and {DIR} are its target and its own directory."""
    validations = str(EXAMPLES / "response_validations.py")
    arguments = str(EXAMPLES / "add_command_line_argument.py")
    manual, basic = str(EXAMPLES / "manual_stats_reporting.py"), str(EXAMPLES / "basic.py")
    json_out = ["--json", "--skip-log-setup"]
    return {
        "locust shape": Run([*LOCUST, "-f", "{SHAPE}", "--headless", "-H", "{URL}", "--csv",
                             "{DIR}/locust", "--csv-full-history", "--only-summary"], 1),
        "perfkit shape": Run([*PERFKIT, "-f", "{SHAPE}", "-H", "{URL}", "--out", "{DIR}/run"],
                             1),
        "locust testdata": Run([*LOCUST, "-f", "{TESTDATA}", "--headless", "-u", "2", "-r", "10",
                                "-t", "5", "--processes", "2", "-H", "{URL}"], 1),
        "perfkit testdata": Run([*PERFKIT, "-f", "{TESTDATA}", "-u", "2", "-r", "10", "-t",
                                 "5s", "--processes", "2", "-H", "{URL}", "--warmup", "0",
                                 "--out", "{DIR}/run"], 1),
        "locust validations": Run([*LOCUST, "-f", validations, "--headless", "-u", "2", "-r",
                                   "10", "-t", "3", "-H", "{URL}", *json_out, "GoodUser"], 1,
                                  ("--delay-ms", "20", "--welcome", "bar")),
        "perfkit validations": Run([*PERFKIT, "-f", validations, "-u", "2", "-r", "10", "-t",
                                    "3s", "-H", "{URL}", "--out", "{DIR}/run", "GoodUser"], 1,
                                   ("--delay-ms", "20", "--welcome", "bar")),
        "locust arguments": Run([*LOCUST, "-f", arguments, "--config", "{DIR}/my.conf", "-H",
                                 "{URL}"], 2, env={"LOCUST_MY_ARGUMENT": "fromenv"}),
        "perfkit arguments": Run([*PERFKIT, "--config", "{DIR}/my.conf", "--out", "{DIR}/run"],
                                 2, env={"LOCUST_MY_ARGUMENT": "fromenv", "LOCUST_HOST": "{URL}",
                                         "LOCUST_LOCUSTFILE": arguments}),
        "perfkit shape default": Run([sys.executable, "-c", SHAPE_PAST_DEFAULT, "{SHAPE}",
                                      "{URL}", "{DIR}/run", "{KPI}"], 2),
        "locust manual": Run([*LOCUST, "-f", manual, "--headless", "-u", "10", "-r", "10", "-t",
                              "3", "-H", "{URL}", *json_out], 2),
        "perfkit manual": Run([*PERFKIT, "-f", manual, "-u", "10", "-r", "10", "-t", "3s",
                               "-H", "{URL}", "--out", "{DIR}/run"], 2),
        "locust basic": Run([*LOCUST, "-f", basic, "--headless", "-u", "20", "-r", "10", "-t",
                             "8", "-H", "{URL}", "--csv", "{DIR}/locust", *json_out], 2),
        "perfkit basic": Run([*PERFKIT, "-f", basic, "-u", "20", "-r", "10", "-t", "8s", "-H",
                              "{URL}", "--out", "{DIR}/run", "--csv", "{DIR}/out/pk",
                              "--csv-full-history", "--html", "{DIR}/out/pk-{u}.html", "--json",
                              "--json-file", "{DIR}/out/pk", "--logfile", "{DIR}/out/locust.log",
                              "-L", "DEBUG", "--only-summary", "--reset-stats",
                              "--exit-code-on-error", "5"], 2),
    }


def start_targets(runs: dict[str, Run]) -> list[subprocess.Popen[str]]:
    with ThreadPoolExecutor(len(runs)) as pool:
        started = list(pool.map(lambda run: start_target(COUNTING, *run.target_args),
                                runs.values()))
    for run, (_, url) in zip(runs.values(), started, strict=True):
        run.url = url
    return [proc for proc, _ in started]


def prepare(run: Run, name: str, base: Path) -> tuple[list[str], dict[str, str]]:
    run.dir = base / name.replace(" ", "-")
    run.dir.mkdir()
    shape = run.dir / "stages_short.py"
    shape.write_text(SHORT_STAGES.format(directory=str(EXAMPLES / "custom_shape")))
    # testdata_management.py fetches from postman-echo.com at import, at test start, in each
    # user and task: the same code, with the target in its place (load stays on 127.0.0.1).
    testdata = run.dir / "testdata_management.py"
    testdata.write_text((EXAMPLES / "testdata_management.py").read_text()
                        .replace("https://postman-echo.com", run.url))
    (run.dir / "my.conf").write_text(ARGUMENTS_CONF)
    values = {"{URL}": run.url, "{DIR}": str(run.dir), "{SHAPE}": str(shape),
              "{TESTDATA}": str(testdata), "{KPI}": str(base / "errors.toml")}

    def fill(text: str) -> str:
        for key, value in values.items():
            text = text.replace(key, value)
        return text

    return [fill(arg) for arg in run.argv], {k: fill(v) for k, v in run.env.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    base = tmp_path_factory.mktemp("examples")
    (base / "errors.toml").write_text(ERRORS_KPI)
    runs = plan(base)
    for wave in (1, 2):
        run_wave({name: run for name, run in runs.items() if run.wave == wave}, base)
    return runs


def run_wave(runs: dict[str, Run], base: Path) -> None:
    targets = start_targets(runs)
    processes = []
    try:
        for name, run in runs.items():
            argv, env = prepare(run, name, base)
            with (run.dir / "stdout.txt").open("w") as out, \
                    (run.dir / "stderr.txt").open("w") as err:
                processes.append(subprocess.Popen(
                    argv, stdout=out, stderr=err, cwd=run.dir,
                    env={**os.environ, "PYTHONUNBUFFERED": "1",
                         "PERFKIT_KPI": str(base / "errors.toml"), **env}))
        for run, process in zip(runs.values(), processes, strict=True):
            run.returncode = process.wait(timeout=240)
            with urllib.request.urlopen(run.url + "/__count", timeout=10) as response:
                run.counts = json.load(response)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for target in targets:
            stop_target(target)


def perfkit_run(run: Run) -> Any:
    return rundir.load_run(run.dir / "run")


def recorded(run: Run) -> dict[str, tuple[int, int]]:
    """perfkit's own recording of a run, whole run: {name: (count, failures)}."""
    latency = perfkit_run(run).latency
    totals = latency.groupby("name")[["count", "failures"]].sum()
    return {str(name): (int(row["count"]), int(row["failures"]))
            for name, row in totals.iterrows()}


def locust_json(text: str) -> dict[str, tuple[int, int]]:
    """Locust's --json output: {name as perfkit names requests: (requests, failures)}."""
    entries = json.loads(text[text.index("["):])
    return {f"{e['method']} {e['name']}": (e["num_requests"], e["num_failures"])
            for e in entries}


def distinct_in_order(values: list[int]) -> list[int]:
    return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]


def test_a_shape_without_run_time_ends_the_run_as_under_locust(runs: dict[str, Run]) -> None:
    locust, perfkit = runs["locust shape"], runs["perfkit shape"]
    assert locust.returncode == 0, locust.stderr
    assert perfkit.returncode == 0, perfkit.stderr + perfkit.stdout
    with (locust.dir / "locust_stats_history.csv").open() as file:
        locust_users = [int(row["User Count"]) for row in csv.DictReader(file)
                        if row["Name"] == "Aggregated"]
    result = perfkit_run(perfkit)
    assert distinct_in_order(locust_users)[-2:] == [2, 4]
    assert distinct_in_order([int(u) for u in result.timeline["users"]])[-2:] == [2, 4]
    # No -t: the shape ended both runs, not perfkit's default duration of 60 s.
    assert result.meta.status == "completed"
    assert "LoadTestShape ended the run" in result.meta.message
    assert 4 <= result.meta.settings.duration_s < 20
    assert "LoadTestShape ended the run" in (perfkit.dir / "run" / "report.html").read_text()
    # perfkit recorded every request the target answered.
    assert recorded(perfkit)["GET /"][0] == perfkit.routes("GET /") > 0
    # The duration perfkit would take by default does not cut a shape either.
    past_default = runs["perfkit shape default"]
    assert past_default.returncode == 0, past_default.stderr + past_default.stdout
    meta = perfkit_run(past_default).meta
    assert "LoadTestShape ended the run" in meta.message
    assert meta.ended_at - meta.started_at > 3 and meta.settings.duration_s > 3


HOOK = re.compile(r"^(?:\[worker-(\d)\] )?(\d+)\. ")


def hooks(text: str) -> list[tuple[str | None, str]]:
    """testdata_management.py's numbered hook lines: (worker or None, number)."""
    found = []
    for line in text.splitlines():
        match = HOOK.match(line)
        if match:
            found.append((match.group(1), match.group(2)))
    return found


def test_processes_fork_after_the_import_and_fire_every_hook(runs: dict[str, Run]) -> None:
    locust, perfkit = runs["locust testdata"], runs["perfkit testdata"]
    assert locust.returncode == 0, locust.stderr
    assert perfkit.returncode == 0, perfkit.stderr + perfkit.stdout
    for run in (locust, perfkit):
        bodies = run.counts["bodies"]
        # Module-level code ran once (the workers were forked after the import), test_start's
        # fetch once per worker, on_start's once per user.
        assert bodies.get("global_test_data_") == 1, (run.argv[0], bodies)
        assert bodies.get("test-run-specific_") == 2, (run.argv[0], bodies)
        assert bodies.get("user-specific_") == 2, (run.argv[0], bodies)
    # The same hooks, as often: every process fires init, test_start, test_stopping,
    # test_stop, quitting and quit (10.); each user on_start/on_stop; "1." once.
    locust_hooks = Counter(number for _, number in hooks(locust.stdout))
    perfkit_hooks = Counter(number for _, number in hooks(perfkit.stdout))
    assert perfkit_hooks == locust_hooks
    assert perfkit_hooks["1"] == 1 and perfkit_hooks["2"] == perfkit_hooks["10"] == 3
    # The master's in the same order; the workers' reach the terminal with their name.
    master = [number for worker, number in hooks(perfkit.stdout) if worker is None]
    assert master == ["1", "2", "3", "6", "8", "9", "10"]
    for worker in ("1", "2"):
        assert [n for w, n in hooks(perfkit.stdout) if w == worker] == \
            ["2", "3", "4", "5", "6", "7", "8", "9", "10"]
    assert "[worker-1] 10. Locust has shut down with code 0" in perfkit.stdout
    assert "10. Locust has shut down with code 0" in perfkit.stdout.splitlines()
    assert (perfkit.dir / "run" / "worker-1.log").read_text().count("3. Starting") == 1
    # Nothing lost between the workers and the master (the example names each request by
    # its URL, query included).
    gets = sum(count for name, (count, _) in recorded(perfkit).items()
               if name.startswith("GET /get"))
    assert gets == perfkit.routes("GET /get") > 0


def test_user_classes_named_after_the_options_run_alone(runs: dict[str, Run]) -> None:
    """response_validations.py has BadUser and GoodUser; GoodUser alone validates the answers
    (the target's welcome is for "bar", not "foo": a failure) and, by the example's request
    hook, gives up the task at the first failure: nothing reaches /checkout/confirm."""
    locust, perfkit = runs["locust validations"], runs["perfkit validations"]
    # Failures: Locust exits 1, perfkit too (its error-rate KPI).
    assert locust.returncode == 1, locust.stderr
    assert perfkit.returncode == 1, perfkit.stderr + perfkit.stdout
    for run in (locust, perfkit):
        assert run.routes("POST /authenticate") > 0
        assert run.routes("POST /checkout/confirm") == 0, run.counts
    requests, failures = locust_json(locust.stdout)["POST /authenticate"]
    assert failures == requests > 0
    assert recorded(perfkit) == {"POST /authenticate": (perfkit.routes("POST /authenticate"),
                                                        perfkit.routes("POST /authenticate"))}
    failures_json = json.loads((perfkit.dir / "run" / "failures.json").read_text())
    assert failures_json[0]["error"] == "Wrong welcome message: Welcome bar!"


def test_environment_and_config_file_as_under_locust(runs: dict[str, Run]) -> None:
    """LOCUST_HOST and LOCUST_LOCUSTFILE choose the target and the file, --config FILE the
    users and run time; the locustfile's own argument comes from LOCUST_MY_ARGUMENT, which
    outranks the config file, as in Locust."""
    locust, perfkit = runs["locust arguments"], runs["perfkit arguments"]
    assert locust.returncode == 0, locust.stderr
    # The example's task only prints: nothing was measured, verdict error (exit 3).
    assert perfkit.returncode == 3, perfkit.stderr
    for run in (locust, perfkit):
        assert "Custom argument supplied: fromenv" in run.stdout.splitlines()
        assert "my_argument=fromenv" in run.stdout
    meta = perfkit_run(perfkit).meta
    assert meta.target == perfkit.url
    assert meta.scenario == str(EXAMPLES / "add_command_line_argument.py")
    assert (meta.settings.users, meta.settings.duration_s) == (1, 1.0)


def test_manual_request_events(runs: dict[str, Run]) -> None:
    locust, perfkit = runs["locust manual"], runs["perfkit manual"]
    assert locust.returncode == 1, locust.stderr
    assert perfkit.returncode == 1, perfkit.stderr + perfkit.stdout
    for stats in (locust_json(locust.stdout), recorded(perfkit)):
        # 10 users pick one of three tasks each second: all three ran (missing one: ~1e-4).
        assert set(stats) == {"manual successful_task", "manual failing_task",
                              "manual decorator_test"}, stats
        count, failures = stats["manual failing_task"]
        assert failures == count > 0
        assert stats["manual successful_task"][1] == 0


def test_locusts_outputs_in_locusts_formats(runs: dict[str, Run]) -> None:
    locust, perfkit = runs["locust basic"], runs["perfkit basic"]
    assert locust.returncode == 1, locust.stderr  # /does_not_exist: failures
    # --exit-code-on-error 5: a run with failed requests exits 5, as Locust would. (After the
    # reset, 20 users waiting 2-5 s make ~30 requests in 6 s, a third of them to
    # /does_not_exist; with 10 users for 4 s, ~6 requests missed it about once in ten runs.)
    assert perfkit.returncode == 5, perfkit.stderr
    # --json: stdout holds Locust's JSON alone (perfkit's lines went to stderr), the same
    # entries as Locust's own.
    stdout_stats = json.loads(perfkit.stdout)
    assert json.loads((perfkit.dir / "out" / "pk.json").read_text()) == stdout_stats
    entry_keys = {key for entry in json.loads(locust.stdout[locust.stdout.index("["):])
                  for key in entry}
    assert {key for entry in stdout_stats for key in entry} == entry_keys
    assert locust_json(perfkit.stdout)["GET /does_not_exist"][1] > 0
    assert "Report:" in perfkit.stderr and "remaining" not in perfkit.stderr  # --only-summary
    # --csv, --csv-full-history: Locust's files, Locust's columns; every name in the history.
    for suffix in ("_stats.csv", "_stats_history.csv", "_failures.csv", "_exceptions.csv"):
        theirs = (locust.dir / f"locust{suffix}").read_text().splitlines()[0]
        assert (perfkit.dir / "out" / f"pk{suffix}").read_text().splitlines()[0] == theirs
    with (perfkit.dir / "out" / "pk_stats_history.csv").open() as file:
        names = {row["Name"] for row in csv.DictReader(file)}
    assert {"/", "/does_not_exist", "Aggregated"} <= names
    # --html with Locust's {u}; --logfile and -L in Locust's format.
    assert "locust" in (perfkit.dir / "out" / "pk-20.html").read_text().lower()
    assert re.search(r"/DEBUG/locust\.runners: ", (perfkit.dir / "out" / "locust.log").read_text())
    # --reset-stats: Locust's numbers and perfkit's judged window start once the 20 users
    # spawned (2 s at -r 10), later than the default warm-up (0.8 s of an 8 s run).
    assert perfkit_run(perfkit).meta.settings.warmup_s >= 1.0
    # perfkit's own recording holds every request the target answered.
    assert {name: count for name, (count, _) in recorded(perfkit).items()} == {
        route: perfkit.routes(route) for route in ("GET /", "GET /stats/requests",
                                                   "GET /does_not_exist")
        if perfkit.routes(route)}
