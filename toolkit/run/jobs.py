"""Lost work: research jobs the target accepted (201) that never reached a final state.

A scenario says which create accepted which job, and which job it saw end, through the
context of its requests (recorder.JOB_ID: on the create request once its answer was read, on
the job's JOB record once its status was final); `JobLedger` listens to the run's request
events. After the graceful stop, the jobs no user saw end are polled again, every second up
to the stop timeout (at least once): those still not final then — or whose status cannot be
read — are lost. Seen in this process only: with --workers the users run in other
processes, and lost work is not counted (missing).
"""

import json
import logging
import time
import urllib.error
import urllib.request
from typing import Any

from ..scenarios import shapes
from .recorder import ARM, JOB_ID

log = logging.getLogger(__name__)

PRODUCTS = "/api/v1/research/products"
POLL_GAP_S = 1.0
LISTED_IDS = 20  # lost job ids kept in run.json: enough to look a few up


class JobLedger:
    def __init__(self, arm_urls: dict[str, str] | None = None) -> None:
        self.arm_urls = arm_urls or {}  # a simultaneous A/B trial's targets by arm
        self.accepted = 0
        # Accepted, not seen to end: job id -> the arm whose target took it (None outside a
        # simultaneous A/B trial), whose target is asked after the stop.
        self.open: dict[str, str | None] = {}

    def on_request(self, request_type: str, exception: BaseException | None = None,
                   context: dict[str, Any] | None = None, **_: Any) -> None:
        job_id = (context or {}).get(JOB_ID)
        if not job_id:
            return
        if request_type == "JOB":
            self.open.pop(job_id, None)
        elif exception is None:
            self.accepted += 1
            self.open[job_id] = (context or {}).get(ARM)

    def check_lost(self, url: str, stop_timeout_s: float) -> dict[str, Any]:
        """run.json's "lost_work": {accepted, ended_in_run, ended_after_stop, lost, lost_ids,
        checked_s}; polls the open jobs' status at `url`, or at their arm's target."""
        started = time.monotonic()
        still = set(self.open)
        ended_after_stop = 0
        while still:
            for job_id in sorted(still):
                arm = self.open[job_id]
                job_url = self.arm_urls.get(arm, url) if arm is not None else url
                if read_job_status(job_url, job_id) in shapes.FINISHED:
                    still.discard(job_id)
                    ended_after_stop += 1
            if not still or time.monotonic() - started + POLL_GAP_S > stop_timeout_s:
                break
            time.sleep(POLL_GAP_S)
        return {"accepted": self.accepted, "ended_in_run": self.accepted - len(self.open),
                "ended_after_stop": ended_after_stop, "lost": len(still),
                "lost_ids": sorted(still)[:LISTED_IDS],
                "checked_s": round(time.monotonic() - started, 3)}


def read_job_status(url: str, job_id: str) -> str | None:
    """The job's status as the target says it now (flat or envelope), None if unreadable."""
    try:
        with urllib.request.urlopen(f"{url}{PRODUCTS}/{job_id}/status", timeout=5) as answer:
            return shapes.read_status(answer.status, answer.read()).status
    except urllib.error.HTTPError as exc:
        try:
            return shapes.read_status(exc.code, exc.read()).status
        except (shapes.ShapeError, OSError):
            return None
    except (OSError, shapes.ShapeError, json.JSONDecodeError) as exc:
        log.info("job %s: status unreadable after the stop: %s", job_id, exc)
        return None
