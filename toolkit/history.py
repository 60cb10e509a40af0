"""The history store: every run's numbers, one row per (run, endpoint, metric), in SQLite by
default or PostgreSQL by URL (a team's shared store). SQLAlchemy Core, two tables:

    runs(run_id, command, scenario, target, variants, git_revision, git_branch, machine,
         hostname, started_at, recorded_at, verdict, source)
    metrics(run_id, endpoint, metric, value)

Appending a run that is already there replaces its rows, so importing twice changes nothing.
"""

import hashlib
import json
import logging
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from .errors import ConfigError, ReportError
from .result import RunResult
from .settings import require_extra

log = logging.getLogger(__name__)

DEFAULT_HISTORY = Path("reports") / "history.db"
DISABLED = ("off", "none", "no", "")

_schema = sa.MetaData()
RUNS = sa.Table(
    "perfkit_runs", _schema,
    sa.Column("run_id", sa.String(200), primary_key=True),
    sa.Column("command", sa.String(40)),
    sa.Column("scenario", sa.String(400), index=True),
    sa.Column("target", sa.String(400)),
    sa.Column("variants", sa.String(400)),
    sa.Column("git_revision", sa.String(64)),
    sa.Column("git_branch", sa.String(200)),
    sa.Column("machine", sa.String(32)),
    sa.Column("hostname", sa.String(200)),
    sa.Column("started_at", sa.Float, index=True),
    sa.Column("recorded_at", sa.Float),
    sa.Column("verdict", sa.String(20)),
    sa.Column("source", sa.String(1000)),
)
METRICS = sa.Table(
    "perfkit_metrics", _schema,
    sa.Column("run_id", sa.String(200), sa.ForeignKey("perfkit_runs.run_id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("endpoint", sa.String(400), primary_key=True),
    sa.Column("metric", sa.String(64), primary_key=True),
    sa.Column("value", sa.Float, nullable=False),
)
RUN_COLUMNS = [c.name for c in RUNS.columns]


@dataclass(frozen=True)
class History:
    """An open store; `url` as given (a path or a SQLAlchemy URL)."""

    url: str
    engine: sa.Engine


def _database_url(text: str) -> sa.URL:
    """The SQLAlchemy URL of a history given as a URL; postgresql:// is read with psycopg."""
    try:
        url = sa.make_url(text)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"--history {text!r} is neither a file nor a database URL: "
                          f"{exc}") from None
    return url.set(drivername="postgresql+psycopg") if url.drivername == "postgresql" else url


def check_history(location: str | Path | None) -> None:
    """Refuse a PostgreSQL history without its driver in one line naming the extra, before
    a run whose numbers it is to keep (open_history would only say "No module named ...")."""
    text = "" if location is None else str(location).strip()
    if text.lower() in DISABLED or "://" not in text:
        return
    url = _database_url(text)
    if url.drivername == "postgresql+psycopg":
        require_extra("a PostgreSQL history (--history postgresql://...)", "postgres",
                      "psycopg")


def open_history(location: str | Path) -> History:
    """The store at a path (SQLite file, created with its directory) or a database URL
    (postgresql://... is read with psycopg)."""
    text = str(location)
    if "://" in text:
        check_history(text)
        url = _database_url(text)
    else:
        path = Path(text)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create {path.parent} for the history: {exc}") from exc
        url = sa.make_url(f"sqlite:///{path}")
    try:
        engine = sa.create_engine(url)
        _schema.create_all(engine)
    except (sa.exc.SQLAlchemyError, ImportError) as exc:
        raise ConfigError(f"cannot open the history {_safe(text)}: {exc}") from exc
    return History(text, engine)


def _safe(url: str) -> str:
    return sa.make_url(url).render_as_string(hide_password=True) if "://" in url else url


def machine_fingerprint(machine: dict[str, Any]) -> str:
    """Runs on the same kind of machine share it: hostname, cores, memory, platform."""
    keys = ("hostname", "cpu_count", "memory_mb", "platform")
    text = json.dumps([machine.get(k) for k in keys])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def current_branch() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "--abbrev-ref", "HEAD"], capture_output=True,
                              text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def append_run(history: History, run: RunResult, branch: str | None = None) -> int:
    """Add (or replace) one run; returns the number of metric rows written."""
    from .analysis.history import run_metrics

    meta = run.meta
    row = {
        "run_id": run.run_id, "command": meta.command, "scenario": str(meta.scenario),
        "target": meta.target, "variants": ",".join(
            [*meta.variants, *(f"extra-latency {extra}" for extra in meta.extra_latency)]),
        "git_revision": meta.git_revision, "git_branch": branch,
        "machine": machine_fingerprint(meta.machine),
        "hostname": meta.machine.get("hostname"), "started_at": float(meta.started_at),
        "recorded_at": time.time(), "verdict": run.verdict or meta.verdict,
        "source": str(run.run_dir),
    }
    rows = [{"run_id": run.run_id, "endpoint": e, "metric": m, "value": v}
            for e, m, v in run_metrics(run)]
    with history.engine.begin() as connection:
        connection.execute(METRICS.delete().where(METRICS.c.run_id == run.run_id))
        connection.execute(RUNS.delete().where(RUNS.c.run_id == run.run_id))
        connection.execute(RUNS.insert(), [row])
        if rows:
            connection.execute(METRICS.insert(), rows)
    return len(rows)


def import_runs(history: History, run_dirs: Iterable[Path]) -> list[tuple[str, int]]:
    """Add run directories (or saved baselines) to the store: (run id, metric rows) each."""
    from . import rundir

    added = []
    for path in run_dirs:
        run = rundir.load_run(path)
        if not (run.meta.run_id or "").strip():
            run.meta.run_id = Path(path).resolve().name
        added.append((run.run_id, append_run(history, run)))
    return added


def list_runs(history: History, scenario: str | None = None,
              machine: str | None = None, branch: str | None = None) -> list[dict[str, Any]]:
    """The runs, oldest first (by start time)."""
    query = sa.select(RUNS).order_by(RUNS.c.started_at, RUNS.c.run_id)
    for column, value in ((RUNS.c.scenario, scenario), (RUNS.c.machine, machine),
                          (RUNS.c.git_branch, branch)):
        if value is not None:
            query = query.where(column == value)
    with history.engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


def load_series(history: History, runs: list[dict[str, Any]]
                ) -> dict[tuple[str, str, str], list[tuple[int, float]]]:
    """(scenario, endpoint, metric) -> [(index of the run in `runs`, value)] in run order."""
    position = {run["run_id"]: i for i, run in enumerate(runs)}
    series: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    query = sa.select(METRICS.c.run_id, METRICS.c.endpoint, METRICS.c.metric, METRICS.c.value)
    with history.engine.connect() as connection:
        for run_id, endpoint, metric, value in connection.execute(query):
            i = position.get(run_id)
            if i is None:
                continue
            key = (str(runs[i]["scenario"]), endpoint, metric)
            series.setdefault(key, []).append((i, float(value)))
    for points in series.values():
        points.sort()
    return series


def record_run(location: str | Path | None, run: RunResult) -> str | None:
    """Append a just-finished run to the history at `location` (None or "off": do nothing).
    A history that cannot be written costs the run nothing but a warning: the returned
    message, None when it was written."""
    if location is None or str(location).strip().lower() in DISABLED:
        return None
    try:
        append_run(open_history(location), run, branch=current_branch())
    except (ConfigError, ReportError, sa.exc.SQLAlchemyError, OSError) as exc:
        log.warning("history %s not written: %s", _safe(str(location)), exc)
        return f"history not written ({_safe(str(location))}): {exc}"
    return None
