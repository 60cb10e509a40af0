"""The live page of a run (`--web`): the run as it happens, in a browser, with a Stop button.

A gevent WSGI server inside the load generator's process (Locust runs on gevent, so the
server is a few greenlets on the same event loop, no thread, no second process) serves:
- `GET /`: the page (toolkit/report/templates/live.html.j2), self-contained, no token in it;
- `GET /events`: server-sent events: `init` (every point so far) once, then `tick` every
  second (the new point, the per-endpoint table, the KPIs so far, the alarms), then `done`;
- `POST /stop` with the header `X-Perfkit-Token`: ends the run as Ctrl-C does (report
  written, exit code 130). The token is printed on the terminal only, so whoever can read the
  page cannot stop the run, and a cross-site form cannot set the header;
- `GET /report`: the final report.html, once it is written.

What it costs the run: `tick()` (called by the run loop every second) reads one closed second
of the recorder's buckets (percentiles with numpy, never hdrh's Python loop) and the
collectors' latest samples, and builds the message only while a page is connected. The KPIs
so far are judged every KPI_EVERY_S in gevent's thread pool (a real OS thread, as the
alarms'), with kpi.py's own definitions, on the whole judged part of the run so far: one
merged histogram per request name, kept up to date second by second. bench/live_page_cost.py
measures the cost at the Locust limit.
"""

import hmac
import ipaddress
import json
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event
import numpy as np
import pandas as pd
from gevent.pywsgi import WSGIServer

from ..analysis import stats
from ..analysis.kpi import RESOURCE_COLUMNS, judge_window, window_kpis
from ..analysis.stats import add_cells
from ..errors import ConfigError
from ..kpi_file import JOB_NAMES, KpiTarget
from ..report.live_html import render_live_html
from ..units import format_value
from .observers import MB, read_target
from .recorder import Tally

if TYPE_CHECKING:  # the runner imports this module
    from .runner import RunState

log = logging.getLogger(__name__)

KPI_EVERY_S = 2.0
# One point a second; a longer run shows its last half hour live (its report has it all).
POINTS_KEPT = 1800
# Without a run time and without --warmup, the run's warm-up is known only once it ends (a
# tenth of its length, at most 30 s): the live verdict leaves out the most it can be.
UNBOUNDED_WARMUP_S = 30.0
# At the end, how long the server waits for open pages to load the final report.
LINGER_S = 5.0
KEEPALIVE_S = 15.0
TOKEN_HEADER = "HTTP_X_PERFKIT_TOKEN"
# What the resource KPIs read of each of the system collector's samples: kept as tuples, so a
# day-long endurance run holds a few MB of them, not a dict per second.
SAMPLE_COLUMNS = ("t", *sorted({c for columns in RESOURCE_COLUMNS.values() for c in columns}))


def host_name(host_header: str) -> str:
    """`[::1]:8089` -> `::1`, `localhost:8089` -> `localhost`."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    return host_header.rpartition(":")[0] if ":" in host_header else host_header


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LivePage:
    """The server and what it shows. `watch()` gives it the run once it exists, `tick()`
    is the run loop's, `finish()` shows the report, `close()` stops serving (idempotent)."""

    def __init__(self, host: str | None, port: int, say: Callable[[str], None],
                 title: str) -> None:
        bind = host or "127.0.0.1"
        self.token = secrets.token_urlsafe(12)
        self.page = render_live_html(title).encode("utf-8")
        self.server: WSGIServer | None = WSGIServer((bind, port), self.serve, log=None)
        try:
            self.server.start()
        except OSError as exc:
            raise ConfigError(f"--web-port {port}: cannot listen on {bind}: "
                              f"{exc.strerror or exc}") from exc
        shown = f"[{bind}]" if ":" in bind else bind
        self.url = f"http://{shown}:{self.server.server_port}/"
        # On loopback, only requests to a loopback name (any port: an SSH tunnel's too): a
        # web page elsewhere that rebinds its DNS name to 127.0.0.1 cannot read the run
        # through its visitor's browser.
        self.loopback_only = is_loopback(bind)
        say(f"perfkit: live page {self.url}  (its Stop button asks for the token "
            f"{self.token})")
        if not is_loopback(bind):
            say(f"perfkit: WARNING: the live page listens on {bind}, not only on this "
                f"machine: anyone who reaches it sees the run (Stop still needs the token)")
        self.stop_requested = False
        self.clients = 0
        self.reports_served = 0
        self.points: deque[dict[str, Any]] = deque(maxlen=POINTS_KEPT)
        self.current: dict[str, Any] = {"phase": "starting"}
        self.message = ""  # the last tick's event, as sent
        self.updated = gevent.event.Event()
        self.report_path: Path | None = None
        # The run, once watch() has it.
        self.state: RunState | None = None
        self.targets: list[KpiTarget] = []
        self.duration_s = math.inf
        self.warmup_s = 0.0
        self.lag_s = 1
        self.last_t = 0
        self.so_far: dict[str, Tally] = {}
        self.resources: list[tuple[Any, ...]] = []  # SAMPLE_COLUMNS of the judged samples
        self.kpis: list[dict[str, Any]] = []
        self.pending: Any = None
        self.last_judged = 0.0
        # What the page cost this process: CPU seconds of tick() (this thread) and of the
        # KPI judging (the pool's thread); the sockets' writes are not in it (see the bench).
        self.cpu_s = 0.0
        self.db_seen: tuple[float, float] | None = None  # (queries, their total ms) last read
        self.app_read: tuple[Any, dict[str, float | None]] = (None, {})  # (sample t, point)
        self.events_sent = 0
        self.clients_max = 0

    def watch(self, state: "RunState", targets: list[KpiTarget], duration_s: float,
              warmup_s: float | None, workers: bool) -> None:
        """The run to show: `duration_s` inf runs until Stop; `warmup_s` None is the default
        warm-up (a tenth of the run, at most 30 s)."""
        self.state, self.targets = state, targets
        self.duration_s = duration_s
        if warmup_s is not None:
            self.warmup_s = warmup_s
        else:
            self.warmup_s = UNBOUNDED_WARMUP_S if math.isinf(duration_s) \
                else min(30.0, duration_s / 10.0)
        # Workers report every 3 s: a second is read once their reports of it are in.
        self.lag_s = 5 if workers else 1
        self.kpis = [describe_kpi(kpi, None, "warm-up", "not judged during the warm-up")
                     for kpi in targets]

    def tick(self, elapsed_s: float, users: int, rate: float | None) -> None:
        """One second of the run: its point, and what the page shows."""
        if self.state is None:
            return
        started = time.thread_time()
        try:
            self.show_second(elapsed_s, users, rate)
        finally:
            self.cpu_s += time.thread_time() - started

    def show_second(self, elapsed_s: float, users: int, rate: float | None) -> None:
        state = self.state
        assert state is not None
        t = int(time.time()) - self.lag_s
        judged_from = math.ceil(state.started_at + self.warmup_s)
        point: dict[str, Any] = {"t": t, "users": users, "rate": rate, "e": {}}
        if t > self.last_t:
            for (bucket_t, name), tally in list(state.recorder.buckets.items()):
                if bucket_t <= self.last_t or bucket_t > t:
                    continue
                if bucket_t == t:  # 0.1 ms is plenty on a chart, and keeps the events short
                    point["e"][name] = [tally.count, tally.failures,
                                        round_ms(stats.percentile_ms(tally.hist, 50)),
                                        round_ms(stats.percentile_ms(tally.hist, 95))]
                if bucket_t >= judged_from:
                    merge_tally(self.so_far.setdefault(name, Tally()), tally)
            self.last_t = t
        target = read_target(state)
        point["cpu"] = finite(target.get("cpu_percent"))
        rss_bytes = finite(target.get("rss_bytes"))
        point["rss_mb"] = None if rss_bytes is None else round(rss_bytes / MB, 1)
        point.update(self.read_app())
        self.points.append(point)
        sample = state.system.latest()
        if sample and sample.get("t", 0) >= judged_from and (
                not self.resources or self.resources[-1][0] != sample["t"]):
            self.resources.append(tuple(sample.get(c) for c in SAMPLE_COLUMNS))
        self.judge_kpis(judged_from, t)
        alarms = state.alarms
        self.current = {
            "phase": "running", "elapsed_s": round(elapsed_s, 1),
            "duration_s": None if math.isinf(self.duration_s) else self.duration_s,
            "warmup_s": self.warmup_s, "users": users, "rate": rate,
            "endpoints": self.describe_endpoints(),
            "kpis": self.kpis,
            "alarms": [] if alarms is None else alarms.records[-20:],
            "failing": [] if alarms is None else sorted(alarms.failing)}
        if self.clients:
            self.publish("tick", {**self.current, "point": point})

    def read_app(self) -> dict[str, float | None]:
        """The database's mean query time since the previous sample and the research queue's
        depth, from the target's metrics endpoint (collectors/app.py); {} without one."""
        app = self.state.app if self.state is not None else None
        sample = app.latest() if app is not None else None
        if not sample:
            return {}
        if sample.get("t") is not None and sample.get("t") == self.app_read[0]:
            return self.app_read[1]  # the collector samples every few seconds: held till then
        queries, mean_ms = finite(sample.get("db_total_queries")), finite(
            sample.get("db_average_ms"))
        db_ms = None
        if queries is not None and mean_ms is not None:
            total_ms = queries * mean_ms
            if self.db_seen is not None and queries > self.db_seen[0]:
                db_ms = round((total_ms - self.db_seen[1]) / (queries - self.db_seen[0]), 2)
            self.db_seen = (queries, total_ms)
        point = {"db_ms": db_ms, "queue": finite(sample.get("queue_depth"))}
        self.app_read = (sample.get("t"), point)
        return point

    def judge_kpis(self, judged_from: int, last_t: int) -> None:
        """Pick up the last judgement, start the next (at most every KPI_EVERY_S)."""
        assert self.state is not None
        if self.pending is not None and self.pending.ready():
            pending, self.pending = self.pending, None
            try:
                self.kpis, cpu_s = pending.get()
                self.cpu_s += cpu_s
            except Exception:  # the thread's boundary: the last verdicts stay
                log.exception("judging the KPIs so far failed")
        now = time.time()
        if self.pending is not None or now - self.last_judged < KPI_EVERY_S \
                or last_t < judged_from:
            return
        self.last_judged = now
        # Encoded here, where the tallies change; decoded and judged in the thread.
        records = [{"t": judged_from, "name": name, "count": tally.count,
                    "failures": tally.failures, "hist": stats.encode_histogram(tally.hist)}
                   for name, tally in self.so_far.items()]
        # A copy of the list (pointers, fast); its DataFrame is built in the thread.
        self.pending = gevent.get_hub().threadpool.spawn(
            judge_so_far, records, list(self.resources), judged_from, last_t + 1,
            self.targets)

    def describe_endpoints(self) -> list[dict[str, Any]]:
        """Per request name, the whole run so far (warm-up included, as the terminal's)."""
        assert self.state is not None
        recent = list(self.points)[-5:]
        rows = []
        for name, tally in sorted(self.state.recorder.totals.items()):
            if name in JOB_NAMES or not tally.count:
                continue
            rps = sum(p["e"].get(name, [0])[0] for p in recent) / max(len(recent), 1)
            rows.append({"name": name, "count": tally.count, "failures": tally.failures,
                         "rps": round(rps, 1),
                         **{f"p{q}_ms": stats.percentile_ms(tally.hist, q)
                            for q in (50, 95, 99)}})
        return rows

    def describe(self) -> dict[str, Any]:
        """run.json's export.web entry."""
        return {"url": self.url, "cpu_s": round(self.cpu_s, 3), "events": self.events_sent,
                "clients_max": self.clients_max, "stopped_here": self.stop_requested}

    def show_ending(self) -> None:
        self.current = {**self.current, "phase": "ending"}
        self.publish("tick", self.current)

    def finish(self, report_path: Path, verdict: str | None, exit_code: int) -> None:
        """The report is written: tell the open pages, and give them LINGER_S to load it."""
        self.report_path = report_path
        waiting = self.clients
        self.publish("done", {"report": "report", "verdict": verdict, "exit_code": exit_code,
                              "path": str(report_path)})
        deadline = time.monotonic() + LINGER_S
        while self.reports_served < waiting and time.monotonic() < deadline:
            gevent.sleep(0.1)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop(timeout=1)
            self.server = None

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        self.message = f"event: {kind}\ndata: {json.dumps(data, default=str)}\n\n"
        self.events_sent += 1
        updated, self.updated = self.updated, gevent.event.Event()
        updated.set()

    def serve(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
        if self.loopback_only and not is_loopback(host_name(environ.get("HTTP_HOST", ""))):
            return reply(start_response, "421 Misdirected Request", b"unknown host\n")
        if path == "/stop" and method == "POST":
            return self.stop(environ, start_response)
        if method not in ("GET", "HEAD"):
            return reply(start_response, "405 Method Not Allowed", b"read-only but for Stop\n")
        if path == "/":
            return reply(start_response, "200 OK", self.page, "text/html; charset=utf-8")
        if path == "/events":
            start_response("200 OK", [("Content-Type", "text/event-stream"),
                                      ("Cache-Control", "no-store"),
                                      ("X-Accel-Buffering", "no")])
            return self.stream()
        if path == "/report" and self.report_path is not None:
            self.reports_served += 1
            return reply(start_response, "200 OK", self.report_path.read_bytes(),
                         "text/html; charset=utf-8")
        return reply(start_response, "404 Not Found", b"not found\n")

    def stop(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        given = environ.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(given.encode("utf-8"), self.token.encode("utf-8")):
            return reply(start_response, "403 Forbidden",
                         b"Stop needs the token printed on perfkit's terminal\n")
        self.stop_requested = True
        return reply(start_response, "202 Accepted", b"stopping\n")

    def stream(self) -> Iterator[bytes]:
        self.clients += 1
        self.clients_max = max(self.clients_max, self.clients)
        try:
            first = {**self.current, "points": list(self.points)}
            yield f"event: init\ndata: {json.dumps(first, default=str)}\n\n".encode()
            while True:
                updated = self.updated
                if updated.wait(KEEPALIVE_S):
                    yield self.message.encode("utf-8")
                else:
                    yield b": keep-alive\n\n"
        finally:
            self.clients -= 1


def reply(start_response: Callable[..., Any], status: str, body: bytes,
          content_type: str = "text/plain; charset=utf-8") -> list[bytes]:
    start_response(status, [("Content-Type", content_type),
                            ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store"),
                            ("X-Content-Type-Options", "nosniff")])
    return [body]


def round_ms(value_ms: float | None) -> float | None:
    return None if value_ms is None else round(value_ms, 1)


def finite(value: float | None) -> float | None:
    """None for a missing or NaN sample: JSON has no NaN."""
    return None if value is None or not math.isfinite(value) else value


def merge_tally(into: Tally, tally: Tally) -> None:
    counts = np.ctypeslib.as_array(tally.hist.counts)[:tally.hist.counts_len]
    cells = np.flatnonzero(counts)
    add_cells(into.hist, cells, counts[cells])
    into.count += tally.count
    into.failures += tally.failures


def describe_kpi(kpi: KpiTarget, value: float | None, verdict: str,
                 reason: str) -> dict[str, Any]:
    levels = [f"{'≤' if kpi.bound == 'upper' else '≥'} {format_value(level, kpi.unit)} {what}"
              for level, what in ((kpi.target, "target"), (kpi.allowed, "allowed"))
              if level is not None]
    return {"name": kpi.name, "value": format_value(value, kpi.unit), "limit": ", ".join(levels),
            "verdict": verdict, "reason": reason}


def judge_so_far(records: list[dict[str, Any]], samples: list[tuple[Any, ...]], start: float,
                 end: float, targets: list[KpiTarget]) -> tuple[list[dict[str, Any]], float]:
    """Each KPI against the judged part of the run so far, provisional: the KPIs a part of a
    run can judge (kpi.window_kpis) as kpi.py judges a whole run; capacities and database
    timings are judged when the run ends. Also the CPU seconds it took (this thread's)."""
    started = time.thread_time()
    resources = pd.DataFrame(samples, columns=list(SAMPLE_COLUMNS)) if samples else None
    live = window_kpis(targets)
    judged = {id(result.kpi): result
              for result in judge_window(records, resources, start, end, live)}
    rows = []
    for kpi in targets:
        result = judged.get(id(kpi))
        if result is None:
            rows.append(describe_kpi(kpi, None, "at the end",
                                     "judged on the whole run when it ends"))
        else:
            rows.append(describe_kpi(kpi, result.value, result.verdict, result.reason))
    return rows, time.thread_time() - started
