"""The scenarios' answer readers: both shapes on fixed data, the bundled service's real answers,
and every other shape refused with a message that says why."""

import json
import time
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

import httpx
import pytest

from perfkit.scenarios import shapes

PRODUCTS = "/api/v1/research/products"
# Read here, not imported from scenarios/research.py: importing Locust monkey-patches the
# test process with gevent.
CATALOGUE = json.loads(files("perfkit.scenarios").joinpath("catalogue.json").read_text("utf-8"))


def encode(answer: Any) -> bytes:
    return json.dumps(answer).encode()


def envelope(data: Any, success: Any = True, message: str = "ok") -> bytes:
    return encode({"success": success, "data": data, "message": message})


def test_create_reads_the_job_id_from_either_shape() -> None:
    flat = encode({"job_id": "j1", "status": "pending", "results": [],
                   "metadata": {"total": 2}})
    wrapped = envelope({"job_id": "j2", "status": "pending", "metadata": {"total_items": 2}},
                       message="research job created")
    assert shapes.read_job_id(201, flat) == "j1"
    assert shapes.read_job_id(201, wrapped) == "j2"
    assert shapes.read_job_id(201, envelope({"job_id": 17})) == "17"


def test_status_reads_state_and_progress_from_either_shape() -> None:
    flat = encode({"job_id": "j1", "status": "success", "progress": 1.0, "message": "done",
                   "metadata": {"total": 3}})
    wrapped = envelope({"status": "processing", "progress": 0.5, "metadata": {"total": 4}})
    assert shapes.read_status(200, flat) == shapes.JobStatus("success", 1.0)
    assert shapes.read_status(200, wrapped) == shapes.JobStatus("processing", 0.5)
    assert shapes.read_status(200, envelope({"status": "completed"})).progress is None


@pytest.mark.parametrize("state, finished, succeeded", [
    ("pending", False, False), ("processing", False, False), ("STARTED", False, False),
    ("success", True, True), ("completed", True, True), ("SUCCESS", True, True),
    ("error", True, False), ("failed", True, False), ("cancelled", True, False),
    ("REVOKED", True, False),
])
def test_job_states_are_read_by_meaning(state: str, finished: bool, succeeded: bool) -> None:
    status = shapes.read_status(200, envelope({"status": state})).status
    assert (status in shapes.FINISHED) is finished
    assert (status in shapes.SUCCEEDED) is succeeded


def test_results_read_the_list_from_either_shape() -> None:
    assert shapes.read_results(200, encode({"job_id": "j", "results": [{"a": 1}]})) == [{"a": 1}]
    assert shapes.read_results(200, envelope({"results": []})) == []


@pytest.mark.parametrize("read, status_code, body, message", [
    (shapes.read_job_id, 201, encode({"id": "j1"}), "no job_id in the answer (fields: id)"),
    (shapes.read_job_id, 201, b"<html>Bad Gateway</html>", "not JSON: '<html>Bad Gateway"),
    (shapes.read_job_id, 201, b"", "empty body"),
    (shapes.read_job_id, 201, None, "empty body"),
    (shapes.read_job_id, 201, encode(["j1"]), "a JSON list, not an object"),
    (shapes.read_job_id, 201, envelope(None, success=False, message="queue full"),
     "success: false: queue full"),
    (shapes.read_job_id, 201, envelope(None), "no data object"),
    (shapes.read_job_id, 201, envelope({"job_id": ""}), "no job_id"),
    (shapes.read_job_id, 200, envelope({"job_id": "j1"}), "answered 200, expected 201"),
    (shapes.read_job_id, 503, encode({"detail": "the service is shutting down"}),
     "answered 503, expected 201: the service is shutting down"),
    (shapes.read_status, 404, envelope(None, success=False, message="job j9 not found"),
     "answered 404, expected 200: job j9 not found"),
    (shapes.read_status, 200, envelope({"state": "done"}), "no status in the answer"),
    (shapes.read_status, 200, envelope({"status": "done"}), "unknown job status 'done'"),
    (shapes.read_status, 200, envelope({"status": "pending", "progress": "half"}),
     "progress is not a number"),
    (shapes.read_results, 200, envelope({"items": []}), "no results list"),
    (shapes.read_results, 200, envelope({"results": {"a": 1}}), "no results list"),
])
def test_any_other_answer_is_refused_with_the_reason(read: Any, status_code: int,
                                                     body: bytes | None, message: str) -> None:
    with pytest.raises(shapes.ShapeError) as refused:
        read(status_code, body)
    assert message in str(refused.value)


def test_the_bundled_services_real_answers_are_read(reference_service: str) -> None:
    body = {"items": CATALOGUE[:2], "priority": 5}
    with httpx.Client(base_url=reference_service, timeout=10.0) as client:
        created = client.post(PRODUCTS, json=body)
        job_id = shapes.read_job_id(created.status_code, created.content)
        created_at = shapes.read_created_job(created.status_code, created.content).created_at
        deadline = time.monotonic() + 60
        status = shapes.read_status(200, b'{"status": "pending"}')
        while status.status not in shapes.FINISHED and time.monotonic() < deadline:
            time.sleep(0.1)
            answer = client.get(f"{PRODUCTS}/{job_id}/status")
            status = shapes.read_status(answer.status_code, answer.content)
        answer = client.get(f"{PRODUCTS}/{job_id}")
        results, from_results_s = shapes.read_finished_results(answer.status_code,
                                                               answer.content)
    assert (status.status, status.progress) == ("success", 1.0)
    assert len(results) == 2
    # Both answers carry the job's own timestamps: its duration, the same from either.
    assert status.created_at is not None and status.created_at == created_at
    assert status.duration_s is not None and 0 < status.duration_s < 60
    assert from_results_s == pytest.approx(status.duration_s, abs=1e-6)


UTC_NOON = 1767268800.0  # 2026-01-01T12:00:00Z


@pytest.mark.parametrize("value, expected", [
    ("2026-01-01T12:00:00Z", UTC_NOON),
    ("2026-01-01T12:00:00+00:00", UTC_NOON),
    ("2026-01-01T21:00:00+09:00", UTC_NOON),
    ("2026-01-01T12:00:00", UTC_NOON),  # no zone: UTC
    ("2026-01-01 12:00:00.250000", UTC_NOON + 0.25),  # SQLite's text, read by the same rule
    (UTC_NOON, UTC_NOON), (int(UTC_NOON), UTC_NOON), (str(UTC_NOON + 0.5), UTC_NOON + 0.5),
    (UTC_NOON * 1000, None),  # epoch milliseconds: refused rather than guessed
    ("yesterday", None), ("", None), (None, None), (True, None), (-5, None), (0, None),
    (float("nan"), None), ("inf", None), ({"at": 1}, None), ([UTC_NOON], None),
])
def test_timestamps_read_as_iso_8601_or_epoch_seconds(value: Any,
                                                      expected: float | None) -> None:
    assert shapes.parse_timestamp(value) == (None if expected is None
                                             else pytest.approx(expected, abs=1e-6))


def at(offset_s: float) -> str:
    """An ISO time `offset_s` after UTC_NOON, without a zone (as a utcnow() column gives)."""
    return datetime.fromtimestamp(UTC_NOON + offset_s, UTC).replace(tzinfo=None).isoformat()


@pytest.mark.parametrize("data, finished, expected", [
    ({"created_at": at(0), "completed_at": at(2.04)}, True, 2.04),
    # Preference: completed_at, finished_at, updated_at.
    ({"created_at": at(0), "completed_at": at(3), "finished_at": at(4), "updated_at": at(5)},
     True, 3.0),
    ({"created_at": at(0), "finished_at": at(4), "updated_at": at(5)}, True, 4.0),
    ({"created_at": at(0), "completed_at": None, "updated_at": at(5)}, True, 5.0),
    # In the metadata, where the bundled service's results answer has them; epoch seconds.
    ({"metadata": {"created_at": UTC_NOON, "completed_at": UTC_NOON + 0.7}}, True, 0.7),
    ({"created_at": at(0), "metadata": {"completed_at": at(1.5)}}, True, 1.5),
    ({"created_at": at(0), "completed_at": at(0)}, True, 0.0),
    # Not finished: no duration, whatever the fields say (updated_at is the last progress).
    ({"created_at": at(0), "updated_at": at(5)}, False, None),
    # Missing, unreadable or inconsistent: None, and the scenario times the job by polling.
    ({"created_at": at(0)}, True, None),
    ({"completed_at": at(2)}, True, None),
    ({"created_at": "soon", "completed_at": at(2)}, True, None),
    ({"created_at": at(0), "completed_at": "later"}, True, None),
    ({"created_at": at(5), "completed_at": at(2)}, True, None),  # ends before it starts
    ({"created_at": at(0), "metadata": "none"}, True, None),
])
def test_a_finished_jobs_duration_comes_from_its_own_timestamps(
        data: dict[str, Any], finished: bool, expected: float | None) -> None:
    duration_s = shapes.job_duration_s(data, finished)
    assert duration_s == (None if expected is None else pytest.approx(expected, abs=1e-6))


def test_status_and_results_answers_carry_the_duration_in_either_shape() -> None:
    times = {"created_at": at(0), "updated_at": at(2.04), "completed_at": at(2.04)}
    status = shapes.read_status(200, envelope({"status": "completed", **times}))
    assert status.created_at == pytest.approx(UTC_NOON)
    assert status.duration_s == pytest.approx(2.04)
    running = shapes.read_status(200, envelope({"status": "processing", "created_at": at(0),
                                                "updated_at": at(1)}))
    assert running.created_at == pytest.approx(UTC_NOON) and running.duration_s is None
    flat = encode({"job_id": "j", "status": "success", "results": [],
                   "metadata": {"created_at": at(0) + "+00:00",
                                "completed_at": at(0.7) + "+00:00"}})
    assert shapes.read_finished_results(200, flat)[1] == pytest.approx(0.7)
    assert shapes.read_finished_results(200, envelope({"results": []})) == ([], None)
    # A create answer with the job's creation time (the bundled service's) and one without.
    assert shapes.read_created_job(201, encode({"job_id": "j", "metadata": {
        "created_at": at(0)}})) == shapes.CreatedJob("j", pytest.approx(UTC_NOON))
    assert shapes.read_created_job(201, envelope({"job_id": 7})) == shapes.CreatedJob("7", None)
    # Unreadable timestamps never make a readable answer a failed request.
    assert shapes.read_status(200, encode({"status": "success", "created_at": "x"})) == \
        shapes.JobStatus("success", None)
