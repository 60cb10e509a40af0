"""Scenario errors are data: what a locustfile's own code raises is counted, never lost.

Locust loses two kinds of them: an exception raised inside a `catch_response` block that is
not a ResponseError escapes `__exit__` and the request in flight is recorded nowhere (a
response of another shape, read with `response.json()["job_id"]`, made a whole run of served
requests vanish); and an exception in `on_start` kills the user's greenlet without the
`user_error` event. perfkit records the first as a failed request of that name, fires
`user_error` for the second, and groups every `user_error` by exception type and location
(the innermost frame outside installed libraries) with one traceback each. Workers ship their
groups to the master with their reports, like the latency buckets.

Locust also logs every such error with its traceback; a broken scenario at 100 users floods
the console, so perfkit lowers that logger and says a count per kind instead.
"""

import logging
import traceback
from pathlib import Path
from types import TracebackType
from typing import Any

from gevent import GreenletExit
from locust import User
from locust.clients import HttpSession, ResponseContextManager
from locust.contrib.fasthttp import ResponseContextManager as FastResponseContextManager
from locust.exception import ResponseError, StopUser

REPORT_KEY = "perfkit_scenario_errors"
KIND = "scenario_error"
MAX_TRACEBACK_CHARS = 4000


class ScenarioError(Exception):
    """The failure recorded for a request whose `catch_response` block raised."""


def record_escaping_errors() -> None:
    """Make Locust's response context managers record the request in flight as failed when
    the scenario's block raises something else than a ResponseError; the exception still
    propagates to Locust (user_error) as before. Idempotent."""
    for manager in (ResponseContextManager, FastResponseContextManager):
        original = manager.__exit__
        if getattr(original, "perfkit_records", False):
            continue

        def __exit__(self: Any, exc: Any, value: Any, tb: Any,
                     _original: Any = original) -> Any:
            if exc is not None and self._manual_result is None \
                    and not isinstance(value, ResponseError | StopUser):
                self.request_meta["exception"] = ScenarioError(
                    f"{type(value).__name__} in the scenario: {value}")
                self._report_request()
            return _original(self, exc, value, tb)

        __exit__.perfkit_records = True  # type: ignore[attr-defined]
        manager.__exit__ = __exit__  # type: ignore[method-assign]


def guard_on_start(user_class: type[User], request_timeout_s: float) -> type[User]:
    """`user_class` whose on_start failure fires user_error and stops that user, instead of
    killing its greenlet silently; its HTTP requests time out after `request_timeout_s`
    unless the scenario says otherwise (requests waits forever by default, so a target that
    never answers would record nothing at all)."""

    def on_start(self: Any) -> None:
        client = getattr(self, "client", None)
        if isinstance(client, HttpSession):
            request = client.request

            def request_with_timeout(method: str, url: str, **kwargs: Any) -> Any:
                kwargs.setdefault("timeout", request_timeout_s)
                return request(method, url, **kwargs)

            client.request = request_with_timeout  # type: ignore[method-assign,assignment]
        try:
            user_class.on_start(self)
        except (StopUser, GreenletExit):
            raise
        except Exception as exc:
            self.environment.events.user_error.fire(user_instance=self, exception=exc,
                                                    tb=exc.__traceback__)
            raise StopUser() from exc

    return type(user_class.__name__, (user_class,), {
        "on_start": on_start, "__module__": user_class.__module__})


def locate(tb: TracebackType | None) -> str:
    """'research.py:42 in create_job': the innermost frame of the scenario's own code."""
    frames = traceback.extract_tb(tb)
    if not frames:
        return "unknown location"
    own = [f for f in frames if "site-packages" not in f.filename
           or f"{Path('perfkit', 'scenarios')}" in f.filename]
    frame = (own or frames)[-1]
    return f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}"


class ScenarioErrors:
    """user_error events grouped by (exception type, location)."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, str], dict[str, Any]] = {}

    def attach(self, environment: Any) -> None:
        environment.events.user_error.add_listener(self.on_user_error)
        environment.events.report_to_master.add_listener(self.on_report_to_master)
        environment.events.worker_report.add_listener(self.on_worker_report)
        logging.getLogger("locust.user.task").setLevel(logging.CRITICAL)
        record_escaping_errors()

    def on_user_error(self, user_instance: Any, exception: BaseException,
                      tb: TracebackType | None) -> None:
        text = "".join(traceback.format_exception(type(exception), exception, tb))
        self.add({"kind": type(exception).__name__, "location": locate(tb),
                  "message": str(exception)[:200], "traceback": text[-MAX_TRACEBACK_CHARS:],
                  "count": 1})

    def add(self, group: dict[str, Any]) -> None:
        key = (group["kind"], group["location"])
        if key in self.groups:
            self.groups[key]["count"] += group["count"]
        else:
            self.groups[key] = dict(group)

    def on_report_to_master(self, client_id: str, data: dict[str, Any]) -> None:
        data[REPORT_KEY] = list(self.groups.values())
        self.groups = {}

    def on_worker_report(self, client_id: str, data: dict[str, Any]) -> None:
        for group in data.get(REPORT_KEY, []):
            self.add(group)

    @property
    def count(self) -> int:
        return sum(group["count"] for group in self.groups.values())

    def records(self) -> list[dict[str, Any]]:
        """failures.json entries, most frequent first."""
        return [{"name": "scenario error", "kind": KIND, "location": g["location"],
                 "error": f"{g['kind']} at {g['location']}: {g['message']}",
                 "count": g["count"], "example": g["traceback"]}
                for g in sorted(self.groups.values(), key=lambda g: -g["count"])]

    def describe(self) -> str:
        """'12 × KeyError at research.py:42 in create_job; 1 × ...' ('' without errors)."""
        return "; ".join(f"{g['count']} × {g['kind']} at {g['location']}"
                         for g in sorted(self.groups.values(), key=lambda g: -g["count"]))
