"""A user's locustfile behaves as under `locust --headless`; perfkit records around it.

What Locust does for a locustfile, and perfkit therefore does too:
- its `init_command_line_parser` listeners add arguments; the arguments perfkit does not know
  itself are parsed by that parser and land in `environment.parsed_options`, with perfkit's
  own values (users, spawn rate, host, run time, tags) filled in under Locust's names;
- `events.init` fires once the runner exists, `test_start`/`test_stop` with the runner (Locust
  fires them), `quitting` when the run is over, before the runner quits;
- `--tags`/`--exclude-tags` filter its tasks (Environment does the filtering);
- a `LoadTestShape` drives the users (runner.drive calls `start_shape`, not `start`).

A locustfile is imported once per process and path: importing it again would register its
event listeners twice (a `perfkit regression --repeat 3` would fire every hook three times).
"""

import argparse
import contextlib
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
from locust.argument_parser import get_empty_argument_parser, setup_parser_arguments
from locust.clients import HttpSession
from locust.contrib.fasthttp import FastHttpSession
from locust.env import Environment
from locust.util.load_locustfile import load_locustfile as import_locustfile

from ..errors import ConfigError
from ..settings import DEFAULT_REQUEST_TIMEOUT_S, LoadSettings
from .openloop import Arrivals, make_open_loop
from .recorder import ARM, Recorder
from .scenario_errors import guard_on_start


@dataclass(frozen=True)
class Locustfile:
    path: Path
    user_classes: tuple[type[User], ...]
    shape: LoadTestShape | None


_IMPORTED: dict[Path, Locustfile] = {}


def resolve_scenario(scenario: str) -> Path:
    """A bundled scenario name (scenarios/NAME.py) or the path of a user's Locust file."""
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
    classes = tuple(cls for cls in user_classes.values() if not getattr(cls, "abstract", False))
    if not classes:
        raise ConfigError(f"scenario {path} defines no Locust User class")
    if len(shapes) > 1:
        raise ConfigError(f"scenario {path} defines {len(shapes)} LoadTestShape classes; "
                          f"Locust and perfkit take one")
    _IMPORTED[path] = Locustfile(path, classes, shapes[0] if shapes else None)
    return _IMPORTED[path]


def _refuse(message: str) -> NoReturn:
    raise ConfigError(f"locustfile option: {message}")


def parse_locust_options(settings: LoadSettings, host: str | None) -> argparse.Namespace:
    """Locust's parsed options for this run: Locust's defaults, the locustfile's own arguments
    (registered by its init_command_line_parser listeners, given in
    `settings.locustfile_args`), and perfkit's settings under Locust's names. An argument
    nobody knows is a ConfigError naming it, before any load starts."""
    # No config files here: perfkit reads locust.conf itself (settings_sources), so that
    # perfkit.toml and PERFKIT_* keep their precedence over it.
    parser = get_empty_argument_parser(add_help=False, default_config_files=[])
    setup_parser_arguments(parser)
    locust.events.init_command_line_parser.fire(parser=parser)
    parser.error = _refuse  # type: ignore[method-assign,assignment]
    options = parser.parse_args(args=["--headless", *settings.locustfile_args])
    options.num_users = settings.users
    options.spawn_rate = settings.spawn_rate
    options.host = host
    options.run_time = int(settings.duration_s)
    options.tags = list(settings.tags) or None
    options.exclude_tags = list(settings.exclude_tags) or None
    options.expect_workers = settings.expect_workers or settings.workers
    options.processes = settings.workers or None
    options.locustfile = settings.scenario
    return options


def make_environment(locustfile: Locustfile, host: str | None, rate: float | None, users: int,
                     recorder: Recorder, options: argparse.Namespace,
                     request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
                     arms: tuple[tuple[str, str], ...] = (), arrivals: str = "even",
                     worker_count: int = 1) -> Environment:
    """A Locust environment for the locustfile, recorded by `recorder`; with `arms`, one copy
    of each user class per arm (LoadSettings.arms), side by side. With a `rate`, every user
    class draws from one arrival schedule (openloop.Arrivals; `worker_count` processes
    share the users)."""
    user_classes = [guard_on_start(cls, request_timeout_s) for cls in locustfile.user_classes]
    if arms:
        user_classes = [for_arm(cls, label, url) for cls in user_classes for label, url in arms]
        host = None  # Locust would give the environment's host to every class
    if rate is not None:
        schedule = Arrivals(rate, users, arrivals, worker_count=max(1, worker_count))
        user_classes = [make_open_loop(cls, schedule, recorder.lateness)
                        for cls in user_classes]
    env = Environment(user_classes=user_classes, host=host, shape_class=locustfile.shape,
                      parsed_options=options, events=locust.events, tags=options.tags,
                      exclude_tags=options.exclude_tags)
    _check_tags(env, locustfile, options)
    recorder.attach(env)
    return env


def for_arm(user_class: type[User], label: str, url: str) -> type[User]:
    """`user_class` sending to `url`, its requests carrying the arm's label in their context
    (the recorder names them "[label] name"). Users of every arm share this process and its
    moment, so what slows the load generator or the machine slows each arm alike."""
    def context(self: Any) -> dict:
        return {**user_class.context(self), ARM: label}

    return type(f"{user_class.__name__}_{label}", (user_class,), {
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


def describe_options(options: argparse.Namespace) -> dict[str, Any]:
    """The locustfile's own arguments (those Locust does not define), for run.json."""
    from locust.argument_parser import default_args_dict

    known = default_args_dict()
    return {k: v for k, v in vars(options).items() if k not in known}
