"""The perfkit command line. Settings are built here and passed down as typed objects."""

import logging
import signal
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

import click

from .errors import InternalError, PerfkitError
from .settings import (
    ARRIVALS,
    LoadSettings,
    Observability,
    ServiceOptions,
    build_load_settings,
    parse_metrics_auth,
    require_extra,
)
from .settings_sources import Sources, read_sources
from .units import parse_duration, parse_quantity

log = logging.getLogger(__name__)


def say(message: str) -> None:
    """The one place terminal output for people goes through."""
    click.echo(message)


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    return None if value is None else parse_duration(value)


LOAD_COMMANDS = ("load", "stress", "endurance", "regression")
# A load command takes the arguments it does not know itself along to the locustfile's own
# parser (its init_command_line_parser options), as `locust` does.
LOCUSTFILE_ARGS = {"ignore_unknown_options": True, "allow_extra_args": True}


def _env(name: str) -> str:
    return f"PERFKIT_{name.upper()}"


def _locust_options() -> list[Any]:
    """Locust's own options that perfkit shares: tags, the stop timeout, an open master."""
    return [
        click.option("--tags", "-T", "tags", multiple=True, envvar=_env("tags"),
                     help="Run only the locustfile's tasks with one of these tags "
                          "(-T a b, or a,b)."),
        click.option("--exclude-tags", "-E", "exclude_tags", multiple=True,
                     envvar=_env("exclude_tags"),
                     help="Run none of the tasks with one of these tags."),
        click.option("--stop-timeout", default="30s", show_default=True, callback=_duration,
                     envvar=_env("stop_timeout"),
                     help="When the run ends, let users finish the task in hand for this "
                          "long (as k6's gracefulStop; Locust's default is 0s); requests cut "
                          "off then are counted as interrupted."),
        click.option("--master-bind-host", envvar=_env("master_bind_host"),
                     help="Open the master to workers on other machines: the address "
                          "to listen on (* for all)."),
        click.option("--master-bind-port", type=click.IntRange(1, 65535),
                     envvar=_env("master_bind_port"),
                     help="The master's port (default 5557 with --master-bind-host, "
                          "else a free one)."),
        click.option("--expect-workers", type=click.IntRange(0), default=0,
                     show_default=True, envvar=_env("expect_workers"),
                     help="Workers (local ones included) to wait for before the load "
                          "starts; exit 2 if fewer joined in time."),
        click.option("--expect-workers-timeout", default="60s", show_default=True,
                     callback=_duration, envvar=_env("expect_workers_timeout"),
                     help="How long to wait for --expect-workers."),
    ]


def load_options(default_duration: str) -> Any:
    """Options shared by load, stress, endurance and regression (names are a contract).
    Locust's spellings are aliases (-u, -r, -t/--run-time, -H/--host, --processes)."""

    def decorate(func: Any) -> Any:
        options = [
            click.option("--target", "-H", "--host", "target", envvar=_env("target"),
                         help="Base URL of the target; default: start the bundled service."),
            click.option("--scenario", "-f", "--locustfile", "scenario", default="research",
                         show_default=True, envvar=_env("scenario"),
                         help="Scenario name (scenarios/) or path of a Locust file."),
            click.option("--users", "-u", type=click.IntRange(1), default=10, show_default=True,
                         envvar=_env("users"), help="Peak number of concurrent users."),
            click.option("--spawn-rate", "-r", type=click.FloatRange(min=0, min_open=True),
                         default=10.0, show_default=True, envvar=_env("spawn_rate"),
                         help="Users started per second."),
            click.option("--duration", "-t", "--run-time", "duration", default=default_duration,
                         show_default=True, callback=_duration, envvar=_env("duration"),
                         help="Run length: 30s, 5m, 1h30m (with a LoadTestShape, at most)."),
            click.option("--rate", type=click.FloatRange(min=0, min_open=True),
                         envvar=_env("rate"),
                         help="Open load: iterations per second in all, spread over time "
                              "(--arrivals), latency measured from the intended send time."),
            click.option("--arrivals", type=click.Choice(ARRIVALS), default="even",
                         show_default=True, envvar=_env("arrivals"),
                         help="With --rate: arrivals evenly spaced (1/rate apart), or a "
                              "Poisson process of that rate."),
            click.option("--kpi", "kpi_file", type=click.Path(path_type=Path),
                         envvar=_env("kpi"),
                         help="KPI targets (TOML) that replace or extend the defaults."),
            click.option("--out", type=click.Path(path_type=Path), envvar=_env("out"),
                         help="Run directory (default reports/<timestamp>-<scenario>)."),
            click.option("--workers", "--processes", "workers", type=click.IntRange(0),
                         default=0, show_default=True, envvar=_env("workers"),
                         help="Local Locust worker processes under one master."),
            *_locust_options(),
            click.option("--target-pid", type=int, envvar=_env("target_pid"),
                         help="PID of the target to sample (with --target)."),
            click.option("--variant", "variants", multiple=True, envvar=_env("variant"),
                         help="Reference-service variant (repeatable): n_plus_one, no_index, "
                              "new_client_per_call, no_cache, unbounded, high_prefetch "
                              "(with --queue celery)."),
            click.option("--queue", type=click.Choice(["inprocess", "celery"]),
                         default="inprocess", show_default=True,
                         help="Bundled service: research in its in-process pool, or in Celery "
                              "worker processes (needs --broker)."),
            click.option("--broker", help="Bundled service's Celery broker: redis://HOST:6379/N "
                                          "or amqp://USER:PASSWORD@HOST:5672//."),
            click.option("--celery-workers", type=click.IntRange(1), default=2,
                         show_default=True,
                         help="Bundled service's Celery worker processes (--queue celery)."),
            click.option("--envelope", is_flag=True,
                         help="Bundled service answers as the original backend: "
                              "{success, data, message}."),
            click.option("--fast", is_flag=True, envvar=_env("fast"),
                         help="Bundled service with its fast simulated-LLM profile (tens of ms)."),
            click.option("--warmup", default=None, callback=_duration, envvar=_env("warmup"),
                         help="Warm-up shown but kept out of the verdict (default: 10%, max 30s)."),
            click.option("--profile", is_flag=True, envvar=_env("profile"),
                         help="Record the target with py-spy."),
            click.option("--alert-webhook", envvar=_env("alert_webhook"),
                         help="POST alarms as JSON to this URL."),
            click.option("--abort-on-fail", is_flag=True, envvar=_env("abort_on_fail"),
                         help="Stop early when a KPI alarm fires."),
            click.option("--request-timeout", default="60s", show_default=True,
                         callback=_duration, envvar=_env("request_timeout"),
                         help="A request unanswered this long is a failure (scenarios that "
                              "set their own timeout keep it)."),
            click.option("--metrics-path", default="/metrics", show_default=True,
                         help="The target's Prometheus endpoint: a path, or a full URL."),
            click.option("--metrics-auth", envvar="PERFKIT_METRICS_AUTH",
                         help="bearer:TOKEN or basic:USER:PASSWORD for --metrics-path "
                              "(or $PERFKIT_METRICS_AUTH)."),
            click.option("--db-url", help="The target's PostgreSQL, sampled directly: "
                                          "postgresql://USER@HOST/DB."),
            click.option("--redis-url", help="The target's Redis, sampled with INFO: "
                                             "redis://HOST:PORT/DB."),
            click.option("--prometheus-port", type=click.IntRange(0, 65535),
                         help="Serve perfkit's own live metrics on this port (0: any)."),
            click.option("--otlp-endpoint",
                         help="Push perfkit's live metrics to this OTLP/HTTP endpoint."),
            click.option("--extra-latency", multiple=True,
                         help="Bundled service: known slowdown for one endpoint, as "
                              "`perfkit serve --extra-latency` (results=20% or results=20ms)."),
            click.option("--history", default=str(Path("reports") / "history.db"),
                         show_default=True, envvar="PERFKIT_HISTORY",
                         help="History store the run's numbers are appended to: a SQLite "
                              "file or a postgresql:// URL ($PERFKIT_HISTORY); 'off' to "
                              "skip."),
        ]
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def build_settings(command: str, **opts: Any) -> LoadSettings:
    """Settings of a load-generating command, KPI targets included, built once. Arguments
    perfkit does not know go to the locustfile's parser, after those of a locust.conf."""
    from .history import check_history

    ctx = click.get_current_context()
    sources = ctx.find_object(Sources)
    conf_args = sources.locustfile_args if sources else []
    if command in LOAD_COMMANDS:
        # The run's numbers go to the history after the run: its driver is checked before.
        check_history(opts["history"])
    return build_load_settings(
        command, target=opts["target"], scenario=opts["scenario"], users=opts["users"],
        spawn_rate=opts["spawn_rate"], duration=opts["duration"], rate=opts["rate"],
        kpi=opts["kpi_file"], out=opts["out"], workers=opts["workers"],
        target_pid=opts["target_pid"], variants=opts["variants"], fast=opts["fast"],
        warmup=opts["warmup"], profile=opts["profile"], alert_webhook=opts["alert_webhook"],
        abort_on_fail=opts["abort_on_fail"], request_timeout=opts["request_timeout"],
        argv=tuple(sys.argv), service=ServiceOptions(
            queue=opts["queue"], broker=opts["broker"], celery_workers=opts["celery_workers"],
            envelope=opts["envelope"]), observe=Observability(
            metrics_path=opts["metrics_path"], metrics_auth=parse_metrics_auth(
                opts["metrics_auth"]), db_url=opts["db_url"], redis_url=opts["redis_url"],
            prometheus_port=opts["prometheus_port"], otlp_endpoint=opts["otlp_endpoint"]),
        tags=opts["tags"], exclude_tags=opts["exclude_tags"],
        locustfile_args=(*conf_args, *ctx.args), master_bind_host=opts["master_bind_host"],
        master_bind_port=opts["master_bind_port"], expect_workers=opts["expect_workers"],
        expect_workers_timeout=opts["expect_workers_timeout"],
        stop_timeout=opts["stop_timeout"], extra_latency=opts["extra_latency"],
        arrivals=opts["arrivals"])


def _version_message() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in ("perfkit", "locust"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} (not installed)")
    return ", ".join(found)


def _show_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        say(_version_message())
        ctx.exit()


def record_history(result: Any, location: str) -> Any:
    """Append a finished run to the history store (a warning, never a failure); the run."""
    from .history import record_run

    problem = record_run(location, result)
    if problem:
        say(f"perfkit: {problem}")
    return result


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
@click.option("--version", "-V", is_flag=True, expose_value=False, is_eager=True,
              callback=_show_version, help="Show the perfkit and Locust versions and exit.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """perfkit: load, stress and endurance tests of the product-research API, with KPI
    verdicts, regression gating and one self-contained HTML report.

    Options may also come from PERFKIT_* environment variables and from perfkit.toml (or
    [tool.perfkit] in pyproject.toml, or a locust.conf) in the working directory; `perfkit
    config` shows the effective values and where each came from."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    sources = read_sources(Path.cwd(), _command_params(), LOAD_COMMANDS)
    ctx.default_map = sources.default_map
    ctx.obj = sources


def _command_params() -> dict[str, list[tuple[str, list[str]]]]:
    return {name: [(p.name or "", list(p.opts)) for p in command.params
                   if isinstance(p, click.Option)]
            for name, command in cli.commands.items()}


@cli.command(context_settings=LOCUSTFILE_ARGS)
@load_options("60s")
def load(**opts: Any) -> None:
    """Steady load for a duration; writes a run directory and report.html."""
    from .run import runner

    result = runner.run_load(build_settings("load", **opts), say)
    sys.exit(record_history(result, opts["history"]).exit_code)


def _percent(ctx: click.Context, param: click.Parameter, value: str) -> float:
    return parse_quantity(value if value.strip().endswith("%") else f"{value}%", "%")


def _mb_per_h(ctx: click.Context, param: click.Parameter, value: str) -> float:
    number = value.strip().removesuffix("/h").removesuffix("MB").strip()
    try:
        return float(number)
    except ValueError:
        raise click.BadParameter(f"{value!r}: write MB per hour, e.g. 10MB/h") from None


@cli.command(context_settings=LOCUSTFILE_ARGS)
@load_options("30m")
@click.option("--start-users", type=click.IntRange(1),
              help="Users of the first step (closed load; default: the step).")
@click.option("--step-users", type=click.IntRange(1),
              help="Users added per step (closed load; default: what reaches --users, the "
                   "peak, in --max-steps steps).")
@click.option("--start-rate", type=click.FloatRange(min=0, min_open=True),
              help="Arrivals/s of the first step (with --rate; default: the step).")
@click.option("--step-rate", type=click.FloatRange(min=0, min_open=True),
              help="Arrivals/s added per step (with --rate, the peak; default: what reaches "
                   "it in --max-steps steps).")
@click.option("--step-duration", default="30s", show_default=True, callback=_duration,
              help="Length of each step.")
@click.option("--max-steps", type=click.IntRange(1, 100), default=10, show_default=True,
              help="Most steps of the ramp.")
@click.option("--max-error-rate", default="1%", show_default=True, callback=_percent,
              help="A step whose requests fail more often than this breaks.")
def stress(start_users: int | None, step_users: int | None, start_rate: float | None,
           step_rate: float | None, step_duration: float, max_steps: int,
           max_error_rate: float, **opts: Any) -> None:
    """Stepwise ramp until a KPI breaks; reports the capacity and how the target broke.

    A closed load ramps users from --start-users by --step-users up to --users, the peak. An
    open load (--rate) ramps arrivals/s from --start-rate by --step-rate up to --rate, the
    peak; each step's users, only its concurrency cap, are sized from its rate and the latency
    seen (at most --users, where given). Where a step breaks a CPU KPI the capacity at that
    limit is estimated from the measured CPU per request. Exit 0 pass or warn (capacity only
    estimated), 1 capacity below the throughput KPI or none found, 3 nothing measured."""
    from .run.stress import run_stress
    from .settings import StressSettings

    # With --rate, --users caps the concurrency only when the user set it (the default 10
    # would starve a slow target's open load).
    users_source = click.get_current_context().get_parameter_source("users")
    result = run_stress(StressSettings(
        load=build_settings("stress", **opts), start_users=start_users, step_users=step_users,
        start_rate=start_rate, step_rate=step_rate, step_duration_s=step_duration,
        max_steps=max_steps, max_error_rate_percent=max_error_rate,
        users_given=users_source is not click.core.ParameterSource.DEFAULT), say)
    sys.exit(record_history(result, opts["history"]).exit_code)


@cli.command(context_settings=LOCUSTFILE_ARGS)
@load_options("1h")
@click.option("--leak-threshold", default="10MB/h", show_default=True, callback=_mb_per_h,
              help="Memory growth that counts as a leak once the whole CI of the continuing "
                   "growth is above it.")
def endurance(leak_threshold: float, **opts: Any) -> None:
    """Long steady run: memory growth (MB/h with a CI), latency drift, error budget.

    Memory growth is judged on whether it continues: where the growth changed (a warm-up
    that stopped), a two-segment fit finds it and the later slope decides, so caches and
    pools that fill and stay flat are no leak. LEAK (verdict fail, exit 1): the 95 % CI
    of that slope lies above --leak-threshold. NO LEAK: below it, after at least 2 min of
    flat memory following any warm-up growth — a run needs 2 min plus --warmup plus the
    target's own warm-up (10 min or more for a noisy target such as the bundled service).
    INCONCLUSIVE (verdict warn, exit 0): the run is too short or too noisy to tell; a
    shorter run still proves a leak when the growth's lower bound is above 10 times the
    threshold. An exhausted error budget fails the run; a p95 that drifts up by x1.5 and
    10 ms or more from the first to the last 20 % warns.

    Exit codes: 0 pass or warn, 1 fail (a leak, the error budget, a KPI, a run that did
    not complete), 2 usage or environment error, 3 not judged, 130 interrupted.
    """
    from .run.endurance import run_endurance
    from .settings import EnduranceSettings

    result = run_endurance(EnduranceSettings(
        load=build_settings("endurance", **opts), leak_threshold_mb_h=leak_threshold), say)
    sys.exit(record_history(result, opts["history"]).exit_code)


@cli.command()
@click.option("--master", required=True, envvar=_env("master"),
              help="HOST[:PORT] of the master (port 5557 by default). The master sends the "
                   "scenario and the run's settings; nothing else is needed.")
@click.option("--connect-timeout", default="60s", show_default=True, callback=_duration,
              envvar=_env("connect_timeout"),
              help="Keep asking the master for this long (it may start after the worker).")
def worker(master: str, connect_timeout: float) -> None:
    """Join a perfkit master as a Locust worker (distributed load, docs/distributed.md).

    The master (perfkit load --master-bind-host ... --expect-workers N) sends the scenario
    file and the run's settings (users, rate, tags, request timeout, the locustfile's own
    arguments) and refuses a worker of another perfkit version. Open the master's port
    (5557 by default) from the workers' machines; the workers need no port open. Run about
    one worker per core of a machine.
    """
    from .run import distributed

    sys.exit(distributed.run_worker(master, say, connect_timeout))


@cli.command("config", context_settings=LOCUSTFILE_ARGS)
@click.argument("command", default="load")
@click.pass_context
def show_config(ctx: click.Context, command: str) -> None:
    """The effective options of COMMAND (load by default) and where each came from: the
    command line (perfkit config load -u 5), PERFKIT_* variables, perfkit.toml,
    locust.conf or the default."""
    target = cli.commands.get(command)
    if target is None or command == "config":
        raise click.BadParameter(f"no command {command!r}", param_hint="COMMAND")
    assert ctx.parent is not None
    sources: Sources = ctx.find_object(Sources) or Sources()
    sub = target.make_context(command, list(ctx.args), parent=ctx.parent,
                              resilient_parsing=True)
    say(f"perfkit {command}: effective options (files read: "
        f"{', '.join(sources.files) or 'none'})")
    for param in target.params:
        if not isinstance(param, click.Option) or param.name is None:
            continue
        source = sub.get_parameter_source(param.name)
        where = {click.core.ParameterSource.COMMANDLINE: "command line",
                 click.core.ParameterSource.ENVIRONMENT: f"environment {_envvar(param, sub)}",
                 click.core.ParameterSource.DEFAULT_MAP:
                     sources.origins.get((command, param.name), "settings file"),
                 }.get(source, "default") if source else "default"  # type: ignore[arg-type]
        say(f"  {param.name:24} {_shown(sub.params.get(param.name))!s:28} {where}")
    if command in LOAD_COMMANDS:
        args = [*sources.locustfile_args, *sub.args]
        say(f"  {'locustfile arguments':24} {' '.join(args) or '-'}")


def _envvar(param: click.Option, ctx: click.Context) -> str:
    if isinstance(param.envvar, str):
        return param.envvar
    return f"{ctx.auto_envvar_prefix}_{(param.name or '').upper()}"


def _shown(value: Any) -> str:
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value) or "-"
    return "-" if value is None else str(value)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--database-url", help="SQLAlchemy async URL (default: SQLite file, WAL).")
@click.option("--redis-url", help="Redis for the result cache (default: in-process TTL cache).")
@click.option("--variant", "variants", multiple=True,
              help="Variant to run (repeatable): n_plus_one, no_index, new_client_per_call, "
                   "no_cache, unbounded, high_prefetch (with --queue celery).")
@click.option("--fast", is_flag=True, help="Fast simulated-LLM profile (tens of ms per item).")
@click.option("--item-latency-ms", type=click.FloatRange(0),
              help="Median simulated LLM latency per call (default: 8000, --fast 30).")
@click.option("--latency-sigma", type=click.FloatRange(0),
              help="Spread of that latency (lognormal sigma; default 0.3).")
@click.option("--error-rate", type=click.FloatRange(0, 1),
              help="Share of LLM calls that fail transiently (default 0.02, --fast 0).")
@click.option("--insufficient-rate", type=click.FloatRange(0, 1),
              help="Share of LLM answers too thin to use (default 0.05, --fast 0).")
@click.option("--concurrency", type=click.IntRange(1), default=5, show_default=True,
              help="Research slots (semaphore size).")
@click.option("--extra-latency", multiple=True,
              help="Known slowdown for one endpoint: results=20ms or results=20% "
                   "(health, create, status, results, cancel; repeatable).")
@click.option("--seed", type=int, help="Seed of the simulated LLM's randomness.")
@click.option("--slow-query-ms", type=click.FloatRange(0), default=100.0, show_default=True,
              help="Queries at least this slow are listed in /api/v1/metrics/database.")
@click.option("--queue", type=click.Choice(["inprocess", "celery"]), default="inprocess",
              show_default=True,
              help="Where research runs: the in-process pool, or Celery worker processes "
                   "(needs --broker).")
@click.option("--broker", help="Celery broker: redis://HOST:6379/N or "
                               "amqp://USER:PASSWORD@HOST:5672//.")
@click.option("--celery-workers", type=click.IntRange(1), default=2, show_default=True,
              help="Celery worker processes, started and stopped with the service.")
@click.option("--prefetch-multiplier", type=click.IntRange(1),
              help="Tasks a Celery worker reserves ahead (default 1; 16 under high_prefetch).")
@click.option("--max-tasks-per-child", type=click.IntRange(1), default=100, show_default=True,
              help="Recycle a Celery worker process after this many tasks.")
@click.option("--result-expires-s", type=click.FloatRange(0, min_open=True), default=3600.0,
              show_default=True, help="How long Celery keeps a task result (callbacks only).")
@click.option("--queue-prefix", default="perfkit", show_default=True,
              help="Queue names PREFIX.research and PREFIX.callbacks: one service per prefix "
                   "on a broker.")
@click.option("--envelope", is_flag=True,
              help="Answer the research routes as {success, data, message}.")
@click.option("--max-queued-jobs", type=click.IntRange(1), default=200, show_default=True,
              help="Unfinished jobs accepted before creates are answered 503 with Retry-After.")
@click.option("--max-body-bytes", type=click.IntRange(1024), default=1_000_000,
              show_default=True, help="Larger request bodies are answered 413 unread.")
@click.option("--instance-id",
              help="This instance's name on its jobs: a restart cancels only its own jobs in a "
                   "shared database (default: HOST:PORT, random with --port 0).")
def serve(**opts: Any) -> None:
    """Run the bundled reference research service until interrupted."""
    from .reference import server

    if str(opts["database_url"] or "").startswith("postgresql"):
        require_extra("--database-url postgresql+asyncpg://", "postgres", "asyncpg")
    server.serve_forever(say=say, **opts)


@cli.command()
@click.argument("url")
@click.option("-c", "--concurrency", type=click.IntRange(1), default=1, show_default=True,
              help="Concurrent connections, each sending its next request on the last answer.")
@click.option("-n", "--requests", type=click.IntRange(1), help="Total requests.")
@click.option("-d", "--duration", callback=_duration, help="Run length instead of -n: 30s, 5m.")
@click.option("-m", "--method", default="GET", show_default=True)
@click.option("-H", "--header", "headers", multiple=True, help="'Name: value' (repeatable).")
@click.option("--body", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="File sent as the request body.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True, help="Per-request timeout in seconds.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the result in the summary.json shape of a run.")
@click.option("--max-failures", default="0", show_default=True,
              help="Failed requests (non-2xx, timeout, connection error) allowed before the "
                   "exit code is 1: a count (5) or a share of the requests (1%).")
def bench(**opts: Any) -> None:
    """Quick fixed-concurrency HTTP benchmark of one URL, with exact percentiles.

    Exit code: 0 when no request failed, or no more than --max-failures allows; 1 when more
    failed; 2 on a usage error or an unreachable target.
    """
    from . import bench as quick_bench

    max_failures, max_failures_percent = quick_bench.parse_max_failures(opts["max_failures"])
    settings = quick_bench.BenchSettings(
        url=opts["url"], concurrency=opts["concurrency"], requests=opts["requests"],
        duration_s=opts["duration"], method=opts["method"].upper(),
        headers=tuple(quick_bench.parse_header(h) for h in opts["headers"]),
        body=opts["body"].read_bytes() if opts["body"] else None,
        timeout_s=opts["timeout"], json_path=opts["json_path"], max_failures=max_failures,
        max_failures_percent=max_failures_percent)
    result = quick_bench.run_bench(settings, say)
    sys.exit(quick_bench.bench_exit_code(result))


@cli.command()
@click.option("--pid", type=int, required=True, help="Root of the process tree to watch.")
@click.option("--interval", default="1s", show_default=True, callback=_duration,
              help="Time between samples.")
@click.option("--duration", callback=_duration, help="Stop after this long (default: Ctrl-C).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also record every sample to this CSV file.")
def monitor(**opts: Any) -> None:
    """Live CPU, memory, threads, I/O and network of a process tree, like top."""
    from . import monitor as live_monitor

    live_monitor.run_monitor(live_monitor.MonitorSettings(
        pid=opts["pid"], interval_s=opts["interval"], duration_s=opts["duration"],
        csv_path=opts["csv_path"], live=sys.stdout.isatty()), say)


@cli.command()
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@click.option("--kpi", "kpi_file", type=click.Path(dir_okay=False, path_type=Path),
              help="KPI targets (TOML) instead of the ones the run recorded.")
def report(run: Path, kpi_file: Path | None) -> None:
    """Rebuild report.html, summary.json/.md and junit.xml of a run; exit 1 on a failed KPI."""
    from .report import REPORT_HTML, rebuild_report

    result = rebuild_report(run, kpi_file)
    say(f"verdict: {(result.verdict or '').upper()}")
    say(f"report: {result.run_dir / REPORT_HTML}")
    sys.exit({"error": 3, "fail": 1}.get(result.verdict or "", 0))


@cli.command()
@click.option("--pid", type=int, required=True, help="Python process to record (with children).")
@click.option("--duration", default="30s", show_default=True, callback=_duration,
              help="How long to record.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Directory for profile.svg and profile.speedscope.json.")
@click.option("--rate", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="Samples per second.")
@click.option("--memory", is_flag=True,
              help="Top allocation sites with memray instead of a CPU flamegraph.")
def profile(**opts: Any) -> None:
    """Flamegraph of a running Python process with py-spy (or its allocations with memray)."""
    from . import profiling

    if opts["memory"]:
        require_extra("perfkit profile --memory", "memory", "memray")
    profiling.run_profile(profiling.ProfileSettings(
        pid=opts["pid"], duration_s=opts["duration"], out_dir=opts["out"],
        rate_hz=opts["rate"], memory=opts["memory"]), say)


def _threshold_option(func: Any) -> Any:
    options = [
        click.option("--threshold", "thresholds", multiple=True,
                     help="Practical threshold: 10% for every metric, p99_ms=20% for one "
                          "(repeatable; default 10%)."),
        click.option("--confidence", type=click.FloatRange(0.5, 1.0, max_open=True),
                     default=0.99, show_default=True,
                     help="Statistical confidence for the comparison as a whole."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _compare_settings(thresholds: tuple[str, ...], confidence: float,
                      warmup_s: float | None = None, baseline_runs: int = 1) -> Any:
    from .analysis.compare import CompareSettings, parse_thresholds

    default, per_metric = parse_thresholds(thresholds)
    # A baseline saved from several runs is there to be judged against their spread.
    return CompareSettings(thresholds=per_metric, default_threshold=default,
                           confidence=confidence, warmup_s=warmup_s,
                           between_runs=baseline_runs > 1)


def _compare_and_report(baselines: list[Any], currents: list[Any], settings: Any,
                        out: Path) -> int:
    """Compare runs (RunResults), write compare.* and junit.xml into `out`, print the verdict;
    1 on regression."""
    from .analysis.compare import compare_runs
    from .report.compare_html import describe_evidence, headline, write_compare_report

    comparison = compare_runs(baselines, currents, settings)
    html_path = write_compare_report(comparison, baselines, currents, out)
    for m in comparison.regressed:
        say(f"  regressed: {m.subject} {m.metric} {m.baseline:.4g} -> {m.current:.4g} {m.unit} "
            f"(x{m.ratio:.3f}, CI {m.ci_low:.3f}..{m.ci_high:.3f})")
    say(f"compare: evidence {describe_evidence(comparison)}")
    environment = comparison.environment
    if environment.get("note"):
        say(f"compare: {environment['note']}")
    if environment.get("explained"):
        say(f"  inconclusive, not regressed, as the machine explains them: "
            f"{', '.join(environment['explained'])}")
    if environment.get("unexplained"):
        say(f"  regressed by more than the busier machine explains "
            f"(x{environment['explainable_ratio']:.2f} at most): "
            f"{', '.join(environment['unexplained'])}")
    say(f"compare: {headline(comparison)}")
    say(f"report: {html_path}")
    return 1 if comparison.regressed else 0


@cli.command()
@click.argument("baseline_ref", metavar="BASELINE")
@click.argument("current", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Where compare.html/.md/.json and junit.xml go (default CURRENT/compare).")
@_threshold_option
@click.option("--warmup", default=None, callback=_duration,
              help="Warm-up left out of both runs (default: each run's own).")
def compare(baseline_ref: str, current: Path, out: Path | None, thresholds: tuple[str, ...],
            confidence: float, warmup: float | None) -> None:
    """Compare a baseline (run directory or saved name) with a run; exit 1 on a regression
    (not when the machine was busier in the run than in the baseline: inconclusive, exit 0)."""
    from . import rundir
    from .baseline import resolve_baseline

    baselines = [rundir.load_run(path) for path in resolve_baseline(baseline_ref, Path("reports"))]
    settings = _compare_settings(thresholds, confidence, warmup, len(baselines))
    sys.exit(_compare_and_report(baselines, [rundir.load_run(current)], settings,
                                 out or current / "compare"))


@cli.command(context_settings=LOCUSTFILE_ARGS)
@click.option("--baseline", "baseline_ref", required=True,
              help="Run directory or saved baseline name (reports/baselines/NAME).")
@click.option("--repeat", type=click.IntRange(1, 20), default=1, show_default=True,
              help="Run N times and compare all N runs, pooled, with the baseline.")
@_threshold_option
@load_options("60s")
def regression(baseline_ref: str, repeat: int, thresholds: tuple[str, ...], confidence: float,
               **opts: Any) -> None:
    """Run the scenario, then compare with a baseline; exit 1 on a regression or failed KPI."""
    import dataclasses

    from . import rundir
    from .baseline import resolve_baseline
    from .run import runner

    settings = build_settings("regression", **opts)
    baselines = [rundir.load_run(path)
                 for path in resolve_baseline(baseline_ref, settings.reports_dir)]
    compare_settings = _compare_settings(thresholds, confidence, baseline_runs=len(baselines))
    runs = []
    for i in range(repeat):
        out = settings.out / f"run-{i + 1}" if settings.out and repeat > 1 else settings.out
        runs.append(record_history(runner.run_load(dataclasses.replace(settings, out=out), say),
                                   opts["history"]))
    out_dir = (settings.out if settings.out and repeat > 1 else runs[-1].run_dir) / "compare"
    compared = _compare_and_report(baselines, runs, compare_settings, out_dir)
    sys.exit(max(max(run.exit_code for run in runs), compared))


@cli.group()
def baseline() -> None:
    """Keep runs as baselines under reports/baselines/NAME (small enough to commit)."""


@baseline.command("save")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", required=True, help="Baseline name.")
@click.option("--reports-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("reports"), show_default=True)
def baseline_save(runs: tuple[Path, ...], name: str, reports_dir: Path) -> None:
    """Copy runs' data files (not their reports or profiles) into reports/baselines/NAME.

    Several runs of one scenario (3 or more) make a baseline that comparisons judge against
    the spread between its runs, not only the noise within them."""
    from .baseline import save_baseline

    path = save_baseline(list(runs), name, reports_dir)
    size_kb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1024
    plural = f", {len(runs)} runs" if len(runs) > 1 else ""
    say(f"baseline {name}: {path} ({size_kb:.0f} kB{plural})")


@baseline.command("list")
@click.option("--reports-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("reports"), show_default=True)
def baseline_list(reports_dir: Path) -> None:
    """The saved baselines: name, scenario, duration, variants, size, runs."""
    from .baseline import list_baselines

    rows = list_baselines(reports_dir)
    if not rows:
        say(f"no baselines in {reports_dir / 'baselines'}")
    for row in rows:
        variants = ",".join(row["variants"]) or "-"
        say(f"{row['name']:24} {row['scenario']!s:12} {row['duration_s'] or 0:>6.0f} s  "
            f"variants {variants:10} {row['size_kb']:7.0f} kB  runs {row['runs']}")


@cli.group()
def history() -> None:
    """Every run's numbers over time: import, list, change points (docs/regression.md)."""


def _history_option(func: Any) -> Any:
    return click.option("--history", "location", default=str(Path("reports") / "history.db"),
                        show_default=True, envvar="PERFKIT_HISTORY",
                        help="SQLite file or postgresql:// URL (or $PERFKIT_HISTORY).")(func)


@history.command("import")
@click.argument("run_dirs", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@_history_option
def history_import(run_dirs: tuple[Path, ...], location: str) -> None:
    """Add run directories (or saved baselines) to the history."""
    from .history import import_runs, open_history

    for run_id, rows in import_runs(open_history(location), run_dirs):
        say(f"imported {run_id} ({rows} metrics)")


@history.command("list")
@_history_option
@click.option("--scenario", help="Only runs of this scenario.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help='Write {"runs": [...]} to this file.')
def history_list(location: str, scenario: str | None, json_path: Path | None) -> None:
    """The runs in the history, oldest first."""
    from .history import list_runs, open_history
    from .report.history_html import format_run_line, write_json

    runs = list_runs(open_history(location), scenario=scenario)
    for run in runs:
        say(format_run_line(run))
    say(f"{len(runs)} runs in {location}")
    if json_path is not None:
        write_json(json_path, {"runs": runs})


@history.command("analyze")
@_history_option
@click.option("--scenario", help="Only runs of this scenario.")
@click.option("--min-change", default="10%", show_default=True, callback=_percent,
              help="Smallest change of level that counts.")
@click.option("--metric", "metrics", multiple=True,
              help="Metric to search (repeatable; default p50/p95/p99, rps, CPU, RSS).")
@click.option("--min-runs", type=click.IntRange(2), default=4, show_default=True,
              help="Runs needed on each side of a change point.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help='Write {"change_points": [...]} to this file.')
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("reports"),
              show_default=True, help="Where history.html and history.md go.")
@click.option("--fail-on-regression", is_flag=True,
              help="Exit 1 when a regression change point lies in the newest runs.")
@click.option("--newest", type=click.IntRange(1), default=5, show_default=True,
              help="How many of the newest runs --fail-on-regression looks at.")
def history_analyze(location: str, scenario: str | None, min_change: float,
                    metrics: tuple[str, ...], min_runs: int, json_path: Path | None, out: Path,
                    fail_on_regression: bool, newest: int) -> None:
    """Change points per scenario, endpoint and metric; history.html and history.md."""
    import dataclasses

    from .analysis.history import ChangePointSettings, detect_change_points, regressions_in_newest
    from .history import list_runs, load_series, open_history
    from .report.history_html import format_change_point, write_history_report

    store = open_history(location)
    runs = list_runs(store, scenario=scenario)
    series = load_series(store, runs)
    settings = ChangePointSettings(min_change=min_change / 100.0, min_runs=min_runs)
    if metrics:
        settings = dataclasses.replace(settings, metrics=metrics)
    change_points = detect_change_points(runs, series, settings)
    for cp in change_points:
        say(format_change_point(cp))
    say(f"{len(change_points)} change points in {len(runs)} runs ({len(series)} series)")
    for path in write_history_report(runs, series, change_points, out, json_path):
        say(f"wrote {path}")
    recent = regressions_in_newest(change_points, runs, newest)
    if fail_on_regression and recent:
        say(f"history: {len(recent)} regression change points in the newest {newest} runs")
        sys.exit(1)


@cli.command()
@click.option("--a", "a_opts", default="", help="Bundled service options of A, e.g. '--fast'.")
@click.option("--b", "b_opts", default="",
              help="Bundled service options of B, e.g. '--fast --variant n_plus_one'.")
@click.option("--a-cmd", help="Command that starts target A on {port} (instead of --a).")
@click.option("--b-cmd", help="Command that starts target B on {port} (instead of --b).")
@click.option("--repeat", type=click.IntRange(2, 50), default=5, show_default=True,
              help="Pairs of runs (A B B A ...), each on a freshly started target.")
@click.option("--threshold", default="10%", show_default=True, callback=_percent,
              help="Practical threshold of the ratio B/A.")
@click.option("--confidence", type=click.FloatRange(0.5, 1.0, max_open=True), default=0.95,
              show_default=True, help="Confidence for the trial as a whole (all metrics).")
@click.option("--fail-on-inconclusive", is_flag=True,
              help="Exit 1 when the trials cannot tell (default: exit 0 with a line saying so).")
@click.option("--simultaneous", is_flag=True,
              help="Each trial starts A and B and loads both at once from one load generator "
                   "(each gets --users and --rate): far less noise than separate runs.")
@load_options("20s")
def ab(a_opts: str, b_opts: str, a_cmd: str | None, b_cmd: str | None, repeat: int,
       threshold: float, confidence: float, fail_on_inconclusive: bool, simultaneous: bool,
       **opts: Any) -> None:
    """A/B trials on this machine, interleaved runs or --simultaneous; exit 1 when B is slower
    than A."""
    from .analysis.history import TrialSettings, ab_exit_code
    from .run.ab import AbSettings, Arm, run_ab

    result = run_ab(AbSettings(
        load=build_settings("ab", **opts), a=Arm.parse("A", a_opts, a_cmd),
        b=Arm.parse("B", b_opts, b_cmd), repeat=repeat, simultaneous=simultaneous,
        trial=TrialSettings(threshold=threshold / 100.0, confidence=confidence)), say)
    sys.exit(ab_exit_code(result.verdict, fail_on_inconclusive))
def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def spread_tags(args: list[str]) -> list[str]:
    """Locust's `--tags a b c` as click's `--tags a --tags b --tags c`: click options take
    one value each."""
    spread: list[str] = []
    tag_option: str | None = None
    for arg in args:
        if arg in ("-T", "--tags", "-E", "--exclude-tags"):
            tag_option = arg
            spread.append(arg)
            continue
        if tag_option is not None and not arg.startswith("-") and spread[-1] != tag_option:
            spread.append(tag_option)
        if arg.startswith("-"):
            tag_option = None
        spread.append(arg)
    return spread


def main() -> None:
    # SIGTERM (a CI job cancelled) and SIGHUP (the terminal closed) stop perfkit as Ctrl-C
    # does, so every `finally` runs: the managed service and workers are stopped. During a
    # run the runner handles them itself and still writes the report. SIGINT too, even when
    # inherited ignored (a shell script's `perfkit ... &`): Python then installs no handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    try:
        cli.main(args=spread_tags(sys.argv[1:]), standalone_mode=False,
                 auto_envvar_prefix="PERFKIT")
    except click.exceptions.Abort:
        click.echo("perfkit: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        # One line, not click's usage block.
        click.echo(f"perfkit: {exc.format_message()}", err=True)
        sys.exit(2)
    except InternalError as exc:
        click.echo(f"perfkit: {exc}", err=True)
        sys.exit(3)
    except PerfkitError as exc:
        click.echo(f"perfkit: {exc}", err=True)
        sys.exit(2)
    except Exception as exc:  # the last boundary: a bug outside a run directory
        with tempfile.NamedTemporaryFile("w", prefix="perfkit-crash-", suffix=".log",
                                         delete=False) as crash:
            crash.write(traceback.format_exc())
        click.echo(f"perfkit: internal error: {type(exc).__name__}: {exc} (traceback in "
                   f"{crash.name})", err=True)
        sys.exit(3)
