"""perfkit: load, stress and endurance tests with KPI verdicts and one HTML report.

The Python API, for pytest and scripts (README "Python API"):

    import perfkit

    result = perfkit.load(fast=True, users=60, duration="30s")
    assert result.verdict != "fail", result.verdict_reason

Importing perfkit changes nothing global and loads neither Locust nor pandas; only starting a
load imports Locust, which monkey-patches the standard library with gevent, as under
`locust` itself. Run it in a process of its own when the rest of that process must not be
patched (e.g. a subprocess of the test).
"""

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .result import RunResult

__all__ = ["RunResult", "load"]


def load(*, target: str | None = None, scenario: str = "research", users: int = 10,
         spawn_rate: float = 10.0, duration: float | str = "60s", rate: float | None = None,
         kpi: Path | str | None = None, out: Path | str | None = None, workers: int = 0,
         target_pid: int | None = None, variants: tuple[str, ...] | list[str] = (),
         fast: bool = False, warmup: float | str | None = None, profile: bool = False,
         alert_webhook: str | None = None, abort_on_fail: bool = False,
         reports_dir: Path | str = "reports", request_timeout: float | str = 60.0,
         queue: str = "inprocess", broker: str | None = None, celery_workers: int = 2,
         envelope: bool = False, extra_latency: tuple[str, ...] | list[str] = (),
         tags: tuple[str, ...] | list[str] = (), exclude_tags: tuple[str, ...] | list[str] = (),
         locustfile_args: tuple[str, ...] | list[str] = (), stop_timeout: float | str = 30.0,
         arrivals: str = "even", say: Callable[[str], None] = print) -> "RunResult":
    """`perfkit load` with the same options (durations as "30s" or seconds): runs the load,
    writes the run directory and its report, and returns the judged RunResult (`.verdict`,
    `.verdict_reason`, `.kpis`, `.endpoints`, `.run_dir`, `.exit_code`). `locustfile_args`
    are the locustfile's own options (["--greeting", "hi"]). Errors in the
    options or the environment raise perfkit.errors.PerfkitError."""
    from .run import runner
    from .settings import ServiceOptions, build_load_settings

    settings = build_load_settings(
        "load", target=target, scenario=scenario, users=users, spawn_rate=spawn_rate,
        duration=duration, rate=rate, kpi=kpi, out=out, workers=workers,
        target_pid=target_pid, variants=variants, fast=fast, warmup=warmup, profile=profile,
        alert_webhook=alert_webhook, abort_on_fail=abort_on_fail, reports_dir=reports_dir,
        request_timeout=request_timeout, service=ServiceOptions(
            queue=queue, broker=broker, celery_workers=celery_workers, envelope=envelope),
        tags=tags, exclude_tags=exclude_tags, locustfile_args=locustfile_args,
        stop_timeout=stop_timeout, extra_latency=extra_latency, arrivals=arrivals)
    return runner.run_load(settings, say)


def __getattr__(name: str) -> Any:
    # RunResult imports pandas: load it when it is asked for, not with `import perfkit`.
    if name == "RunResult":
        from .result import RunResult

        return RunResult
    raise AttributeError(f"module 'perfkit' has no attribute {name!r}")
