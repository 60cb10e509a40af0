"""The reference service's bounds and its behaviour under faults of its backends, on real
processes: a full queue, oversized bodies, ids that cannot exist, inputs that grow when
normalised, callbacks aimed at redirects and metadata addresses, PostgreSQL refusing
connections mid-research, a paused Redis, and two instances sharing one database."""

import asyncio
import collections
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import asyncpg
import httpx
import pytest

from perfkit.reference.callbacks import CheckedResolver

from .conftest import StartServices, launch_reference_service, wait_until_listening
from .test_reference import (
    API,
    create_job,
    new_item,
    read_metrics,
    read_status,
    run_job,
    wait_for_status,
)

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


async def run_admin_statements(*statements: str) -> None:
    conn = await asyncpg.connect(POSTGRES_ADMIN, timeout=10)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    name = f"perfkit_bounds_{uuid.uuid4().hex[:12]}"
    asyncio.run(run_admin_statements(f'CREATE DATABASE "{name}"'))
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    asyncio.run(run_admin_statements(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true',
                                     f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


def refuse_connections(url: str) -> None:
    """What a database that went down looks like to the service: its connections dropped,
    new ones refused."""
    name = database_name(url)
    asyncio.run(run_admin_statements(
        f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false',
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))


def allow_connections(url: str) -> None:
    asyncio.run(run_admin_statements(
        f'ALTER DATABASE "{database_name(url)}" WITH ALLOW_CONNECTIONS true'))


def wait_for(condition: Any, what: str, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout_s:.0f} s: {what}")


SLOW = ["--fast", "--concurrency", "1", "--item-latency-ms", "1500", "--latency-sigma", "0"]
# Items that outlast a test's own requests by far, even where a busy machine takes seconds to
# answer them (three creates and a read took more than 1.5 s beside other tests).
SLOWER = ["--fast", "--concurrency", "1", "--item-latency-ms", "10000", "--latency-sigma", "0"]


def test_a_full_queue_answers_503_with_retry_after(start_reference_services: StartServices
                                                   ) -> None:
    (service,) = start_reference_services([*SLOWER, "--max-queued-jobs", "3"])
    jobs = [create_job(service.url, [new_item()]) for _ in range(3)]
    response = httpx.post(service.url + API, json={"items": [new_item()]})
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) >= 1
    assert "queued" in response.json()["detail"]
    app = read_metrics(service.url, "application")
    assert (app["queued_jobs"], app["max_queued_jobs"], app["rejected_jobs"]) == (3, 3, 1)
    assert "perfkit_reference_rejected_jobs_total 1.0" in httpx.get(service.url + "/metrics").text
    # A place freed (here by a cancel) is taken again.
    assert httpx.delete(f"{service.url}{API}/{jobs[-1]['job_id']}").status_code == 204
    wait_for(lambda: read_metrics(service.url, "application")["queued_jobs"] == 2,
             "the cancelled job leaves the queue")
    create_job(service.url, [new_item()])


def post_raw(url: str, head: bytes, body_chunks: Iterator[bytes]) -> tuple[int, bytes]:
    """Send a request by hand, as far as the server lets us, and read its answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        sent = 0
        for chunk in body_chunks:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
            sock.settimeout(0.0)
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break  # the server answered before the body was sent
            except BlockingIOError:
                pass
            finally:
                sock.settimeout(10)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return int(answer.split(b" ", 2)[1]), answer


def test_oversized_bodies_are_413_without_being_read(reference_service: str) -> None:
    rss_before_mb = read_metrics(reference_service, "system")["process"]["rss_mb"]
    fifty_mb = 50_000_000
    declared = (f"POST {API} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {fifty_mb}\r\n\r\n").encode()
    status, answer = post_raw(reference_service, declared, iter([b'{"items": [']))
    assert status == 413, answer
    assert b"over 1000000 bytes" in answer

    # Chunked, no length declared: the body is refused once it passes the limit; the client
    # gets its answer long before it would have sent 50 MB.
    field = b"x" * 65536
    chunked = (f"POST {API} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               "Transfer-Encoding: chunked\r\n\r\n").encode()
    chunks = (b"%x\r\n%s\r\n" % (len(field), field) for _ in range(fifty_mb // len(field)))
    status, answer = post_raw(reference_service, chunked, chunks)
    assert status == 413, answer

    # A 10 MB body sent whole by an ordinary client.
    big = json.dumps({"items": [new_item(metadata={"blob": "y" * 10_000_000})]})
    response = httpx.post(reference_service + API, content=big,
                          headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == 413
    # A raw socket that sends 20 MB in one sendall before it reads a byte (before the drain,
    # a connection reset from 10 MB on: the unread rest was still in flight at the close).
    whole = (f"POST {API} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             f"Content-Length: 20000000\r\n\r\n").encode() + b" " * 20_000_000
    host, port = reference_service.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(whole)
        assert sock.recv(12) == b"HTTP/1.1 413"
    rss_after_mb = read_metrics(reference_service, "system")["process"]["rss_mb"]
    assert rss_after_mb - rss_before_mb < 25, (rss_before_mb, rss_after_mb)
    assert httpx.get(reference_service + "/api/v1/health").status_code == 200


BAD_IDS = ["nope", "%00", "a%00b", f"{uuid.uuid4()}%00", "x" * 5000, "'; DROP TABLE jobs; --",
           "%F0%9F%92%A9", "%ED%A0%80"]


def check_ids_are_not_found(url: str) -> None:
    job = run_job(url, [new_item()])
    # Other spellings of a real id find it: uuid.UUID reads them all.
    for spelling in (job["job_id"].upper(), "{" + job["job_id"] + "}"):
        assert read_status(url, spelling)["status"] == "success"
    for bad in BAD_IDS:
        for method, path in [("GET", f"{API}/{bad}"), ("GET", f"{API}/{bad}/status"),
                             ("DELETE", f"{API}/{bad}")]:
            response = httpx.request(method, url + path)
            assert response.status_code in (404, 422), (method, path, response.text)


def test_ids_that_cannot_be_jobs_are_404_on_sqlite_and_postgresql(
        reference_service: str, start_reference_services: StartServices,
        postgres_url: str) -> None:
    (on_postgres,) = start_reference_services(["--fast", "--database-url", postgres_url])
    for url in (reference_service, on_postgres.url):
        check_ids_are_not_found(url)


def test_inputs_that_grow_when_normalised_fit_the_columns(
        start_reference_services: StartServices, postgres_url: str) -> None:
    (service,) = start_reference_services(["--fast", "--database-url", postgres_url])
    # U+FDFA is one character that NFKC turns into 18: a 500-character name, a 9,000-character
    # research key.
    results = run_job(service.url, [new_item("\ufdfa" * 500), new_item("\ufb03" * 500)])
    assert results["status"] == "success"
    assert [len(r["product_name"]) for r in results["results"]] == [500, 500]
    keys = asyncio.run(fetch_values(postgres_url, "SELECT length(research_key) FROM items"))
    assert max(keys) > 9000

    # A 2,000-character URL of characters that percent-encode to three each.
    long_url = "http://127.0.0.1:9/" + "\u00e9" * 1000
    response = httpx.post(service.url + API, json={"items": [new_item()],
                                                   "callback_url": long_url})
    assert response.status_code == 422, response.text
    assert "once normalised" in response.text
    fits = "http://127.0.0.1:9/" + "a" * 2000
    assert httpx.post(service.url + API, json={"items": [new_item()],
                                               "callback_url": fits}).status_code == 201


async def fetch_values(url: str, query: str) -> list[Any]:
    conn = await asyncpg.connect(url.replace("+asyncpg", ""), timeout=10)
    try:
        return [row[0] for row in await conn.fetch(query)]
    finally:
        await conn.close()


class Receiver(BaseHTTPRequestHandler):
    """Records each POST; answers with `status` and, for a redirect, `location`."""

    posts: list[str] = []
    status = 204
    location = ""

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers["content-length"]))
        self.posts.append(self.path)
        self.send_response(self.status)
        if self.location:
            self.send_header("Location", self.location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receivers() -> Iterator[tuple[str, str]]:
    """A redirecting receiver and the one it redirects to; both record what reaches them."""
    servers = []
    for status in (307, 204):
        handler = type(f"Receiver{status}", (Receiver,), {"posts": [], "status": status})
        server = HTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append((server, handler))
    (redirecting, redirecting_handler), (target, _) = servers
    redirecting_handler.location = f"http://127.0.0.1:{target.server_address[1]}/stolen"
    yield (f"http://127.0.0.1:{redirecting.server_address[1]}/done",
           f"http://127.0.0.1:{target.server_address[1]}/stolen")
    for server, _ in servers:
        server.shutdown()
        server.server_close()


def test_callbacks_never_follow_redirects(reference_service: str,
                                          receivers: tuple[str, str]) -> None:
    redirecting, target = receivers
    failed_before = read_metrics(reference_service, "application")["callbacks_failed"]
    job = create_job(reference_service, [new_item()], callback_url=redirecting)
    wait_for_status(reference_service, job["job_id"], ("success",))
    wait_for(lambda: read_metrics(reference_service, "application")["callbacks_failed"]
             > failed_before, "the redirected callback counts as failed")
    handlers = {cls.__name__: cls for cls in Receiver.__subclasses__()}
    assert handlers["Receiver307"].posts == ["/done"]
    assert handlers["Receiver204"].posts == []


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/", "http://169.254.1.1:8080/x",
    "http://2852039166/", "http://0xa9.0xfe.0xa9.0xfe/", "http://[fe80::1]/",
    "http://[::ffff:169.254.169.254]/", "http://metadata.google.internal/computeMetadata/v1/",
    "http://METADATA.GOOGLE.INTERNAL./", "http://metadata/", "http://[fd00:ec2::254]/",
])
def test_callbacks_to_link_local_or_metadata_hosts_are_422(reference_service: str,
                                                           url: str) -> None:
    response = httpx.post(reference_service + API, json={"items": [new_item()],
                                                          "callback_url": url})
    assert response.status_code == 422, response.text
    assert ["body", "callback_url"] in [error["loc"] for error in response.json()["detail"]]


def test_the_addresses_a_callback_host_resolves_to_are_checked() -> None:
    async def resolve(host: str) -> list[str]:
        resolver = CheckedResolver()
        try:
            return [result["host"] for result in await resolver.resolve(host, 80)]
        finally:
            await resolver.close()

    # A name the system resolver turns into 169.254.169.254 (glibc reads a bare number as an
    # IPv4 address): only the resolved address shows where it goes.
    with pytest.raises(OSError, match="169.254.169.254"):
        asyncio.run(resolve("2852039166"))
    assert asyncio.run(resolve("localhost")) != []


def test_health_reports_the_database_and_jobs_end_error_when_it_fails_mid_research(
        start_reference_services: StartServices, postgres_url: str) -> None:
    (service,) = start_reference_services([*SLOW, "--database-url", postgres_url])
    health = service.get_json("/api/v1/health")
    assert health["database"] == "ok"
    job = create_job(service.url, [new_item(), new_item()])
    wait_for_status(service.url, job["job_id"], ("processing",))
    refuse_connections(postgres_url)
    try:
        response = wait_for(lambda: (r := httpx.get(service.url + "/api/v1/health"))
                            .status_code == 503 and r, "health turns 503")
        assert response.json()["database"] == "unavailable"
        assert response.json()["status"] == "unhealthy"
        assert response.headers["retry-after"]
        # Reads and creates are 503, never 500; the item researched meanwhile cannot be
        # written, and once the research writes stop waiting (8 s) the job fails.
        time.sleep(2.0)
        for method, path, body in [("POST", API, {"items": [new_item()]}),
                                   ("GET", f"{API}/{job['job_id']}/status", None),
                                   ("GET", f"{API}/{job['job_id']}", None)]:
            response = httpx.request(method, service.url + path, json=body)
            assert response.status_code == 503, (path, response.text,
                                                 "\n".join(service.output[-30:]))
        wait_for(lambda: "job" in "\n".join(service.output) and any(
            "database became unavailable" in line for line in service.output),
            "the job gives up on the database", 30)
    finally:
        allow_connections(postgres_url)
    wait_for(lambda: httpx.get(service.url + "/api/v1/health").status_code == 200,
             "health turns 200 again")
    status = wait_for_status(service.url, job["job_id"], ("error", "success"))
    assert status["status"] == "error"
    assert "database" in status["message"]
    assert run_job(service.url, [new_item()])["status"] == "success"


def test_connections_killed_mid_statement_are_503_and_replaced_never_500(
        start_reference_services: StartServices, postgres_url: str) -> None:
    """What a PostgreSQL restart does to statements in flight, ten times over: every backend
    of the database terminated while reads run. A connection cut mid-statement may stay
    'open' with its protocol stuck (asyncpg's InternalClientError); it must be replaced, and
    the request answered 503, not 500."""
    (service,) = start_reference_services(["--fast", "--database-url", postgres_url])
    job = run_job(service.url, [new_item()])
    paths = [f"{API}/{job['job_id']}/status", f"{API}/{job['job_id']}"]

    async def read_while_killing() -> collections.Counter[int]:
        answers: collections.Counter[int] = collections.Counter()
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
            async def read(path: str) -> None:
                try:
                    answers[(await client.get(path)).status_code] += 1
                except httpx.TransportError:
                    answers[0] += 1  # the service closed the connection without an answer

            for _ in range(10):
                await asyncio.gather(*(read(paths[i % 2]) for i in range(40)),
                                     run_admin_statements(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                    f"'{database_name(postgres_url)}'"))
        return answers

    answers = asyncio.run(read_while_killing())
    assert set(answers) <= {200, 503}, (answers, "\n".join(service.output[-40:]))
    assert 503 in answers and answers[200] > 200, answers  # the kills landed; reads went on
    assert not any("Traceback" in line for line in service.output), service.output[-40:]
    assert [httpx.get(service.url + path).status_code for path in paths] == [200, 200]


def test_a_paused_redis_is_a_cache_miss_never_a_failed_job(
        start_reference_services: StartServices,
        private_redis: tuple[str, subprocess.Popen[bytes]]) -> None:
    redis_url, redis_proc = private_redis
    (service,) = start_reference_services(["--fast", "--redis-url", redis_url])
    items = [new_item() for _ in range(3)]
    assert run_job(service.url, items)["status"] == "success"
    redis_proc.send_signal(signal.SIGSTOP)
    try:
        again = run_job(service.url, items)
        assert again["status"] == "success"
        # Researched again rather than read from the cache nobody could reach.
        assert [r["cached"] for r in again["results"]] == [False] * 3
        assert [r["status"] for r in again["results"]] == ["success"] * 3
        app = read_metrics(service.url, "application")
        assert app["cache_errors"] >= 3
    finally:
        redis_proc.send_signal(signal.SIGCONT)
    assert "Redis cache unavailable" in "\n".join(service.output)
    # Back once Redis is: after its 5 s rest the cache is read again.
    wait_for(lambda: run_job(service.url, items)["results"][0]["cached"], "cache hits again",
             20)


def test_a_restart_cancels_only_the_jobs_of_the_instance_that_restarted(
        start_reference_services: StartServices, postgres_url: str) -> None:
    first, second = start_reference_services(
        [*SLOW, "--database-url", postgres_url, "--instance-id", "first"],
        [*SLOW, "--database-url", postgres_url, "--instance-id", "second"])
    # The second instance's job (ten items, one at a time) outlasts the first one's restart by
    # far: three items (4.5 s) were done before a busy machine had restarted it.
    jobs = {service.url: create_job(service.url, [new_item() for _ in range(items)])
            for service, items in ((first, 3), (second, 10))}
    for url, job in jobs.items():
        wait_for_status(url, job["job_id"], ("processing",))
    first.stop(signal.SIGKILL)
    restarted = wait_until_listening(launch_reference_service(
        *SLOW, "--database-url", postgres_url, "--instance-id", "first"))
    try:
        status = read_status(restarted.url, jobs[first.url]["job_id"])
        assert (status["status"], status["message"]) == (
            "cancelled", "cancelled: the service restarted")
        # The other instance's job is still its own, and finishes.
        assert read_status(restarted.url, jobs[second.url]["job_id"])["status"] == "processing"
        assert wait_for_status(second.url, jobs[second.url]["job_id"], ("success",))
        owners = asyncio.run(fetch_values(postgres_url, "SELECT instance_id FROM jobs"))
        assert sorted(owners) == ["first", "second"]
    finally:
        restarted.stop()


def test_bounds_are_announced_and_bad_options_are_one_line_errors(
        reference_service: str) -> None:
    app = read_metrics(reference_service, "application")
    assert app["max_queued_jobs"] == 200 and app["queued_jobs"] >= 0
    assert app["instance_id"]
    for args, message in [(["--instance-id", "bad id"], "bad instance id"),
                          (["--max-queued-jobs", "0"], "--max-queued-jobs"),
                          (["--max-body-bytes", "10"], "--max-body-bytes")]:
        result = subprocess.run([sys.executable, "-m", "perfkit", "serve", "--port", "0",
                                 "--fast", *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().count("\n") == 0, result.stderr
        assert message in result.stderr
