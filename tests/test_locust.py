"""A user's locustfile behaves under `perfkit load` as under `locust --headless`: the same file
(tests/targets/locust_compat.py: a LoadTestShape, an init hook with its own argument, every
lifecycle event, tagged tasks) run by both, compared on users over time, request names and
the events fired. Also: a worker of another perfkit version is refused with a reason.
Locust's own example locustfiles: tests/test_locust_examples.py."""

import csv
import json
import subprocess
import sys
from pathlib import Path

from perfkit import rundir
from tests.targets import FAULTY, TARGETS_DIR, running_target

LOCUSTFILE = TARGETS_DIR / "locust_compat.py"


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120, cwd=cwd)


def distinct_in_order(values: list[int]) -> list[int]:
    """[0, 2, 2, 4, 4] -> [0, 2, 4]: the steps a user count went through."""
    return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]


def test_a_locustfile_runs_as_under_locust(tmp_path: Path) -> None:
    # -t 5s cuts the shape (3 s of 2 users, then 3 s of 4) in both; perfkit says so.
    common = ["-t", "5s", "-T", "browse", "buy", "--greeting", "hi"]
    with running_target(FAULTY, "--delay-ms", "2") as (url, _):
        locust = run(str(Path(sys.executable).with_name("locust")), "-f", str(LOCUSTFILE),
                     "--headless", "-H", url, *common, "--events-file",
                     str(tmp_path / "locust-events.txt"), "--csv", str(tmp_path / "locust"),
                     "--csv-full-history", "--only-summary", cwd=tmp_path)
        perfkit = run(sys.executable, "-m", "perfkit", "load", "-H", url, "-f", str(LOCUSTFILE),
                      *common, "--events-file", str(tmp_path / "perfkit-events.txt"),
                      "--out", str(tmp_path / "run"))
    assert locust.returncode == 0, locust.stderr
    assert perfkit.returncode in (0, 1), perfkit.stderr + perfkit.stdout

    # The hooks fired in the same order, and the locustfile's own argument reached them.
    events = (tmp_path / "locust-events.txt").read_text().splitlines()
    assert events == ["init greeting=hi", "test_start", "test_stop", "quitting", "quit 0"]
    # perfkit's quit carries its own exit code (the verdict's).
    assert (tmp_path / "perfkit-events.txt").read_text().splitlines() == \
        [*events[:-1], f"quit {perfkit.returncode}"]

    # The shape drove the users through the same steps until -t ended both runs.
    with (tmp_path / "locust_stats_history.csv").open() as file:
        locust_users = [int(row["User Count"]) for row in csv.DictReader(file)]
    run_dir = tmp_path / "run"
    result = rundir.load_run(run_dir)
    perfkit_users = [int(u) for u in result.timeline["users"]]
    assert distinct_in_order(locust_users)[-2:] == [2, 4]
    assert distinct_in_order(perfkit_users)[-2:] == [2, 4]
    message = "the run time limit (-t 5 s) ended the run before its LoadTestShape did"
    assert result.meta.status == "completed" and result.meta.message == message
    assert result.meta.ended_at - result.meta.started_at < 6
    assert message in (run_dir / "report.html").read_text()

    # Only the tagged tasks ran, under the same request names.
    with (tmp_path / "locust_stats.csv").open() as file:
        locust_names = {f"{row['Type']} {row['Name']}" for row in csv.DictReader(file)
                        if row["Type"]}
    assert locust_names == {"GET /items", "POST /cart"}
    assert set(result.latency["name"]) == locust_names


def test_a_locustfile_argument_nobody_knows_is_a_usage_error(tmp_path: Path) -> None:
    done = run(sys.executable, "-m", "perfkit", "load", "-f", str(LOCUSTFILE), "--greting", "x",
               "--out", str(tmp_path / "run"))
    assert done.returncode == 2
    assert "--greting" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_tags_that_leave_no_task_are_a_usage_error(tmp_path: Path) -> None:
    done = run(sys.executable, "-m", "perfkit", "load", "-f", str(LOCUSTFILE), "-T", "nosuch",
               "--out", str(tmp_path / "run"))
    assert done.returncode == 2
    assert "no task of locust_compat.py" in done.stderr
    # Found once run.json was written: it says the run failed, and why.
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["status"] == "failed" and "no task of locust_compat.py" in meta["message"]


def test_a_worker_of_another_version_is_refused(tmp_path: Path) -> None:
    """A worker that says another perfkit version, spoken to over Locust's own protocol from
    this test (a real master process), is refused with the reason."""
    # Locust patches the standard library with gevent on import: speak from a process of
    # its own.
    probe = (
        "import json\n"
        "from locust.rpc import Message, rpc\n"
        "client = rpc.Client('127.0.0.1', 5599, 'test_perfkit_setup')\n"
        "client.send(Message('perfkit_setup', {'perfkit': '0.0.0-other'}, "
        "'test_perfkit_setup'))\n"
        "reply = client.recv()\n"
        "print(json.dumps({'type': reply.type, 'data': reply.data}))\n"
        "client.close(linger=0)\n")
    with running_target(FAULTY, "--delay-ms", "1") as (url, _):
        master = subprocess.Popen(
            [sys.executable, "-m", "perfkit", "load", "-H", url, "--scenario", "health",
             "--master-bind-host", "127.0.0.1", "--master-bind-port", "5599",
             "--expect-workers", "1", "--expect-workers-timeout", "8s",
             "--out", str(tmp_path / "run")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        asked = run(sys.executable, "-c", probe)
        stdout, stderr = master.communicate(timeout=60)
    assert asked.returncode == 0, asked.stderr
    reply = json.loads(asked.stdout)
    assert reply["type"] == "perfkit_setup" and reply["data"]["ok"] is False
    assert "0.0.0-other" in reply["data"]["reason"]
    assert "refused a worker of perfkit 0.0.0-other" in stdout
    # No worker joined: exit 2, naming how many did.
    assert master.returncode == 2
    assert "only 0 of 1 workers joined" in stderr
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["status"] == "failed"
    assert meta["distributed"]["refused"][0]["perfkit"] == "0.0.0-other"


def test_a_shape_drives_local_workers_and_their_hooks_fire(tmp_path: Path) -> None:
    """With --processes 2 the master runs the shape; every process (master and two workers)
    fires the hooks, and the workers received the locustfile's own argument."""
    events_file = tmp_path / "events.txt"
    with running_target(FAULTY, "--delay-ms", "2") as (url, _):
        done = run(sys.executable, "-m", "perfkit", "load", "-H", url, "-f", str(LOCUSTFILE),
                   "--processes", "2", "-t", "30s", "-T", "browse", "--greeting", "w",
                   "--events-file", str(events_file), "--out", str(tmp_path / "run"))
    assert done.returncode in (0, 1), done.stderr + done.stdout
    result = rundir.load_run(tmp_path / "run")
    assert result.meta.status == "completed", result.meta.message
    assert "LoadTestShape ended the run" in result.meta.message
    assert distinct_in_order([int(u) for u in result.timeline["users"]])[-2:] == [2, 4]
    lines = [line.split()[0] for line in events_file.read_text().splitlines()]
    assert sorted(set(lines)) == ["init", "quit", "quitting", "test_start", "test_stop"]
    assert all(lines.count(line) == 3 for line in set(lines))
    assert "init greeting=w" in events_file.read_text()
    assert set(result.latency["name"]) == {"GET /items"}
