"""Baselines: small copies of run directories under reports/baselines/NAME, fit to commit.

A baseline of one run is that run's data files in NAME/. A baseline of several runs (of one
scenario) keeps each in NAME/run-1, NAME/run-2, … with NAME/baseline.json listing them;
comparisons judge against the spread between those runs (docs/regression.md).
"""

import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import rundir
from .errors import ConfigError
from .redaction import redact_url
from .result import meta_from_json

BASELINES_DIR = "baselines"
BASELINE_JSON = "baseline.json"  # a baseline of several runs: {"name", "runs", "saved_from"}
# The data files a comparison and a report need; not report.html, not profiles, not logs.
# (latency.jsonl: a run of an older perfkit.)
BASELINE_FILES = (rundir.RUN_JSON, rundir.LATENCY, rundir.LATENCY_JSONL, rundir.RESOURCES,
                  rundir.APP, rundir.TIMELINE, rundir.FAILURES, rundir.SLOW_QUERIES,
                  "summary.json")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # whole names only: fullmatch


def save_baseline(run_dirs: Sequence[Path], name: str, reports_dir: Path) -> Path:
    """Copy the runs' data files into reports_dir/baselines/NAME (replacing an older one)."""
    if not _NAME.fullmatch(name):
        raise ConfigError(f"bad baseline name {name!r}: letters, digits, '.', '_', '-'")
    if not run_dirs:
        raise ConfigError("no run to save as a baseline")
    if len({path.resolve() for path in run_dirs}) < len(run_dirs):
        raise ConfigError("a run is given twice: a baseline's runs are its samples, each once")
    # a clear error for something that is not a run directory
    scenarios = {str(rundir.load_run(path).meta.scenario) for path in run_dirs}
    if len(scenarios) > 1:
        raise ConfigError(f"the runs are of different scenarios ({', '.join(sorted(scenarios))}):"
                          f" a baseline holds runs of one")
    target = reports_dir / BASELINES_DIR / name
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if len(run_dirs) == 1:
            _copy_run(run_dirs[0], tmp, {"name": name, "saved_from": str(run_dirs[0])})
        else:
            runs = [f"run-{i}" for i in range(1, len(run_dirs) + 1)]
            for i, (run_dir, folder) in enumerate(zip(run_dirs, runs, strict=True)):
                (tmp / folder).mkdir()
                _copy_run(run_dir, tmp / folder, {"name": name, "saved_from": str(run_dir),
                                                  "run": i + 1, "runs": len(run_dirs)})
            rundir.write_json(tmp / BASELINE_JSON, {
                "name": name, "runs": runs, "saved_from": [str(path) for path in run_dirs]})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def _copy_run(run_dir: Path, dest: Path, baseline: dict[str, Any]) -> None:
    for file_name in BASELINE_FILES:
        source = run_dir / file_name
        if source.is_symlink():
            raise ConfigError(f"{source} is a symbolic link: a baseline copies the run's own "
                              f"files only")
        if source.exists():
            shutil.copy2(source, dest / file_name, follow_symlinks=False)
    meta = json.loads((dest / rundir.RUN_JSON).read_text("utf-8"))
    meta["target"] = redact_url(meta.get("target"))
    meta["baseline"] = baseline
    rundir.write_json(dest / rundir.RUN_JSON, meta)


def baseline_runs(path: Path) -> list[Path]:
    """The run directories of a saved baseline (or of a run directory: itself)."""
    listing = path / BASELINE_JSON
    if not listing.is_file():
        return [path]
    runs = json.loads(listing.read_text("utf-8")).get("runs")
    if (not isinstance(runs, list) or not runs
            or not all(isinstance(run, str) and _NAME.fullmatch(run) for run in runs)):
        raise ConfigError(f"{listing} lists no runs")
    return [path / run for run in runs]


def list_baselines(reports_dir: Path) -> list[dict[str, Any]]:
    """Name, scenario, start, duration, number of runs and size of each saved baseline."""
    root = reports_dir / BASELINES_DIR
    rows: list[dict[str, Any]] = []
    if not root.is_dir():
        return rows
    for path in sorted(root.iterdir()):
        if not (path / rundir.RUN_JSON).is_file() and not (path / BASELINE_JSON).is_file():
            continue
        runs = baseline_runs(path)
        meta = meta_from_json(json.loads((runs[0] / rundir.RUN_JSON).read_text("utf-8")))
        rows.append({
            "name": path.name,
            "path": path,
            "scenario": meta.scenario,
            "started_at": meta.started_at,
            "duration_s": meta.settings.duration_s,
            "variants": meta.variants or [],
            "runs": len(runs),
            "size_kb": sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1024,
        })
    return rows


def resolve_baseline(run_or_name: str, reports_dir: Path) -> list[Path]:
    """The run directories of a baseline: a run directory as given, a saved baseline's
    directory, or the saved baseline of that name."""
    path = Path(run_or_name)
    if (path / rundir.RUN_JSON).is_file() or (path / BASELINE_JSON).is_file():
        return baseline_runs(path)
    saved = reports_dir / BASELINES_DIR / run_or_name
    if _NAME.fullmatch(run_or_name) and ((saved / rundir.RUN_JSON).is_file()
                                         or (saved / BASELINE_JSON).is_file()):
        return baseline_runs(saved)
    known = ", ".join(row["name"] for row in list_baselines(reports_dir)) or "none saved"
    raise ConfigError(f"baseline {run_or_name!r} is neither a run directory nor a saved "
                      f"baseline in {reports_dir / BASELINES_DIR} (saved: {known})")
