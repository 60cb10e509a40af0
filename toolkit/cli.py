"""The perfkit command line: click commands only. The options come from options.py's table;
settings are built once here and passed down as typed objects; errors become exit codes."""

import logging
import os
import signal
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

import click

from .errors import InternalError, PerfkitError
from .options import LOAD, click_options, env_names, find_option, given, show_version
from .settings import LoadSettings, build_load_settings, require_extra
from .settings_sources import Sources, read_sources

log = logging.getLogger(__name__)


def say(message: str) -> None:
    """The one place terminal output for people goes through."""
    click.echo(message)


def say_err(message: str) -> None:
    """say() on stderr: with Locust's --json, stdout carries only Locust's JSON."""
    click.echo(message, err=True)


# A load command takes the arguments it does not know itself along to the locustfile's own
# parser (its init_command_line_parser options, and User class names), as `locust` does.
LOCUSTFILE_ARGS = {"ignore_unknown_options": True, "allow_extra_args": True}


def build_settings(command: str, opts: dict[str, Any]) -> LoadSettings:
    """Settings of a load-generating command, KPI targets included, built once. Arguments
    perfkit does not know go to the locustfile's parser, with a Locust config file's items
    that no option of perfkit's takes."""
    from .history import check_history

    ctx = click.get_current_context()
    sources = ctx.find_object(Sources) or Sources()
    settings = build_load_settings(
        command, opts, given=frozenset(name for name in opts if given(ctx, name)),
        locustfile_args=ctx.args, locustfile_config=sources.locustfile_config,
        argv=tuple(sys.argv))
    if command != "ab":
        # The run's numbers go to the history after the run: its driver is checked before.
        check_history(settings.history)
    return settings


def output(settings: LoadSettings) -> Any:
    """Where a run's lines go: stdout, or stderr when Locust's --json has stdout."""
    return say_err if settings.locust_outputs.json_stdout else say


def record_history(result: Any, settings: LoadSettings) -> Any:
    """Append a finished run to the history store (a warning, never a failure); the run."""
    from .history import record_run

    problem = record_run(settings.history, result)
    if problem:
        output(settings)(f"perfkit: {problem}")
    return result


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
@click.option("--version", "-V", is_flag=True, expose_value=False, is_eager=True,
              callback=show_version, help="Show the perfkit and Locust versions and exit.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """perfkit: load, stress and endurance tests of the product-research API, with KPI
    verdicts, regression gating and one self-contained HTML report.

    Options may also come from PERFKIT_* (and Locust's LOCUST_*) environment variables, from
    --config FILE, from perfkit.toml (or [tool.perfkit] in pyproject.toml) and from Locust's
    config files (locust.conf, [tool.locust], ~/.locust.conf); `perfkit config COMMAND` shows
    the effective values and where each came from."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    config_file = (ctx.obj or {}).get("config") if isinstance(ctx.obj, dict) else None
    sources = read_sources(Path.cwd(), config_file)
    ctx.default_map = sources.default_map
    ctx.obj = sources


@cli.command(context_settings=LOCUSTFILE_ARGS)
@click_options("load")
def load(**opts: Any) -> None:
    """Steady load for a duration; writes a run directory and report.html.

    [USERCLASS ...] and the locustfile's own options may follow, as with `locust`."""
    from .run import runner

    settings = build_settings("load", opts)
    result = runner.run_load(settings, output(settings))
    sys.exit(record_history(result, settings).exit_code)


@cli.command(context_settings=LOCUSTFILE_ARGS)
@click_options("stress")
def stress(**opts: Any) -> None:
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
    settings = build_settings("stress", opts)
    result = run_stress(StressSettings(
        load=settings, start_users=opts["start_users"], step_users=opts["step_users"],
        start_rate=opts["start_rate"], step_rate=opts["step_rate"],
        step_duration_s=opts["step_duration"], max_steps=opts["max_steps"],
        max_error_rate_percent=opts["max_error_rate"],
        users_given=given(click.get_current_context(), "users")), output(settings))
    sys.exit(record_history(result, settings).exit_code)


@cli.command(context_settings=LOCUSTFILE_ARGS)
@click_options("endurance")
def endurance(**opts: Any) -> None:
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

    settings = build_settings("endurance", opts)
    result = run_endurance(EnduranceSettings(
        load=settings, leak_threshold_mb_h=opts["leak_threshold"]), output(settings))
    sys.exit(record_history(result, settings).exit_code)


@cli.command()
@click_options("worker")
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
    """The effective options of COMMAND (load by default; `history analyze` for a group's)
    and where each came from: the command line (perfkit config load -u 5), PERFKIT_* and
    LOCUST_* variables, --config FILE, perfkit.toml, Locust's config files or the default."""
    args = list(ctx.args)
    target = cli.commands.get(command)
    if isinstance(target, click.Group) and args:
        target, command = target.commands.get(args[0]), f"{command} {args.pop(0)}"
    if target is None or isinstance(target, click.Group) or command == "config":
        raise click.BadParameter(f"no command {command!r}", param_hint="COMMAND")
    sources: Sources = ctx.find_object(Sources) or Sources()
    sub = target.make_context(command, args, parent=ctx.parent, resilient_parsing=True,
                              default_map=sources.defaults_of(command))
    say(f"perfkit {command}: effective options (files read: "
        f"{', '.join(sources.files) or 'none'})")
    for param in target.params:
        if not isinstance(param, click.Option) or param.name is None or param.hidden \
                or not param.expose_value:
            continue
        source = sub.get_parameter_source(param.name)
        where = {click.core.ParameterSource.COMMANDLINE: "command line",
                 click.core.ParameterSource.ENVIRONMENT:
                     f"environment {_envvar(command, param.name)}",
                 click.core.ParameterSource.DEFAULT_MAP:
                     sources.origins.get((command, param.name), "settings file"),
                 }.get(source, "default") if source else "default"  # type: ignore[arg-type]
        say(f"  {param.name:24} {_shown(sub.params.get(param.name))!s:28} {where}")
    if command in LOAD:
        say(f"  {'locustfile arguments':24} {' '.join(sub.args) or '-'}")
        config = " ".join(f"{key}={_shown(value)}" for key, value in sources.locustfile_config)
        say(f"  {'locustfile config':24} {config or '-'}")


def _envvar(command: str, name: str) -> str:
    """The variable that gave the option its value: the first of its names that is set."""
    names = env_names(find_option(command, name), command)
    return next((n for n in names if n in os.environ), names[0])


def _shown(value: Any) -> str:
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value) or "-"
    return "-" if value is None else str(value)


@cli.command()
@click_options("serve")
def serve(**opts: Any) -> None:
    """Run the bundled reference research service until interrupted."""
    from .reference import server

    if str(opts["database_url"] or "").startswith("postgresql"):
        require_extra("--database-url postgresql+asyncpg://", "postgres", "asyncpg")
    server.serve_forever(say=say, **opts)


@cli.command()
@click.argument("url")
@click_options("bench")
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
@click_options("monitor")
def monitor(**opts: Any) -> None:
    """Live CPU, memory, threads, I/O and network of a process tree, like top."""
    from . import monitor as live_monitor

    live_monitor.run_monitor(live_monitor.MonitorSettings(
        pid=opts["pid"], interval_s=opts["interval"], duration_s=opts["duration"],
        csv_path=opts["csv_path"], live=sys.stdout.isatty()), say)


@cli.command()
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@click_options("report")
def report(run: Path, kpi_file: Path | None) -> None:
    """Rebuild report.html, summary.json/.md and junit.xml of a run; exit 1 on a failed KPI."""
    from .report import REPORT_HTML, rebuild_report

    result = rebuild_report(run, kpi_file)
    say(f"verdict: {(result.verdict or '').upper()}")
    say(f"report: {result.run_dir / REPORT_HTML}")
    sys.exit({"error": 3, "fail": 1}.get(result.verdict or "", 0))


@cli.command()
@click_options("profile")
def profile(**opts: Any) -> None:
    """Flamegraph of a running Python process with py-spy (or its allocations with memray)."""
    from . import profiling

    if opts["memory"]:
        require_extra("perfkit profile --memory", "memory", "memray")
    profiling.run_profile(profiling.ProfileSettings(
        pid=opts["pid"], duration_s=opts["duration"], out_dir=opts["out"],
        rate_hz=opts["rate"], memory=opts["memory"]), say)


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
@click_options("compare")
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
@click_options("regression")
def regression(**opts: Any) -> None:
    """Run the scenario, then compare with a baseline; exit 1 on a regression or failed KPI."""
    import dataclasses

    from . import rundir
    from .baseline import resolve_baseline
    from .run import runner

    settings = build_settings("regression", opts)
    baselines = [rundir.load_run(path)
                 for path in resolve_baseline(opts["baseline_ref"], settings.reports_dir)]
    compare_settings = _compare_settings(opts["thresholds"], opts["confidence"],
                                         baseline_runs=len(baselines))
    repeat = opts["repeat"]
    runs = []
    for i in range(repeat):
        out = settings.out / f"run-{i + 1}" if settings.out and repeat > 1 else settings.out
        runs.append(record_history(runner.run_load(dataclasses.replace(settings, out=out),
                                                   output(settings)), settings))
    out_dir = (settings.out if settings.out and repeat > 1 else runs[-1].run_dir) / "compare"
    compared = _compare_and_report(baselines, runs, compare_settings, out_dir)
    sys.exit(max(max(run.exit_code for run in runs), compared))


@cli.group()
def baseline() -> None:
    """Keep runs as baselines under reports/baselines/NAME (small enough to commit)."""


@baseline.command("save")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click_options("baseline save")
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
@click_options("baseline list")
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


@history.command("import")
@click.argument("run_dirs", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click_options("history import")
def history_import(run_dirs: tuple[Path, ...], location: str) -> None:
    """Add run directories (or saved baselines) to the history."""
    from .history import import_runs, open_history

    for run_id, rows in import_runs(open_history(location), run_dirs):
        say(f"imported {run_id} ({rows} metrics)")


@history.command("list")
@click_options("history list")
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
@click_options("history analyze")
def history_analyze(location: str, scenario: str | None, min_change: float,
                    metrics: tuple[str, ...], min_runs: int, json_path: Path | None,
                    kpi_file: Path | None, out: Path, fail_on_regression: bool,
                    newest: int) -> None:
    """Change points per scenario, endpoint and metric; history.html and history.md."""
    import dataclasses

    from .analysis.history import ChangePointSettings, detect_change_points, regressions_in_newest
    from .history import list_runs, load_series, open_history
    from .kpi_file import load_kpi_targets
    from .report.history_html import format_change_point, write_history_report

    kpis = load_kpi_targets(kpi_file)
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
    for path in write_history_report(runs, series, change_points, out, json_path, kpis):
        say(f"wrote {path}")
    recent = regressions_in_newest(change_points, runs, newest)
    if fail_on_regression and recent:
        say(f"history: {len(recent)} regression change points in the newest {newest} runs")
        sys.exit(1)


@cli.command()
@click_options("ab")
def ab(**opts: Any) -> None:
    """A/B trials on this machine, interleaved runs or --simultaneous; exit 1 when B is slower
    than A."""
    from .analysis.history import TrialSettings, ab_exit_code
    from .run.ab import AbSettings, Arm, run_ab

    result = run_ab(AbSettings(
        load=build_settings("ab", opts), a=Arm.parse("A", opts["a_opts"], opts["a_cmd"]),
        b=Arm.parse("B", opts["b_opts"], opts["b_cmd"]), repeat=opts["repeat"],
        simultaneous=opts["simultaneous"], trial=TrialSettings(
            threshold=opts["threshold"] / 100.0, confidence=opts["confidence"])), say)
    sys.exit(ab_exit_code(result.verdict, opts["fail_on_inconclusive"]))
def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def spread_tags(args: list[str]) -> list[str]:
    """Locust's `--tags a b c` as click's `--tags a --tags b --tags c`: click options take
    one value each (so do Locust's other lists, --exclude-tags and --config-users)."""
    spread: list[str] = []
    list_option: str | None = None
    for arg in args:
        if arg in _LIST_OPTIONS:
            list_option = arg
            spread.append(arg)
            continue
        if list_option is not None and not arg.startswith("-") and spread[-1] != list_option:
            spread.append(list_option)
        if arg.startswith("-"):
            list_option = None
        spread.append(arg)
    return spread


_LIST_OPTIONS = ("-T", "--tags", "-E", "--exclude-tags", "--config-users")


def config_file_of(args: list[str]) -> str | None:
    """The --config FILE of a command line (it decides the defaults before click parses the
    command), else $PERFKIT_CONFIG."""
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return os.environ.get(env_names(find_option("load", "config"), "load")[0])


def main() -> None:
    # SIGTERM (a CI job cancelled) and SIGHUP (the terminal closed) stop perfkit as Ctrl-C
    # does, so every `finally` runs: the managed service and workers are stopped. During a
    # run the runner handles them itself and still writes the report. SIGINT too, even when
    # inherited ignored (a shell script's `perfkit ... &`): Python then installs no handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    try:
        args = spread_tags(sys.argv[1:])
        cli.main(args=args, obj={"config": config_file_of(args)}, standalone_mode=False,
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
