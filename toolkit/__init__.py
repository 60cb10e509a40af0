"""perfkit: load, stress and endurance tests with KPI verdicts and one HTML report.

The Python API, for pytest and scripts (README "Python API"):

    import perfkit

    result = perfkit.load(fast=True, users=60, duration="30s")
    assert result.verdict not in ("fail", "error"), result.verdict_reason

Importing perfkit changes nothing global and loads neither Locust nor pandas; only starting a
load imports Locust, which monkey-patches the standard library with gevent, as under
`locust` itself. Run it in a process of its own when the rest of that process must not be
patched (e.g. a subprocess of the test).
"""

import os
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .result import RunResult

__all__ = ["RunResult", "__version__", "load"]

try:
    __version__ = version("perfkit")
except PackageNotFoundError:  # a checkout on sys.path, not installed
    __version__ = "unknown"


def load(*, say: Callable[[str], None] = print,
         locustfile_args: tuple[str, ...] | list[str] = (), **options: Any) -> "RunResult":
    """`perfkit load` with the same options, as keyword arguments named as in `perfkit load
    --help` (`spawn_rate=5`, `duration="30s"` or seconds, `kpi=` a KPI file, `tags=["a"]`,
    `user_classes=["MyUser"]`); what is not given comes from where the command's would:
    PERFKIT_* and LOCUST_* variables, `config=` (--config), perfkit.toml and Locust's config
    files in the working directory, then the defaults. `locustfile_args` are the rest of a
    command line: the locustfile's own options (["--greeting", "hi"]).

    Runs the load, writes the run directory and its report, appends the run to the history
    (`history=`, "off" to skip) and returns the judged RunResult: `.verdict` (pass, warn,
    fail, or error: nothing measured), `.verdict_reason`, `.kpis`, `.endpoints`, `.run_dir`,
    `.exit_code`. A bad option or environment raises perfkit.errors.PerfkitError (an unknown
    option name a TypeError)."""
    from .history import check_history, record_run
    from .options import env_names, find_option, parse_options
    from .run import runner
    from .settings import build_load_settings
    from .settings_sources import read_sources

    config = options.get("config") or os.environ.get(
        env_names(find_option("load", "config"), "load")[0])
    sources = read_sources(Path.cwd(), config)
    values, given = parse_options("load", options, sources.defaults_of("load"))
    settings = build_load_settings("load", values, given=given, locustfile_args=locustfile_args,
                                   locustfile_config=sources.locustfile_config)
    check_history(settings.history)
    result = runner.run_load(settings, say)
    problem = record_run(settings.history, result)
    if problem:
        say(f"perfkit: {problem}")
    return result


def __getattr__(name: str) -> Any:
    # RunResult imports pandas: load it when it is asked for, not with `import perfkit`.
    if name == "RunResult":
        from .result import RunResult

        return RunResult
    raise AttributeError(f"module 'perfkit' has no attribute {name!r}")
