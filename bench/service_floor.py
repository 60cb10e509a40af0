"""The reference service against a *bare floor*: a minimal FastAPI + aiosqlite service doing the
same inserts and reads (no ORM, no metrics, no background research), measured side by side in
the same run so the ratio says what the reference's extra work costs on this machine.

    .venv/bin/python bench/service_floor.py [--connections 16] [--duration-s 4]
        [--jobs 200] [--rounds 3] [--serve-arg=--variant --serve-arg=n_plus_one]
        [--client aiohttp]

Both run as one uvicorn process (uvloop, httptools) on 127.0.0.1; the reference with `--fast`.
Read phases (health, status, results) run first, against jobs created beforehand and finished,
then create (the reference researches each created job in the background, as it would under
load). The load comes from wrk when it is installed (`apt-get install -y wrk`; one thread,
so the client takes as little of the two cores as it can), else from perfkit's aiohttp
client. Prints: endpoint, reference rps/p50/p99, floor rps, ratio.
"""

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import aiohttp

API = "/api/v1/research/products"
ENDPOINTS = ("health", "status", "results", "create")


def build_floor_app(database_path: str) -> Any:
    """The floor: what any FastAPI service needs to answer these four routes at all."""
    import aiosqlite
    from fastapi import FastAPI
    from pydantic import BaseModel, Field

    class FloorItem(BaseModel):
        product_name: str = Field(min_length=1, max_length=500)
        category: str = Field(min_length=1, max_length=100)
        price_exact: float = Field(gt=0)
        currency: str = "KRW"

    class FloorRequest(BaseModel):
        items: list[FloorItem] = Field(min_length=1, max_length=10)
        priority: int = 5

    state: dict[str, aiosqlite.Connection] = {}
    # One connection: its transactions must not interleave, so writes take turns.
    write_lock = asyncio.Lock()

    async def lifespan(app: FastAPI) -> Any:
        db = await aiosqlite.connect(database_path)
        await db.executescript(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
            "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, status TEXT, priority INT,"
            " created_at TEXT);"
            "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, job_id TEXT, position INT,"
            " product_name TEXT, category TEXT, price_exact REAL, currency TEXT);"
            "CREATE INDEX IF NOT EXISTS ix_items_job_id ON items (job_id);")
        state["db"] = db
        yield
        await db.close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/api/v1/health")
    async def health() -> dict[str, str]:
        return {"status": "healthy"}

    @app.post(API, status_code=201)
    async def create(body: FloorRequest) -> dict[str, Any]:
        db = state["db"]
        job_id = str(uuid.uuid4())
        async with write_lock:
            await write_job(db, job_id, body)
        return {"job_id": job_id, "status": "pending", "total": len(body.items)}

    async def write_job(db: aiosqlite.Connection, job_id: str, body: FloorRequest) -> None:
        await db.execute("INSERT INTO jobs VALUES (?, 'pending', ?, datetime('now'))",
                         (job_id, body.priority))
        await db.executemany(
            "INSERT INTO items (job_id, position, product_name, category, price_exact, currency)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(job_id, n, i.product_name, i.category, i.price_exact, i.currency)
             for n, i in enumerate(body.items)])
        await db.commit()

    @app.get(API + "/{job_id}/status")
    async def status(job_id: str) -> Any:
        async with state["db"].execute(
                "SELECT status, (SELECT count(*) FROM items WHERE job_id = ?) FROM jobs "
                "WHERE id = ?", (job_id, job_id)) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return {"detail": "not found"}
        return {"job_id": job_id, "status": row[0], "progress": 0.0, "total": row[1]}

    @app.get(API + "/{job_id}")
    async def results(job_id: str) -> Any:
        async with state["db"].execute(
                "SELECT product_name, category, price_exact, currency FROM items "
                "WHERE job_id = ? ORDER BY position", (job_id,)) as cursor:
            rows = await cursor.fetchall()
        return {"job_id": job_id, "results": [
            {"product_name": r[0], "category": r[1], "price_exact": r[2], "currency": r[3]}
            for r in rows]}

    return app


def serve_floor(port: int) -> None:
    import socket

    import uvicorn
    import uvloop

    temp_dir = tempfile.mkdtemp(prefix="perfkit-floor-")
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    print(f"floor listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(build_floor_app(f"{temp_dir}/floor.db"), log_level="warning",
                            access_log=False, http="httptools", loop="none")
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(uvicorn.Server(config).serve(sockets=[sock]))
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def start_process(argv: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"http://[\w.\-]+:\d+", line)
        if match:
            return proc, match.group(0)
    proc.kill()
    raise SystemExit(f"{' '.join(argv)} did not print its URL")


def stop_process(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def item_body(tag: str) -> dict[str, Any]:
    return {"items": [{"product_name": f"Bench item {tag}", "category": "bench",
                       "price_exact": 1000}]}


async def create_jobs(url: str, count: int) -> list[str]:
    """Jobs for the read phases, created before them and left to finish."""
    async with aiohttp.ClientSession(url) as session:
        job_ids = []
        for _ in range(count):
            async with session.post(API, json=item_body(uuid.uuid4().hex)) as response:
                job_ids.append((await response.json())["job_id"])
        return job_ids


async def wait_until_idle(url: str, timeout_s: float) -> None:
    async with aiohttp.ClientSession(url) as session:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            async with session.get("/api/v1/metrics/application") as response:
                state = await response.json()
            if not state["queue_depth"] and not state["active_research"]:
                return
            await asyncio.sleep(0.5)
    print(f"warning: the reference still researching after {timeout_s:g} s", file=sys.stderr)


def wrk_script(endpoint: str, job_ids: list[str]) -> str:
    if endpoint == "create":
        # Seeded per arm: wrk seeds Lua's random the same way every run, so each arm created
        # the same products and the reference's research cache answered the later rounds.
        return (f'math.randomseed({random.randrange(1, 2**31)})\n'
                'n = 0\nrequest = function()\n n = n + 1\n'
                'local body = \'{"items":[{"product_name":"Bench item \' .. '
                'math.random(1e9) .. "-" .. n .. \'","category":"bench","price_exact":1000}]}\'\n'
                f' return wrk.format("POST", "{API}", '
                '{["Content-Type"]="application/json"}, body)\nend\n')
    suffix = {"status": "/status", "results": ""}.get(endpoint)
    if suffix is None:
        return ""
    ids = ",".join(f'"{job_id}"' for job_id in job_ids)
    return (f"ids = {{{ids}}}\ni = 0\nrequest = function()\n i = i % #ids + 1\n"
            f' return wrk.format("GET", "{API}/" .. ids[i] .. "{suffix}")\nend\n')


def parse_wrk_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(url: str, endpoint: str, job_ids: list[str], connections: int,
            duration_s: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(wrk_script(endpoint, job_ids))
    path = "/api/v1/health" if endpoint == "health" else API
    try:
        out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration_s:g}s",
                              "--latency", "-s", script.name, url + path],
                             capture_output=True, text=True, timeout=duration_s + 30).stdout
    finally:
        os.unlink(script.name)
    if "Latency Distribution" not in out:
        raise SystemExit(f"wrk against {url}{path} measured nothing:\n{out}")
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    elapsed = re.search(r"requests in ([\d.]+\w+)", out).group(1)  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                              r"timeout (\d+)", out)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    percentiles = dict(re.findall(r"^\s+(\d+)%\s+(\S+)\s*$", out, re.MULTILINE))
    elapsed_s = parse_wrk_ms(elapsed) / 1000.0
    return {"rps": total / elapsed_s, "ok_rps": (total - errors) / elapsed_s, "errors": errors,
            "p50_ms": parse_wrk_ms(percentiles["50"]), "p99_ms": parse_wrk_ms(percentiles["99"])}


async def run_aiohttp(url: str, endpoint: str, job_ids: list[str], connections: int,
                      duration_s: float) -> dict[str, Any]:
    from perfkit.stats import new_histogram, percentile_ms, record_ms

    hist = new_histogram()
    errors = 0
    deadline = time.monotonic() + duration_s
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(url, connector=connector) as session:

        async def client(n: int) -> None:
            nonlocal errors
            sent = 0
            while time.monotonic() < deadline and sent < 1_000_000:
                sent += 1
                started_at = time.perf_counter()
                if endpoint == "health":
                    request = session.get("/api/v1/health")
                elif endpoint == "create":
                    request = session.post(API, json=item_body(f"{n}-{sent}-{uuid.uuid4()}"))
                else:
                    job_id = job_ids[(n + sent) % len(job_ids)]
                    suffix = "/status" if endpoint == "status" else ""
                    request = session.get(f"{API}/{job_id}{suffix}")
                async with request as response:
                    await response.read()
                    ok = response.status < 300
                record_ms(hist, (time.perf_counter() - started_at) * 1000.0)
                errors += 0 if ok else 1

        started_at = time.perf_counter()
        await asyncio.gather(*(client(n) for n in range(connections)))
        elapsed_s = time.perf_counter() - started_at
    total = hist.get_total_count()
    return {"rps": total / elapsed_s, "ok_rps": (total - errors) / elapsed_s, "errors": errors,
            "p50_ms": percentile_ms(hist, 50), "p99_ms": percentile_ms(hist, 99)}


def measure(url: str, endpoint: str, job_ids: list[str], args: argparse.Namespace
            ) -> dict[str, Any]:
    if args.client == "wrk":
        return run_wrk(url, endpoint, job_ids, args.connections, args.duration_s)
    return asyncio.run(run_aiohttp(url, endpoint, job_ids, args.connections, args.duration_s))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration-s", type=float, default=4.0, help="per endpoint and arm")
    parser.add_argument("--jobs", type=int, default=200, help="jobs the read phases cycle over")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds (medians)")
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="extra argument for perfkit serve (repeatable)")
    parser.add_argument("--client", choices=("wrk", "aiohttp"),
                        default="wrk" if shutil.which("wrk") else "aiohttp")
    parser.add_argument("--endpoint", action="append", choices=ENDPOINTS,
                        help="measure only these (repeatable; default all)")
    parser.add_argument("--serve-floor", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_floor is not None:
        serve_floor(args.serve_floor)
        return
    endpoints = args.endpoint or list(ENDPOINTS)
    floor, floor_url = start_process([sys.executable, __file__, "--serve-floor", "0"])
    reference, reference_url = start_process(
        [sys.executable, "-m", "perfkit", "serve", "--port", "0", "--fast", *args.serve_arg])
    rows: dict[str, list[dict[str, dict[str, Any]]]] = {endpoint: [] for endpoint in endpoints}
    try:
        job_ids = {"floor": asyncio.run(create_jobs(floor_url, args.jobs)),
                   "reference": asyncio.run(create_jobs(reference_url, args.jobs))}
        time.sleep(2.0)  # the reference's jobs finish researching before the reads
        # Rounds alternate the two arms per endpoint, so a neighbour's burst on the shared
        # machine lands on both rather than on one; the table shows medians over rounds.
        for _ in range(args.rounds):
            for endpoint in endpoints:
                rows[endpoint].append({name: measure(url, endpoint, job_ids[name], args)
                                       for name, url in (("floor", floor_url),
                                                         ("reference", reference_url))})
                if endpoint == "create":
                    # The jobs just created are still being researched; measured next to
                    # that, the floor's next arm would pay for the reference's backlog.
                    asyncio.run(wait_until_idle(reference_url, timeout_s=120.0))
    finally:
        stop_process(reference)
        stop_process(floor)
    load1, _, _ = os.getloadavg()
    print(f"perfkit serve --fast {' '.join(args.serve_arg)} vs bare floor | {args.client}, "
          f"{args.connections} connections, {args.duration_s:g} s per arm, {args.rounds} "
          f"round(s) (medians), {os.cpu_count()} cores, load avg {load1:.1f}")
    print(f"{'endpoint':8} {'ref rps':>8} {'ref p50 ms':>10} {'ref p99 ms':>10} {'ref err':>7} "
          f"{'floor rps':>9} {'floor p99 ms':>12} {'ratio':>6} {'ratio range':>12}")
    for endpoint, rounds in rows.items():
        def median(arm: str, key: str, rounds: list[Any] = rounds) -> float:
            return statistics.median(r[arm][key] for r in rounds)
        ratios = [r["reference"]["ok_rps"] / r["floor"]["ok_rps"] for r in rounds]
        errors = sum(r["reference"]["errors"] for r in rounds)
        print(f"{endpoint:8} {median('reference', 'ok_rps'):8.0f} "
              f"{median('reference', 'p50_ms'):10.1f} {median('reference', 'p99_ms'):10.1f} "
              f"{errors:7d} {median('floor', 'ok_rps'):9.0f} {median('floor', 'p99_ms'):12.1f} "
              f"{statistics.median(ratios):6.2f} {min(ratios):5.2f}-{max(ratios):.2f}")
    print(json.dumps(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
