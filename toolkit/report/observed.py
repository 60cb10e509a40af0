"""The report's view of the target's own numbers: server-side latency beside the client's,
its PostgreSQL (statements, connections) and its Redis (cache hit ratio)."""

from typing import Any

from ..analysis.kpi import judged_window
from ..analysis.observed import (
    compare_latency,
    summarize_postgres,
    summarize_redis,
    summarize_server_latency,
)
from ..result import RunResult
from ..units import format_value

MAX_STATEMENTS = 15


def _note(run: RunResult, name: str, default: str) -> str:
    entry = (run.meta.collectors or {}).get(name) or {}
    note = str(entry.get("note") or "").strip()
    return f"not measured: {note or default}"


def server_latency_section(run: RunResult, start: float, end: float) -> dict[str, Any]:
    server = summarize_server_latency(run.server_latency, start, end)
    if not server:
        entry = (run.meta.collectors or {}).get("prometheus") or {}
        default = ("the target exposes no HTTP server histogram at its metrics endpoint"
                   if entry.get("available") else "the target's metrics endpoint was not read")
        note = _note(run, "prometheus", default)
        if entry.get("available") and entry.get("server_histogram"):
            note = "not measured: the server histogram did not grow in the judged window"
        return {"rows": [], "note": note, "family": None}
    rows = []
    for row in compare_latency(run.endpoints, server):
        rows.append({
            "name": row["name"],
            "count": f"{int(row['count'] or 0):,}",
            "server_count": ("missing" if row["server_count"] is None
                             else f"{int(row['server_count']):,}"),
            **{key: ("missing" if row[key] is None else format_value(row[key], ""))
               for key in ("client_p50_ms", "client_p95_ms", "client_p99_ms",
                           "server_p50_ms", "server_p95_ms", "server_p99_ms",
                           "outside_server_p50_ms")},
        })
    family = ((run.meta.collectors or {}).get("prometheus") or {}).get("server_histogram")
    return {"rows": rows, "note": "", "family": family}


def postgres_section(run: RunResult, start: float, end: float) -> dict[str, Any]:
    entry = (run.meta.collectors or {}).get("postgres")
    if entry is None:
        return {"shown": False}
    summary = summarize_postgres(run.postgres, start, end, entry.get("interval_s"))
    if summary is None:
        return {"shown": True, "lines": [], "statements": [],
                "note": _note(run, "postgres", "fewer than two samples in the judged window")}
    timed = summary["queries_s"] is not None
    lines = [
        ("queries", f"{format_value(summary['queries_s'], '/s')} "
                    f"({summary['queries']:,} in the judged window)" if timed else
         "missing (pg_stat_statements not loaded)"),
        ("mean query time", format_value(summary["query_mean_ms"], "ms") if timed
         else "missing"),
        ("transactions", format_value(summary["xacts_s"], "/s")),
        ("connections, most at once", _count(summary["connections_max"])),
        ("active, most at once", _count(summary["active_max"])),
        ("idle in transaction, most at once", _count(summary["idle_in_transaction_max"])),
        ("waiting on locks or I/O, most at once", _count(summary["waiting_max"])),
    ]
    statements = [{"query": s.get("query") or "", "calls": f"{int(s.get('calls') or 0):,}",
                   "total": format_value(s.get("total_ms"), "ms"),
                   "mean": format_value(s.get("mean_ms"), "ms"),
                   "rows": f"{int(s.get('rows') or 0):,}"}
                  for s in run.pg_statements[:MAX_STATEMENTS]]
    note = "" if timed else _note(run, "postgres", "pg_stat_statements not loaded")
    return {"shown": True, "lines": lines, "statements": statements, "note": note}


def redis_section(run: RunResult, start: float, end: float) -> dict[str, Any]:
    if (run.meta.collectors or {}).get("redis") is None:
        return {"shown": False}
    summary = summarize_redis(run.redis, start, end)
    if summary is None:
        return {"shown": True, "lines": [],
                "note": _note(run, "redis", "fewer than two samples in the judged window")}
    ratio = summary["hit_ratio_percent"]
    lines = [
        ("cache hit ratio", "missing (no lookups)" if ratio is None
         else f"{format_value(ratio, '%')} of {summary['lookups']:,} lookups"),
        ("commands", format_value(summary["commands_s"], "/s")),
        ("memory, peak", format_value(summary["used_memory_mb_max"], "MB")),
        ("clients, most at once", _count(summary["connected_clients_max"])),
    ]
    return {"shown": True, "lines": lines, "note": ""}


def _count(value: int | None) -> str:
    return "missing" if value is None else f"{value:,}"


def observed_context(run: RunResult) -> dict[str, Any]:
    start, end = judged_window(run)
    scraped = (run.meta.collectors or {}).get("prometheus") or {}
    sampled_pid = run.resources is not None and "rss_mb" in run.resources \
        and run.resources["rss_mb"].notna().any()
    process_source = ""
    if not sampled_pid and run.target_metrics is not None and scraped.get("process"):
        process_source = (f"Target CPU and memory come from its own process metrics at "
                          f"{scraped.get('url')} (the process serving them).")
    return {"server_latency": server_latency_section(run, start, end),
            "postgres": postgres_section(run, start, end),
            "redis": redis_section(run, start, end),
            "process_source": process_source}
