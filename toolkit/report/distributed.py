"""The workers of a distributed run, for the report: who generated the load, and who was lost
on the way (run.json "distributed")."""

from datetime import UTC, datetime
from typing import Any

from ..result import RunMeta


def describe_worker(worker: dict[str, Any]) -> str:
    """'box-2 (10.231.0.3, pid 4242)', or the Locust id of a worker that never said."""
    host = worker.get("hostname")
    if not host:
        return str(worker.get("id"))
    where = ", ".join([*(worker.get("addresses") or [])[:2], f"pid {worker.get('pid')}"])
    return f"{host} ({where})"


def workers_section(meta: RunMeta) -> dict[str, Any] | None:
    """Rows of the report's Workers section; None for a run in one process."""
    distributed = meta.distributed
    if not distributed:
        return None
    # A run.json written by hand may hold anything: show what has the expected shape.
    listed = distributed.get("workers")
    workers = [w for w in listed if isinstance(w, dict)] if isinstance(listed, list) else []
    lost = [w for w in workers if isinstance(w.get("lost_after_s"), int | float)]
    rows = [{"worker": describe_worker(w), "id": w.get("id"),
             "perfkit": w.get("perfkit") or "—",
             "joined": _clock(w.get("joined_at")),
             "lost": (f"after {float(w['lost_after_s']):.0f} s ({w.get('reason')})"
                      if w in lost else "—"),
             "is_lost": w in lost} for w in workers]
    lead = (f"{len(workers)} workers generated the load"
            + (f"; {len(lost)} lost during the run, which went on with the others"
               if lost else "") + ".")
    refused = [r for r in distributed.get("refused") or [] if isinstance(r, dict)]
    note = (f"Refused {len(refused)} worker(s) of another perfkit version "
            f"({', '.join(sorted({str(r.get('perfkit')) for r in refused}))})."
            if refused else "")
    return {"rows": rows, "lead": lead, "note": note, "lost": len(lost)}


def _clock(t: object) -> str:
    if not isinstance(t, int | float):
        return "—"
    return datetime.fromtimestamp(float(t), UTC).strftime("%H:%M:%S UTC")
