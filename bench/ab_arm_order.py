"""Which arm's request reaches its target first in a simultaneous A/B trial, seen from the
targets: two instances of tests/targets/arrivals.py (which note each request's arrival) as
arms A and B, loaded at once as `perfkit ab --simultaneous` loads them, once in the order
A B and once B A. Each A arrival is paired with B's nearest one; pairs closer than 5 ms
count as coinciding. Prints, per trial, the coinciding pairs, in how many A's came first,
and each arm's p50 at the client. An unbiased generator sends first whichever arm the
trial's order puts first, or neither.

    .venv/bin/python bench/ab_arm_order.py --rate 30 --users 10 --duration 8s
"""

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import urllib.request
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from perfkit.options import parse_options  # noqa: E402
from perfkit.run import runner  # noqa: E402
from perfkit.settings import build_load_settings  # noqa: E402
from tests.targets import TARGETS_DIR, running_target  # noqa: E402

COINCIDING_S = 0.005
PATH = "/work"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=30.0, help="per arm; 0: closed loop")
    parser.add_argument("--users", type=int, default=10, help="per arm")
    parser.add_argument("--duration", default="8s")
    parser.add_argument("--delay-ms", default="10")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="ab-arm-order-"))
    values, given = parse_options("load", dict(
        scenario=str(ROOT / "tests" / "scenarios" / "one_request.py"), users=2 * args.users,
        spawn_rate=50, duration=args.duration, rate=2 * args.rate or None, warmup="2s"))
    load = build_load_settings("load", values, given=given)
    for order in ("AB", "BA"):
        with ExitStack() as stack:
            urls = {label: stack.enter_context(running_target(
                TARGETS_DIR / "arrivals.py", "--delay-ms", args.delay_ms))[0]
                for label in "AB"}
            settings = dataclasses.replace(load, target=urls[order[0]], out=root / order,
                                           arms=tuple((label, urls[label]) for label in order))
            result = runner.run_load(settings, lambda _m: None)
            arrivals = {}
            for label, url in urls.items():
                with urllib.request.urlopen(url + "/__arrivals", timeout=5) as response:
                    arrivals[label] = sorted(json.load(response).get(PATH, []))
        lags = []
        for t in arrivals["A"]:
            nearest = min(arrivals["B"], key=lambda u, t=t: abs(u - t))
            if abs(nearest - t) < COINCIDING_S:
                lags.append(nearest - t)
        p50 = {name: summary["p50_ms"] for name, summary in result.endpoints.items()}
        median_ms = f"{1000 * statistics.median(lags):.2f} ms" if lags else "-"
        print(f"{order}: arrivals A {len(arrivals['A'])}, B {len(arrivals['B'])}; coinciding "
              f"pairs {len(lags)}, A first in {sum(lag > 0 for lag in lags)}, median lag of "
              f"B behind A {median_ms}; p50 at the client {p50}", flush=True)


if __name__ == "__main__":
    main()
