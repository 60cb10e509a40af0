"""A user's locustfile behaves as under `locust --headless`; perfkit records around it.

What Locust does for a locustfile, and perfkit therefore does too:
- its `init_command_line_parser` listeners add arguments; the arguments perfkit does not know
  itself (and the items of Locust's config files no option of perfkit's takes, and the
  locustfile's own LOCUST_* variables) are parsed by Locust's parser with them and land in
  `environment.parsed_options`, with perfkit's own values (options.py's table) filled in under
  Locust's names;
- User classes named after the options run alone; --config-users and --equal-weights change
  the classes as Locust's main does;
- `events.init` fires once the runner exists, `test_start`/`test_stop` with the runner (Locust
  fires them), `quitting` when the run is over, before the runner quits, and `quit` with the
  exit code at the very end, on the master and on every worker;
- `--tags`/`--exclude-tags` filter its tasks (Environment does the filtering);
- a `LoadTestShape` drives the users (runner.drive calls `start_shape`, not `start`) and, when
  no run time was given, ends the run.

A locustfile is imported once per process and path: importing it again would register its
event listeners twice (a `perfkit regression --repeat 3` would fire every hook three times).
"""

import argparse
import contextlib
import copy
import dataclasses
import functools
import importlib.resources
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import gevent
import locust
from gevent import GreenletExit
from locust import LoadTestShape, User
from locust.argument_parser import (
    get_empty_argument_parser,
    json_user_config,
    setup_parser_arguments,
)
from locust.clients import HttpSession
from locust.contrib.fasthttp import FastHttpSession
from locust.env import Environment
from locust.util.load_locustfile import load_locustfile as import_locustfile

from ..errors import ConfigError
from ..options import OPTIONS, env_names
from ..settings import DEFAULT_REQUEST_TIMEOUT_S, LoadSettings
from ..settings_sources import render_config
from .openloop import Arrivals, make_open_loop
from .recorder import ARM, Recorder
from .scenario_errors import guard_on_start

# As locust/main.py: locust-plugins, where installed, registers its options (-i/--iterations
# and others) and listeners on import.
try:
    import locust_plugins  # noqa: F401
except ModuleNotFoundError as exc:
    if exc.name != "locust_plugins":
        raise


@dataclass(frozen=True)
class Locustfile:
    """An imported locustfile: its User classes by name (as Locust names them, for the
    classes named on the command line and --config-users), their tasks as imported, and its
    shape."""

    path: Path
    user_classes: tuple[type[User], ...]
    shape: LoadTestShape | None
    by_name: tuple[tuple[str, type[User]], ...] = ()


_IMPORTED: dict[Path, Locustfile] = {}


def resolve_scenario(scenario: str) -> Path:
    """A bundled scenario name (scenarios/NAME.py) or the path of a user's Locust file."""
    if os.path.isdir(scenario):
        raise ConfigError(f"-f {scenario}: perfkit runs one locustfile, not a directory of "
                          f"them")
    if scenario.endswith(".py") or os.sep in scenario:
        path = Path(scenario)
        if not path.is_file():
            raise ConfigError(f"scenario file {scenario} does not exist")
        return path.resolve()
    bundled = importlib.resources.files("perfkit.scenarios")
    path = Path(str(bundled.joinpath(f"{scenario}.py")))
    if scenario.startswith("_") or not path.is_file():
        names = sorted(p.stem for p in Path(str(bundled)).glob("[!_]*.py"))
        raise ConfigError(f"unknown scenario {scenario!r}; bundled: {', '.join(names)}")
    return path


def load_locustfile(path: Path) -> Locustfile:
    path = path.resolve()
    if path in _IMPORTED:
        return _IMPORTED[path]
    try:
        user_classes, shapes = import_locustfile(str(path))
    except SystemExit as exc:
        raise ConfigError(f"cannot load scenario {path}") from exc
    except Exception as exc:  # a user's locustfile can raise anything at import
        raise ConfigError(f"cannot load scenario {path}: {type(exc).__name__}: {exc}") from exc
    by_name = tuple((name, cls) for name, cls in user_classes.items()
                    if not getattr(cls, "abstract", False))
    if not by_name:
        raise ConfigError(f"scenario {path} defines no Locust User class")
    if len(shapes) > 1:
        raise ConfigError(f"scenario {path} defines {len(shapes)} LoadTestShape classes; "
                          f"Locust and perfkit take one")
    _IMPORTED[path] = Locustfile(path, tuple(cls for _, cls in by_name),
                                 shapes[0] if shapes else None, by_name)
    return _IMPORTED[path]


def select_user_classes(locustfile: Locustfile, names: list[str] | tuple[str, ...],
                        argv: tuple[str, ...] = ()) -> Locustfile:
    """Only the User classes `names` (all without names), as `locust -f FILE A B` runs only
    A and B; an unknown name is a ConfigError naming the known ones."""
    if not names:
        return locustfile
    known = dict(locustfile.by_name)
    unknown = [name for name in names if name not in known]
    if unknown:
        hint = ""
        if any(argv[i - 1] == "--profile" for i, arg in enumerate(argv)
               if i and arg == unknown[0]):
            hint = (" (perfkit's --profile is a switch that records the target with py-spy; "
                    "Locust's --profile NAME has no equivalent)")
        raise ConfigError(f"no User class {unknown[0]!r} in {locustfile.path.name}; it has "
                          f"{', '.join(known)}{hint}")
    chosen = tuple((name, known[name]) for name in dict.fromkeys(names))
    return dataclasses.replace(locustfile, user_classes=tuple(cls for _, cls in chosen),
                               by_name=chosen)


def _refuse(message: str) -> NoReturn:
    raise ConfigError(f"locustfile option: {message}")


# The environment variables perfkit reads itself (options.py): Locust's parser must not read
# them again, or a LOCUST_* value would reach parsed_options past perfkit's own precedence.
_PERFKIT_ENV = frozenset(name for option in OPTIONS for command in option.commands
                         for name in env_names(option, command))
_KNOWN_SPELLINGS = frozenset(s for option in OPTIONS for s in option.spellings)


def parse_locust_options(settings: LoadSettings, host: str | None) -> argparse.Namespace:
    """Locust's parsed options for this run: Locust's defaults, the locustfile's own arguments
    (registered by its init_command_line_parser listeners, given in `settings.
    locustfile_args`, then its LOCUST_* variables, then `settings.locustfile_config` from
    Locust's config files, as Locust orders them) and perfkit's settings under Locust's names.
    An argument nobody knows is a ConfigError naming it, before any load starts."""
    # No config files here: perfkit reads them itself (settings_sources), so that perfkit's
    # precedence holds; their items for the locustfile come as one config text.
    parser = get_empty_argument_parser(add_help=False, default_config_files=[])
    setup_parser_arguments(parser)
    # Locust reads LOCUST_USER_CLASSES into this default; perfkit read it already.
    parser.set_defaults(user_classes=[])
    locust.events.init_command_line_parser.fire(parser=parser)
    parser.error = _refuse  # type: ignore[method-assign,assignment]
    env = {k: v for k, v in os.environ.items() if k not in _PERFKIT_ENV}
    config = render_config(settings.locustfile_config) if settings.locustfile_config else None
    options = parser.parse_args(args=["--headless", *settings.locustfile_args],
                                config_file_contents=config, env_vars=env)
    _check_unknown_locust_options(parser, options)
    options.user_classes = list(options.user_classes or settings.user_classes)
    options.num_users = settings.users
    options.spawn_rate = settings.spawn_rate
    options.host = host
    options.run_time = int(settings.duration_s)
    options.tags = list(settings.tags) or None
    options.exclude_tags = list(settings.exclude_tags) or None
    options.expect_workers = settings.expect_workers or settings.workers
    options.processes = settings.workers or None
    options.locustfile = settings.scenario
    options.stop_timeout = settings.stop_timeout_s
    options.master_bind_host = settings.master_bind_host or options.master_bind_host
    options.master_bind_port = settings.master_bind_port or options.master_bind_port
    options.enable_rebalancing = settings.enable_rebalancing
    options.equal_weights = settings.equal_weights
    options.config_users = [json_user_config(text) for text in settings.config_users] or None
    outputs = settings.locust_outputs
    options.csv_prefix = outputs.csv_prefix
    options.stats_history_enabled = outputs.csv_full_history
    options.html_file = outputs.html_file
    options.json = outputs.json_stdout
    options.json_file = outputs.json_file
    options.only_summary = settings.only_summary
    options.reset_stats = settings.reset_stats
    options.loglevel = settings.loglevel or options.loglevel
    options.logfile = settings.logfile
    options.skip_log_setup = settings.skip_log_setup
    if settings.exit_code_on_error is not None:
        options.exit_code_on_error = settings.exit_code_on_error
    return options


def _check_unknown_locust_options(parser: Any, options: argparse.Namespace) -> None:
    """A Locust option this perfkit's table does not know (a newer Locust's) reached Locust's
    parser: refused rather than parsed and ignored."""
    for action in parser._actions:
        strings = set(action.option_strings)
        if not strings or strings & _KNOWN_SPELLINGS or action.dest not in _locust_dests():
            continue
        if getattr(options, action.dest, action.default) != action.default:
            raise ConfigError(f"Locust's {action.option_strings[-1]} is not known to this "
                              f"version of perfkit: it would be ignored (README: Locust "
                              f"compatibility)")


@functools.cache
def _locust_dests() -> frozenset[str]:
    """The destinations of Locust's own options (not a locustfile's)."""
    parser = get_empty_argument_parser(add_help=False, default_config_files=[])
    setup_parser_arguments(parser)
    return frozenset(action.dest for action in parser._actions)


def worker_options(options: argparse.Namespace) -> argparse.Namespace:
    """A worker's copy of the master's options: as Locust's --processes children, without
    the outputs only the master writes."""
    worker = copy.copy(options)
    worker.worker, worker.master = True, False
    worker.run_time = None
    worker.csv_prefix, worker.stats_history_enabled, worker.html_file = None, False, None
    worker.json, worker.json_file = False, None
    return worker


def setup_logging(settings: LoadSettings) -> None:
    """Locust's logging setup with -L/--logfile, as `locust` does; without them perfkit's
    own quiet logging stays (Locust's default INFO would bury perfkit's lines)."""
    if settings.skip_log_setup or not (settings.loglevel or settings.logfile):
        return
    from locust.log import setup_logging as setup_locust_logging

    setup_locust_logging(settings.loglevel or "INFO", settings.logfile)


def make_environment(locustfile: Locustfile, host: str | None, rate: float | None, users: int,
                     recorder: Recorder, options: argparse.Namespace,
                     request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
                     arms: tuple[tuple[str, str], ...] = (), arrivals: str = "even",
                     worker_count: int = 1) -> Environment:
    """A Locust environment for the locustfile, recorded by `recorder`; with `arms`, one copy
    of each user class per arm (LoadSettings.arms), side by side. With a `rate`, every user
    class draws from one arrival schedule (openloop.Arrivals; `worker_count` processes
    share the users). Locust's --config-users and --equal-weights in `options` change the
    classes as Locust's main does (on each process, on copies: the imported ones stay)."""
    if arms and options.config_users:
        raise ConfigError("--config-users applies to one copy of each User class, not to the "
                          "arms of a simultaneous A/B trial")
    by_name = [(name, guard_on_start(cls, request_timeout_s))
               for name, cls in locustfile.by_name]
    user_classes = [cls for _, cls in by_name]
    if arms:
        user_classes = [for_arm(cls, position, label, url) for cls in user_classes
                        for position, (label, url) in enumerate(arms)]
        host = None  # Locust would give the environment's host to every class
    if rate is not None:
        schedule = Arrivals(rate, users, arrivals, worker_count=max(1, worker_count))
        user_classes = [make_open_loop(cls, schedule, recorder.lateness)
                        for cls in user_classes]
    # By name, for --config-users (one class per name: no arms then).
    final = {} if arms else dict(zip((name for name, _ in by_name), user_classes, strict=True))
    env = Environment(user_classes=user_classes, host=host, shape_class=locustfile.shape,
                      parsed_options=options, events=locust.events, tags=options.tags,
                      exclude_tags=options.exclude_tags, reset_stats=bool(options.reset_stats),
                      available_user_classes=final,  # type: ignore[arg-type]
                      available_user_tasks={name: list(cls.tasks)
                                            for name, cls in locustfile.by_name})
    _check_tags(env, locustfile, options)
    for config in (c for configs in options.config_users or [] for c in configs):
        if config["user_class_name"] not in final:
            raise ConfigError(f"--config-users: no User class {config['user_class_name']!r} "
                              f"in {locustfile.path.name}")
        env.update_user_class(config)
    if options.equal_weights:
        for cls in env.user_classes:
            cls.tasks = list(cls.tasks)  # Locust pops from the list it flattens
        env.assign_equal_weights()
    recorder.attach(env)
    return env


def for_arm(user_class: type[User], position: int, label: str, url: str) -> type[User]:
    """`user_class` sending to `url`, its requests carrying the arm's label in their context
    (the recorder names them "[label] name"). Users of every arm share this process and its
    moment, so what slows the load generator or the machine slows each arm alike.

    The name leads with the arm's `position` in the trial's order: Locust's dispatcher spawns
    user classes sorted by name, and the users spawned first take the first phases of the
    arrival schedule and, where several are due at once, send first. Named by label alone,
    A was first in every trial, the B A trials included, and under bursty arrivals B's
    requests waited behind A's in every trial (docs/regression.md)."""
    def context(self: Any) -> dict:
        return {**user_class.context(self), ARM: label}

    return type(f"{user_class.__name__}_{position}{label}", (user_class,), {
        "host": url, "context": context, "__module__": user_class.__module__})


@contextlib.contextmanager
def interruptions_counted(recorder: Recorder) -> Iterator[None]:
    """Count in `recorder.interrupted` the requests a stop cuts off, for one run. A user still
    inside a task when the stop timeout runs out (or at once, with --stop-timeout 0) is killed
    with GreenletExit wherever it is; inside a request of Locust's HTTP clients, that request
    was sent and will never be answered, and Locust fires no request event for it. The
    clients' `request` is wrapped while the run lasts and restored after it."""
    originals: dict[type, Callable[..., Any]] = {
        cls: cls.__dict__["request"] for cls in (HttpSession, FastHttpSession)}

    def counting(request: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(request)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            # Locust stops a waiting user by killing it, and the kill lands at the user's next
            # switch: a user already woken (a wait of 0, a timer due) would send one more
            # request and be killed in it. Yielding once first lets such a kill land before
            # anything is sent.
            gevent.sleep(0)
            try:
                return request(*args, **kwargs)
            except GreenletExit:
                recorder.interrupted += 1
                raise
        return wrapper

    for cls, request in originals.items():
        cls.request = counting(request)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for cls, request in originals.items():
            cls.request = request  # type: ignore[attr-defined]


def _check_tags(env: Environment, locustfile: Locustfile, options: argparse.Namespace) -> None:
    """Tags that leave no task to run would make a run of idle users: say so instead."""
    if not (options.tags or options.exclude_tags):
        return
    env._filter_tasks_by_tags()  # Locust does it when the run starts; once only
    if not any(getattr(cls, "tasks", None) for cls in env.user_classes):
        asked = [f"--tags {' '.join(options.tags)}" if options.tags else "",
                 f"--exclude-tags {' '.join(options.exclude_tags)}" if options.exclude_tags
                 else ""]
        raise ConfigError(f"{' '.join(a for a in asked if a)}: no task of "
                          f"{locustfile.path.name} is left to run")


def fire_init(env: Environment) -> None:
    """`events.init`, once the runner exists (as Locust's main does; no web UI here)."""
    env.events.init.fire(environment=env, runner=env.runner, web_ui=None)


def fire_quitting(env: Environment) -> None:
    """`events.quitting`, in reverse order of registration, as Locust fires it on shutdown.
    A master's own listener sends `quit` to its workers, a worker's tells its master."""
    env.events.quitting.fire(environment=env, reverse=True)


def fire_quit(exit_code: int) -> None:
    """`events.quit`, the last of Locust's hooks, with the process's exit code."""
    locust.events.quit.fire(exit_code=exit_code)


def describe_options(options: argparse.Namespace) -> dict[str, Any]:
    """The locustfile's own arguments (those Locust does not define), for run.json."""
    from locust.argument_parser import default_args_dict

    known = default_args_dict()
    return {k: v for k, v in vars(options).items() if k not in known}
