"""What the live page (--web) costs the load generator at the Locust limit.

`perfkit load` drives a fast local target (tests/targets/fixed_delay.py, no delay) with a
closed load as hard as one Locust process can (the health scenario: no wait between
requests), in alternating rounds without and with `--web` (A B A B ...). In the --web rounds
a client stays connected to the page's event stream for the whole run, as an open browser
tab does (the page's drawing happens in the browser, not in perfkit's process; the server's
work is the same for any client), and counts the events it got. Each round's throughput is
the judged window's requests per second from its summary.json; the script prints every
round, the medians and their ratio, and the load generator's busiest CPU reading.

    .venv/bin/python bench/live_page_cost.py [--rounds 4] [--duration 12s] [--users 20]
"""

import argparse
import json
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


def run_round(target: str, users: int, duration: str, web: bool, out: Path) -> dict[str, Any]:
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
        if found:
            reader = threading.Thread(target=listen, args=(found.group(1), events, stop),
                                      daemon=True)
            reader.start()
            break
        if not web:
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", default="12s")
    parser.add_argument("--users", type=int, default=20)
    args = parser.parse_args()
    target = subprocess.Popen([sys.executable, str(ROOT / "tests/targets/fixed_delay.py"),
                               "--delay-ms", "0", "--port", "0"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert target.stdout is not None
        url = target.stdout.readline().strip()
        print(f"target {url} (fixed_delay.py, no delay); perfkit load -u {args.users} "
              f"-t {args.duration} --warmup 2s, health scenario (no wait), one Locust process; "
              f"{args.rounds} rounds per arm, alternating")
        with tempfile.TemporaryDirectory() as tmp:
            # One cheap KPI: the bench measures the page, not what judging the defaults costs.
            (Path(tmp) / "kpi.toml").write_text(
                f'replace_defaults = true\n[[kpi]]\nname = "health p99"\nmetric = "p99_ms"\n'
                f'endpoint = "{HEALTH}"\ntarget = "100ms"\n')
            rounds: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
            for index in range(args.rounds):
                for web in (False, True):
                    result = run_round(url, args.users, args.duration, web,
                                       Path(tmp) / f"r{index}-{'web' if web else 'off'}")
                    rounds[web].append(result)
                    print(f"round {index + 1} {'--web' if web else 'off  '}: "
                          f"{result['rps']:8.0f} req/s  loadgen cpu max "
                          f"{result['loadgen_cpu']:.0f} %  whole process "
                          f"{result['cpu_us_per_request']:.0f} µs CPU/request"
                          + (f"  page events {result['events']}, page's own CPU "
                             f"{result['page_cpu_s']:.3f} s" if web else ""), flush=True)
        off = statistics.median(r["rps"] for r in rounds[False])
        on = statistics.median(r["rps"] for r in rounds[True])
        print(f"median without --web {off:.0f} req/s, with --web and a page open {on:.0f} "
              f"req/s: ratio {on / off:.3f} ({100 * (1 - on / off):+.1f} % cost)")
        off = statistics.median(r["cpu_us_per_request"] for r in rounds[False])
        on = statistics.median(r["cpu_us_per_request"] for r in rounds[True])
        print(f"median CPU per request (whole process, start-up included) without --web "
              f"{off:.0f} µs, with {on:.0f} µs: {100 * (on / off - 1):+.1f} %")
        page = statistics.median(r["page_cpu_s"] for r in rounds[True])
        print(f"the page's own CPU (run.json export.web.cpu_s), median {page:.3f} s per run "
              f"of {args.duration}")
    finally:
        target.kill()
        target.wait()
        time.sleep(0.1)


if __name__ == "__main__":
    main()
