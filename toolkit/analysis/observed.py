"""What the target's own metrics say over a window: server-side latency, PostgreSQL, Redis.

Pure functions on the run directory's records (server_latency.jsonl lines, postgres.csv and
redis.csv frames). Counters are cumulative as the target reports them: a window's figure is
the growth between its first and last sample, so a window needs two samples; a counter that
went back (the target or the database restarted) leaves the figure missing.
"""

import math
import re
from typing import Any

import pandas as pd

_PARAM = re.compile(r"\{[^}]*\}|<[^>]*>|:[A-Za-z_]\w*")


def route_key(name: str) -> str:
    """A request name with its path parameters erased, so the client's
    `GET /items/{id}` meets the server's `GET /items/{item_id}` (or `/items/:id`)."""
    return _PARAM.sub("{}", name.strip()).rstrip("/") or "/"


def histogram_quantile(q: float, buckets: list[tuple[float, float]], count: float) -> float | None:
    """The q-quantile (0..1) of a cumulative histogram [(upper bound, count ≤ bound)], as
    Prometheus's histogram_quantile computes it: linear within the bucket it falls in; past
    the last finite bound, that bound (the histogram cannot say more)."""
    if count <= 0 or not buckets:
        return None
    rank = q * count
    lower_bound, lower_count = 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if cumulative == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                cumulative - lower_count)
        lower_bound, lower_count = bound, cumulative
    return buckets[-1][0]


def _growth(first: dict[str, Any] | None, last: dict[str, Any]) -> dict[str, Any] | None:
    before = dict(first["buckets"]) if first else {}
    if first is not None and last["count"] < first["count"]:
        return None  # counters reset
    buckets = [(float(le), float(n) - float(before.get(le, 0.0))) for le, n in last["buckets"]]
    return {"count": float(last["count"]) - float(first["count"] if first else 0.0),
            "sum_s": float(last["sum_s"]) - float(first["sum_s"] if first else 0.0),
            "buckets": buckets}


def summarize_server_latency(records: list[dict[str, Any]], start: float,
                             end: float) -> dict[str, dict[str, Any]]:
    """{server request name: {count, mean_ms, p50_ms, p95_ms, p99_ms}} of the requests the
    server finished in [start, end]: the last scrape at or before `start` (or the first one
    after it) against the last one up to `end`. Times are in ms, interpolated within the
    histogram's buckets, so they are as coarse as the target's bucket bounds."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for record in sorted(records, key=lambda r: r["t"]):
        by_name.setdefault(record["name"], []).append(record)
    summary: dict[str, dict[str, Any]] = {}
    for name, series in by_name.items():
        before = [r for r in series if r["t"] <= start]
        inside = [r for r in series if start < r["t"] <= end]
        if not inside:
            continue
        first = before[-1] if before else None
        if first is None and len(inside) >= 2:
            first = inside[0]
        growth = _growth(first, inside[-1])
        if growth is None or growth["count"] <= 0:
            continue
        count = growth["count"]
        stats: dict[str, Any] = {"count": int(count),
                                 "mean_ms": 1000.0 * growth["sum_s"] / count}
        for key, q in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)):
            value = histogram_quantile(q, growth["buckets"], count)
            stats[key] = None if value is None else 1000.0 * value
        summary[name] = stats
    return summary


def compare_latency(client: dict[str, dict[str, Any]],
                    server: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per client request name: its client-side p50/p95/p99, the server's for the same route
    (None where the server reports no such route), and the difference at p50 (what the
    network, connection setup and queueing before the server's timer add)."""
    servers = {route_key(name): stats for name, stats in server.items()}
    rows = []
    for name, stats in sorted(client.items()):
        theirs = servers.get(route_key(name))
        row: dict[str, Any] = {"name": name, "count": stats.get("count")}
        for key in ("p50_ms", "p95_ms", "p99_ms"):
            row[f"client_{key}"] = stats.get(key)
            row[f"server_{key}"] = None if theirs is None else theirs.get(key)
        row["server_count"] = None if theirs is None else theirs["count"]
        ours, server_p50 = stats.get("p50_ms"), row["server_p50_ms"]
        row["outside_server_p50_ms"] = (None if ours is None or server_p50 is None
                                        else ours - server_p50)
        rows.append(row)
    return rows


def _window(frame: pd.DataFrame | None, start: float, end: float,
            columns: list[str]) -> pd.DataFrame | None:
    if frame is None or any(c not in frame.columns for c in columns):
        return None
    window = frame[(frame["t"] >= start) & (frame["t"] <= end)].dropna(subset=columns)
    return window if len(window) >= 2 else None


def _rate(window: pd.DataFrame | None, column: str) -> tuple[float, float, float] | None:
    """(growth, elapsed s, per second) of a cumulative column; None if it went back."""
    if window is None:
        return None
    first, last = window.iloc[0], window.iloc[-1]
    growth = float(last[column] - first[column])
    elapsed_s = float(last["t"] - first["t"])
    if growth < 0 or elapsed_s <= 0:
        return None
    return growth, elapsed_s, growth / elapsed_s


def summarize_postgres(frame: pd.DataFrame | None, start: float, end: float,
                       interval_s: float | None = None) -> dict[str, Any] | None:
    """Query rate and mean time (pg_stat_statements), transaction rate, and the most
    connections active, idle in a transaction and waiting, over [start, end]; None without
    two samples. `interval_s`: the collector's, whose own transaction per sample is taken
    off the transaction rate."""
    if frame is None or len(frame) == 0:
        return None
    summary: dict[str, Any] = {"queries": None, "queries_s": None, "query_mean_ms": None,
                               "xacts_s": None}
    calls = _rate(_window(frame, start, end, ["calls", "exec_ms"]), "calls")
    if calls is not None:
        window = _window(frame, start, end, ["calls", "exec_ms"])
        assert window is not None
        exec_ms = float(window.iloc[-1]["exec_ms"] - window.iloc[0]["exec_ms"])
        summary["queries"] = int(calls[0])
        summary["queries_s"] = calls[2]
        summary["query_mean_ms"] = exec_ms / calls[0] if calls[0] > 0 else None
    xacts = _rate(_window(frame, start, end, ["xacts"]), "xacts")
    if xacts is not None:
        own_s = 1.0 / interval_s if interval_s else 0.0
        summary["xacts_s"] = max(0.0, xacts[2] - own_s)
    inside = frame[(frame["t"] >= start) & (frame["t"] <= end)]
    for column in ("active", "idle_in_transaction", "waiting", "connections"):
        values = inside[column].dropna() if column in inside else pd.Series(dtype=float)
        summary[f"{column}_max"] = None if values.empty else int(values.max())
    if all(v is None for v in summary.values()):
        return None
    return summary


def summarize_redis(frame: pd.DataFrame | None, start: float,
                    end: float) -> dict[str, Any] | None:
    """Commands/s, the keyspace hit ratio of the lookups in [start, end] (percent; None
    without lookups), peak memory and clients."""
    window = _window(frame, start, end, ["commands", "keyspace_hits", "keyspace_misses"])
    if window is None:
        return None
    commands = _rate(window, "commands")
    hits = _rate(window, "keyspace_hits")
    misses = _rate(window, "keyspace_misses")
    ratio = None
    if hits is not None and misses is not None and hits[0] + misses[0] > 0:
        ratio = 100.0 * hits[0] / (hits[0] + misses[0])
    memory = window["used_memory_mb"].dropna() if "used_memory_mb" in window else None
    clients = window["connected_clients"].dropna() if "connected_clients" in window else None
    return {
        "commands_s": None if commands is None else commands[2],
        "hit_ratio_percent": ratio,
        "lookups": None if hits is None or misses is None else int(hits[0] + misses[0]),
        "used_memory_mb_max": None if memory is None or memory.empty else float(memory.max()),
        "connected_clients_max": (None if clients is None or clients.empty
                                  else int(clients.max())),
    }


def finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
