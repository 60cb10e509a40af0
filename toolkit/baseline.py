"""Baselines: small copies of run directories under reports/baselines/NAME, fit to commit."""

import json
import re
import shutil
from pathlib import Path
from typing import Any

from . import rundir
from .config import redact_url
from .errors import ConfigError
from .result import meta_from_json

BASELINES_DIR = "baselines"
# The data files a comparison and a report need; not report.html, not profiles, not logs.
BASELINE_FILES = (rundir.RUN_JSON, rundir.LATENCY, rundir.RESOURCES, rundir.APP,
                  rundir.TIMELINE, rundir.FAILURES, rundir.SLOW_QUERIES, "summary.json")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # whole names only: fullmatch


def save_baseline(run_dir: Path, name: str, reports_dir: Path) -> Path:
    """Copy the run's data files into reports_dir/baselines/NAME (replacing an older one)."""
    if not _NAME.fullmatch(name):
        raise ConfigError(f"bad baseline name {name!r}: letters, digits, '.', '_', '-'")
    rundir.load_run(run_dir)  # a clear error for something that is not a run directory
    target = reports_dir / BASELINES_DIR / name
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for file_name in BASELINE_FILES:
        source = run_dir / file_name
        if source.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
            raise ConfigError(f"{source} is a symbolic link: a baseline copies the run's own "
                              f"files only")
        if source.exists():
            shutil.copy2(source, tmp / file_name, follow_symlinks=False)
    meta = json.loads((tmp / rundir.RUN_JSON).read_text("utf-8"))
    meta["target"] = redact_url(meta.get("target"))
    meta["baseline"] = {"name": name, "saved_from": str(run_dir)}
    rundir.write_json(tmp / rundir.RUN_JSON, meta)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def list_baselines(reports_dir: Path) -> list[dict[str, Any]]:
    """Name, scenario, start, duration and size of each saved baseline, by name."""
    root = reports_dir / BASELINES_DIR
    rows: list[dict[str, Any]] = []
    if not root.is_dir():
        return rows
    for path in sorted(root.iterdir()):
        meta_path = path / rundir.RUN_JSON
        if not meta_path.is_file():
            continue
        meta = meta_from_json(json.loads(meta_path.read_text("utf-8")))
        rows.append({
            "name": path.name,
            "path": path,
            "scenario": meta.scenario,
            "started_at": meta.started_at,
            "duration_s": meta.settings.duration_s,
            "variants": meta.variants or [],
            "size_kb": sum(f.stat().st_size for f in path.iterdir()) / 1024,
        })
    return rows


def resolve_baseline(run_or_name: str, reports_dir: Path) -> Path:
    """A run directory as given, or the saved baseline of that name."""
    path = Path(run_or_name)
    if (path / rundir.RUN_JSON).is_file():
        return path
    saved = reports_dir / BASELINES_DIR / run_or_name
    if _NAME.fullmatch(run_or_name) and (saved / rundir.RUN_JSON).is_file():
        return saved
    known = ", ".join(row["name"] for row in list_baselines(reports_dir)) or "none saved"
    raise ConfigError(f"baseline {run_or_name!r} is neither a run directory nor a saved "
                      f"baseline in {reports_dir / BASELINES_DIR} (saved: {known})")
