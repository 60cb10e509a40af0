"""One run: start the target and collectors, drive Locust, stop all, write the run directory.

Importing this module imports Locust, which monkey-patches the standard library with gevent;
the CLI imports it only for the commands that generate load.
"""

import contextlib
import dataclasses
import functools
import logging
import math
import platform
import re
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gevent
import locust
import psutil
from locust.env import Environment
from locust.event import EventHook
from locust.rpc import Message
from locust.runners import (
    STATE_CLEANUP,
    STATE_RUNNING,
    STATE_SPAWNING,
    STATE_STOPPED,
    STATE_STOPPING,
    MasterRunner,
)

from .. import rundir
from ..analysis.kpi import judge_run
from ..collectors.app import AppCollector
from ..collectors.system import SystemCollector
from ..errors import ClusterError, ConfigError, InternalError, PerfkitError, RunError, TargetError
from ..kpi_file import is_job
from ..redaction import redact_argv, redact_url
from ..report import REPORT_HTML, write_report
from ..report.distributed import describe_worker
from ..report.html import describe_lateness, describe_stop
from ..result import DEGRADED, RunMeta, RunResult, RunSettings
from ..settings import LoadSettings, require_extra
from . import distributed, locustfile, target
from .alarms import WINDOW_S as ALARM_WINDOW_S
from .alarms import AlarmWatcher
from .faults import FaultSchedule
from .jobs import JobLedger
from .live import LiveView
from .locust_outputs import LocustWriters, check_outputs
from .observers import make_observers, start_export
from .openloop import set_pace
from .processes import ForkedProcess, stop_child
from .proxy import FaultProxy
from .recorder import Recorder, request_name
from .scenario_errors import ScenarioErrors
from .stack import BundledStack
from .web import LivePage

log = logging.getLogger(__name__)

VARIANTS = ("n_plus_one", "no_index", "new_client_per_call", "no_cache", "unbounded",
            "high_prefetch")
LOADGEN_SATURATED_PERCENT = 90.0
SATURATED_SHARE = 0.1

Say = Callable[[str], None]
# perfkit stops the runner only after drive() returns: a runner found stopping during the run
# was ended by the scenario itself (a LoadTestShape, a StopTest, the last worker gone); a
# master stays "stopping" after a shape ends, until its workers confirm.
LOAD_RUNNING = (STATE_SPAWNING, STATE_RUNNING)
LOAD_ENDING = (STATE_STOPPING, STATE_CLEANUP, STATE_STOPPED)


@dataclass
class Plan:
    """How many users (and which arrival rate) to run at each moment of a run.

    `steps` lists (start offset s, users, rate); a plain load is one step. Stress and endurance
    build longer plans; `on_step_end` may end the run early (e.g. a stress test that broke): it
    is called when the next step is due and, for the last step, when the duration is over.
    `on_run_end` adds to the result once the run has ended, before it is judged and
    reported (stress and endurance store their results in its metadata). `window_s`: how many recent
    seconds of latency buckets `on_step_end` reads from the recorder (kept in memory).
    """

    steps: list[tuple[float, int, float | None]]
    on_step_end: Callable[[int, "RunState"], bool] | None = None
    on_run_end: Callable[[RunResult, "RunState"], None] | None = None
    window_s: float = 0.0
    shape: bool = False  # the locustfile's LoadTestShape sets the users, not `steps`


@dataclass
class RunState:
    run_dir: Path
    recorder: Recorder
    system: SystemCollector
    app: AppCollector | None
    started_at: float = field(default_factory=time.time)
    status: str = "completed"
    message: str = ""
    loadgen_cpu: list[tuple[float, float]] = field(default_factory=list)  # (t, % of a core)
    alarms: AlarmWatcher | None = None
    profile: Any = None  # profiling.CpuRecording while py-spy records, or why it could not
    # What the stopped parts said, for run.json.
    alarm_summary: dict[str, Any] | None = None
    profile_entry: dict[str, Any] | None = None
    collectors: dict[str, Any] = field(default_factory=dict)
    errors: ScenarioErrors = field(default_factory=ScenarioErrors)
    load_ended_at: float | None = None
    observers: dict[str, Any] = field(default_factory=dict)  # run/observers.py
    export: Any = None  # exporter.LiveExport while perfkit's own metrics are served
    export_entry: dict[str, Any] | None = None
    workers: distributed.WorkerWatch | None = None  # a master's workers
    locust_writers: LocustWriters | None = None  # Locust's --csv/--html/--json outputs
    locust_outputs: list[str] = field(default_factory=list)  # the files they wrote
    judged_from: float | None = None  # --reset-stats: when spawning last completed
    had_errors: bool = False  # a request failed or the scenario raised (Locust's sense)
    # No run time given: a LoadTestShape ended the run, or Stop on the live page did.
    unbounded: bool = False
    web: LivePage | None = None  # --web
    warmup_by_default: bool = True  # no --warmup: a tenth of the run, known once it ends
    faults: FaultSchedule | None = None  # --fault: the faults' greenlets while they run
    proxy: FaultProxy | None = None  # --fault net=...: perfkit's proxy before the target
    fault_records: list[dict[str, Any]] | None = None  # what they did, for run.json
    jobs: JobLedger | None = None  # research jobs accepted and not seen to end (run/jobs.py)
    target_url: str = ""  # the target itself (not perfkit's fault proxy in front of it)
    jobs_entry: dict[str, Any] | None = None  # run.json "lost_work": the lost-jobs check


def make_run_dir(settings: LoadSettings) -> Path:
    """A new run directory: `--out` (which may exist, but not hold a run), else
    reports/<time>-<command>-<scenario>, created atomically with a suffix when two runs
    start in the same second (mkdir either creates it or fails: never two runs in one)."""
    try:
        if settings.out is not None:
            if (settings.out / rundir.RUN_JSON).exists() or settings.out.is_symlink():
                raise ConfigError(f"{settings.out} already holds a run; choose another --out")
            settings.out.mkdir(parents=True, exist_ok=True)
            return settings.out
        name = re.sub(r"[^\w.-]", "_", Path(settings.scenario).stem)
        base = settings.reports_dir / (f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-"
                                       f"{settings.command}-{name}")
        base.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, 100):
            run_dir = base if attempt == 1 else base.with_name(f"{base.name}-{attempt}")
            try:
                run_dir.mkdir()
                return run_dir
            except FileExistsError:
                continue
        raise ConfigError(f"cannot find a free run directory name beside {base}")
    except OSError as exc:
        raise ConfigError(f"cannot create run directory: {exc}") from exc


def describe_environment() -> dict[str, Any]:
    try:
        revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                  text=True, timeout=5, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        revision = None
    return {
        "git_revision": revision,
        "machine": {"hostname": socket.gethostname(), "cpu_count": psutil.cpu_count(),
                    "memory_mb": round(psutil.virtual_memory().total / 2**20),
                    "platform": platform.platform()},
        "versions": {"perfkit": _version("perfkit"), "python": platform.python_version(),
                     "locust": locust.__version__, "psutil": psutil.__version__},
    }


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def run_load(settings: LoadSettings, say: Say, plan: Plan | None = None) -> RunResult:
    """Run one load test end to end: the judged result, its run directory written. Whatever
    happens, the managed service and the local workers are stopped; an unexpected error
    leaves its traceback in the run directory's perfkit.log and raises InternalError (exit
    code 3); a usage error found once run.json exists marks it failed. Without a `plan`, a
    locustfile's LoadTestShape drives the users and, without a given duration, ends the run.
    Local workers are forked from this process once the locustfile is imported, before
    anything else starts (as Locust's --processes)."""
    check_settings(settings)
    locustfile.setup_logging(settings)
    scenario_path = locustfile.resolve_scenario(settings.scenario)
    loaded = locustfile.load_locustfile(scenario_path)
    options = locustfile.parse_locust_options(settings, settings.target)
    loaded = locustfile.select_user_classes(loaded, options.user_classes, settings.argv)
    if plan is not None or loaded.shape is None:
        loaded = dataclasses.replace(loaded, shape=None)
    elif settings.rate is not None:
        raise ConfigError(f"{scenario_path.name} has a LoadTestShape, which sets the users; "
                          f"--rate paces a fixed number of users: use one or the other")
    plan = plan or Plan(steps=[(0.0, settings.users, settings.rate)],
                        shape=loaded.shape is not None)
    if plan.shape and not settings.duration_given:
        options.run_time = None  # as under Locust: the shape ends the run
    run_dir = make_run_dir(settings)
    live = LiveView(say, settings, sys.stdout.isatty())
    managed, meta, workers, port, proxy = None, None, [], None, None
    page: LivePage | None = None
    try:
        if settings.workers:
            port = distributed.master_port(settings)
            workers = distributed.fork_workers(loaded, settings, options, port, run_dir,
                                               relay(live, say))
        page = open_page(settings, run_dir, say)  # before the target: the URL comes first
        managed, url, pid = start_target(settings, run_dir, say)
        proxy, load_url = start_proxy(settings, url, say)
        options.host = load_url
        meta = RunMeta(
            run_id=run_dir.name, command=settings.command, argv=redact_argv(settings.argv),
            scenario=settings.scenario, scenario_path=str(scenario_path),
            target=redact_url(url), target_managed=managed is not None, target_pid=pid,
            variants=list(settings.variants), extra_latency=list(settings.extra_latency),
            latency_profile=settings.latency_profile if managed else None,
            settings=RunSettings(users=settings.users, spawn_rate=settings.spawn_rate,
                                 duration_s=settings.duration_s, rate=settings.rate,
                                 workers=settings.workers, warmup_s=settings.effective_warmup_s,
                                 steps=tuple(plan.steps),
                                 arrivals=None if settings.rate is None else settings.arrivals,
                                 stop_timeout_s=settings.stop_timeout_s),
            kpi_file=str(settings.kpi_file.resolve()) if settings.kpi_file else None,
            **describe_environment(), started_at=time.time())
        rundir.write_meta(run_dir, meta)
        with listeners_of_this_run():
            env, state = prepare_run(settings, say, plan, run_dir, url, pid, loaded, options,
                                     load_url)
            state.proxy = proxy
            watch_page(page, state, settings, plan)
            with locustfile.interruptions_counted(state.recorder):
                run_plan(env, state, settings, say, plan, meta, managed, scenario_path,
                         (workers, port, live))
        if page is not None:
            page.show_ending()
            meta.export = {**(meta.export or {}), "web": page.describe()}
        result = judge_and_report(rundir.load_run(run_dir, meta), settings, state, plan, say)
        if page is not None:
            page.finish(run_dir / REPORT_HTML, result.verdict, result.exit_code)
        if state.had_errors and settings.exit_code_on_error is not None:
            result.exit_code_on_error = settings.exit_code_on_error
        locustfile.fire_quit(result.exit_code)
        return result
    except PerfkitError as exc:
        if meta is not None and meta.status == "running":
            # A usage error found once run.json exists (tags that leave no task): it says so.
            meta.status, meta.message = "failed", str(exc)
            rundir.write_meta(run_dir, meta)
        raise
    except OSError as exc:  # a full disk, a directory made read-only: the environment
        raise RunError(f"cannot write the run directory {run_dir}: "
                       f"{exc.strerror or exc}") from exc
    except Exception as exc:
        log_path = run_dir / "perfkit.log"
        try:
            with rundir.open_for_append(log_path) as log_file:
                log_file.write(traceback.format_exc())
            where = f"traceback in {log_path}"
        except OSError as log_error:  # a full disk: say so rather than hide the first error
            where = f"its traceback could not be written: {log_error.strerror or log_error}"
        raise InternalError(f"internal error: {type(exc).__name__}: {exc} ({where})") from exc
    finally:
        if page is not None:
            page.close()
        if proxy is not None:
            proxy.stop()
        for process in workers:
            stop_child(process)  # no-op once stopped
        if managed is not None:
            target.stop_reference_service(managed)  # no-op once it has stopped


def open_page(settings: LoadSettings, run_dir: Path, say: Say) -> LivePage | None:
    """With --web, the live page, listening (its URL said first, as k6 does)."""
    if not settings.observe.web:
        return None
    return LivePage(settings.observe.web_host, settings.observe.web_port, say,
                    f"perfkit {settings.command} {settings.scenario} ({run_dir.name})")


def watch_page(page: LivePage | None, state: RunState, settings: LoadSettings,
               plan: Plan) -> None:
    """The live page shows this run, and the run loop ticks it (state.web)."""
    if page is None:
        return
    state.web = page
    page.watch(state, settings.targets, run_limit_s(settings, plan), settings.warmup_s,
               bool(settings.workers or settings.expect_workers or settings.master_bind_host))


def relay(live: LiveView, say: Say) -> Callable[[str, bool], None]:
    """Where a local worker's output lines go: perfkit's terminal, below the live view."""
    def emit(line: str, is_err: bool) -> None:
        live.close()
        if is_err:
            print(line, file=sys.stderr, flush=True)
        else:
            say(line)
    return emit


def prepare_run(settings: LoadSettings, say: Say, plan: Plan, run_dir: Path, url: str,
                pid: int | None, loaded: locustfile.Locustfile, options: Any,
                load_url: str | None = None) -> tuple[Environment, "RunState"]:
    """The Locust environment and what records and watches the run. `load_url`: where the
    load goes when it is not `url` (perfkit's fault proxy); the collectors read `url`."""
    # The recorder keeps enough recent buckets in memory for the alarm window and for
    # judging a whole plan step live (stress); no more, so a long run stays flat.
    keep_s = max(ALARM_WINDOW_S, plan.window_s) + 5.0
    state = RunState(run_dir=run_dir,
                     recorder=Recorder(run_dir / rundir.LATENCY, keep_s=keep_s),
                     system=SystemCollector(pid, run_dir / rundir.RESOURCES),
                     # A simultaneous trial's arms get the same treatment: the scraper
                     # would make the first arm's target alone answer its metrics requests.
                     app=None if settings.arms else AppCollector(url, run_dir),
                     observers=make_observers(settings.observe, url, run_dir))
    state.warmup_by_default = settings.warmup_s is None
    state.target_url = url
    if not (settings.workers or settings.expect_workers or settings.master_bind_host):
        state.jobs = JobLedger(dict(settings.arms))  # the users run here: their jobs are seen here
    state.alarms = AlarmWatcher(run_dir, settings.targets, say, settings.alert_webhook,
                                settings.effective_warmup_s, run_id=run_dir.name)
    env = locustfile.make_environment(loaded, load_url or url, settings.rate, settings.users,
                                      state.recorder, options, settings.request_timeout_s,
                                      settings.arms, settings.arrivals)
    env.stop_timeout = settings.stop_timeout_s
    state.errors.attach(env)
    if state.jobs is not None:
        env.events.request.add_listener(state.jobs.on_request)
    if settings.reset_stats:
        # As Locust's --reset-stats: what happened before spawning completed is not judged.
        def on_spawned(**_: Any) -> None:
            state.judged_from = time.time()
        env.events.spawning_complete.add_listener(on_spawned)
    if any(dataclasses.astuple(settings.locust_outputs)):
        state.locust_writers = LocustWriters(env, settings.locust_outputs, options)
    return env, state


@contextlib.contextmanager
def listeners_of_this_run() -> Iterator[None]:
    """Whatever subscribes to Locust's events during the run leaves with it. perfkit's
    environments use Locust's global events (where a locustfile's own listeners are), and
    each run adds its recorder and Locust's runner adds its stats closures: kept, every later
    run in the process (each of perfkit ab's) would feed them too. Found when the thirtieth
    run of one process was half as fast as the first and the process held 8 GB.
    EventHook has no public list of its listeners, hence `_handlers`."""
    hooks = [hook for hook in vars(locust.events).values() if isinstance(hook, EventHook)]
    before = [list(hook._handlers) for hook in hooks]
    try:
        yield
    finally:
        for hook, handlers in zip(hooks, before, strict=True):
            hook._handlers[:] = handlers


def run_plan(env: Environment, state: "RunState", settings: LoadSettings, say: Say, plan: Plan,
             meta: RunMeta, managed: target.ManagedTarget | None, scenario_path: Path,
             local: tuple[list[ForkedProcess], int | None, LiveView]) -> None:
    """Start the runner and the collectors, follow the plan, stop everything, finish `meta`.
    `local`: the forked local workers, the master's port they connect to, the live view."""
    workers, port, live = local
    never_started = False
    try:
        state.export = start_export(settings.observe, state, env, plan,
                                    {"run_id": state.run_dir.name, "scenario": settings.scenario},
                                    say)
        if settings.workers or settings.expect_workers or settings.master_bind_host:
            state.workers = distributed.open_master(
                env, settings, scenario_path, port or distributed.master_port(settings), say)
            distributed.wait_for_workers(state.workers, workers, settings, state.run_dir)
        else:
            env.create_local_runner()
        if state.locust_writers is not None:
            state.locust_writers.start()
        locustfile.fire_init(env)
        state.system.start()
        if state.app is not None:
            state.app.start()
        for observer in state.observers.values():
            observer.start()
        state.started_at = meta.started_at = time.time()
        if state.workers is not None:
            state.workers.started_at = state.started_at
        if settings.faults:
            emit = relay(live, live.say)
            stack = None
            if managed is not None:
                stack = BundledStack(managed, settings.serve_args()
                                     + stack_serve_args(settings, state.run_dir),
                                     state.run_dir, settings.service.database_url,
                                     state.system.follow)
            state.faults = FaultSchedule(settings.faults, settings.duration_s,
                                         lambda line: emit(line, False), state.proxy, stack)
            state.faults.start(state.started_at)
        drive(env, settings, plan, state, managed, live)
    except TargetError as exc:
        state.status, state.message = "target_died", str(exc)
    except RunError as exc:
        state.status, state.message = "failed", str(exc)
    except ClusterError as exc:
        # Not a run at all (exit 2, no report), but run.json says why it never started.
        state.status, state.message = "failed", str(exc)
        never_started = True
        raise
    finally:
        stop_run(env, state, workers, managed)
        finish_meta(meta, env, state)
        if never_started:
            rundir.write_meta(state.run_dir, meta)


def check_settings(settings: LoadSettings) -> None:
    if settings.target and (settings.variants or settings.serve_args()):
        raise ConfigError("--variant, --queue, --broker, --envelope, --extra-latency and "
                          "--service-database-url apply to the bundled service only, not to "
                          "--target")
    from ..reference.settings import parse_extra_latency

    for text in settings.extra_latency:
        parse_extra_latency(text)  # a bad one fails here, not in the started service's log
    unknown = sorted(set(settings.variants) - set(VARIANTS))
    if unknown:
        raise ConfigError(f"unknown variant {unknown[0]!r}; known: {', '.join(VARIANTS)}")
    if settings.arms and (settings.workers or settings.expect_workers
                          or settings.master_bind_host):
        raise ConfigError("a simultaneous A/B trial runs in one process: no --workers")
    if settings.target_pid is not None and not psutil.pid_exists(settings.target_pid):
        raise ConfigError(f"--target-pid {settings.target_pid}: no such process")
    check_outputs(settings.locust_outputs)
    check_stack_faults(settings)
    if any(fault.net is not None for fault in settings.faults):
        if settings.target and urlsplit(settings.target).scheme != "http":
            raise ConfigError(f"--fault net=...: the target must be an http:// URL (perfkit's "
                              f"proxy forwards TCP, and a TLS name check would fail through "
                              f"it), not {redact_url(settings.target)}")
        if settings.master_bind_host or settings.arms:
            raise ConfigError("--fault net=...: the fault proxy listens on this machine's "
                              "loopback for one target: not with workers on other machines "
                              "or a simultaneous A/B trial")


def check_stack_faults(settings: LoadSettings) -> None:
    """A built-in fault (stack=) needs the part of the stack it acts on, started by perfkit."""
    names = {fault.stack for fault in settings.faults if fault.stack is not None}
    if not names:
        return
    if settings.target:
        raise ConfigError(f"--fault stack={sorted(names)[0]}: built-in faults act on the "
                          f"bundled service perfkit starts, not on --target (use do=COMMAND)")
    database_url = settings.service.database_url or ""
    if "postgres-outage" in names:
        if not database_url.startswith("postgresql"):
            raise ConfigError("--fault stack=postgres-outage needs the bundled service on "
                              "PostgreSQL: --service-database-url postgresql+asyncpg://USER@HOST/DB")
        require_extra("--fault stack=postgres-outage", "postgres", "psycopg")
    if "redis-pause" in names:
        raise ConfigError("--fault stack=redis-pause needs a Redis perfkit started for the "
                          "bundled service, and perfkit starts none (pause yours with "
                          "do='kill -STOP PID',undo='kill -CONT PID')")
    if "celery-kill" in names and settings.service.queue != "celery":
        raise ConfigError("--fault stack=celery-kill needs the bundled service's Celery "
                          "workers: --queue celery --broker redis://HOST:6379/N")


def stack_serve_args(settings: LoadSettings, run_dir: Path) -> list[str]:
    """The service's options where a built-in fault restarts it: a restarted service must find
    the jobs of the first (its database a file of the run, not a temporary one it removes) and
    own them (one instance id)."""
    if not any(fault.stack == "service-restart" for fault in settings.faults):
        return []
    args = ["--instance-id", f"perfkit-{run_dir.name}"]
    if not settings.service.database_url:
        args += ["--database-url", f"sqlite+aiosqlite:///{(run_dir / 'service.db').resolve()}"]
    return args


def start_target(settings: LoadSettings, run_dir: Path,
                 say: Say) -> tuple[target.ManagedTarget | None, str, int | None]:
    """(the managed reference service or None, the target's URL, the PID to sample)."""
    if settings.target is not None:
        url = settings.target.rstrip("/")
        target.check_target(url)
        return None, url, settings.target_pid
    say("perfkit: starting the bundled reference service "
        f"({settings.latency_profile} profile{', ' if settings.variants else ''}"
        f"{', '.join(settings.variants)})")
    managed = target.start_reference_service(
        run_dir / "target.log", settings.serve_args() + stack_serve_args(settings, run_dir))
    return managed, managed.url, managed.process.pid


def start_proxy(settings: LoadSettings, url: str,
                say: Say) -> tuple[FaultProxy | None, str]:
    """(perfkit's fault proxy, the URL the load goes to): the proxy only where a --fault is a
    network fault (net=); the load then goes through it all the run, faulted or not, so the
    proxy's own cost is the same before, during and after the fault."""
    if not any(fault.net is not None for fault in settings.faults):
        return None, url
    parts = urlsplit(url)
    proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 80)
    port = proxy.start()
    say(f"perfkit: the load goes through perfkit's fault proxy on 127.0.0.1:{port} "
        f"(for the network faults)")
    return proxy, parts._replace(netloc=f"127.0.0.1:{port}").geturl()


def stop_run(env: Environment, state: RunState, workers: list[ForkedProcess],
             managed: target.ManagedTarget | None) -> None:
    """Stop the load, the recorder, the collectors, the workers and the target, in order;
    each step on its own, so one that fails (a full disk under the recorder) skips no other."""
    def step(name: str, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except Exception as exc:  # a boundary: log it and go on stopping the rest
            log.warning("stopping the run: %s failed: %s", name, exc)
            log.debug("stopping the run: %s failed", name, exc_info=True)
            state.status = "failed" if state.status == "completed" else state.status
            state.message = state.message or f"stopping the run: {name} failed (see perfkit.log)"
            return None

    if state.faults is not None:  # first: a fault in progress is undone at once
        state.fault_records = step("the faults", state.faults.stop)
    step("the load", lambda: stop_runner(env, env.stop_timeout or 0.0))
    state.load_ended_at = time.time()
    if env.runner is not None:
        state.had_errors = bool(env.runner.stats.errors or env.runner.exceptions)
    if state.locust_writers is not None:
        state.locust_outputs = step("Locust's outputs", state.locust_writers.finish) or []
    step("the recorder", lambda: state.recorder.flush(final=True))
    if state.alarms is not None:
        state.alarm_summary = step("the alarms", state.alarms.close)
    if state.profile is not None:
        state.profile_entry = (state.profile if isinstance(state.profile, dict)
                               else step("the profiler", state.profile.stop))
    state.collectors = {"system": step("the system collector", state.system.stop),
                        "app": step("the app collector", state.app.stop) if state.app else None}
    for name, observer in state.observers.items():
        state.collectors[name] = step(f"the {name} collector", observer.stop)
    if state.export is not None:
        export = state.export
        state.export_entry = step("the live metrics",
                                  lambda: export.stop(state.load_ended_at))
    for process in workers:
        step(f"worker {process.pid}", functools.partial(stop_child, process))
    if state.jobs is not None and state.jobs.accepted:
        jobs = state.jobs
        state.jobs_entry = step("the lost-jobs check", lambda: jobs.check_lost(
            state.target_url, env.stop_timeout or 0.0))
    if managed is not None:
        if managed.process.poll() is not None and state.status == "completed":
            state.status = "target_died"
            state.message = f"the reference service exited with {managed.process.returncode}"
        step("the target", functools.partial(target.stop_reference_service, managed))


def judge_and_report(result: RunResult, settings: LoadSettings, state: RunState, plan: Plan,
                     say: Say) -> RunResult:
    """Add the plan's own results, judge the run, write run.json (its second and last time)
    and the report files."""
    if plan.on_run_end is not None:
        plan.on_run_end(result, state)
    judge_run(result, settings.targets)
    result.meta.verdict = result.verdict
    rundir.write_meta(result.run_dir, result.meta)
    report_path = write_report(result)
    if result.meta.status != "completed":
        say(f"perfkit: run {result.meta.status}: {result.meta.message}")
    late = describe_lateness(result.meta.load)
    if late:
        say(f"perfkit: the offered rate was not reached: {late}")
    stopped = describe_stop(result.meta.load)
    if stopped:
        say(f"perfkit: {stopped}")
    if state.errors.count:
        say(f"perfkit: the scenario raised {state.errors.count} errors: "
            f"{state.errors.describe()} (tracebacks in failures.json and the report)")
    say(f"perfkit: verdict {(result.verdict or '').upper()}: {result.verdict_reason}")
    say(f"Report: {report_path}")
    return result


def drive(env: Environment, settings: LoadSettings, plan: Plan, state: RunState,
          managed: target.ManagedTarget | None, live: LiveView) -> None:
    """Follow the plan second by second until the duration ends or something stops the run.
    A LoadTestShape without a given duration runs until it ends the run, as under Locust;
    with one, the duration cuts it, and the message says so."""
    say = live.say
    limit_s = run_limit_s(settings, plan)
    live.duration_s = limit_s
    runner = env.runner
    assert runner is not None
    interrupted: list[str] = []

    def on_signal(signum: int) -> None:
        interrupted.append(signal.Signals(signum).name)

    # SIGTERM (a CI job cancelled) and SIGHUP (the terminal closed) end the run like Ctrl-C:
    # stopped cleanly, reported, exit code 130.
    handlers = [gevent.signal_handler(s, on_signal, s)
                for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)]
    timeline = state.run_dir / rundir.TIMELINE
    own = [psutil.Process()]
    for process in own:
        process.cpu_percent()  # the first reading is meaningless
    step_index = -1
    try:
        with rundir.open_for_append(timeline) as timeline_file:
            timeline_file.write("t,users,rate,loadgen_cpu_percent\n")
            started = time.time()
            next_tick = started
            while True:
                elapsed = time.time() - started
                if interrupted or (state.web is not None and state.web.stop_requested):
                    state.status = "interrupted"
                    by = interrupted[0] if interrupted else "the live page's Stop"
                    state.message = f"stopped by {by} after {elapsed:.0f} s"
                    state.unbounded = math.isinf(limit_s)
                    return
                if managed is not None and not managed.restarting \
                        and managed.process.poll() is not None:
                    raise TargetError(f"the target exited with code {managed.process.returncode} "
                                      f"after {elapsed:.0f} s")
                if managed is None and settings.target_pid and not _alive(settings.target_pid):
                    raise TargetError(f"target process {settings.target_pid} exited after "
                                      f"{elapsed:.0f} s")
                if state.workers is not None and runner.state in LOAD_RUNNING:
                    state.workers.check()
                if elapsed >= limit_s:
                    if step_index >= 0 and plan.on_step_end:
                        plan.on_step_end(step_index, state)
                    if plan.shape:
                        state.message = (f"the run time limit (-t {limit_s:g} s) ended the run "
                                         f"before its LoadTestShape did")
                    return
                due = [i for i, step in enumerate(plan.steps) if step[0] <= elapsed]
                if due and due[-1] != step_index:
                    if step_index >= 0 and plan.on_step_end and plan.on_step_end(step_index, state):
                        return
                    step_index = due[-1]
                    _, users, rate = plan.steps[step_index]
                    if plan.shape:
                        runner.start_shape()
                    else:
                        set_pace(env, users, rate)
                        runner.start(users, settings.spawn_rate)
                if step_index >= 0 and runner.state in LOAD_ENDING:
                    state.message = (f"the LoadTestShape ended the run after {elapsed:.0f} s"
                                     if plan.shape else "the scenario stopped by itself")
                    state.unbounded = plan.shape and math.isinf(limit_s)
                    return
                loadgen_cpu = _loadgen_cpu_percent(runner, own)
                if loadgen_cpu is not None:
                    state.loadgen_cpu.append((time.time(), loadgen_cpu))
                rate = plan.steps[step_index][2] if step_index >= 0 else None
                timeline_file.write(f"{int(time.time())},{runner.user_count},"
                                    f"{'' if rate is None else rate},"
                                    f"{'' if loadgen_cpu is None else round(loadgen_cpu, 1)}\n")
                timeline_file.flush()
                state.recorder.flush()
                if settings.profile and state.profile is None \
                        and elapsed >= settings.effective_warmup_s:
                    state.profile = start_profile(settings, managed, timeline.parent, elapsed,
                                                  say)
                if state.alarms is not None and state.alarms.check(state):
                    live.close()  # the alarm lines scrolled the live block: draw it anew below
                    if settings.abort_on_fail:
                        state.status = "aborted"
                        state.message = (f"--abort-on-fail: a KPI alarm after {elapsed:.0f} s "
                                         f"({state.alarms.last_message})")
                        return
                if not settings.only_summary:
                    live.show(elapsed, runner.user_count, state)
                if state.web is not None:
                    state.web.tick(elapsed, runner.user_count, rate)
                next_tick += 1.0
                gevent.sleep(max(0.0, next_tick - time.time()))
    finally:
        for handler in handlers:
            handler.cancel()
        live.close()


def run_limit_s(settings: LoadSettings, plan: Plan) -> float:
    """How long drive() runs: the duration; without one given, until a LoadTestShape ends
    the run or, with --web, a plain load until Stop (as Locust's web UI)."""
    if settings.duration_given:
        return settings.duration_s
    if plan.shape or (settings.observe.web and settings.command == "load"):
        return math.inf
    return settings.duration_s


def start_profile(settings: LoadSettings, managed: target.ManagedTarget | None, run_dir: Path,
                  elapsed_s: float, say: Say) -> Any:
    """py-spy on the target from the end of the warm-up to the end of the run (stopped early
    by run_load). Returns the recording, or the run.json entry saying why there is none: a
    target py-spy cannot read is a note, not a failed run."""
    from .. import profiling

    pid = managed.process.pid if managed is not None else settings.target_pid
    note = "no target pid (use --target-pid with --target)"
    if pid is not None:
        duration_s = min(max(settings.duration_s - elapsed_s, 1.0), profiling.MAX_DURATION_S)
        try:
            return profiling.start_profile(pid, duration_s, run_dir)
        except ConfigError as exc:
            note = str(exc)
    say(f"perfkit: no profile: {note}")
    return {"available": False, "svg": None, "speedscope": None, "note": note}


def describe_load(settings: RunSettings, recorder: Recorder) -> dict[str, Any]:
    """run.json "load": the load model, for an open load whether the generator kept the
    offered rate (iterations it started late, beyond what the target caused), and what the
    stop left: requests complete (recorded, answered or failed) and interrupted (sent, then
    cut off when the stop timeout ran out, so recorded nowhere else)."""
    stop = {"stop_timeout_s": settings.stop_timeout_s,
            "complete": sum(tally.count for name, tally in recorder.totals.items()
                            if not is_job(name)),
            "interrupted": recorder.interrupted}
    if settings.rate is None:
        return {"model": "closed", "users": settings.users, "offered_rate": None,
                "arrivals": None, "iterations": None, "late_iterations": None,
                "generator_lateness_s": None, **stop}
    lateness = recorder.lateness
    return {"model": "open", "users": settings.users, "offered_rate": settings.rate,
            "arrivals": settings.arrivals, "iterations": lateness.iterations,
            "late_iterations": lateness.late_iterations,
            "generator_lateness_s": round(lateness.generator_lateness_s, 3), **stop}


def judge_loadgen(samples: list[tuple[float, float]], judged_from: float) -> dict[str, Any]:
    """Was the load generator saturated while the run was judged? Only samples after the
    warm-up count (the first readings, users spawning and imports settling, are not the
    run's), and the flag needs SATURATED_SHARE of them at LOADGEN_SATURATED_PERCENT or more:
    one busy second is not an untrustworthy run."""
    judged = [cpu for t, cpu in samples if t >= judged_from]
    busy = sum(cpu >= LOADGEN_SATURATED_PERCENT for cpu in judged)
    share = busy / len(judged) if judged else None
    return {"max_cpu_percent": max(judged) if judged else None,
            "saturated_share": share, "samples": len(judged),
            "saturated": share is not None and share >= SATURATED_SHARE}


def _loadgen_cpu_percent(runner: Any, own: list[psutil.Process]) -> float | None:
    """The busiest Locust process, % of one core: this one, or a worker's own report."""
    readings = [p.cpu_percent() for p in own]
    if isinstance(runner, MasterRunner):
        readings += [c.cpu_usage for c in runner.clients.values() if c.cpu_usage is not None]
    return max(readings) if readings else None


def stop_runner(env: Environment, stop_timeout_s: float = 0.0) -> None:
    """Stop the users (test_stop), fire `quitting` as Locust does on shutdown, quit."""
    runner = env.runner
    if runner is None:
        return
    if not isinstance(runner, MasterRunner):
        runner.stop()
        locustfile.fire_quitting(env)
        runner.quit()
        return
    # Locust's own ending (as `locust --headless` does it): "quit" to every worker, which
    # stops its users (letting them finish the task in hand for the stop timeout), sends its
    # last report and says quit. A "stop" first would lose that report: Locust forgets a
    # worker once it has stopped and discards what it sends until it is ready again.
    worker_ids = list(runner.clients)
    runner.stop(send_stop_to_client=False)
    for worker_id in worker_ids:
        runner.server.send_to_client(Message("quit", None, worker_id))
    deadline = time.monotonic() + stop_timeout_s + 5.0
    while any(w in runner.clients for w in worker_ids) and time.monotonic() < deadline:
        gevent.sleep(0.1)
    locustfile.fire_quitting(env)
    runner.quit()


def finish_meta(meta: RunMeta, env: Environment, state: RunState) -> None:
    """How the run ended, in `meta`; failures.json from Locust's error table."""
    # The judged window ends with the load, not with the shutdown of collectors and target.
    meta.ended_at = state.load_ended_at or time.time()
    if state.workers is not None:
        meta.distributed = state.workers.summary()
        lost = state.workers.lost()
        if lost and state.status == "completed":
            state.status = DEGRADED
            state.message = (f"lost {len(lost)} of {len(state.workers.workers)} workers: "
                             + "; ".join(f"{describe_worker(w)} after "
                                         f"{w['lost_after_s']:.0f} s ({w['reason']})"
                                         for w in lost)
                             + (f"; {state.message}" if state.message else ""))
    meta.status = state.status
    meta.message = state.message
    if state.unbounded:  # the run's own length, and the warm-up's default from it
        length_s = round(meta.ended_at - meta.started_at, 1)
        warmup_s = min(30.0, length_s / 10.0) if state.warmup_by_default \
            else meta.settings.warmup_s
        meta.settings = dataclasses.replace(meta.settings, duration_s=length_s,
                                            warmup_s=warmup_s)
    if state.judged_from is not None:  # --reset-stats: the judged window starts there
        meta.settings = dataclasses.replace(meta.settings, warmup_s=max(
            meta.settings.warmup_s, round(state.judged_from - meta.started_at, 3)))
    meta.alarms = state.alarm_summary
    meta.faults = state.fault_records
    meta.lost_work = state.jobs_entry
    meta.profile = state.profile_entry
    meta.collectors = state.collectors
    meta.export = state.export_entry
    meta.load = describe_load(meta.settings, state.recorder)
    meta.load["locust_outputs"] = state.locust_outputs
    # How the JOB records' times were measured (the jobs' own timestamps or polling).
    meta.load["job_timing"] = state.recorder.job_timing.describe()
    meta.loadgen = judge_loadgen(state.loadgen_cpu, meta.started_at + meta.settings.warmup_s)
    errors = env.runner.stats.errors.values() if env.runner else []
    # Locust's own request counts, a cross-check of perfkit's recording (percentiles differ:
    # Locust rounds response times to two significant digits).
    meta.locust_counts = {
        request_name(method, name): entry.num_requests
        for (name, method), entry in (env.runner.stats.entries.items() if env.runner else [])
    }
    rundir.write_json(state.run_dir / rundir.FAILURES, [
        {"name": request_name(e.method, e.name),
         "error": str(e.error)[:200], "count": e.occurrences, "example": str(e.error)[:1000]}
        for e in sorted(errors, key=lambda e: -e.occurrences)
    ] + state.errors.records())


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
