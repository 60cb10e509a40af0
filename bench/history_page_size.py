"""The size of history.html against the number of runs and endpoints in the history: the page
carries every run's id, date, commit, variants and report link and every series' values (four
significant digits), so it grows with runs x series. The runs are SIMULATED
(tests/synthetic.py: simulated_history), every stored metric of every endpoint with noise in
every digit, each run with a report link; the default KPIs.

    .venv/bin/python bench/history_page_size.py
    .venv/bin/python bench/history_page_size.py --runs 3 50 1000 --endpoints 4 10 20
"""

import argparse
import gzip
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perfkit.kpi_file import load_kpi_targets  # noqa: E402
from perfkit.report.history_html import render_history_html  # noqa: E402
from tests.synthetic import simulated_history  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[3, 50, 1000])
    parser.add_argument("--endpoints", type=int, nargs="+", default=[4, 10, 20])
    args = parser.parse_args()
    kpis = load_kpi_targets(None)
    print(f"{'runs':>6} {'endpoints':>9} {'series':>6} {'history.html':>13} {'gzipped':>9}")
    for endpoints in args.endpoints:
        for n_runs in args.runs:
            runs, series = simulated_history(n_runs, endpoints)
            links = [f"../{run['run_id']}/report.html" for run in runs]
            page = render_history_html(runs, series, [], kpis, links).encode()
            print(f"{n_runs:>6} {endpoints:>9} {len(series):>6} "
                  f"{len(page) / 1e6:>10.2f} MB {len(gzip.compress(page)) / 1e6:>6.2f} MB")


if __name__ == "__main__":
    main()
