"""The scenarios' answer readers: both shapes on fixed data, the bundled service's real answers,
and every other shape refused with a message that says why."""

import json
import time
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
        deadline = time.monotonic() + 60
        status = shapes.read_status(200, b'{"status": "pending"}')
        while status.status not in shapes.FINISHED and time.monotonic() < deadline:
            time.sleep(0.1)
            answer = client.get(f"{PRODUCTS}/{job_id}/status")
            status = shapes.read_status(answer.status_code, answer.content)
        answer = client.get(f"{PRODUCTS}/{job_id}")
        results = shapes.read_results(answer.status_code, answer.content)
    assert status == shapes.JobStatus("success", 1.0)
    assert len(results) == 2
