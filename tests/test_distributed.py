"""Load from many machines, across real network stacks: a master and two workers, each in a
Linux network namespace of its own, joined by veth pairs to a bridge in a fifth namespace, and
the target in a fourth. Every address (10.231.0.0/24) exists only inside namespaces these
tests create, and they are removed afterwards. Skipped where `ip netns` is not permitted."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from perfkit import rundir
from tests.targets import FAULTY, start_process, stop_target

REPO = Path(__file__).resolve().parent.parent
SUBNET = "10.231.0"
ROLES = {"master": 1, "w1": 2, "w2": 3, "target": 4}
MASTER_PORT = 5557


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def netns_permitted() -> str | None:
    """None when this process may create network namespaces, else why not."""
    if shutil.which("ip") is None:
        return "no ip command (iproute2)"
    if os.geteuid() != 0:
        return "ip netns needs root"
    probe = f"pkprobe{os.getpid()}"
    made = ip("netns", "add", probe)
    if made.returncode != 0:
        return f"ip netns add is not permitted here: {made.stderr.strip()}"
    ip("netns", "del", probe)
    return None


@dataclass
class Lab:
    """Namespaces by role, each with its address on the shared bridge."""

    names: dict[str, str]
    processes: list[subprocess.Popen] = field(default_factory=list)

    def address(self, role: str) -> str:
        return f"{SUBNET}.{ROLES[role]}"

    def command(self, role: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.names[role], *argv]

    def perfkit(self, role: str, *args: str, log: Path) -> subprocess.Popen:
        with log.open("wb") as out:
            process = subprocess.Popen(
                self.command(role, sys.executable, "-m", "perfkit", *args), cwd=REPO,
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.processes.append(process)
        return process

    def served(self, url: str, path: str) -> int:
        code = (f"import json, urllib.request; print(json.load(urllib.request.urlopen("
                f"'{url}/__count', timeout=5))['paths'].get('{path}', 0))")
        done = subprocess.run(self.command("target", sys.executable, "-c", code),
                              capture_output=True, text=True, timeout=30, check=True)
        return int(done.stdout)


def _build(names: dict[str, str], hub: str) -> None:
    steps = [["netns", "add", hub], ["-n", hub, "link", "add", "br0", "type", "bridge"],
             ["-n", hub, "link", "set", "br0", "up"], ["-n", hub, "link", "set", "lo", "up"]]
    for role, ns in names.items():
        inside, outside = f"eth-{role}", f"br-{role}"
        steps += [["netns", "add", ns],
                  ["link", "add", inside, "netns", ns, "type", "veth", "peer", "name", outside,
                   "netns", hub],
                  ["-n", ns, "addr", "add", f"{SUBNET}.{ROLES[role]}/24", "dev", inside],
                  ["-n", ns, "link", "set", inside, "up"], ["-n", ns, "link", "set", "lo", "up"],
                  ["-n", hub, "link", "set", outside, "master", "br0"],
                  ["-n", hub, "link", "set", outside, "up"]]
    for step in steps:
        done = ip(*step)
        if done.returncode != 0:
            raise RuntimeError(f"ip {' '.join(step)}: {done.stderr.strip()}")


@pytest.fixture
def lab() -> Iterator[Lab]:
    why = netns_permitted()
    if why:
        pytest.skip(why)
    tag = f"pk{os.getpid()}"
    names = {role: f"{tag}-{role}" for role in ROLES}
    hub = f"{tag}-hub"
    made = Lab(names)
    try:
        _build(names, hub)
        yield made
    finally:
        for process in made.processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        for ns in [*names.values(), hub]:
            for pid in ip("netns", "pids", ns).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            ip("netns", "del", ns)


def start_namespaced_target(lab: Lab) -> tuple[subprocess.Popen[str], str]:
    return start_process(lab.command("target", sys.executable, str(FAULTY), "--host",
                                     lab.address("target"), "--delay-ms", "5"))


def start_master_and_workers(lab: Lab, url: str, out: Path, duration: str,
                             ) -> tuple[subprocess.Popen, list[subprocess.Popen]]:
    master = lab.perfkit(
        "master", "load", "--target", url, "--scenario", "health", "-u", "4", "-r", "10",
        "-t", duration, "--warmup", "0s", "--stop-timeout", "5s",
        "--master-bind-host", lab.address("master"), "--master-bind-port", str(MASTER_PORT),
        "--expect-workers", "2", "--expect-workers-timeout", "60s", "--out", str(out),
        log=out.parent / "master.log")
    # The workers are told nothing but the master's address.
    workers = [lab.perfkit(role, "worker", "--master", f"{lab.address('master')}:{MASTER_PORT}",
                           log=out.parent / f"{role}.log")
               for role in ("w1", "w2")]
    return master, workers


def test_workers_in_other_namespaces_merge_to_what_the_target_served(lab: Lab,
                                                                     tmp_path: Path) -> None:
    target, url = start_namespaced_target(lab)
    try:
        master, workers = start_master_and_workers(lab, url, tmp_path / "run", "6s")
        assert master.wait(120) in (0, 1), (tmp_path / "master.log").read_text()
        for worker in workers:
            assert worker.wait(30) == 0, (tmp_path / "w1.log").read_text()
        served = lab.served(url, "/api/v1/health")
    finally:
        stop_target(target)
    run = rundir.load_run(tmp_path / "run")
    assert run.meta.status == "completed", run.meta.message
    counted = int(run.latency.loc[run.latency["name"] == "GET /api/v1/health", "count"].sum())
    # Every request the target served crossed a real network from one of two workers and
    # reached the master's histograms once: with a stop timeout nothing is in flight at the
    # end, so the counts are equal, not merely close. The master's own reachability check
    # (one GET of the health path before the run) is the only request not generated load.
    assert counted == served - 1 > 0
    assert counted == run.meta.locust_counts["GET /api/v1/health"]
    joined = run.meta.distributed["workers"]
    assert sorted(a for w in joined for a in w["addresses"]) == [lab.address("w1"),
                                                                 lab.address("w2")]
    assert run.meta.distributed["lost"] == 0


def test_a_worker_killed_mid_run_is_named_and_the_run_goes_on(lab: Lab, tmp_path: Path) -> None:
    target, url = start_namespaced_target(lab)
    try:
        master, workers = start_master_and_workers(lab, url, tmp_path / "run", "14s")
        timeline = tmp_path / "run" / rundir.TIMELINE
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(_lines(timeline)) < 4:
            time.sleep(0.2)
        assert len(_lines(timeline)) >= 4, (tmp_path / "master.log").read_text()
        killed_at = time.time()
        workers[0].kill()  # SIGKILL: no goodbye, only missing heartbeats
        code = master.wait(120)
        workers[1].wait(30)
    finally:
        stop_target(target)
    log = (tmp_path / "master.log").read_text()
    assert code == 1, log  # degraded: not a clean pass
    run = rundir.load_run(tmp_path / "run")
    assert run.meta.status == "degraded", run.meta.message
    lost = [w for w in run.meta.distributed["workers"] if w["lost_at"] is not None]
    assert [w["addresses"] for w in lost] == [[lab.address("w1")]]
    assert lost[0]["reason"] == "stopped heartbeating"
    # Reported within 10 s of the kill, on the terminal, in run.json and in the report.
    assert lost[0]["lost_at"] - killed_at <= 10.0
    assert "lost worker" in log and lab.address("w1") in log
    assert lab.address("w1") in run.meta.message
    report = (tmp_path / "run" / "report.html").read_text()
    assert 'id="workers"' in report and lab.address("w1") in report
    # The other worker went on: requests were recorded after the loss.
    after = run.latency[run.latency["t"] > lost[0]["lost_at"] + 1]
    assert int(after["count"].sum()) > 0
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "degraded"


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []
