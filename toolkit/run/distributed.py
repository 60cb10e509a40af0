"""Load from many machines, on Locust's own master/worker protocol (docs/distributed.md).

Local workers (--workers/--processes) are forked from the master's process once the
locustfile is imported, as Locust's --processes forks (`fork_workers`), and hold the scenario
and the settings from the start. perfkit adds three things to Locust's protocol, all with
Locust's custom messages:
- setup: a worker on another machine (`perfkit worker`) knows only the master's address.
  Before it joins it asks the master (`perfkit_setup`, from a throw-away connection) for the
  scenario (a bundled name, or the text of the user's locustfile) and the run's settings,
  sending its perfkit version; the master refuses a worker of another version, since its
  recording and merging could differ.
- identity: once joined, a worker tells the master its host name, addresses and pid
  (`perfkit_worker_info`), so the report can say which machine a worker was.
- losses: Locust marks a worker "missing" after 3 missed heartbeats (one a second) and drops
  one that says quit, but a run goes on without a word. `WorkerWatch` notices either within a
  second of Locust, says so on the terminal and keeps the record for run.json and the report;
  a run that lost a worker ends `degraded`, one that lost them all `failed` (verdict error).
"""

import argparse
import importlib.resources
import logging
import os
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import psutil
from locust.env import Environment
from locust.rpc import Message, rpc
from locust.runners import STATE_MISSING, MasterRunner

from ..errors import ClusterError, ConfigError, RunError
from ..report.distributed import describe_worker
from ..settings import DEFAULT_MASTER_PORT, LoadSettings
from . import locustfile
from .processes import Emit, ForkedProcess, fork_children, stop_child
from .recorder import Recorder
from .scenario_errors import ScenarioErrors

log = logging.getLogger(__name__)

SETUP = "perfkit_setup"
WORKER_INFO = "perfkit_worker_info"
SETUP_REPLY_TIMEOUT_S = 2.0
DEFAULT_CONNECT_TIMEOUT_S = 60.0
LOOPBACK_BINDS = ("127.0.0.1", "*", "0.0.0.0", "localhost")

Say = Callable[[str], None]


def perfkit_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("perfkit")
    except PackageNotFoundError:
        return "unknown"


def describe_setup(settings: LoadSettings, scenario_path: Path) -> dict[str, Any]:
    """What a worker needs to run the master's load: the scenario and the settings that shape
    a worker's users (the master sends users, spawn rate and host with each spawn)."""
    bundled = Path(str(importlib.resources.files("perfkit.scenarios")))
    if scenario_path.parent == bundled:
        scenario: dict[str, Any] = {"bundled": scenario_path.stem}
    else:
        scenario = {"filename": scenario_path.name,
                    "source": scenario_path.read_text("utf-8")}
    # worker_count: the open load's users are spread over this many workers; each takes the
    # run's arrival phases of its own users (openloop.Arrivals). Locust sends the stop timeout
    # itself, with each spawn.
    return {"ok": True, "perfkit": perfkit_version(), "scenario": scenario, "settings": {
        "users": settings.users, "spawn_rate": settings.spawn_rate,
        "duration_s": settings.duration_s, "rate": settings.rate,
        "arrivals": settings.arrivals,
        "worker_count": max(settings.expect_workers, settings.workers),
        "request_timeout_s": settings.request_timeout_s, "tags": list(settings.tags),
        "exclude_tags": list(settings.exclude_tags),
        "user_classes": list(settings.user_classes),
        "locustfile_args": list(settings.locustfile_args),
        "locustfile_config": [list(item) for item in settings.locustfile_config],
        "config_users": list(settings.config_users), "equal_weights": settings.equal_weights,
        "reset_stats": settings.reset_stats}}


@dataclass
class WorkerWatch:
    """The workers of a master: who joined, who was lost, when and why."""

    runner: MasterRunner
    say: Say
    setup: dict[str, Any]
    expected: int = 0
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    refused: list[dict[str, Any]] = field(default_factory=list)
    started_at: float | None = None

    def __post_init__(self) -> None:
        self.runner.register_message(SETUP, self.on_setup)
        self.runner.register_message(WORKER_INFO, self.on_info)

    def on_setup(self, environment: Environment, msg: Message) -> None:
        # Locust gave the setup connection a worker index while logging the message; take
        # it back, so that real workers keep the indexes 0..N-1 a locustfile may rely on.
        if self.runner.worker_indexes.get(msg.node_id) == self.runner.worker_index_max - 1:
            del self.runner.worker_indexes[msg.node_id]
            self.runner.worker_index_max -= 1
        version = str((msg.data or {}).get("perfkit"))
        if version != self.setup["perfkit"]:
            reason = (f"this master runs perfkit {self.setup['perfkit']}, the worker perfkit "
                      f"{version}: install the same version on every machine")
            self.refused.append({"node": msg.node_id, "perfkit": version, "at": time.time()})
            self.say(f"perfkit: refused a worker of perfkit {version} "
                     f"(this master runs {self.setup['perfkit']})")
            self.runner.send_message(SETUP, {"ok": False, "reason": reason}, msg.node_id)
            return
        self.runner.send_message(SETUP, self.setup, msg.node_id)

    def on_info(self, environment: Environment, msg: Message) -> None:
        self._record(msg.node_id).update(msg.data or {})

    def _record(self, worker_id: str) -> dict[str, Any]:
        if worker_id not in self.workers:
            self.workers[worker_id] = {"id": worker_id, "joined_at": time.time(),
                                       "lost_at": None, "lost_after_s": None, "reason": None}
        return self.workers[worker_id]

    def active(self) -> list[dict[str, Any]]:
        return [w for w in self.workers.values() if w["lost_at"] is None]

    def joined(self) -> int:
        for client_id in list(self.runner.clients):
            if self.runner.clients[client_id].state != STATE_MISSING:
                self._record(client_id)
        return len(self.active())

    def check(self) -> None:
        """Called every second of the run: notices workers that stopped heartbeating or quit.
        Raises RunError when none is left."""
        self.joined()
        for worker in self.active():
            client = self.runner.clients.get(worker["id"])
            if client is not None and client.state != STATE_MISSING:
                continue
            worker["reason"] = "quit" if client is None else "stopped heartbeating"
            worker["lost_at"] = time.time()
            worker["lost_after_s"] = round(worker["lost_at"] - (self.started_at or 0.0), 1)
            self.say(f"perfkit: lost worker {describe_worker(worker)} after "
                     f"{worker['lost_after_s']:.0f} s ({worker['reason']}); "
                     f"{len(self.active())} of {len(self.workers)} workers go on")
        if self.workers and not self.active():
            raise RunError(f"every worker was lost ({len(self.workers)} of "
                           f"{len(self.workers)}); nothing generates load")

    def lost(self) -> list[dict[str, Any]]:
        return [w for w in self.workers.values() if w["lost_at"] is not None]

    def summary(self) -> dict[str, Any]:
        """run.json "distributed"."""
        return {"expected": self.expected, "workers": list(self.workers.values()),
                "lost": len(self.lost()), "refused": self.refused}


def master_port(settings: LoadSettings) -> int:
    """The master's port: --master-bind-port, else Locust's 5557 for a master open to other
    machines, else a free one (chosen before the local workers are forked, who connect to it)."""
    if settings.master_bind_port:
        return settings.master_bind_port
    return _free_port() if settings.master_bind_host is None else DEFAULT_MASTER_PORT


def fork_workers(loaded: locustfile.Locustfile, settings: LoadSettings,
                 options: argparse.Namespace, port: int, run_dir: Path,
                 emit: Emit) -> list[ForkedProcess]:
    """`settings.workers` local workers forked from this process, after the locustfile was
    imported (as Locust's --processes): its module-level code ran once, here, and each worker
    connects to the master on `port` with what this process holds. Their output goes to
    `emit` ("[worker-1] ...") and RUN/worker-N.log."""
    bind_host = settings.master_bind_host or "127.0.0.1"
    connect_host = "127.0.0.1" if bind_host in LOOPBACK_BINDS else bind_host
    count = max(settings.expect_workers, settings.workers)

    def serve() -> int:
        return serve_worker(loaded, settings, locustfile.worker_options(options), connect_host,
                            port, lambda line: None, count)

    return fork_children([(f"worker-{index}", serve, run_dir / f"worker-{index}.log")
                          for index in range(1, settings.workers + 1)], emit)


def open_master(env: Environment, settings: LoadSettings, scenario_path: Path, port: int,
                say: Say) -> WorkerWatch:
    """A master runner bound where the settings say, on `port`, and its watch."""
    bind_host = settings.master_bind_host or "127.0.0.1"
    try:
        runner = env.create_master_runner(master_bind_host=bind_host, master_bind_port=port)
    except Exception as exc:  # zmq: address in use, or not an address of this machine
        raise ConfigError(f"cannot open the master on {bind_host}:{port}: {exc}") from exc
    expected = max(settings.expect_workers, settings.workers)
    watch = WorkerWatch(runner, say, describe_setup(settings, scenario_path), expected)
    if settings.master_bind_host is not None:
        say(f"perfkit: master listening on {bind_host}:{port}; waiting for {expected} workers "
            f"(perfkit worker --master HOST:{port})")
    return watch


def wait_for_workers(watch: WorkerWatch, processes: list[ForkedProcess],
                     settings: LoadSettings, run_dir: Path) -> None:
    """Until every expected worker joined; ClusterError, naming how many did, after the
    timeout or when a local worker process exits."""
    expected = watch.expected
    deadline = time.monotonic() + settings.expect_workers_timeout_s
    while watch.joined() < expected:
        if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
            for process in processes:
                stop_child(process)
            raise ClusterError(
                f"only {watch.joined()} of {expected} workers joined within "
                f"{settings.expect_workers_timeout_s:g} s"
                + (f" (see {run_dir}/worker-*.log)" if processes else ""))
        gevent.sleep(0.2)


def fetch_setup(host: str, port: int, timeout_s: float) -> dict[str, Any]:
    """The master's setup for this worker, asked from a throw-away connection until the master
    answers (a worker may start before its master, as in a Kubernetes Deployment)."""
    deadline = time.monotonic() + timeout_s
    while True:
        identity = f"{socket.gethostname()}_perfkit_setup_{uuid.uuid4().hex}"
        client = rpc.Client(host, port, identity)
        try:
            client.send(Message(SETUP, {"perfkit": perfkit_version()}, identity))
            with gevent.Timeout(SETUP_REPLY_TIMEOUT_S, False):
                while True:
                    reply = client.recv()
                    if reply.type == SETUP:
                        return dict(reply.data)
        finally:
            client.close(linger=0)
        if time.monotonic() > deadline:
            raise ClusterError(f"no perfkit master answered at {host}:{port} within "
                               f"{timeout_s:g} s")


def run_worker(master: str, say: Say, connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> int:
    """A Locust worker with perfkit's recorder, set up by its master: its buckets travel to
    the master with Locust's reports."""
    host, _, port_text = master.rpartition(":") if ":" in master else (master, "", "")
    try:
        port = int(port_text or DEFAULT_MASTER_PORT)
    except ValueError:
        raise ConfigError(f"--master {master}: write HOST:PORT") from None
    setup = fetch_setup(host, port, connect_timeout_s)
    if not setup.get("ok"):
        raise ClusterError(f"the master at {host}:{port} refused this worker: "
                           f"{setup.get('reason')}")
    scenario_path = _materialize(setup["scenario"])
    given = setup["settings"]
    settings = LoadSettings(
        command="worker", scenario=str(scenario_path), users=given["users"],
        spawn_rate=given["spawn_rate"], duration_s=given["duration_s"], rate=given["rate"],
        arrivals=given["arrivals"],
        request_timeout_s=given["request_timeout_s"], tags=tuple(given["tags"]),
        exclude_tags=tuple(given["exclude_tags"]), user_classes=tuple(given["user_classes"]),
        locustfile_args=tuple(given["locustfile_args"]),
        locustfile_config=tuple((key, value) for key, value in given["locustfile_config"]),
        config_users=tuple(given["config_users"]), equal_weights=given["equal_weights"],
        reset_stats=given["reset_stats"], kpi_targets=())
    loaded = locustfile.load_locustfile(scenario_path)
    options = locustfile.worker_options(locustfile.parse_locust_options(settings, None))
    loaded = locustfile.select_user_classes(loaded, options.user_classes)
    return serve_worker(loaded, settings, options, host, port, say, given["worker_count"])


def serve_worker(loaded: locustfile.Locustfile, settings: LoadSettings,
                 options: argparse.Namespace, host: str, port: int, say: Say,
                 worker_count: int) -> int:
    """A Locust worker of the master at host:port, with perfkit's recorder: its buckets
    travel to the master with Locust's reports. Returns the exit code."""
    recorder = Recorder(None)
    env = locustfile.make_environment(loaded, None, settings.rate, settings.users,
                                      recorder, options, settings.request_timeout_s,
                                      arrivals=settings.arrivals, worker_count=worker_count)
    ScenarioErrors().attach(env)
    # Installed before any user starts: each user's client binds its request method then.
    with locustfile.interruptions_counted(recorder):
        runner = env.create_worker_runner(host, port)
        locustfile.fire_init(env)
        runner.send_message(WORKER_INFO, {
            "hostname": socket.gethostname(), "addresses": _addresses(), "pid": os.getpid(),
            "perfkit": perfkit_version()})
        say(f"perfkit worker: joined {host}:{port} as {runner.client_id} "
            f"(scenario {loaded.path.name}, perfkit {perfkit_version()})")

        gevent.signal_handler(signal.SIGINT, runner.quit)
        gevent.signal_handler(signal.SIGTERM, runner.quit)
        assert runner.greenlet is not None
        runner.greenlet.join()
    # As Locust's worker shuts down: `quitting`, whose Locust listener tells the master this
    # worker quits, after its last report; then `quit`.
    locustfile.fire_quitting(env)
    gevent.sleep(0.2)  # let the message leave before the process does
    locustfile.fire_quit(0)
    return 0


def _materialize(scenario: dict[str, Any]) -> Path:
    """The master's scenario on this machine: a bundled one by name, a user's file written
    into a directory of its own (its name kept, for tracebacks and request names)."""
    if "bundled" in scenario:
        return locustfile.resolve_scenario(str(scenario["bundled"]))
    directory = Path(tempfile.mkdtemp(prefix="perfkit-worker-"))
    path = directory / Path(str(scenario["filename"])).name
    path.write_text(str(scenario["source"]), "utf-8")
    return path


def _addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback, as the report names a worker."""
    found = []
    for addresses in psutil.net_if_addrs().values():
        found += [a.address for a in addresses
                  if a.family == socket.AF_INET and not a.address.startswith("127.")]
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
