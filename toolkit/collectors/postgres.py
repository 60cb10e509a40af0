"""Samples the target's PostgreSQL directly: statement timings, connections, transactions.

Every interval, in one read-only transaction on one connection:
- `pg_stat_statements` (where the extension is loaded and created in the database): calls,
  execution time and rows, summed over the database's plain statements (SELECT, INSERT,
  UPDATE, DELETE, WITH, MERGE, COPY: not BEGIN/COMMIT/SET, which an application's own query
  counter does not count either, and not perfkit's own `pg_stat_*` reads);
- `pg_stat_activity`: the database's client connections that are active, idle in a
  transaction (a pool holding connections it does not use) and waiting on a lock or I/O;
- `pg_stat_database`: committed and rolled-back transactions (perfkit's own sampling
  transaction, one per sample, is taken off the rate by the analysis).
postgres.csv holds the cumulative counters as read; pg_statements.json the run's statements
(the growth of each between the first and the last sample), slowest in total first, with the
slowest single execution where the run set it. Where
pg_stat_statements is missing, calls and times are empty (missing), never zero, and the note
says how to enable it; transaction rates remain.

The connection is libpq's blocking connect and psycopg's C wait loop: no Python socket or
selector that gevent may have patched is touched in the sampler's native thread.
"""

import logging
import re
import time
from pathlib import Path
from typing import Any

from .. import rundir
from ..errors import ConfigError, RunError
from ..redaction import redact_url
from .sampling import CsvRows, Sampler

log = logging.getLogger(__name__)

COLUMNS = ["t", "calls", "exec_ms", "rows", "xacts", "active", "idle_in_transaction",
           "waiting", "connections"]
CONNECT_TIMEOUT_S = 5
MAX_STATEMENTS = 50
MAX_QUERY_CHARS = 500
# A statement counts as a query when it reads or writes rows.
_QUERY = re.compile(r"^\s*(\(\s*)*(select|insert|update|delete|with|merge|copy|values|table)\b",
                    re.IGNORECASE)

_HAS_STATEMENTS = "SELECT to_regclass('pg_stat_statements') IS NOT NULL"
_STATEMENTS = """
SELECT queryid, query, calls, total_exec_time, rows, max_exec_time FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND query NOT LIKE '%pg_stat_%' AND query NOT LIKE '%pg_database%'
"""
_ACTIVITY = """
SELECT count(*) FILTER (WHERE state = 'active'),
       count(*) FILTER (WHERE state LIKE 'idle in transaction%'),
       count(*) FILTER (WHERE state = 'active'
                        AND wait_event_type IN ('Lock', 'LWLock', 'BufferPin', 'IO')),
       count(*)
FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend'
  AND pid <> pg_backend_pid()
"""
_DATABASE = """
SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()
"""


def libpq_url(url: str) -> str:
    """A libpq URL from a PostgreSQL URL as SQLAlchemy writes it (postgresql+asyncpg://)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+", 1)[0] not in ("postgresql", "postgres"):
        raise ConfigError(f"--db-url {redact_url(url)!r}: expected postgresql://USER@HOST/DB")
    return "postgresql://" + rest


def is_query(text: str) -> bool:
    return bool(_QUERY.match(text))


Snapshot = dict[int, tuple[str, int, float, int, float]]


def statement_deltas(first: Snapshot, last: Snapshot) -> list[dict[str, Any]]:
    """The statements that ran between two pg_stat_statements snapshots ({queryid: (query,
    calls, total_ms, rows, max_ms)}), slowest in total first. A statement evicted and
    re-entered in between (its calls went down) counts from zero.

    The server keeps only the slowest execution since its statistics were reset: where it
    grew during the run (or the statement is new), the run set it and `max_ms` is the run's
    own (`max_in_run`); otherwise the run's slowest was at most that (`max_in_run` false)."""
    rows: list[dict[str, Any]] = []
    for queryid, (query, calls, total_ms, n_rows, max_ms) in last.items():
        before = first.get(queryid)
        max_in_run = before is None or calls < before[1] or max_ms > before[4]
        if before is not None and calls >= before[1]:
            calls, total_ms, n_rows = calls - before[1], total_ms - before[2], n_rows - before[3]
        if calls <= 0:
            continue
        rows.append({"query": query[:MAX_QUERY_CHARS], "calls": calls,
                     "total_ms": round(total_ms, 3), "mean_ms": round(total_ms / calls, 4),
                     "max_ms": round(max_ms, 4), "max_in_run": max_in_run,
                     "rows": n_rows, "is_query": is_query(query)})
    rows.sort(key=lambda r: -r["total_ms"])
    return rows[:MAX_STATEMENTS]


def connect(url: str) -> Any:
    """A psycopg connection whose waits are psycopg's C loop (see the module's docstring)."""
    import psycopg
    from psycopg import pq, waiting
    from psycopg.conninfo import make_conninfo

    wait_c: Any = getattr(waiting, "wait_c", None)
    if wait_c is None:
        raise ConfigError("--db-url needs psycopg's binary package: pip install "
                          "'psycopg[binary]'")

    class NativeConnection(psycopg.Connection):  # type: ignore[type-arg]
        def wait(self, gen: Any, interval: float | None = 0.1,
                 timeout: float | None = None) -> Any:
            return wait_c(gen, self.pgconn.socket, interval=interval, timeout=timeout)

    conninfo = make_conninfo(libpq_url(url), connect_timeout=CONNECT_TIMEOUT_S,
                             application_name="perfkit-collector")
    pgconn = pq.PGconn.connect(conninfo.encode())
    if pgconn.status != pq.ConnStatus.OK:
        message = bytes(pgconn.error_message).decode(errors="replace").strip()
        pgconn.finish()
        raise OSError(message or "connection failed")
    return NativeConnection(pgconn)


class PostgresCollector(Sampler):
    def __init__(self, url: str, out_dir: Path, interval_s: float = 2.0) -> None:
        super().__init__(interval_s)
        libpq_url(url)
        self.url = url
        self.out_dir = Path(out_dir)
        self._conn: Any = None
        self._statements_available: bool | None = None
        self._first: Snapshot | None = None
        self._last: Snapshot = {}
        self._rows = CsvRows(self.out_dir / rundir.POSTGRES, COLUMNS)
        self._transient_failures = 0
        self._last_error = ""

    def start(self) -> None:
        if not self.out_dir.is_dir():
            raise RunError(f"postgres collector: {self.out_dir} is not a directory")
        super().start()

    def take_sample(self) -> dict[str, Any] | None:
        try:
            return self._sample()
        except OSError as exc:
            self._fail(exc)
        except Exception as exc:
            import psycopg

            if not isinstance(exc, psycopg.Error):
                raise
            self._fail(exc)
        return None

    def _fail(self, exc: Exception) -> None:
        # The server may be restarting or out of connections: a gap, then try again.
        self._transient_failures += 1
        self._last_error = f"{type(exc).__name__}: {str(exc).strip()}"
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _sample(self) -> dict[str, Any]:
        if self._conn is None:
            self._conn = connect(self.url)
        conn = self._conn
        with conn.transaction(force_rollback=True):
            if self._statements_available is None:
                self._statements_available = bool(conn.execute(_HAS_STATEMENTS).fetchone()[0])
            t = time.time()
            row: dict[str, Any] = {"t": round(t, 3)}
            if self._statements_available:
                snapshot = {int(qid): (str(q), int(c), float(ms), int(r), float(top))
                            for qid, q, c, ms, r, top in conn.execute(_STATEMENTS).fetchall()
                            if qid is not None}
                if self._first is None:
                    self._first = snapshot
                self._last = snapshot
                queries = [s for s in snapshot.values() if is_query(s[0])]
                row["calls"] = sum(s[1] for s in queries)
                row["exec_ms"] = round(sum(s[2] for s in queries), 3)
                row["rows"] = sum(s[3] for s in queries)
            active, idle_tx, waiting, total = conn.execute(_ACTIVITY).fetchone()
            xacts = conn.execute(_DATABASE).fetchone()
        row.update(active=active, idle_in_transaction=idle_tx, waiting=waiting,
                   connections=total)
        if xacts is not None and xacts[0] is not None:
            # As the server counts them, perfkit's own one per sample included: backends
            # report to the statistics lazily (each second while busy, up to 10 s late when
            # idle), so that share is taken off the rate over a window, not per sample.
            row["xacts"] = int(xacts[0])
        self._rows.write(row)
        return row

    def close(self) -> None:
        if self._first is not None:
            rundir.write_json(self.out_dir / rundir.PG_STATEMENTS,
                              statement_deltas(self._first, self._last))
        if self._conn is not None:
            self._conn.close()
        self._rows.close()

    def describe(self) -> dict[str, Any]:
        notes = []
        if self._statements_available is False:
            notes.append("pg_stat_statements is not available in this database (add it to "
                         "shared_preload_libraries and CREATE EXTENSION pg_stat_statements): "
                         "query counts and times not measured, transaction rates only")
        if self._transient_failures:
            notes.append(f"{self._transient_failures} samples failed (last: {self._last_error})")
        return {
            **self.entry(notes),
            "url": redact_url(self.url),
            "pg_stat_statements": self._statements_available,
        }
