"""How often the regression gate cries wolf, and how often it catches a known slowdown.

Runs N A/A pairs (the same reference service twice) and N A/B pairs (the second run with a
known slowdown on one endpoint) of short real runs on loopback, compares each pair with the
gate's defaults, and prints the false-alarm rate, the detection rate and the run length used.

Each run gets its own freshly started reference service (fast profile), so a pair shares
nothing but the machine. Runs are interleaved (A, B, A' per round) so that slow drifts of the
machine's load hit both arms alike.

    .venv/bin/python bench/gate_power.py --pairs 20 --duration 30s
    .venv/bin/python bench/gate_power.py --slowdown variant:n_plus_one
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from perfkit import rundir
from perfkit.analysis.compare import CompareSettings, compare_runs
from perfkit.units import parse_duration

RESULTS = "GET /api/v1/research/products/{id}"
_URL = re.compile(r"(http://127\.0\.0\.1:\d+)")


def start_service(extra: list[str], log_path: Path) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "perfkit", "serve", "--host", "127.0.0.1", "--port", "0",
               "--fast", *extra]
    log_file = log_path.open("wb")
    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = _URL.search(log_path.read_text("utf-8", errors="replace"))
        if match:
            return process, match.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"reference service did not start: {log_path.read_text()[-500:]}")


def stop_service(process: subprocess.Popen) -> None:
    process.send_signal(2)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_once(out: Path, args: argparse.Namespace, extra: list[str]) -> Path:
    process, url = start_service(extra, out.with_suffix(".serve.log"))
    try:
        command = [sys.executable, "-m", "perfkit", "load", "--target", url, "--target-pid",
                   str(process.pid), "--scenario", args.scenario, "--users", str(args.users),
                   "--duration", args.duration, "--warmup", args.warmup, "--out", str(out)]
        if args.rate:
            command += ["--rate", str(args.rate)]
        result = subprocess.run(command, capture_output=True, text=True,
                                timeout=parse_duration(args.duration) + 180)
        if result.returncode not in (0, 1):  # 1 is a KPI verdict, still a complete run
            raise SystemExit(f"perfkit load failed ({result.returncode}): {result.stderr}")
    finally:
        stop_service(process)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--duration", default="30s")
    parser.add_argument("--warmup", default="5s")
    parser.add_argument("--scenario", default="results")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--rate", type=float, default=40.0,
                        help="open-loop arrivals/s (0: closed loop)")
    parser.add_argument("--slowdown", default="extra:results=20%",
                        help="extra:ENDPOINT=AMOUNT (serve --extra-latency) or variant:NAME")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temp dir)")
    args = parser.parse_args()

    kind, _, value = args.slowdown.partition(":")
    slow_extra = ["--extra-latency", value] if kind == "extra" else ["--variant", value]
    root = args.out or Path(tempfile.mkdtemp(prefix="gate-power-"))
    root.mkdir(parents=True, exist_ok=True)
    settings = CompareSettings()
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    for i in range(args.pairs):
        base = run_once(root / f"{i:02d}-a", args, [])
        slow = run_once(root / f"{i:02d}-b", args, slow_extra)
        same = run_once(root / f"{i:02d}-a2", args, [])
        base_run = rundir.load_run(base)
        aa = compare_runs([base_run], [rundir.load_run(same)], settings)
        ab = compare_runs([base_run], [rundir.load_run(slow)], settings)
        ratio = next((m.ratio for m in ab.metrics
                      if m.subject == RESULTS and m.metric == "p50_ms"), None)
        row = {"pair": i, "aa_regressed": [f"{m.subject} {m.metric}" for m in aa.regressed],
               # the mirror image of a false alarm: equally likely, and equally telling
               "aa_improved": [f"{m.subject} {m.metric}" for m in aa.metrics
                               if m.verdict == "improved"],
               "ab_regressed": [f"{m.subject} {m.metric}" for m in ab.regressed],
               "ab_results_p50_ratio": ratio,
               "requests_per_run": int(base_run.latency["count"].sum())}
        rows.append(row)
        print(json.dumps(row), flush=True)
    false_alarms = sum(bool(r["aa_regressed"]) for r in rows)
    detected = sum(any(RESULTS in name for name in r["ab_regressed"]) for r in rows)
    wrong_endpoint = sum(any(RESULTS not in name for name in r["ab_regressed"]) for r in rows)
    print(f"\nruns: {args.duration} each ({args.warmup} warm-up), scenario {args.scenario}, "
          f"{'rate ' + str(args.rate) + '/s' if args.rate else 'closed loop'}, "
          f"{args.users} users, fast profile; slowdown {args.slowdown}; "
          f"gate defaults (10 %, 99 % family-wise)")
    print(f"A/A false alarms: {false_alarms}/{len(rows)} (false improvements, the mirror "
          f"image: {sum(bool(r['aa_improved']) for r in rows)}/{len(rows)})")
    print(f"A/B detected (results endpoint named): {detected}/{len(rows)}; "
          f"pairs that also named another endpoint: {wrong_endpoint}")
    print(f"wall time: {time.monotonic() - started:.0f} s; runs kept in {root}")


if __name__ == "__main__":
    main()
