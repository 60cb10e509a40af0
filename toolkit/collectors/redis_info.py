"""Samples the target's Redis with INFO: commands, keyspace hits and misses, memory, clients.

redis.csv holds the counters as Redis reports them (cumulative since it started; the report
turns them into rates and the hit ratio of the run). They are server-wide: every client of
that Redis counts, not only the target, and perfkit's own INFO is one command per sample.
redis-py sends the command and parses the reply; its connection's socket is made from the
stdlib's unpatched socket, as the sampler's native thread needs.
"""

import logging
import socket
import time
from pathlib import Path
from typing import Any

from .. import rundir
from ..errors import ConfigError, RunError
from ..redaction import redact_url
from .sampling import CsvRows, Sampler, get_original

log = logging.getLogger(__name__)

COLUMNS = ["t", "commands", "keyspace_hits", "keyspace_misses", "used_memory_mb",
           "connected_clients", "ops_per_s"]
TIMEOUT_S = 2.0
MB = 1024 * 1024


def hit_ratio(hits: float, misses: float) -> float | None:
    """Keyspace hits over lookups, in percent; None without lookups."""
    lookups = hits + misses
    return None if lookups <= 0 else 100.0 * hits / lookups


def row_from_info(t: float, info: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"t": round(t, 3)}
    for column, field in (("commands", "total_commands_processed"),
                          ("keyspace_hits", "keyspace_hits"),
                          ("keyspace_misses", "keyspace_misses"),
                          ("connected_clients", "connected_clients"),
                          ("ops_per_s", "instantaneous_ops_per_sec")):
        value = info.get(field)
        if isinstance(value, int | float):
            row[column] = value
    if isinstance(info.get("used_memory"), int | float):
        row["used_memory_mb"] = round(info["used_memory"] / MB, 3)
    return row


def connect(url: str) -> Any:
    """A redis-py Connection to `url` (redis:// only) on the unpatched socket."""
    from redis.connection import Connection, parse_url

    if not url.startswith("redis://"):
        raise ConfigError(f"--redis-url {redact_url(url)!r}: expected redis://HOST:PORT/DB")

    class NativeConnection(Connection):
        def _connect(self) -> socket.socket:
            native_socket = get_original("socket", "socket")
            getaddrinfo = get_original("socket", "getaddrinfo")
            error: OSError | None = None
            for family, kind, proto, _, address in getaddrinfo(self.host, self.port, 0,
                                                               socket.SOCK_STREAM):
                sock = native_socket(family, kind, proto)
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sock.settimeout(TIMEOUT_S)
                    sock.connect(address)
                except OSError as exc:
                    sock.close()
                    error = exc
                    continue
                return sock  # type: ignore[no-any-return]
            raise error or OSError(f"cannot resolve {self.host}")

    return NativeConnection(**parse_url(url), socket_timeout=TIMEOUT_S,
                            socket_connect_timeout=TIMEOUT_S)


class RedisCollector(Sampler):
    def __init__(self, url: str, out_dir: Path, interval_s: float = 2.0) -> None:
        super().__init__(interval_s)
        self._conn = connect(url)
        self.url = url
        self.out_dir = Path(out_dir)
        self._rows = CsvRows(self.out_dir / rundir.REDIS, COLUMNS)
        self._transient_failures = 0
        self._last_error = ""

    def start(self) -> None:
        if not self.out_dir.is_dir():
            raise RunError(f"redis collector: {self.out_dir} is not a directory")
        super().start()

    def take_sample(self) -> dict[str, Any] | None:
        from redis._parsers.helpers import parse_info
        from redis.exceptions import RedisError

        try:
            self._conn.send_command("INFO")
            raw = self._conn.read_response()
        except (OSError, RedisError) as exc:
            self._transient_failures += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            self._conn.disconnect()
            return None
        t = time.time()
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        row = row_from_info(t, parse_info(text))
        self._rows.write(row)
        return row

    def close(self) -> None:
        self._conn.disconnect()
        self._rows.close()

    def describe(self) -> dict[str, Any]:
        notes = []
        if self._transient_failures:
            notes.append(f"{self._transient_failures} samples failed (last: {self._last_error})")
        return {
            **self.entry(notes),
            "url": redact_url(self.url),
        }
