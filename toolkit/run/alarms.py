"""Alarms: KPIs judged live over a sliding window while a run is going on.

Every CHECK_EVERY_S the watcher judges the last WINDOW_S seconds (kept in memory by the
recorder, see Recorder.keep_s) with kpi.py's own metric definitions and limits, so an alarm
means exactly what a failed KPI in the report means, only over a short window:
- only `fail` verdicts raise an alarm (beyond the allowed level, or beyond the target where
  none is allowed); a warning does not;
- only upper-bound KPIs are judged: throughput and database capacity are lower bounds that the
  chosen load, not the target, decides over a few seconds;
- the warm-up is not judged, and a window is judged only once it is entirely after it;
- a KPI raises once when it enters the failed state and is re-armed when a window passes again
  (the terminal says "cleared"), so a long breach is one alarm, not one per check;
- a window in which nothing completed is "missing", not an alarm: a target that stalls
  completely shows up once its requests come back (or fail).

Judging a window decodes and merges its histograms (tens of ms for a few endpoints); that
runs in gevent's thread pool, a real OS thread, so it never holds Locust's event loop (which
would add the pause to the latency of every request in flight); its result is picked up by the
next check, a second later.

An alarm is a line on the terminal (`say`), a line in alarms.jsonl (`t, kpi, value, limit,
message`) and, with --alert-webhook, a JSON POST sent from its own greenlet: a few attempts
with backoff, each with a timeout, all within WEBHOOK_DEADLINE_S, so a dead webhook never
slows the run loop. The runner stops the run on the first alarm with --abort-on-fail.
"""

import json
import logging
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gevent
import pandas as pd

from .. import rundir
from ..analysis.kpi import judge_window, kpi_limit, window_kpis
from ..kpi_file import KpiTarget
from ..redaction import redact_url
from ..result import KpiResult

if TYPE_CHECKING:  # the runner imports this module
    from .runner import RunState

log = logging.getLogger(__name__)

WINDOW_S = 10
CHECK_EVERY_S = 2
WEBHOOK_ATTEMPT_TIMEOUT_S = 5.0
WEBHOOK_DEADLINE_S = 30.0
WEBHOOK_BACKOFF_S = (0.5, 1.0, 2.0, 4.0)
# At the end of a run, webhook posts still in flight get this long before they are dropped.
WEBHOOK_DRAIN_S = 10.0


def post_json(url: str, payload: dict[str, Any], deadline_s: float = WEBHOOK_DEADLINE_S) -> str:
    """POST `payload`, retried with backoff until a 2xx or the deadline; returns "" on success,
    else why it failed. Under gevent (the runner) the socket calls yield to the run loop."""
    body = json.dumps(payload, default=str).encode("utf-8")
    deadline = time.monotonic() + deadline_s
    error = "not sent"
    for attempt in range(len(WEBHOOK_BACKOFF_S) + 1):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=min(WEBHOOK_ATTEMPT_TIMEOUT_S,
                                                             remaining)) as response:
                if 200 <= response.status < 300:
                    return ""
                error = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            error = f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:  # refused, timed out, bad URL
            error = f"{type(exc).__name__}: {exc}"
        if attempt < len(WEBHOOK_BACKOFF_S):
            gevent.sleep(min(WEBHOOK_BACKOFF_S[attempt], max(0.0, deadline - time.monotonic())))
    return error


class AlarmWatcher:
    """The live KPI window of one run; `check()` is called by the run loop every second."""

    def __init__(self, run_dir: Path, targets: list[KpiTarget], say: Callable[[str], None],
                 webhook_url: str | None = None, warmup_s: float = 0.0,
                 window_s: int = WINDOW_S, run_id: str = "") -> None:
        self.path = run_dir / rundir.ALARMS
        self.targets = window_kpis(targets)
        self.say = say
        self.webhook_url = webhook_url
        self.warmup_s = warmup_s
        self.window_s = window_s
        self.run_id = run_id
        self.failing: set[str] = set()
        self.raised = 0
        self.last_message = ""
        self.records: list[dict[str, Any]] = []  # the alarms raised, for the live page
        self.last_check = 0.0
        # Resource samples of the last window, from the system collector's latest row.
        self.resources: deque[dict[str, Any]] = deque(maxlen=window_s * 4)
        self.posts: list[gevent.Greenlet] = []
        self.pending: Any = None  # gevent AsyncResult of the judgement in the thread pool
        self.pending_window: tuple[float, float] = (0.0, 0.0)

    def check(self, state: "RunState", now: float | None = None) -> list[dict[str, Any]]:
        """Pick up the last judgement if it is done, and start judging the window ending now
        (at most every CHECK_EVERY_S); returns the alarms raised, already said, written and
        posted."""
        now = time.time() if now is None else now
        sample = state.system.latest()
        if sample and (not self.resources or self.resources[-1]["t"] != sample["t"]):
            self.resources.append(sample)
        raised: list[dict[str, Any]] = []
        if self.pending is not None and self.pending.ready():
            pending, self.pending = self.pending, None
            try:
                results = pending.get()
            except Exception:  # the thread's boundary: a failed judgement is a gap, not a crash
                log.exception("judging the alarm window failed")
            else:
                raised = self.apply(results, self.pending_window[1], state.started_at)
        judged_from = state.started_at + self.warmup_s
        if (self.pending is None and now - judged_from >= self.window_s
                and now - self.last_check >= CHECK_EVERY_S):
            self.last_check = now
            start = now - self.window_s
            records = state.recorder.window_records(start, now)
            resources = pd.DataFrame(list(self.resources)) if self.resources else None
            self.pending_window = (start, now)
            self.pending = gevent.get_hub().threadpool.spawn(
                judge_window, records, resources, start, now, self.targets)
        return raised

    def apply(self, results: list[KpiResult], now: float,
              started_at: float) -> list[dict[str, Any]]:
        raised = []
        for result in results:
            name = result.kpi.name
            if result.verdict == "fail" and name not in self.failing:
                self.failing.add(name)
                raised.append(self.raise_alarm(result, now, now - started_at))
            elif result.verdict in ("pass", "warn") and name in self.failing:
                self.failing.discard(name)
                self.say(f"perfkit: alarm cleared +{now - started_at:.0f}s {name}")
        return raised

    def raise_alarm(self, result: KpiResult, now: float, elapsed_s: float) -> dict[str, Any]:
        record = {"t": round(now, 3), "kpi": result.kpi.name, "value": result.value,
                  "limit": kpi_limit(result.kpi),
                  "message": f"{result.reason} over the last {self.window_s} s"}
        self.raised += 1
        self.records.append(record)
        self.last_message = f"{record['kpi']}: {record['message']}"
        self.say(f"perfkit: ALARM +{elapsed_s:.0f}s {record['kpi']}: {record['message']}")
        rundir.append_jsonl(self.path, [record])
        if self.webhook_url:
            payload = {"run_id": self.run_id, "window_s": self.window_s, **record}
            self.posts.append(gevent.spawn(self._post, payload))
        return record

    def _post(self, payload: dict[str, Any]) -> str:
        assert self.webhook_url is not None
        try:
            error = post_json(self.webhook_url, payload)
        except Exception:  # the greenlet's boundary: a failed webhook never ends the run
            log.exception("alarm webhook failed")
            return "unexpected error (see the log)"
        if error:
            log.warning("alarm webhook %s: %s", redact_url(self.webhook_url), error)
        return error

    def close(self) -> dict[str, Any]:
        """Wait a little for posts in flight; the run.json entry."""
        gevent.joinall(self.posts, timeout=WEBHOOK_DRAIN_S)
        errors = [p.value for p in self.posts if p.ready() and p.value]
        pending = [p for p in self.posts if not p.ready()]
        gevent.killall(pending, block=False)
        return {
            "window_s": self.window_s, "raised": self.raised,
            "webhook": None if not self.webhook_url else {
                "url": redact_url(self.webhook_url),
                "posted": len(self.posts) - len(errors) - len(pending),
                "failed": len(errors) + len(pending),
                "note": "; ".join(sorted(set(errors)))[:300] + (
                    f"{len(pending)} still pending at the end were dropped" if pending else "")},
        }
