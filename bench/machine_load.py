"""How much other work on the machine moves a run's latency, and how much the other work
perfkit measures beside a run varies when nothing is added: the two numbers behind the
environment check of `perfkit compare` (docs/regression.md, "What else the machine was doing").

A CPU-bound single-process target (tests/targets/cpu_burner.py, --burn-ms of CPU per request,
as a Python service spends it) is loaded by `perfkit load` (one closed-loop user, the health
scenario, 1 s warm-up) beside 0 (twice: A and A'), 25, 50, 100 and 200 % of a core of other
work: processes that spin for their share of every 10 ms, started a second before the run and
stopped after it. Each round runs every level once, in that order. Per level the bench prints
the other work perfkit measured (run.json environment: other processes' CPU plus steal), the
p50 ratio to the round's A run, and how often `perfkit compare` against A said regression on
its statistics alone and how often with the environment check.

    .venv/bin/python bench/machine_load.py --rounds 3 --duration 8s
"""

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from perfkit import rundir
from perfkit.analysis.compare import CompareSettings, compare_runs
from perfkit.analysis.environment import other_work_percent
from perfkit.units import parse_duration

TARGETS = Path(__file__).resolve().parent.parent / "tests" / "targets"
HEALTH = "GET /api/v1/health"
# A process that keeps `share` of one core busy: spins for share × 10 ms of every 10 ms.
DUTY = ("import sys, time\n"
        "share = float(sys.argv[1])\n"
        "while True:\n"
        "    start = time.monotonic()\n"
        "    while time.monotonic() - start < share * 0.01:\n"
        "        pass\n"
        "    time.sleep(max(0.0, 0.01 - (time.monotonic() - start)))\n")
LAX_KPIS = ('replace_defaults = true\n[[kpi]]\nname = "error rate"\n'
            'metric = "error_rate_percent"\ntarget = "5%"\n')


def start_burners(percent: float) -> list[subprocess.Popen]:
    count = math.ceil(percent / 100.0)
    return [subprocess.Popen([sys.executable, "-c", DUTY, str(percent / 100.0 / count)])
            for _ in range(count)]


def run_level(url: str, pid: int, percent: float, out: Path,
              args: argparse.Namespace) -> Path:
    burners = start_burners(percent)
    try:
        time.sleep(1.0 if burners else 0.0)
        subprocess.run([sys.executable, "-m", "perfkit", "load", "--target", url,
                        "--target-pid", str(pid), "--scenario", "health", "--users", "1",
                        "--duration", args.duration, "--warmup", "1s", "--kpi", str(args.kpi),
                        "--out", str(out), "--history", "off"],
                       check=True, capture_output=True, text=True, timeout=300)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", default="8s")
    parser.add_argument("--burn-ms", type=float, default=2.0)
    parser.add_argument("--levels", default="0,25,50,100,200",
                        help="other work, %% of one core; the first is the baseline A")
    args = parser.parse_args()
    parse_duration(args.duration)
    levels = [float(level) for level in args.levels.split(",")]
    out = Path(tempfile.mkdtemp(prefix="machine-load-"))
    args.kpi = out / "kpi.toml"
    args.kpi.write_text(LAX_KPIS)
    target = subprocess.Popen([sys.executable, str(TARGETS / "cpu_burner.py"), "--burn-ms",
                               str(args.burn_ms)], stdout=subprocess.PIPE, text=True)
    assert target.stdout is not None
    url = target.stdout.readline().strip()
    rows: dict[str, list[tuple[float | None, float, bool, bool]]] = {}
    waits: dict[str, list[float | None]] = {}
    try:
        for round_index in range(args.rounds):
            plan = [("A", levels[0]), ("A'", levels[0]),
                    *((f"{level:g} %", level) for level in levels[1:])]
            runs = {label: rundir.load_run(run_level(url, target.pid, level,
                                                     out / f"r{round_index}-{i}", args))
                    for i, (label, level) in enumerate(plan)}
            base = runs["A"]
            base_environment = json.loads(
                (base.run_dir / "summary.json").read_text())["environment"]
            rows.setdefault("A", []).append((other_work_percent(base_environment), 1.0, False,
                                             False))
            waits.setdefault("A", []).append(base_environment["cpu_wait_ratio"])
            base_p50 = json.loads((base.run_dir / "summary.json").read_text())[
                "endpoints"][HEALTH]["p50_ms"]
            for label, run in runs.items():
                if label == "A":
                    continue
                summary = json.loads((run.run_dir / "summary.json").read_text())
                comparison = compare_runs([base], [run], CompareSettings())
                statistics_alone = bool(comparison.regressed or
                                        comparison.environment.get("explained"))
                waits.setdefault(label, []).append(summary["environment"]["cpu_wait_ratio"])
                rows.setdefault(label, []).append((
                    other_work_percent(summary["environment"]),
                    summary["endpoints"][HEALTH]["p50_ms"] / base_p50,
                    statistics_alone, bool(comparison.regressed)))
            print(f"round {round_index + 1}/{args.rounds} done", flush=True)
    finally:
        target.kill()
        target.wait()
    print(f"\ncpu_burner --burn-ms {args.burn_ms:g}, one closed-loop user, {args.duration} "
          f"runs (1 s warm-up), {args.rounds} rounds; runs in {out}")
    print(f"{'beside':<8} {'other work measured (% of a core)':<36} {'CPU wait ratio':<20} "
          f"{'p50 / A':<22} {'regression: statistics':<24} {'with the check'}")
    for label, values in rows.items():
        work = [w for w, _, _, _ in values if w is not None]
        ratios = [r for _, r, _, _ in values]
        work_text = (f"{sum(work) / len(work):5.0f} ({min(work):.0f}-{max(work):.0f})"
                     if work else "not measured")
        ratio_text = (f"{math.exp(sum(math.log(r) for r in ratios) / len(ratios)):.2f} "
                      f"({min(ratios):.2f}-{max(ratios):.2f})")
        alone = sum(s for _, _, s, _ in values)
        checked = sum(c for _, _, _, c in values)
        shown = "—" if label == "A" else f"{alone}/{len(values)}"
        shown_checked = "—" if label == "A" else f"{checked}/{len(values)}"
        known = [w for w in waits[label] if w is not None]
        wait_text = (f"{sum(known) / len(known):.2f} ({min(known):.2f}-{max(known):.2f})"
                     if known else "not measured")
        print(f"{label:<8} {work_text:<36} {wait_text:<20} {ratio_text:<22} {shown:<24} "
              f"{shown_checked}")


if __name__ == "__main__":
    main()
