"""The two answer shapes of the research API, read per response.

The bundled service answers flat (`{"job_id": ..., "status": ..., "progress": ...}`); the
original backend the guide describes wraps the same fields in an envelope
(`{"success": true, "data": {...}, "message": "..."}`). A body with a `success` key is read as
an envelope, any other JSON object as flat. Anything else (not JSON, `success: false`, a
missing field) raises `ShapeError`, whose message the scenario records as the request's
failure: an answer perfkit cannot read must show as a failed request, never as a missing one
(issue 10: a KeyError inside `catch_response` escapes Locust, which then records nothing).

The functions take the status code and raw body, not a Locust response, so they are pure.

A job's completion time comes from its own timestamps where an answer carries them
(`job_duration_s`): `created_at` and the first readable of `completed_at`, `finished_at`,
`updated_at`, among the answer's fields or in its `metadata` (where the bundled service's
results answer has them). Both are on the server's clock, so no skew between client and server
enters. An answer without them, or with unreadable or inconsistent ones (an end before the
start), gives None: the scenario then times the job by polling (research.py).
"""

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# Job states by meaning. The bundled service says success/error/cancelled; a Celery-backed
# service may pass Celery's own states through (SUCCESS, FAILURE, REVOKED, ...) or say
# completed/failed. A state in none of these sets is a failure of the status request, so a
# vocabulary perfkit does not know shows up at once instead of as jobs that never finish.
ACTIVE = frozenset({"pending", "queued", "processing", "running", "started", "retry"})
SUCCEEDED = frozenset({"success", "completed"})
ENDED_BADLY = frozenset({"error", "failed", "failure", "cancelled", "revoked"})
FINISHED = SUCCEEDED | ENDED_BADLY

# How much of an unreadable body goes into a failure message: enough to recognise it, and
# few distinct messages, since Locust groups failures by message.
EXCERPT_CHARS = 80

CREATED_FIELD = "created_at"
# In order of preference. `updated_at` is the time of the last change of any kind, so it is
# the end only once the job has finished.
END_FIELDS = ("completed_at", "finished_at", "updated_at")
# Epoch numbers from here on are not seconds (epoch milliseconds read as seconds would be
# about the year 50000): refused rather than guessed, so such a job is timed by polling.
MAX_EPOCH_S = 1e11


class ShapeError(ValueError):
    """An answer in neither shape; the message says what was wrong with it."""


@dataclass(frozen=True)
class JobStatus:
    status: str
    progress: float | None
    created_at: float | None = None  # the job's own creation time (epoch s), where the answer says
    duration_s: float | None = None  # a finished job's end − created_at, from its own timestamps


def read_data(status_code: int, body: bytes | None, expected_status: int) -> dict[str, Any]:
    """The fields of an answer: the envelope's `data`, or the flat body itself."""
    if status_code != expected_status:
        raise ShapeError(f"answered {status_code}, expected {expected_status}"
                         + _envelope_message(body))
    if not body:
        raise ShapeError("answered with an empty body")
    try:
        answer = json.loads(body)
    except ValueError:
        excerpt = body[:EXCERPT_CHARS].decode("utf-8", "replace")
        raise ShapeError(f"answer is not JSON: {excerpt!r}") from None
    if not isinstance(answer, dict):
        raise ShapeError(f"answer is a JSON {type(answer).__name__}, not an object")
    if "success" not in answer:
        return answer
    if answer["success"] is not True:
        raise ShapeError(f"envelope says success: {json.dumps(answer['success'])}"
                         + _envelope_message(body))
    data = answer.get("data")
    if not isinstance(data, dict):
        raise ShapeError("envelope has no data object")
    return data


@dataclass(frozen=True)
class CreatedJob:
    job_id: str
    created_at: float | None  # the job's own creation time (epoch s), where the answer says


def read_job_id(status_code: int, body: bytes | None) -> str:
    return read_created_job(status_code, body).job_id


def read_created_job(status_code: int, body: bytes | None) -> CreatedJob:
    data = read_data(status_code, body, 201)
    job_id = data.get("job_id")
    if not isinstance(job_id, str | int) or isinstance(job_id, bool) or job_id == "":
        raise ShapeError(f"no job_id in the answer (fields: {_field_names(data)})")
    return CreatedJob(str(job_id), find_time(data, (CREATED_FIELD,)))


def read_status(status_code: int, body: bytes | None) -> JobStatus:
    data = read_data(status_code, body, 200)
    status = data.get("status")
    if not isinstance(status, str):
        raise ShapeError(f"no status in the answer (fields: {_field_names(data)})")
    status = status.lower()
    if status not in ACTIVE and status not in FINISHED:
        raise ShapeError(f"unknown job status {status!r}")
    progress = data.get("progress")
    if progress is not None and (isinstance(progress, bool)
                                 or not isinstance(progress, int | float)):
        raise ShapeError(f"progress is not a number: {progress!r}")
    return JobStatus(status, None if progress is None else float(progress),
                     find_time(data, (CREATED_FIELD,)), job_duration_s(data, status in FINISHED))


def read_results(status_code: int, body: bytes | None) -> list[Any]:
    return _results_of(read_data(status_code, body, 200))


def read_finished_results(status_code: int, body: bytes | None) -> tuple[list[Any], float | None]:
    """A finished job's results, and its duration where the answer carries its timestamps."""
    data = read_data(status_code, body, 200)
    return _results_of(data), job_duration_s(data, finished=True)


def parse_timestamp(value: Any) -> float | None:
    """Epoch seconds of an ISO 8601 string or of epoch seconds (a number or a numeric string);
    None for anything else. An ISO time without a zone is UTC: what `datetime.utcnow()`
    gives and what SQLite's timestamp columns hold."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                return None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return moment.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and 0 < value < MAX_EPOCH_S else None


def find_time(data: dict[str, Any], fields: tuple[str, ...]) -> float | None:
    """The first of `fields` that reads as a time, among `data`'s fields, then its metadata's."""
    places = [data]
    if isinstance(data.get("metadata"), dict):
        places.append(data["metadata"])
    for name in fields:
        for place in places:
            moment = parse_timestamp(place.get(name))
            if moment is not None:
                return moment
    return None


def job_duration_s(data: dict[str, Any], finished: bool) -> float | None:
    """A finished job's end − created_at from its own timestamps, or None where the answer
    does not carry both readably or the end is before the start."""
    if not finished:
        return None
    created_at = find_time(data, (CREATED_FIELD,))
    ended_at = find_time(data, END_FIELDS)
    if created_at is None or ended_at is None or ended_at < created_at:
        return None
    return ended_at - created_at


def _results_of(data: dict[str, Any]) -> list[Any]:
    results = data.get("results")
    if not isinstance(results, list):
        raise ShapeError(f"no results list in the answer (fields: {_field_names(data)})")
    return results


def _field_names(data: dict[str, Any]) -> str:
    return ", ".join(sorted(data)[:10]) or "none"


def _envelope_message(body: bytes | None) -> str:
    """`: <message>` of an error envelope (or a FastAPI `detail`), so a failure says why."""
    try:
        answer = json.loads(body or b"")
    except ValueError:
        return ""
    if not isinstance(answer, dict):
        return ""
    message = answer.get("message") or answer.get("detail")
    return f": {str(message)[:EXCERPT_CHARS]}" if message else ""
