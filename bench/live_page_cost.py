"""What the live page (--web) costs the load generator at the Locust limit.

Two measurements. `--mode blocks` (the default): one Locust process (this one) drives the
target as hard as it can with perfkit's recorder and a live page (run/web.py's LivePage, a
`curl` on its event stream as the open page), and alternates blocks of seconds with the page
ticking (its second-by-second work, events sent, KPIs judged in the thread pool, as the run
loop calls it) and without (off ... on ... off ...); each on block is compared with the mean
of the off blocks on either side, so a machine whose load drifts (other processes on the same
2 cores) cancels out. `--mode runs`: whole `perfkit load` runs, alternating, slower to
converge on a busy machine.

`--mode runs`: `perfkit load` drives a fast local target (tests/targets/fixed_delay.py, no
delay) with a closed load as hard as one Locust process can (the health scenario: no wait
between requests), in alternating rounds without and with `--web`. With `--web` a client
stays connected to the page's event stream for the whole run, as an open browser tab does
(the page's drawing happens in the browser, not in perfkit's process; the server's work is
the same for any client), and counts the events it got; `web-idle` is --web with no page
open. Each round's throughput is the judged window's requests per second from its
summary.json; the script prints every round, the medians and their ratios, the CPU per
request of the whole process and the page's own CPU from run.json.

    .venv/bin/python bench/live_page_cost.py [--blocks 41] [--block-s 3] [--users 20]
    .venv/bin/python bench/live_page_cost.py --mode runs [--rounds 4] [--duration 12s]
"""

import argparse
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HEALTH = "GET /api/v1/health"
LIVE_LINE = re.compile(r"live page (http://\S+/)")
# One cheap KPI: the bench measures the page, not what judging the defaults costs.
KPI_FILE = (f'replace_defaults = true\n[[kpi]]\nname = "health p99"\nmetric = "p99_ms"\n'
            f'endpoint = "{HEALTH}"\ntarget = "100ms"\n')


def listen(url: str, events: list[int], stop: threading.Event) -> None:
    """Read the page's event stream as a browser does, counting the events."""
    try:
        with urllib.request.urlopen(url + "events", timeout=30) as stream:
            for line in stream:
                if line.startswith(b"event: "):
                    events[0] += 1
                if stop.is_set():
                    return
    except OSError:
        return  # the run ended and the server closed the stream


def run_round(target: str, users: int, duration: str, arm: str, out: Path) -> dict[str, Any]:
    web = arm != "off"
    argv = [sys.executable, "-m", "perfkit", "load", "--target", target, "--scenario", "health",
            "--users", str(users), "--spawn-rate", str(users), "--duration", duration,
            "--warmup", "2s", "--out", str(out), "--only-summary", "--kpi", str(out.parent /
                                                                                 "kpi.toml")]
    if web:
        argv += ["--web", "--web-port", "0"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env={**os.environ, "PERFKIT_HISTORY": "off"})
    assert process.stdout is not None
    events, stop = [0], threading.Event()
    reader = None
    for line in process.stdout:
        found = LIVE_LINE.search(line)
        if found and arm == "web":
            reader = threading.Thread(target=listen, args=(found.group(1), events, stop),
                                      daemon=True)
            reader.start()
            break
        if found or not web:
            break
    process.stdout.read()
    process.wait(timeout=300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    stop.set()
    summary = json.loads((out / "summary.json").read_text("utf-8"))
    meta = json.loads((out / "run.json").read_text("utf-8"))
    requests = sum(meta["locust_counts"].values())
    cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"rps": summary["endpoints"][HEALTH]["rps"], "events": events[0] if web else None,
            "loadgen_cpu": summary["loadgen"]["max_cpu_percent"],
            "cpu_us_per_request": 1e6 * cpu_s / requests,
            "page_cpu_s": (meta.get("export") or {}).get("web", {}).get("cpu_s"),
            "connected": reader is not None}


def run_blocks(url: str, target_pid: int, users: int, blocks: int, block_s: int,
               kpi_file: Path, tmp: Path) -> None:
    """Alternating blocks in this process: requests per second with and without the page."""
    import gevent
    from locust import HttpUser, constant, task
    from locust.env import Environment

    from perfkit.collectors.system import SystemCollector
    from perfkit.kpi_file import load_kpi_targets
    from perfkit.run.recorder import Recorder
    from perfkit.run.runner import RunState
    from perfkit.run.web import LivePage

    class Health(HttpUser):
        wait_time = constant(0)

        @task
        def get(self) -> None:
            self.client.get("/api/v1/health", name="/api/v1/health")

    env = Environment(user_classes=[Health], host=url)
    recorder = Recorder(tmp / "latency.jsonl", keep_s=15.0)
    recorder.attach(env)
    state = RunState(run_dir=tmp, recorder=recorder,
                     system=SystemCollector(target_pid, tmp / "resources.csv"), app=None)
    page = LivePage(None, 0, lambda line: None, "bench")
    page.watch(state, load_kpi_targets(kpi_file), math.inf, 2.0, False)
    client = subprocess.Popen(["curl", "-sN", page.url + "events"], stdout=subprocess.DEVNULL)
    state.system.start()
    runner = env.create_local_runner()
    runner.start(users, spawn_rate=users)
    gevent.sleep(3.0)
    state.started_at = time.time()
    rates: list[float] = []
    cpu_per_request: list[float] = []  # this process's CPU (all threads) per request, µs
    next_tick = time.time()
    for block in range(blocks):
        on = block % 2 == 1
        before, started = env.stats.total.num_requests, time.perf_counter()
        cpu_before = time.process_time()
        for _ in range(block_s):
            next_tick += 1.0
            gevent.sleep(max(0.0, next_tick - time.time()))
            recorder.flush()  # as the run loop does every second
            if on:
                page.tick(time.time() - state.started_at, runner.user_count, None)
        done = env.stats.total.num_requests - before
        rates.append(done / (time.perf_counter() - started))
        cpu_per_request.append(1e6 * (time.process_time() - cpu_before) / max(done, 1))
    runner.quit()
    state.system.stop()
    client.kill()
    page.close()
    def against_neighbours(values: list[float]) -> list[float]:
        return [values[i] / ((values[i - 1] + values[i + 1]) / 2)
                for i in range(1, len(values) - 1, 2)]

    ratios = against_neighbours(rates)
    cpu_ratios = against_neighbours(cpu_per_request)
    cpu_quartiles = statistics.quantiles(cpu_ratios, n=4)
    off = [rates[i] for i in range(0, len(rates), 2)]
    on_rates = [rates[i] for i in range(1, len(rates), 2)]
    quartiles = statistics.quantiles(ratios, n=4)
    print(f"{len(on_rates)} blocks of {block_s} s with the page, {len(off)} without, "
          f"alternating; {users} users, HttpUser, one process")
    print(f"req/s without the page: median {statistics.median(off):.0f} "
          f"(min {min(off):.0f}, max {max(off):.0f}); with it: median "
          f"{statistics.median(on_rates):.0f}")
    print(f"each page block against its neighbours: median ratio "
          f"{statistics.median(ratios):.4f} (quartiles {quartiles[0]:.4f} .. "
          f"{quartiles[2]:.4f}) = {100 * (1 - statistics.median(ratios)):+.2f} % cost")
    cost_percent = 100 * (1 - 1 / statistics.median(cpu_ratios))
    print(f"CPU per request (this process, every thread): median "
          f"{statistics.median(cpu_per_request[0::2]):.0f} µs without the page, "
          f"{statistics.median(cpu_per_request[1::2]):.0f} µs with it; against the neighbours "
          f"median ratio {statistics.median(cpu_ratios):.4f} (quartiles {cpu_quartiles[0]:.4f} "
          f".. {cpu_quartiles[2]:.4f}): at the Locust limit (one core busy) throughput is "
          f"1 / CPU per request, so the page costs {cost_percent:+.2f} %")
    print(f"the page's own CPU: {page.cpu_s:.3f} s over {len(on_rates) * block_s} s of "
          f"ticking = {100 * page.cpu_s / (len(on_rates) * block_s):.2f} % of a core; "
          f"{page.events_sent} events sent")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", default="12s")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--mode", choices=("blocks", "runs"), default="blocks")
    parser.add_argument("--blocks", type=int, default=41)
    parser.add_argument("--block-s", type=int, default=3)
    parser.add_argument("--arms", default="off,web", help="off, web (a client on the event "
                        "stream), web-idle (--web, no page open); comma-separated")
    args = parser.parse_args()
    target = subprocess.Popen([sys.executable, str(ROOT / "tests/targets/fixed_delay.py"),
                               "--delay-ms", "0", "--port", "0"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert target.stdout is not None
        url = target.stdout.readline().strip()
        if args.mode == "blocks":
            with tempfile.TemporaryDirectory() as tmp:
                kpi = Path(tmp) / "kpi.toml"
                kpi.write_text(KPI_FILE)
                print(f"target {url} (fixed_delay.py, no delay)")
                run_blocks(url, target.pid, args.users, args.blocks, args.block_s, kpi,
                           Path(tmp))
            return
        print(f"target {url} (fixed_delay.py, no delay); perfkit load -u {args.users} "
              f"-t {args.duration} --warmup 2s, health scenario (no wait), one Locust process; "
              f"{args.rounds} rounds per arm, alternating")
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "kpi.toml").write_text(KPI_FILE)
            arms = args.arms.split(",")
            rounds: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
            for index in range(args.rounds):
                for arm in arms:
                    web = arm != "off"
                    result = run_round(url, args.users, args.duration, arm,
                                       Path(tmp) / f"r{index}-{arm}")
                    rounds[arm].append(result)
                    print(f"round {index + 1} {arm:<8}: "
                          f"{result['rps']:8.0f} req/s  loadgen cpu max "
                          f"{result['loadgen_cpu']:.0f} %  whole process "
                          f"{result['cpu_us_per_request']:.0f} µs CPU/request"
                          + (f"  page events {result['events']}, page's own CPU "
                             f"{result['page_cpu_s']:.3f} s" if web else ""), flush=True)
        base = statistics.median(r["rps"] for r in rounds[arms[0]])
        base_cpu = statistics.median(r["cpu_us_per_request"] for r in rounds[arms[0]])
        for arm in arms:
            rps = statistics.median(r["rps"] for r in rounds[arm])
            cpu = statistics.median(r["cpu_us_per_request"] for r in rounds[arm])
            print(f"median {arm:<8} {rps:6.0f} req/s (ratio to {arms[0]} {rps / base:.3f}), "
                  f"{cpu:.0f} µs CPU/request (whole process, start-up included; "
                  f"{100 * (cpu / base_cpu - 1):+.1f} %)"
                  + ("" if arm == "off" else ", the page's own CPU (run.json export.web."
                     f"cpu_s) {statistics.median(r['page_cpu_s'] for r in rounds[arm]):.3f} "
                     f"s per run of {args.duration}"))
    finally:
        target.kill()
        target.wait()
        time.sleep(0.1)


if __name__ == "__main__":
    main()
