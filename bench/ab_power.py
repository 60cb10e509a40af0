"""How often interleaved A/B trials (`perfkit ab`) cry wolf, and how often they catch a small
slowdown of one endpoint, on this machine.

Each round runs three arms on freshly started reference services, A, A' (the same build) and
B (a known slowdown), in a rotating order. The slowdown is end to end, as a user of the gate
means it: `--slowdown 20%` first measures A's results p50 at the client (three calibration
runs) and gives B a fixed extra latency of 20 % of it (`serve --extra-latency results=Nms`;
what B realised is printed at the end); `--slowdown results=20%` instead adds 20 % of the
server's own handling time, which a client sees diluted by the network and the load
generator. Every `--repeat` rounds make one A/A decision (A vs A') and one A/B decision (A vs
B), judged exactly as `perfkit ab` judges (paired t interval on log(B/A) over the runs,
threshold and family-wise confidence). Sharing A between the two decisions saves a third of
the runs; it makes them correlated, not biased.

`--simultaneous` judges as `perfkit ab --simultaneous` does: each round is two runs, one loading
A and A' at once (freshly started) from one load generator, one loading A and B, each arm
first in turn, so a round gives one A/A and one A/B pair. (Three arms in one run would crowd
three services and the generator onto two cores and add the noise of who gets them.) There
`--slowdown 20%` is calibrated on what B realises at the client: a first run measures A's p50
beside another A, then two A/B runs each correct B's extra latency by the slowdown it realised
(the service's wait and the shared machine do not add it one to one).

    .venv/bin/python bench/ab_power.py --decisions 20 --repeat 5 --slowdown 20%
    .venv/bin/python bench/ab_power.py --decisions 20 --repeat 8 --slowdown 10% --threshold 0.05
    .venv/bin/python bench/ab_power.py --simultaneous --rate 0 --users 1 --repeat 3 --slowdown 20%
"""

import argparse
import itertools
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from perfkit.analysis.history import TrialSettings, judge_trials
from perfkit.options import parse_options
from perfkit.run import ab as ab_run
from perfkit.settings import build_load_settings

RESULTS = "GET /api/v1/research/products/{id}"
ORDERS = list(itertools.permutations(("A", "A2", "B")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5, help="pairs per decision")
    parser.add_argument("--duration", default="8s")
    parser.add_argument("--warmup", default="2s")
    parser.add_argument("--scenario", default="results")
    parser.add_argument("--users", type=int, default=5)
    parser.add_argument("--rate", type=float, default=20.0, help="0: closed loop")
    parser.add_argument("--simultaneous", action="store_true",
                        help="A, A' and B loaded at once in each round")
    parser.add_argument("--slowdown", default="20%",
                        help="20%%: of A's p50 at the client; results=20%%: serve "
                             "--extra-latency (of the server's handling)")
    parser.add_argument("--threshold", type=float, default=0.10)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--max-minutes", type=float, default=60.0,
                        help="stop after the decision that crosses this")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="ab-power-"))
    root.mkdir(parents=True, exist_ok=True)
    values, given = parse_options("ab", dict(
        scenario=args.scenario, users=args.users, spawn_rate=50, duration=args.duration,
        rate=args.rate or None, warmup=args.warmup,
        kpi=Path(__file__).parent.parent / ".ci" / "regression-kpi.toml"))
    load = build_load_settings("ab", values, given=given)
    trial = TrialSettings(threshold=args.threshold, confidence=args.confidence)
    a = ab_run.Arm("A", ("--fast",))
    if "=" in args.slowdown:
        extra = args.slowdown
    elif args.simultaneous:
        extra = _calibrate_together(a, load, root, args.slowdown)
    else:
        extra = _calibrate(a, load, root, args.slowdown)
    arms = {"A": a, "A2": ab_run.Arm("A2", ("--fast",)), "B": _slowed(extra)}
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    round_no = 0
    diffs: list[float] = []  # log(B/A) of every pair: the run-to-run noise the verdict sees
    for d in range(args.decisions):
        decision_started = time.monotonic()
        aa_pairs, ab_pairs = [], []
        for _ in range(args.repeat):
            order = ORDERS[round_no % len(ORDERS)]
            endpoints = (_round_together(round_no, arms, load, root) if args.simultaneous
                         else _round_apart(order, arms, load, root, round_no))
            round_no += 1
            if endpoints is not None:
                aa_pairs.append((endpoints["A"], endpoints["A2"]))
                ab_pairs.append((endpoints.get("A of B", endpoints["A"]), endpoints["B"]))
        aa, ab = judge_trials(aa_pairs, trial), judge_trials(ab_pairs, trial)
        p50 = next((m for m in ab.metrics if m.endpoint == RESULTS and m.metric == "p50_ms"),
                   None)
        ratio = p50.ratio if p50 else None
        if p50 is not None and len(p50.a_values) > 1:
            diffs.extend(np.log(np.array(p50.b_values) / np.array(p50.a_values)).tolist())
        row = {"decision": d, "aa": aa.outcome, "aa_regressed": aa.regressed_endpoints,
               "ab": ab.outcome, "ab_regressed": ab.regressed_endpoints,
               "ab_results_p50_ratio": ratio,
               "seconds_per_decision_pair": round(time.monotonic() - decision_started)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if time.monotonic() - started > args.max_minutes * 60:
            break
    n = len(rows)
    alarms = sum(r["aa"] == "regression" for r in rows)
    detected = sum(RESULTS in r["ab_regressed"] for r in rows)
    elsewhere = sum(any(e != RESULTS for e in r["ab_regressed"]) for r in rows)
    wall = time.monotonic() - started
    print(f"\n{'simultaneous' if args.simultaneous else 'interleaved'}: {args.scenario}, "
          f"{args.duration} runs ({args.warmup} warm-up), "
          f"{f'rate {args.rate}/s' if args.rate else 'closed loop'}, {args.users} users per "
          f"target, fast profile; slowdown {args.slowdown} "
          f"(B: --extra-latency {extra}); "
          f"{args.repeat} pairs per decision; threshold {args.threshold:.0%}, confidence "
          f"{args.confidence:.0%} family-wise")
    aa_unsure = sum(r["aa"] == "inconclusive" for r in rows)
    print(f"A/A false alarms: {alarms}/{n} (inconclusive {aa_unsure}/{n})")
    print(f"A/B detected (results endpoint named): {detected}/{n}; another endpoint named: "
          f"{elsewhere}/{n}; inconclusive {sum(r['ab'] == 'inconclusive' for r in rows)}/{n}")
    if len(diffs) > 2:
        sd = float(np.std(diffs, ddof=1))
        print(f"results p50, log(B/A) per pair: mean {np.mean(diffs):.3f} (B/A "
              f"x{math.exp(np.mean(diffs)):.3f}), sd {sd:.3f} "
              f"({len(diffs)} pairs); pairs for 95 % power against a true 20 % (10 %) "
              f"slowdown at threshold 10 % (5 %): ~{_pairs_needed(sd, 0.20, 0.10)} "
              f"(~{_pairs_needed(sd, 0.10, 0.05)})")
    if args.simultaneous:  # a round is two runs of two arms, one of them as in perfkit ab
        per_decision = (f"{args.repeat} runs, as `perfkit ab --simultaneous`): "
                        f"~{wall / n / 2:.0f} s")
    else:
        per_decision = f"{2 * args.repeat} runs, as `perfkit ab`): ~{wall / n * 2 / 3:.0f} s"
    print(f"wall time {wall:.0f} s; per decision ({per_decision}; runs kept in {root}")


def _slowed(extra: str) -> ab_run.Arm:
    return ab_run.Arm("B", ("--fast", "--extra-latency", extra))


def _round_apart(order: tuple[str, ...], arms: dict[str, ab_run.Arm], load: Any, root: Path,
                 round_no: int) -> dict[str, Any] | None:
    """Each arm's endpoints from runs one after the other (None: a run failed)."""
    results = {label: ab_run._run_arm(arms[label], load, root / f"{round_no:03d}-{label}",
                                      lambda _m: None) for label in order}
    if all(r.meta.status == "completed" and r.endpoints for r in results.values()):
        return {label: r.endpoints for label, r in results.items()}
    return None


def _round_together(round_no: int, arms: dict[str, ab_run.Arm], load: Any,
                    root: Path) -> dict[str, Any] | None:
    """A and A' loaded at once, then A and B (each on fresh services; which arm comes first
    alternates by round): each arm's endpoints, "A of B" being the A beside B (None: a run
    failed)."""
    aa = _together(("A", "A2"), arms, load, root / f"{round_no:03d}-AA", round_no % 2 == 1)
    ab = _together(("A", "B"), arms, load, root / f"{round_no:03d}-AB", round_no % 2 == 1)
    if aa is None or ab is None:
        return None
    return {"A": aa["A"], "A2": aa["A2"], "A of B": ab["A"], "B": ab["B"]}


def _together(labels: tuple[str, ...], arms: dict[str, ab_run.Arm], load: Any, out: Path,
              reverse: bool) -> dict[str, Any] | None:
    order = labels[::-1] if reverse else labels
    run = ab_run.run_together([(label, arms[label]) for label in order], load, out,
                              lambda _m: None)
    by_arm = ab_run.split_arms(run)
    return by_arm if run.meta.status == "completed" and len(by_arm) == len(labels) else None


def _calibrate_together(arm: ab_run.Arm, load: Any, root: Path, slowdown: str) -> str:
    """`results=Nms` at which B realises `slowdown` of A's results p50 next to it (three
    calibration runs; see the module's docstring)."""
    wanted = float(slowdown.rstrip("%")) / 100.0
    first = _together(("A", "A2"), {"A": arm, "A2": arm}, load, root / "calibrate-0", False)
    if first is None:
        raise SystemExit("calibration failed: the first round did not complete")
    extra_ms = wanted * float(first["A"][RESULTS]["p50_ms"])
    for i in (1, 2):
        got = _together(("A", "B"), {"A": arm, "B": _slowed(f"results={extra_ms:.3f}ms")},
                        load, root / f"calibrate-{i}", False)
        if got is None:
            raise SystemExit(f"calibration failed: round {i} did not complete")
        realised = got["B"][RESULTS]["p50_ms"] / got["A"][RESULTS]["p50_ms"] - 1.0
        print(f"calibration {i}: +{extra_ms:.3f} ms -> B/A {1 + realised:.3f}", flush=True)
        if realised > 0.01:
            extra_ms *= wanted / realised
    print(f"calibration: B gets +{extra_ms:.3f} ms ({slowdown} at the client)", flush=True)
    return f"results={extra_ms:.3f}ms"


def _calibrate(arm: ab_run.Arm, load: Any, root: Path, slowdown: str) -> str:
    """`results=Nms`: the fraction `slowdown` of A's results p50 at the client (median of three
    runs on fresh services). The service's event loop keeps timers in whole milliseconds, so
    a sleep of a few ms lasts up to a millisecond longer: the slowdown B realises is printed
    at the end (B/A over all pairs), and that is the one the detections are of."""
    p50s = [float(ab_run._run_arm(arm, load, root / f"calibrate-{i}", lambda _m: None)
                  .endpoints[RESULTS]["p50_ms"]) for i in range(3)]
    extra_ms = float(np.median(p50s)) * float(slowdown.rstrip("%")) / 100.0
    print(f"calibration: A's results p50 {', '.join(f'{p:.2f}' for p in p50s)} ms -> B gets "
          f"+{extra_ms:.2f} ms ({slowdown} end to end)", flush=True)
    return f"results={extra_ms:.2f}ms"


def _pairs_needed(sd: float, slowdown: float, threshold: float) -> int:
    """Smallest n at which, 95 % of the time (normal approximation), the paired t interval
    (2 metrics, 95 % family-wise) lies above 1 and the ratio exceeds the threshold."""
    from perfkit.analysis.stats import t_quantile

    effect, margin = math.log(1 + slowdown), math.log(1 + slowdown) - math.log(1 + threshold)
    for n in range(2, 1000):
        se = sd / math.sqrt(n)
        if (t_quantile(1 - 0.025 / 2, n - 1) + 1.645) * se < effect and 1.645 * se < margin:
            return n
    return 1000


if __name__ == "__main__":
    sys.exit(main())
