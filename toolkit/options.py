"""The one table of perfkit's options: each declared once, every way in derived from it.

A row (`Option`) gives an option's name, its spellings, type, default, help, the commands
that take it and, where Locust has the same option, Locust's spellings and `LOCUST_*`
variable. From the table come:
- the click options of every command (`click_options`, used by cli.py);
- the environment: `PERFKIT_<NAME>` for the options of the load commands, `PERFKIT_<COMMAND>_
  <NAME>` for a command's own (`env_names`), and the row's `LOCUST_*` variable beside it
  (perfkit's wins when both are set);
- the keys of perfkit.toml / [tool.perfkit] and of Locust's config files (settings_sources.py);
- `perfkit config COMMAND` (cli.py) and `perfkit.load(**options)` (`parse_options`: the same
  click conversions, defaults and checks as the command line).

Locust's own options each have one fate (README "Locust compatibility"): honoured with
Locust's meaning (a row of perfkit's with `locust` spellings), refused with one line and exit
2 naming perfkit's equivalent (`fate=REFUSED`), or accepted and ignored with a warning
(`fate=IGNORED`). tests/test_options.py walks the installed Locust's parser and holds every
Locust option to exactly one row, so a new Locust option cannot slip through unnoticed.

Adding an option is one row here (and its use where the settings are built).
"""

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from .errors import ConfigError
from .faults import Fault, parse_fault
from .units import parse_duration, parse_quantity

# The commands that generate load share most options; perfkit.toml's top-level keys and
# Locust's config files apply to all of them but ab (whose arms are set apart).
LOAD = ("load", "stress", "endurance", "regression", "ab")
CONFIGURED_BY_FILES = ("load", "stress", "endurance", "regression")

HONOURED, REFUSED, IGNORED = "honoured", "refused", "ignored"

# Locust's own reasons, for the options it shares with perfkit's meaning.
NO_WEB_UI = ("perfkit runs headless, as `locust --headless`: Locust's web UI is not there "
             "(perfkit's own live page is --web, at --web-host/--web-port)")
WORKER_CMD = "a perfkit worker is `perfkit worker --master HOST:PORT`: it joins the master " \
             "and gets the scenario and settings from it"


def _duration(ctx: click.Context | None, param: click.Parameter | None,
              value: Any) -> float | None:
    if value is None or isinstance(value, int | float):
        return None if value is None else float(value)
    return parse_duration(value)


def _timeout(ctx: click.Context | None, param: click.Parameter | None, value: Any) -> float:
    # Locust's --expect-workers-max-wait 0 waits forever; a zero timeout means nothing else.
    seconds = _duration(ctx, param, value)
    return math.inf if not seconds else seconds


def _percent(ctx: click.Context | None, param: click.Parameter | None, value: Any) -> float:
    text = str(value).strip()
    return parse_quantity(text if text.endswith("%") else f"{text}%", "%")


def _mb_per_h(ctx: click.Context | None, param: click.Parameter | None, value: Any) -> float:
    number = str(value).strip().removesuffix("/h").removesuffix("MB").strip()
    try:
        return float(number)
    except ValueError:
        raise click.BadParameter(f"{value!r}: write MB per hour, e.g. 10MB/h") from None


class JsonText(click.ParamType):
    """Locust's --config-users values: JSON or a .json file, kept as text (Locust's own
    parser reads them in the run); an environment variable is one value, never split."""

    name = "json"

    def split_envvar_value(self, rv: str) -> list[str]:
        return [rv]


class FaultText(click.ParamType):
    """A --fault (faults.py): text in, a Fault out. In an environment variable, one fault a
    line: a fault's own text holds commas and spaces."""

    name = "fault"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Fault:
        if isinstance(value, Fault):
            return value
        try:
            return parse_fault(value)
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)

    def split_envvar_value(self, rv: str) -> list[str]:
        return [line for line in rv.splitlines() if line.strip()]


def show_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(version_message())
        ctx.exit()


def version_message() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in ("perfkit", "locust"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} (not installed)")
    return ", ".join(found)


@dataclass(frozen=True)
class Option:
    """One option. `default` is a value or {command: value}; `convert` turns what the user
    wrote (text, or a number from Python) into the value the settings take. `locust`: Locust's
    spellings of the same option, `locust_env` its LOCUST_* variable. `fate` is for Locust's
    options perfkit does not run (REFUSED, IGNORED: `reason` says why and names perfkit's
    way); `locust_other`: Locust spells one of its options as this one but means another
    thing (README says what)."""

    name: str
    flags: tuple[str, ...]
    help: str
    commands: tuple[str, ...] = LOAD
    type: Any = None
    default: Any = None
    flag: bool = False
    multiple: bool = False
    convert: Callable[..., Any] | None = None
    locust: tuple[str, ...] = ()
    locust_env: str | None = None
    env: str | None = None
    fate: str = HONOURED
    reason: str = ""
    locust_other: str = ""
    hidden: bool = False
    metavar: str | None = None
    api: bool = True  # perfkit.load takes it (not: --version, which prints and exits)

    def default_for(self, command: str) -> Any:
        if isinstance(self.default, dict):
            return self.default.get(command)
        return self.default

    @property
    def spellings(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.flags, *self.locust)))

    @property
    def long_names(self) -> tuple[str, ...]:
        """Its long spellings without dashes: its keys in config files (as configargparse)."""
        return tuple(s[2:] for s in self.spellings if s.startswith("--"))


def _o(name: str, flags: str, help: str, **kw: Any) -> Option:
    """A row: `flags` and `locust` space-separated, `commands` one command or a tuple."""
    if isinstance(kw.get("locust"), str):
        kw["locust"] = tuple(kw["locust"].split())
    if isinstance(kw.get("commands"), str):
        kw["commands"] = (kw["commands"],)
    return Option(name, tuple(flags.split()), help, **kw)


def _refused(name: str, flags: str, env: str | None, reason: str, **kw: Any) -> Option:
    return _o(name, flags, reason, locust=flags, locust_env=env, fate=REFUSED, reason=reason,
              hidden=True, **kw)


def _ignored(name: str, flags: str, env: str | None, reason: str, **kw: Any) -> Option:
    return _o(name, flags, reason, locust=flags, locust_env=env, fate=IGNORED, reason=reason,
              hidden=True, **kw)


_DURATION = {"load": "60s", "regression": "60s", "stress": "30m", "endurance": "1h",
             "ab": "20s"}
_VARIANTS = ("n_plus_one, no_index, new_client_per_call, no_cache, unbounded, high_prefetch "
             "(with --queue celery)")
_HISTORY = str(Path("reports") / "history.db")
_REGRESSION_COMPARE = ("regression", "compare")
_HISTORY_COMMANDS = ("history import", "history list", "history analyze")

OPTIONS: tuple[Option, ...] = (
    # -- the load: what runs, against what, how much, how long (Locust's common options)
    _o("target", "--target", "Base URL of the target; default: start the bundled service.",
       locust="-H --host", locust_env="LOCUST_HOST"),
    _o("scenario", "--scenario", "Scenario name (scenarios/) or path of a Locust file.",
       default="research", locust="-f --locustfile", locust_env="LOCUST_LOCUSTFILE"),
    _o("config", "--config", "A Locust config file (locust.conf format, or TOML with "
       "[tool.locust]) read after the others: its values outrank perfkit.toml's.",
       type=click.Path(dir_okay=False, path_type=Path), locust="--config"),
    _o("users", "--users -u", "Peak number of concurrent users.", type=click.IntRange(1),
       default=10, locust="-u --users", locust_env="LOCUST_USERS"),
    _o("spawn_rate", "--spawn-rate -r", "Users started per second.",
       type=click.FloatRange(min=0, min_open=True), default=10.0,
       locust="-r --spawn-rate", locust_env="LOCUST_SPAWN_RATE"),
    _o("duration", "--duration", "Run length: 30s, 5m, 1h30m. With a LoadTestShape: without "
       "it the shape ends the run (as Locust), with it at most this long.", default=_DURATION,
       convert=_duration, locust="-t --run-time", locust_env="LOCUST_RUN_TIME"),
    _o("user_classes", "--user-class", "Run only this User class of the locustfile "
       "(repeatable; Locust's way also works: class names after the options).",
       multiple=True, metavar="CLASS", locust_env="LOCUST_USER_CLASSES"),
    _o("rate", "--rate", "Open load: iterations per second in all, spread over time "
       "(--arrivals), latency measured from the intended send time.",
       type=click.FloatRange(min=0, min_open=True)),
    _o("arrivals", "--arrivals", "With --rate: arrivals evenly spaced (1/rate apart), or a "
       "Poisson process of that rate.", type=click.Choice(("even", "poisson")),
       default="even"),
    _o("kpi", "--kpi", "KPI targets (TOML) that replace or extend the defaults.",
       type=click.Path(path_type=Path)),
    _o("out", "--out", "Run directory (default <reports-dir>/<timestamp>-<command>-"
       "<scenario>).", type=click.Path(path_type=Path)),
    _o("reports_dir", "--reports-dir", "Where run directories and baselines go.",
       type=click.Path(file_okay=False, path_type=Path), default=Path("reports"),
       commands=(*LOAD, "baseline save", "baseline list")),
    _o("workers", "--workers", "Local Locust worker processes under one master, forked "
       "after the locustfile is imported (as Locust's --processes; -1: one per core).",
       type=click.IntRange(-1), default=0, locust="--processes", locust_env="LOCUST_PROCESSES"),
    _o("tags", "--tags -T", "Run only the locustfile's tasks with one of these tags (-T a b, "
       "or a,b).", multiple=True, locust="-T --tags", locust_env="LOCUST_TAGS"),
    _o("exclude_tags", "--exclude-tags -E", "Run none of the tasks with one of these tags.",
       multiple=True, locust="-E --exclude-tags", locust_env="LOCUST_EXCLUDE_TAGS"),
    _o("stop_timeout", "--stop-timeout -s", "When the run ends, let users finish the task in "
       "hand for this long (as k6's gracefulStop; Locust's default is 0s); requests cut off "
       "then are counted as interrupted.", default="30s", convert=_duration,
       locust="-s --stop-timeout", locust_env="LOCUST_STOP_TIMEOUT"),
    _o("config_users", "--config-users", "Locust's User configuration: JSON, or a .json file "
       "(repeatable), applied to the User classes before the run.", type=JsonText(),
       multiple=True, locust="--config-users", locust_env="LOCUST_CONFIG_USERS"),
    _o("equal_weights", "--equal-weights", "Give every task of a User the same weight, "
       "whatever the locustfile says.", flag=True, locust="--equal-weights"),
    _o("headless", "--headless", "Accepted for Locust's command lines: perfkit always runs "
       "headless.", flag=True, locust="--headless", locust_env="LOCUST_HEADLESS",
       hidden=True),
    _o("version", "--version -V", "Show the perfkit and Locust versions and exit.", flag=True,
       locust="--version -V", api=False),
    # -- a master open to other machines (docs/distributed.md)
    _o("master_bind_host", "--master-bind-host", "Open the master to workers on other "
       "machines: the address to listen on (* for all).", locust="--master-bind-host",
       locust_env="LOCUST_MASTER_BIND_HOST"),
    _o("master_bind_port", "--master-bind-port", "The master's port (default 5557 with "
       "--master-bind-host, else a free one).", type=click.IntRange(1, 65535),
       locust="--master-bind-port", locust_env="LOCUST_MASTER_BIND_PORT"),
    _o("expect_workers", "--expect-workers", "Workers (local ones included) to wait for "
       "before the load starts; exit 2 if fewer joined in time.", type=click.IntRange(0),
       default=0, locust="--expect-workers", locust_env="LOCUST_EXPECT_WORKERS"),
    _o("expect_workers_timeout", "--expect-workers-timeout", "How long to wait for "
       "--expect-workers (0: no limit, as Locust's --expect-workers-max-wait 0).",
       default="60s", convert=_timeout, locust="--expect-workers-max-wait",
       locust_env="LOCUST_EXPECT_WORKERS_MAX_WAIT"),
    _o("enable_rebalancing", "--enable-rebalancing", "Redistribute users when workers join "
       "or leave during the run (Locust's, experimental).", flag=True,
       locust="--enable-rebalancing"),
    # -- Locust's outputs, in Locust's formats, written by Locust's own writers
    _o("csv", "--csv", "Also write Locust's CSV files: PREFIX_stats.csv, _stats_history.csv, "
       "_failures.csv, _exceptions.csv.", metavar="PREFIX", locust="--csv",
       locust_env="LOCUST_CSV"),
    _o("csv_full_history", "--csv-full-history", "With --csv: every request name in "
       "_stats_history.csv, not only the aggregate.", flag=True, locust="--csv-full-history",
       locust_env="LOCUST_CSV_FULL_HISTORY"),
    _o("html", "--html", "Also write Locust's HTML report to this file ({u} {r} {t}: users, "
       "spawn rate, run time).", metavar="FILE", locust="--html", locust_env="LOCUST_HTML"),
    _o("json", "--json", "Print Locust's final stats as JSON on stdout (perfkit's own lines "
       "then go to stderr).", flag=True, locust="--json"),
    _o("json_file", "--json-file", "Write Locust's final stats as JSON to FILE.json.",
       metavar="FILE", locust="--json-file"),
    _o("only_summary", "--only-summary", "No live view during the run: only the summary at "
       "the end.", flag=True, locust="--only-summary", locust_env="LOCUST_ONLY_SUMMARY"),
    _o("reset_stats", "--reset-stats", "Reset the statistics once spawning has completed: "
       "Locust's outputs start there, and the judged window does not start before.",
       flag=True, locust="--reset-stats", locust_env="LOCUST_RESET_STATS"),
    _o("loglevel", "--loglevel -L", "Log at this level, in Locust's format (Locust's logging "
       "setup; default: perfkit's quiet WARNING).", type=click.Choice(
           ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), case_sensitive=False),
       locust="-L --loglevel", locust_env="LOCUST_LOGLEVEL"),
    _o("logfile", "--logfile", "Log to this file instead of stderr (Locust's logging setup).",
       type=click.Path(dir_okay=False), locust="--logfile", locust_env="LOCUST_LOGFILE"),
    _o("skip_log_setup", "--skip-log-setup", "Leave logging as the locustfile or Python set "
       "it up (no Locust logging setup for -L/--logfile).", flag=True,
       locust="--skip-log-setup", locust_env="LOCUST_SKIP_LOG_SETUP"),
    _o("exit_code_on_error", "--exit-code-on-error", "Exit with this code when any request "
       "failed or the scenario raised (as Locust; default: the verdict decides).", type=int,
       locust="--exit-code-on-error", locust_env="LOCUST_EXIT_CODE_ON_ERROR"),
    # -- the bundled service (when there is no --target)
    _o("target_pid", "--target-pid", "PID of the target to sample (with --target).", type=int),
    _o("variants", "--variant", f"Reference-service variant (repeatable): {_VARIANTS}.",
       multiple=True),
    _o("queue", "--queue", "Bundled service: research in its in-process pool, or in Celery "
       "worker processes (needs --broker).", type=click.Choice(("inprocess", "celery")),
       default="inprocess"),
    _o("broker", "--broker", "Bundled service's Celery broker: redis://HOST:6379/N or "
       "amqp://USER:PASSWORD@HOST:5672//."),
    _o("celery_workers", "--celery-workers", "Bundled service's Celery worker processes "
       "(--queue celery).", type=click.IntRange(1), default=2),
    _o("service_database_url", "--service-database-url", "Bundled service's database: "
       "postgresql+asyncpg://USER@HOST/DB or sqlite+aiosqlite:///FILE (default: a temporary "
       "SQLite file; stack=postgres-outage needs PostgreSQL)."),
    _o("service_queue_prefix", "--service-queue-prefix", "Bundled service's Celery queue names "
       "PREFIX.research and PREFIX.callbacks (--queue celery; one service per prefix on a "
       "broker).", default="perfkit"),
    _o("envelope", "--envelope", "Bundled service answers as the original backend: {success, "
       "data, message}.", flag=True),
    _o("fast", "--fast", "Bundled service with its fast simulated-LLM profile (tens of ms).",
       flag=True),
    _o("extra_latency", "--extra-latency", "Bundled service: known slowdown for one endpoint, "
       "as `perfkit serve --extra-latency` (results=20% or results=20ms).", multiple=True),
    # -- judging, watching and recording the run
    _o("warmup", "--warmup", "Warm-up shown but kept out of the verdict (default: 10%, max "
       "30s).", convert=_duration),
    _o("profile", "--profile", "Record the target with py-spy.", flag=True,
       locust_other="Locust's --profile NAME names a run profile (for Locust Cloud); "
                    "perfkit's --profile is a switch that records the target with py-spy, so "
                    "a NAME after it is read as a User class name (an unknown one: exit 2)."),
    _o("alert_webhook", "--alert-webhook", "POST alarms as JSON to this URL."),
    _o("abort_on_fail", "--abort-on-fail", "Stop early when a KPI alarm fires.", flag=True),
    _o("request_timeout", "--request-timeout", "A request unanswered this long is a failure "
       "(scenarios that set their own timeout keep it).", default="60s", convert=_duration),
    _o("metrics_path", "--metrics-path", "The target's Prometheus endpoint: a path, or a full "
       "URL.", default="/metrics"),
    _o("metrics_auth", "--metrics-auth", "bearer:TOKEN or basic:USER:PASSWORD for "
       "--metrics-path."),
    _o("db_url", "--db-url", "The target's PostgreSQL, sampled directly: "
       "postgresql://USER@HOST/DB."),
    _o("redis_url", "--redis-url", "The target's Redis, sampled with INFO: "
       "redis://HOST:PORT/DB."),
    _o("prometheus_port", "--prometheus-port", "Serve perfkit's own live metrics on this port "
       "(0: any).", type=click.IntRange(0, 65535)),
    _o("otlp_endpoint", "--otlp-endpoint", "Push perfkit's live metrics to this OTLP/HTTP "
       "endpoint."),
    _o("web", "--web", "A live page of the run (charts, KPIs so far, Stop) at --web-host:"
       "--web-port; without --duration a load runs until Stop.", flag=True,
       commands=CONFIGURED_BY_FILES, env="PERFKIT_WEB"),
    _o("web_host", "--web-host", "With --web: the address the live page listens on (default "
       "127.0.0.1; another one is reachable from other machines, with a warning).",
       commands=CONFIGURED_BY_FILES, locust="--web-host", locust_env="LOCUST_WEB_HOST",
       env="PERFKIT_WEB_HOST"),
    _o("web_port", "--web-port -P", "With --web: the live page's port (0: any free one).",
       type=click.IntRange(0, 65535), default=8089, commands=CONFIGURED_BY_FILES,
       locust="--web-port -P", locust_env="LOCUST_WEB_PORT", env="PERFKIT_WEB_PORT"),
    _o("faults", "--fault", "Run a fault during the load (repeatable): at=30s,for=10s,do=CMD"
       "[,undo=CMD][,every=10m][,timeout=60s], or a network fault through perfkit's proxy: "
       "at=20s,for=15s,net=latency:300ms (bandwidth:100KB/s, reset, blackhole), or a "
       "built-in fault of the bundled service: at=20s,stack=service-restart (celery-kill; "
       "for=5s with postgres-outage, redis-pause); availability "
       "and recovery are judged (docs/reliability.md).",
       commands=("load", "stress", "endurance"), type=FaultText(), multiple=True,
       metavar="SPEC", env="PERFKIT_FAULT"),
    _o("history", "--history", "History store the run's numbers are appended to: a SQLite "
       "file or a postgresql:// URL; 'off' to skip.", default=_HISTORY, env="PERFKIT_HISTORY"),
    # -- Locust's options perfkit refuses (one line, exit 2) ...
    _refused("master", "--master", "LOCUST_MODE_MASTER", "perfkit opens its master with "
             "--master-bind-host ADDR --expect-workers N, and its workers join with `perfkit "
             "worker --master HOST:PORT`", flag=True),
    _refused("worker", "--worker", "LOCUST_MODE_WORKER", WORKER_CMD, flag=True),
    _refused("slave", "--slave", None, WORKER_CMD, flag=True),
    _refused("master_host", "--master-host", "LOCUST_MASTER_NODE_HOST", WORKER_CMD),
    _refused("master_port", "--master-port", "LOCUST_MASTER_NODE_PORT", WORKER_CMD, type=int),
    _refused("expect_slaves", "--expect-slaves", None, "renamed --expect-workers "
             "(Locust's own message)", flag=True),
    _refused("list_commands", "-l --list", None, "perfkit runs the User classes: `locust -f "
             "FILE --list` lists them; name some after the options to run only those",
             flag=True),
    _refused("show_task_ratio", "--show-task-ratio", None, "`locust -f FILE "
             "--show-task-ratio` prints the task ratios; perfkit runs the load", flag=True),
    _refused("show_task_ratio_json", "--show-task-ratio-json", None, "`locust -f FILE "
             "--show-task-ratio-json` prints the task ratios; perfkit runs the load",
             flag=True),
    _refused("headful", "--headful", "LOCUST_HEADFUL", f"{NO_WEB_UI}; the terminal shows the "
             "run live and report.html after it", flag=True),
    _refused("web_auth", "--web-auth", "LOCUST_WEB_AUTH", f"replaced by --web-login in "
             f"Locust; and {NO_WEB_UI}"),
    _refused("legacy_ui", "--legacy-ui", "LOCUST_LEGACY_UI", "no longer supported by Locust",
             flag=True),
    _refused("otel", "--otel", "LOCUST_ENABLE_OPENTELEMETRY", "perfkit's --otlp-endpoint URL "
             "pushes the run's live metrics over OTLP/HTTP; Locust's OpenTelemetry tracing of "
             "each request is not wired into perfkit", flag=True),
    # -- ... and those it accepts and ignores, with a warning (Locust ignores them too when
    # it runs headless)
    _ignored("web_host_display_name", "--web-host-display-name",
             "LOCUST_WEB_HOST_DISPLAY_NAME", NO_WEB_UI),
    _ignored("web_login", "--web-login", "LOCUST_WEB_LOGIN", NO_WEB_UI, flag=True),
    _ignored("tls_cert", "--tls-cert", "LOCUST_TLS_CERT", NO_WEB_UI),
    _ignored("tls_key", "--tls-key", "LOCUST_TLS_KEY", NO_WEB_UI),
    _ignored("class_picker", "--class-picker", "LOCUST_USERCLASS_PICKER", NO_WEB_UI, flag=True),
    _ignored("build_path", "--build-path", "LOCUST_BUILD_PATH", NO_WEB_UI),
    _ignored("web_base_path", "--web-base-path", "LOCUST_WEB_BASE_PATH", NO_WEB_UI),
    _ignored("autostart", "--autostart", "LOCUST_AUTOSTART", f"perfkit starts the load at "
             f"once; {NO_WEB_UI}", flag=True),
    _ignored("autoquit", "--autoquit", "LOCUST_AUTOQUIT", "perfkit quits when the run ends",
             type=int),
    _ignored("print_stats", "--print-stats", "LOCUST_PRINT_STATS", "perfkit's live view "
             "shows the stats during every run (--only-summary turns it off)", flag=True),
    # -- stress
    _o("start_users", "--start-users", "Users of the first step (closed load; default: the "
       "step).", commands="stress", type=click.IntRange(1)),
    _o("step_users", "--step-users", "Users added per step (closed load; default: what "
       "reaches --users, the peak, in --max-steps steps).", commands="stress",
       type=click.IntRange(1)),
    _o("start_rate", "--start-rate", "Arrivals/s of the first step (with --rate; default: the "
       "step).", commands="stress", type=click.FloatRange(min=0, min_open=True)),
    _o("step_rate", "--step-rate", "Arrivals/s added per step (with --rate, the peak; "
       "default: what reaches it in --max-steps steps).", commands="stress",
       type=click.FloatRange(min=0, min_open=True)),
    _o("step_duration", "--step-duration", "Length of each step.", commands="stress",
       default="30s", convert=_duration),
    _o("max_steps", "--max-steps", "Most steps of the ramp.", commands="stress",
       type=click.IntRange(1, 100), default=10),
    _o("max_error_rate", "--max-error-rate", "A step whose requests fail more often than "
       "this breaks.", commands="stress", default="1%", convert=_percent),
    # -- endurance
    _o("leak_threshold", "--leak-threshold", "Memory growth that counts as a leak once the "
       "whole CI of the continuing growth is above it.", commands="endurance",
       default="10MB/h", convert=_mb_per_h),
    # -- regression and compare
    _o("baseline_ref", "--baseline", "Run directory or saved baseline name "
       "(reports/baselines/NAME).", commands="regression", metavar="RUN|NAME"),
    _o("repeat", "--repeat", "Run N times and compare all N runs, pooled, with the baseline.",
       commands="regression", type=click.IntRange(1, 20), default=1),
    _o("thresholds", "--threshold", "Practical threshold: 10% for every metric, p99_ms=20% for "
       "one (repeatable; default 10%).", commands=_REGRESSION_COMPARE, multiple=True),
    _o("confidence", "--confidence", "Statistical confidence for the comparison as a whole.",
       commands=_REGRESSION_COMPARE, type=click.FloatRange(0.5, 1.0, max_open=True),
       default=0.99),
    _o("out", "--out", "Where compare.html/.md/.json and junit.xml go (default "
       "CURRENT/compare).", commands="compare",
       type=click.Path(file_okay=False, path_type=Path)),
    _o("warmup", "--warmup", "Warm-up left out of both runs (default: each run's own).",
       commands="compare", convert=_duration),
    # -- ab
    _o("a_opts", "--a", "Bundled service options of A, e.g. '--fast'.", commands="ab",
       default=""),
    _o("b_opts", "--b", "Bundled service options of B, e.g. '--fast --variant n_plus_one'.",
       commands="ab", default=""),
    _o("a_cmd", "--a-cmd", "Command that starts target A on {port} (instead of --a).",
       commands="ab"),
    _o("b_cmd", "--b-cmd", "Command that starts target B on {port} (instead of --b).",
       commands="ab"),
    _o("repeat", "--repeat", "Pairs of runs (A B B A ...), each on a freshly started target.",
       commands="ab", type=click.IntRange(2, 50), default=5),
    _o("threshold", "--threshold", "Practical threshold of the ratio B/A.", commands="ab",
       default="10%", convert=_percent),
    _o("confidence", "--confidence", "Confidence for the trial as a whole (all metrics).",
       commands="ab", type=click.FloatRange(0.5, 1.0, max_open=True), default=0.95),
    _o("fail_on_inconclusive", "--fail-on-inconclusive", "Exit 1 when the trials cannot tell "
       "(default: exit 0 with a line saying so).", commands="ab", flag=True),
    _o("simultaneous", "--simultaneous", "Each trial starts A and B and loads both at once "
       "from one load generator (each gets --users and --rate): far less noise than "
       "separate runs.", commands="ab", flag=True),
    # -- worker
    _o("master", "--master", "HOST[:PORT] of the master (port 5557 by default). The master "
       "sends the scenario and the run's settings; nothing else is needed.",
       commands="worker", env="PERFKIT_MASTER"),
    _o("connect_timeout", "--connect-timeout", "Keep asking the master for this long (it may "
       "start after the worker).", commands="worker", default="60s", convert=_duration,
       env="PERFKIT_CONNECT_TIMEOUT"),
    # -- serve
    _o("host", "--host", "Address to listen on.", commands="serve", default="127.0.0.1"),
    _o("port", "--port", "Port to listen on (0: any free one).", commands="serve", type=int,
       default=8000),
    _o("database_url", "--database-url", "SQLAlchemy async URL (default: SQLite file, WAL).",
       commands="serve"),
    _o("redis_url", "--redis-url", "Redis for the result cache (default: in-process TTL "
       "cache).", commands="serve"),
    _o("variants", "--variant", f"Variant to run (repeatable): {_VARIANTS}.",
       commands="serve", multiple=True),
    _o("fast", "--fast", "Fast simulated-LLM profile (tens of ms per item).", commands="serve",
       flag=True),
    _o("item_latency_ms", "--item-latency-ms", "Median simulated LLM latency per call "
       "(default: 8000, --fast 30).", commands="serve", type=click.FloatRange(0)),
    _o("latency_sigma", "--latency-sigma", "Spread of that latency (lognormal sigma; default "
       "0.3).", commands="serve", type=click.FloatRange(0)),
    _o("error_rate", "--error-rate", "Share of LLM calls that fail transiently (default 0.02, "
       "--fast 0).", commands="serve", type=click.FloatRange(0, 1)),
    _o("insufficient_rate", "--insufficient-rate", "Share of LLM answers too thin to use "
       "(default 0.05, --fast 0).", commands="serve", type=click.FloatRange(0, 1)),
    _o("concurrency", "--concurrency", "Research slots (semaphore size).", commands="serve",
       type=click.IntRange(1), default=5),
    _o("extra_latency", "--extra-latency", "Known slowdown for one endpoint: results=20ms or "
       "results=20% (health, create, status, results, cancel; repeatable).", commands="serve",
       multiple=True),
    _o("seed", "--seed", "Seed of the simulated LLM's randomness.", commands="serve", type=int),
    _o("slow_query_ms", "--slow-query-ms", "Queries at least this slow are listed in "
       "/api/v1/metrics/database.", commands="serve", type=click.FloatRange(0), default=100.0),
    _o("queue", "--queue", "Where research runs: the in-process pool, or Celery worker "
       "processes (needs --broker).", commands="serve",
       type=click.Choice(("inprocess", "celery")), default="inprocess"),
    _o("broker", "--broker", "Celery broker: redis://HOST:6379/N or "
       "amqp://USER:PASSWORD@HOST:5672//.", commands="serve"),
    _o("celery_workers", "--celery-workers", "Celery worker processes, started and stopped "
       "with the service.", commands="serve", type=click.IntRange(1), default=2),
    _o("prefetch_multiplier", "--prefetch-multiplier", "Tasks a Celery worker reserves ahead "
       "(default 1; 16 under high_prefetch).", commands="serve", type=click.IntRange(1)),
    _o("max_tasks_per_child", "--max-tasks-per-child", "Recycle a Celery worker process "
       "after this many tasks.", commands="serve", type=click.IntRange(1), default=100),
    _o("result_expires_s", "--result-expires-s", "How long Celery keeps a task result "
       "(callbacks only).", commands="serve", type=click.FloatRange(0, min_open=True),
       default=3600.0),
    _o("queue_prefix", "--queue-prefix", "Queue names PREFIX.research and PREFIX.callbacks: "
       "one service per prefix on a broker.", commands="serve", default="perfkit"),
    _o("envelope", "--envelope", "Answer the research routes as {success, data, message}.",
       commands="serve", flag=True),
    _o("max_queued_jobs", "--max-queued-jobs", "Unfinished jobs accepted before creates are "
       "answered 503 with Retry-After.", commands="serve", type=click.IntRange(1),
       default=200),
    _o("max_body_bytes", "--max-body-bytes", "Larger request bodies are answered 413 unread.",
       commands="serve", type=click.IntRange(1024), default=1_000_000),
    _o("statement_timeout_s", "--statement-timeout", "SECONDS a PostgreSQL statement may run "
       "before it is cancelled and the request answered 503 (0: no limit).", commands="serve",
       type=click.FloatRange(0), default=10.0),
    _o("instance_id", "--instance-id", "This instance's name on its jobs: a restart cancels "
       "only its own jobs in a shared database (default: HOST:PORT, random with --port 0).",
       commands="serve"),
    # -- bench
    _o("concurrency", "--concurrency -c", "Concurrent connections, each sending its next "
       "request on the last answer.", commands="bench", type=click.IntRange(1), default=1),
    _o("requests", "--requests -n", "Total requests.", commands="bench",
       type=click.IntRange(1)),
    _o("duration", "--duration -d", "Run length instead of -n: 30s, 5m.", commands="bench",
       convert=_duration),
    _o("method", "--method -m", "HTTP method.", commands="bench", default="GET"),
    _o("headers", "--header -H", "'Name: value' (repeatable).", commands="bench",
       multiple=True),
    _o("body", "--body", "File sent as the request body.", commands="bench",
       type=click.Path(exists=True, dir_okay=False, path_type=Path)),
    _o("timeout", "--timeout", "Per-request timeout in seconds.", commands="bench",
       type=click.FloatRange(min=0, min_open=True), default=30.0),
    _o("json_path", "--json", "Write the result in the summary.json shape of a run.",
       commands="bench", type=click.Path(dir_okay=False, path_type=Path)),
    _o("max_failures", "--max-failures", "Failed requests (non-2xx, timeout, connection "
       "error) allowed before the exit code is 1: a count (5) or a share of the requests "
       "(1%).", commands="bench", default="0"),
    # -- monitor and profile
    _o("pid", "--pid", "Root of the process tree to watch.", commands="monitor", type=int),
    _o("interval", "--interval", "Time between samples.", commands="monitor", default="1s",
       convert=_duration),
    _o("duration", "--duration", "Stop after this long (default: Ctrl-C).", commands="monitor",
       convert=_duration),
    _o("csv_path", "--csv", "Also record every sample to this CSV file.", commands="monitor",
       type=click.Path(dir_okay=False, path_type=Path)),
    _o("pid", "--pid", "Python process to record (with children).", commands="profile",
       type=int),
    _o("duration", "--duration", "How long to record.", commands="profile", default="30s",
       convert=_duration),
    _o("out", "--out", "Directory for profile.svg and profile.speedscope.json.",
       commands="profile", type=click.Path(file_okay=False, path_type=Path), default=Path(".")),
    _o("rate", "--rate", "Samples per second.", commands="profile",
       type=click.IntRange(1, 1000), default=100),
    _o("memory", "--memory", "Top allocation sites with memray instead of a CPU flamegraph.",
       commands="profile", flag=True),
    # -- report, baseline, history
    _o("kpi_file", "--kpi", "KPI targets (TOML) instead of the ones the run recorded.",
       commands="report", type=click.Path(dir_okay=False, path_type=Path)),
    _o("name", "--name", "Baseline name.", commands="baseline save"),
    _o("location", "--history", "SQLite file or postgresql:// URL.", commands=_HISTORY_COMMANDS,
       default=_HISTORY, env="PERFKIT_HISTORY"),
    _o("scenario", "--scenario", "Only runs of this scenario.",
       commands=("history list", "history analyze")),
    _o("json_path", "--json", 'Write {"runs": [...]} to this file.', commands="history list",
       type=click.Path(dir_okay=False, path_type=Path)),
    _o("min_change", "--min-change", "Smallest change of level that counts.",
       commands="history analyze", default="10%", convert=_percent),
    _o("metrics", "--metric", "Metric to search (repeatable; default p50/p95/p99, rps, CPU, "
       "RSS).", commands="history analyze", multiple=True),
    _o("min_runs", "--min-runs", "Runs needed on each side of a change point.",
       commands="history analyze", type=click.IntRange(2), default=4),
    _o("json_path", "--json", 'Write {"change_points": [...]} to this file.',
       commands="history analyze", type=click.Path(dir_okay=False, path_type=Path)),
    _o("kpi_file", "--kpi", "KPI targets (TOML, replacing or extending the defaults) whose "
       "levels history.html draws.", commands="history analyze",
       type=click.Path(dir_okay=False, path_type=Path)),
    _o("out", "--out", "Where history.html and history.md go.", commands="history analyze",
       type=click.Path(file_okay=False, path_type=Path), default=Path("reports")),
    _o("fail_on_regression", "--fail-on-regression", "Exit 1 when a regression change point "
       "lies in the newest runs.", commands="history analyze", flag=True),
    _o("newest", "--newest", "How many of the newest runs --fail-on-regression looks at.",
       commands="history analyze", type=click.IntRange(1), default=5),
)

# Options a command cannot do without.
REQUIRED = {("regression", "baseline_ref"), ("baseline save", "name"), ("monitor", "pid"),
            ("profile", "pid"), ("worker", "master")}


def options_of(command: str) -> list[Option]:
    """The rows of `command`, in the table's order (its --help's order)."""
    return [option for option in OPTIONS if command in option.commands]


def find_option(command: str, name: str) -> Option:
    for option in options_of(command):
        if option.name == name:
            return option
    raise KeyError(f"{command} has no option {name!r}")


def env_names(option: Option, command: str) -> list[str]:
    """The environment variables of `option` for `command`, the first set one winning:
    PERFKIT_* (the option's own, for the load commands' shared options PERFKIT_<NAME>, else
    PERFKIT_<COMMAND>_<NAME>), then Locust's LOCUST_* where Locust has the option. Locust's
    refused and ignored options have only Locust's (PERFKIT_MASTER is the worker's)."""
    locust = [option.locust_env] if option.locust_env else []
    if option.fate != HONOURED:
        return locust
    if option.env:
        own = option.env
    elif set(LOAD) <= set(option.commands):
        own = f"PERFKIT_{option.name.upper()}"
    else:
        own = f"PERFKIT_{command.replace(' ', '_').upper()}_{option.name.upper()}"
    return [own, *locust]


def given(ctx: click.Context, name: str) -> bool:
    """The option was set by the user (any source but the default)."""
    source = ctx.get_parameter_source(name)
    return source not in (None, ParameterSource.DEFAULT)


def _where(ctx: click.Context, option: Option, command: str) -> str:
    """How the user set an option, for a message: its spelling, its variable or its file."""
    source = ctx.get_parameter_source(option.name)
    if source is ParameterSource.ENVIRONMENT:
        return next((n for n in env_names(option, command) if n in os.environ), option.name)
    if source is ParameterSource.DEFAULT_MAP:
        return f"{option.long_names[0]} (in a config file)"
    return max(option.spellings, key=len)


def _fate_callback(option: Option, command: str) -> Callable[..., Any]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if ctx.resilient_parsing or not given(ctx, option.name) or value in (None, False, ()):
            return value
        where = _where(ctx, option, command)
        if option.fate == REFUSED:
            raise click.UsageError(f"Locust's {where} is not perfkit's: {option.reason}")
        click.echo(f"perfkit: warning: Locust's {where} is ignored: {option.reason}", err=True)
        return value
    return callback


def _convert_callback(option: Option) -> Callable[..., Any]:
    convert = option.convert
    assert convert is not None

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if option.multiple:
            return tuple(convert(ctx, param, v) for v in value)
        return None if value is None else convert(ctx, param, value)
    return callback


def make_click_option(option: Option, command: str) -> click.Option:
    """The click.Option of `option` in `command`."""
    default = option.default_for(command)
    kwargs: dict[str, Any] = {
        "help": option.help, "envvar": env_names(option, command), "show_envvar": True,
        "hidden": option.hidden, "metavar": option.metavar,
        "required": (command, option.name) in REQUIRED}
    if option.flag:
        kwargs.update(is_flag=True, default=False)
    else:
        kwargs.update(type=option.type, multiple=option.multiple,
                      default=default if not option.multiple else (),
                      show_default=default is not None and not option.multiple)
    if option.name == "version":
        kwargs.update(expose_value=False, is_eager=True, callback=show_version)
    elif option.fate != HONOURED:
        kwargs["callback"] = _fate_callback(option, command)
    elif option.convert is not None:
        kwargs["callback"] = _convert_callback(option)
    return click.Option([*option.spellings, option.name], **kwargs)


def click_options(command: str) -> Callable[[Any], Any]:
    """A decorator giving a click command the options of `command` from the table."""
    def decorate(func: Any) -> Any:
        params = getattr(func, "__click_params__", [])
        # click lists a function's params in reverse order of decoration.
        params.extend(make_click_option(option, command)
                      for option in reversed(options_of(command)))
        func.__click_params__ = params
        return func
    return decorate


def default_value(command: str, name: str) -> Any:
    """An option's default as the settings take it (a duration in seconds, a tuple)."""
    option = find_option(command, name)
    if option.multiple:
        return ()
    if option.flag:
        return False
    default = option.default_for(command)
    if option.convert is not None and default is not None:
        return option.convert(None, None, default)
    return default


def parse_options(command: str, values: dict[str, Any],
                  default_map: dict[str, Any] | None = None
                  ) -> tuple[dict[str, Any], frozenset[str]]:
    """`values` (Python keyword arguments) as the command line's options of `command`: the
    same conversions and checks, the environment and `default_map` (the config files) for
    what is not given, then the defaults. Returns (every option's value, the names the user
    set from any source). A bad value is a ConfigError; an unknown name a TypeError, as a
    Python function's."""
    params = {option.name: make_click_option(option, command)
              for option in options_of(command) if option.api}
    unknown = sorted(set(values) - set(params))
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], params, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise TypeError(f"perfkit.{command}() got an unexpected option {unknown[0]!r}{hint}")
    for name in (n for n, p in params.items() if p.required):
        params[name].required = False  # checked below, with the given values
    cmd = click.Command(command, params=list(params.values()))
    try:
        ctx = cmd.make_context(command, [], default_map=default_map)
        for name, value in values.items():
            param = params[name]
            if param.multiple and isinstance(value, str | Path):
                value = [value]
            ctx.set_parameter_source(name, ParameterSource.COMMANDLINE)
            ctx.params[name] = param.process_value(ctx, value)
    except click.ClickException as exc:
        raise ConfigError(f"perfkit.{command}(): {exc.format_message()}") from None
    missing = [n for n in params if (command, n) in REQUIRED and ctx.params.get(n) is None]
    if missing:
        raise ConfigError(f"perfkit.{command}(): {missing[0]} is required")
    return dict(ctx.params), frozenset(n for n in params if given(ctx, n))
