"""Scrapes the target's own metrics endpoints into app.csv and slow_queries.json.

The research API reports cumulative query and request timings in seconds at
/api/v1/metrics/database and /api/v1/metrics/application; perfkit stores them in ms, as the
target reports them otherwise (cumulative, not per interval). A target without these endpoints
(another deployment of the API) is "not available", with the reason, and leaves no rows: a row
of zeros would read as a measurement. An endpoint that answers 4xx or something other than a
JSON object is given up on at once; refused connections, timeouts and 5xx are retried every
interval, since the target may be restarting or overloaded.
"""

import http.client
import io
import json
import logging
import socket
import ssl
import time
import urllib.parse
from pathlib import Path
from typing import IO, Any

from .. import rundir
from ..errors import ConfigError, RunError
from .sampling import CsvRows, Sampler, get_original

log = logging.getLogger(__name__)

DATABASE_PATH = "/api/v1/metrics/database"
APPLICATION_PATH = "/api/v1/metrics/application"
PROMETHEUS_PATH = "/metrics"
COLUMNS = [
    "t", "db_total_queries", "db_average_ms", "db_max_ms", "db_slow_queries_count",
    "research_avg_ms", "api_avg_ms", "total_requests", "queue_depth", "workers",
]
# (column, endpoint, field, factor): the reference service reports times in seconds.
FIELDS = [
    ("db_total_queries", DATABASE_PATH, "total_queries", 1.0),
    ("db_average_ms", DATABASE_PATH, "average_time", 1000.0),
    ("db_max_ms", DATABASE_PATH, "max_time", 1000.0),
    ("db_slow_queries_count", DATABASE_PATH, "slow_queries_count", 1.0),
    ("research_avg_ms", APPLICATION_PATH, "research_avg_time", 1000.0),
    ("api_avg_ms", APPLICATION_PATH, "api_avg_time", 1000.0),
    ("total_requests", APPLICATION_PATH, "total_requests", 1.0),
    # Jobs waiting for a research worker (the broker's queue, or the in-process semaphore's
    # waiters) and the worker processes serving them.
    ("queue_depth", APPLICATION_PATH, "queue_depth", 1.0),
    ("workers", APPLICATION_PATH, "workers", 1.0),
]
TIMEOUT_S = 2.0
MAX_BODY_BYTES = 4 * 1024 * 1024
# An endurance run sees many slow queries; the slowest are the ones a reader acts on.
MAX_SLOW_QUERIES = 1000


class UnusableResponse(Exception):
    """The endpoint answered, but not with metrics: do not ask it again."""


class NativeHTTPConnection(http.client.HTTPConnection):
    """http.client on the unpatched socket, usable in a native thread under gevent.

    Patched sockets would need a gevent hub in the collector's thread; the stdlib's own
    create_connection looks up the patched names at call time, so the socket is made here.
    """

    def connect(self) -> None:
        native_socket = get_original("socket", "socket")
        getaddrinfo = get_original("socket", "getaddrinfo")
        error: OSError | None = None
        for family, kind, proto, _, address in getaddrinfo(self.host, self.port, 0, 1):
            sock = native_socket(family, kind, proto)
            try:
                sock.settimeout(self.timeout)
                sock.connect(address)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small requests
            self.sock = sock
            return
        raise error or OSError(f"cannot resolve {self.host}")


class TLSSocket:
    """A blocking TLS client connection on a native socket, for http.client.

    gevent may have patched the ssl module before it defined SSLSocket, making the stdlib's
    own SSLSocket a gevent socket; ssl.SSLObject works on memory buffers instead, so the TLS
    runs here and only the native socket touches the network.
    """

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server_hostname: str) -> None:
        self._sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing,
                                     server_hostname=server_hostname)
        self._run(self._tls.do_handshake)

    def _run(self, operation: Any, *args: Any) -> Any:
        while True:
            try:
                result = operation(*args)
            except ssl.SSLWantReadError:
                self._send_pending()
                data = self._sock.recv(65536)
                if data:
                    self._incoming.write(data)
                else:
                    self._incoming.write_eof()
                continue
            self._send_pending()
            return result

    def _send_pending(self) -> None:
        pending = self._outgoing.read()
        if pending:
            self._sock.sendall(pending)

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self._run(self._tls.write, view):]

    def recv_into(self, buffer: Any) -> int:
        try:
            data = self._run(self._tls.read, len(buffer))
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return 0
        buffer[:len(data)] = data
        return len(data)

    def makefile(self, mode: str = "rb") -> IO[bytes]:
        return io.BufferedReader(_TLSReader(self))

    def close(self) -> None:
        self._sock.close()


class _TLSReader(io.RawIOBase):
    def __init__(self, tls: TLSSocket) -> None:
        self._tls = tls

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._tls.recv_into(buffer)


class NativeHTTPSConnection(NativeHTTPConnection):
    """NativeHTTPConnection over TLS (TLSSocket). Certificates are verified against the
    system's store, which OpenSSL lets SSL_CERT_FILE / SSL_CERT_DIR replace (a private CA)."""

    default_port = 443

    def __init__(self, host: str, port: int | None = None, timeout: float = TIMEOUT_S) -> None:
        super().__init__(host, port, timeout=timeout)
        context = get_original("ssl", "SSLContext")(ssl.PROTOCOL_TLS_CLIENT)
        context.load_default_certs()
        self._context = context

    def connect(self) -> None:
        super().connect()
        self.sock = TLSSocket(self.sock, self._context, self.host)


def open_connection(url: str, timeout_s: float = TIMEOUT_S) -> http.client.HTTPConnection:
    """A native-thread connection to the host of an http:// or https:// URL (not opened yet)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{url!r} is not an http:// or https:// URL")
    if parts.scheme == "https":
        return NativeHTTPSConnection(parts.hostname, parts.port, timeout=timeout_s)
    return NativeHTTPConnection(parts.hostname, parts.port or 80, timeout=timeout_s)


def fetch_json(conn: http.client.HTTPConnection, path: str) -> Any:
    """GET path on an open connection; UnusableResponse for 4xx / non-JSON, OSError for 5xx."""
    conn.request("GET", path, headers={"Accept": "application/json"})
    response = conn.getresponse()
    body = response.read(MAX_BODY_BYTES)
    if response.status >= 500:
        raise OSError(f"GET {path}: {response.status}")
    if response.status != 200:
        raise UnusableResponse(f"GET {path}: {response.status}")
    try:
        return json.loads(body)
    except ValueError:
        content_type = response.getheader("Content-Type", "?")
        raise UnusableResponse(f"GET {path}: not JSON ({content_type})") from None


def row_from_metrics(t: float, metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The app.csv row of one scrape; a field the target did not report stays missing."""
    row: dict[str, Any] = {"t": round(t, 3)}
    for column, endpoint, name, factor in FIELDS:
        value = metrics.get(endpoint, {}).get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            row[column] = round(value * factor, 4) if factor != 1.0 else value
    return row


def slow_queries_from_metrics(database: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for entry in database.get("recent_slow_queries") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("time"), int | float):
            continue
        found.append({
            "query": str(entry.get("query", "")),
            "time_ms": round(entry["time"] * 1000.0, 3),
            "timestamp": entry.get("timestamp"),
        })
    return found


class AppCollector(Sampler):
    """Scrapes the target's /api/v1/metrics/database and /application every interval.

    Writes app.csv (created with the first successful scrape, so an unavailable target leaves
    none) and slow_queries.json (all distinct slow queries seen, rewritten when one is added).
    /metrics (Prometheus) is probed once and reported in the run.json entry; the run directory
    has no columns for it.
    """

    def __init__(self, base_url: str, out_dir: Path, interval_s: float = 5.0) -> None:
        super().__init__(interval_s)
        parts = urllib.parse.urlsplit(base_url)
        if not parts.hostname:
            raise ConfigError(f"app collector: {base_url!r} is not a URL")
        self.base_url = base_url
        self.out_dir = Path(out_dir)
        self._prefix = parts.path.rstrip("/")
        # endpoint path → why it is not scraped ("" while it is)
        self._endpoints = {DATABASE_PATH: "", APPLICATION_PATH: ""}
        if parts.scheme not in ("http", "https"):
            why_not = f"{parts.scheme}:// targets are not scraped (http and https only)"
            self._endpoints = {path: why_not for path in self._endpoints}
        self._prometheus: bool | None = None
        self._last_error = ""
        self._transient_failures = 0
        self._rows = CsvRows(self.out_dir / rundir.APP, COLUMNS)
        self._slow_queries: dict[tuple[Any, ...], dict[str, Any]] = {}

    def start(self) -> None:
        if not self.out_dir.is_dir():
            raise RunError(f"app collector: {self.out_dir} is not a directory")
        super().start()

    def take_sample(self) -> dict[str, Any] | None:
        wanted = [path for path, why_not in self._endpoints.items() if not why_not]
        if not wanted:
            return None
        metrics: dict[str, dict[str, Any]] = {}
        conn = open_connection(self.base_url)
        try:
            for path in wanted:
                try:
                    payload = fetch_json(conn, self._prefix + path)
                except UnusableResponse as exc:
                    self._endpoints[path] = str(exc)
                    continue
                if not isinstance(payload, dict):
                    self._endpoints[path] = f"GET {path}: not a JSON object"
                    continue
                metrics[path] = payload
        except (OSError, http.client.HTTPException) as exc:
            # Connection refused, timeout, reset, 5xx: the target may come back; try again.
            self._transient_failures += 1
            self._last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return None
        else:
            if self._prometheus is None:
                self._prometheus = self._probe_prometheus(conn)
        finally:
            conn.close()
        t = time.time()
        row = row_from_metrics(t, metrics)
        if len(row) == 1:
            for path in metrics:
                self._endpoints[path] = f"GET {path}: none of the expected fields"
            return None
        self._write_row(row)
        if DATABASE_PATH in metrics:
            self._add_slow_queries(slow_queries_from_metrics(metrics[DATABASE_PATH]))
        return row

    def _probe_prometheus(self, conn: http.client.HTTPConnection) -> bool | None:
        try:
            conn.request("GET", self._prefix + PROMETHEUS_PATH)
            response = conn.getresponse()
            response.read(MAX_BODY_BYTES)
        except (OSError, http.client.HTTPException):
            return None  # asked again with the next scrape
        return response.status == 200

    def _write_row(self, row: dict[str, Any]) -> None:
        if not self._rows.started:
            # An available endpoint with no slow queries yet is a measurement: [] not missing.
            rundir.write_json(self.out_dir / rundir.SLOW_QUERIES, [])
        self._rows.write(row)

    def _add_slow_queries(self, found: list[dict[str, Any]]) -> None:
        added = False
        for entry in found:
            key = (entry["query"], entry["time_ms"], str(entry["timestamp"]))
            if key not in self._slow_queries:
                self._slow_queries[key] = entry
                added = True
        if not added:
            return
        if len(self._slow_queries) > MAX_SLOW_QUERIES:
            slowest = sorted(self._slow_queries.items(), key=lambda kv: -kv[1]["time_ms"])
            self._slow_queries = dict(slowest[:MAX_SLOW_QUERIES])
        rundir.write_json(self.out_dir / rundir.SLOW_QUERIES, list(self._slow_queries.values()))

    def close(self) -> None:
        self._rows.close()

    def describe(self) -> dict[str, Any]:
        available = self.samples > 0
        notes = [why_not for why_not in self._endpoints.values() if why_not]
        if self._transient_failures:
            notes.append(f"{self._transient_failures} scrapes failed (last: {self._last_error})")
        notes += [*self.notes, self.failure_note()]
        return {
            "available": available,
            "cpu_s": round(self.cpu_s, 4),
            "samples": self.samples,
            "interval_s": self.interval_s,
            "note": "; ".join(n for n in notes if n),
            "prometheus": self._prometheus,
            "slow_queries": len(self._slow_queries) if available else None,
        }
