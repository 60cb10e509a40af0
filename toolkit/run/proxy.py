"""perfkit's fault proxy: a TCP proxy on 127.0.0.1 between the load and the target, for the
network faults of --fault (`net=latency:300ms`, `net=bandwidth:100KB/s`, `net=reset`,
`net=blackhole`).

No well-kept proxy that injects faults installs from the package registries (Toxiproxy is a
Go program, in neither PyPI nor Debian; PyPI's `toxiproxy-python` is only its client), so
this one is small: gevent's StreamServer (the load generator already runs on gevent), one
greenlet per direction of each connection, the fault in force read per chunk of data:

- latency: each chunk from the load to the target waits that long (a request is a chunk,
  so each request is that much slower; answers are not delayed again);
- bandwidth: each chunk, both ways, waits its size ÷ the rate;
- reset: a new connection is reset at once (RST, SO_LINGER 0), an open one at its next data;
- blackhole: connections are accepted, data is swallowed both ways: requests hang until
  the client's timeout (--request-timeout).

It runs in perfkit's own (master) process, so its cost is in the load generator's CPU the
report shows. One network fault at a time: a second overlapping one replaces the first.
"""

import logging
import socket
import struct

import gevent
from gevent.server import StreamServer

from ..faults import NetFault

log = logging.getLogger(__name__)

CHUNK_BYTES = 65536
CONNECT_TIMEOUT_S = 10.0


def reset_socket(sock: socket.socket) -> None:
    """Close with a RST, as a dropped connection looks to the client."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class FaultProxy:
    """Listens on 127.0.0.1 (a free port) and forwards to (host, port)."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.fault: NetFault | None = None
        self.server = StreamServer(("127.0.0.1", 0), self._serve)

    def start(self) -> int:
        """Start listening; returns the port."""
        self.server.start()
        return int(self.server.server_port)

    def stop(self) -> None:
        self.fault = None
        self.server.stop(timeout=1.0)

    def _serve(self, client: socket.socket, _address: object) -> None:
        if self.fault is not None and self.fault.kind == "reset":
            reset_socket(client)
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=CONNECT_TIMEOUT_S)
        except OSError as exc:
            log.debug("fault proxy: cannot reach %s:%s: %s", *self.upstream, exc)
            reset_socket(client)  # as the target refusing would look without the proxy
            return
        upstream.settimeout(None)
        for sock in (client, upstream):
            # Forward each chunk at once: Nagle's algorithm would hold a request's second
            # segment (a POST's body after its headers) for the first's delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pumps = [gevent.spawn(self._pump, client, upstream, True),
                 gevent.spawn(self._pump, upstream, client, False)]
        try:
            gevent.joinall(pumps, count=1)  # either side done: the connection is over
        finally:
            gevent.killall(pumps)
            for sock in (client, upstream):
                sock.close()

    def _pump(self, source: socket.socket, sink: socket.socket, to_target: bool) -> None:
        try:
            while True:
                data = source.recv(CHUNK_BYTES)
                if not data:
                    return
                fault = self.fault
                if fault is not None:
                    if fault.kind == "reset":
                        reset_socket(source)
                        reset_socket(sink)
                        return
                    if fault.kind == "blackhole":
                        continue
                    if fault.kind == "latency" and to_target:
                        gevent.sleep(fault.amount)
                    elif fault.kind == "bandwidth":
                        gevent.sleep(len(data) / fault.amount)
                sink.sendall(data)
        except OSError:
            return
