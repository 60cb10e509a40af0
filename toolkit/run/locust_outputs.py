"""Locust's own outputs of a run, asked for with Locust's options (--csv, --csv-full-history,
--html, --json, --json-file): written by Locust's own writers in Locust's formats, where Locust
writes them (paths as given, relative to the working directory), beside perfkit's run
directory. The master (or the only process) writes them from Locust's statistics, which the
workers' reports feed, as under `locust`.
"""

import copy
import json
import os
from pathlib import Path
from typing import Any

import gevent
from locust import stats
from locust.env import Environment
from locust.html import get_html_report, process_html_filename

from ..errors import ConfigError
from ..settings import LocustOutputs


def check_outputs(outputs: LocustOutputs) -> None:
    """The outputs' directories exist or can be made: a bad path fails before the run."""
    paths = [outputs.csv_prefix, outputs.html_file, outputs.json_file]
    for path in (p for p in paths if p):
        directory = os.path.dirname(path)
        try:
            if directory:
                os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc


class LocustWriters:
    """The writers of one run: started with the runner, finished once it has stopped."""

    def __init__(self, env: Environment, outputs: LocustOutputs, options: Any) -> None:
        self.env = env
        self.outputs = outputs
        self.options = options
        self.csv: stats.StatsCSVFileWriter | None = None
        self.greenlets: list[gevent.Greenlet] = []

    def start(self) -> None:
        runner = self.env.runner
        assert runner is not None
        if self.outputs.html_file:
            # The HTML report's charts: Locust's main keeps this history for every run.
            self.greenlets.append(gevent.spawn(stats.stats_history, runner))
        if self.outputs.csv_prefix:
            try:
                self.csv = stats.StatsCSVFileWriter(
                    self.env, stats.PERCENTILES_TO_REPORT, self.outputs.csv_prefix,
                    self.outputs.csv_full_history)
            except OSError as exc:
                raise ConfigError(f"--csv {self.outputs.csv_prefix}: {exc}") from exc
            self.greenlets.append(gevent.spawn(self.csv.stats_writer))

    def finish(self) -> list[str]:
        """Write what is left; the files written."""
        runner = self.env.runner
        assert runner is not None
        written = []
        if self.csv is not None:
            # Locust's writer rewrites the files every second; one more lap after the stop
            # puts the final numbers in (Locust itself closes them without it).
            gevent.sleep(stats.CSV_STATS_INTERVAL_SEC + 0.2)
        gevent.killall(self.greenlets)
        if self.csv is not None:
            self.csv.close_files()
            prefix = self.outputs.csv_prefix
            written += [f"{prefix}_stats.csv", self.csv.stats_history_file_name(),
                        f"{prefix}_failures.csv", f"{prefix}_exceptions.csv"]
        if self.outputs.html_file:
            process_html_filename(self.options)
            html = get_html_report(self.env, show_download_link=False)
            Path(self.options.html_file).write_text(html, "utf-8")
            written.append(self.options.html_file)
        if self.outputs.json_stdout or self.outputs.json_file:
            # Locust's print_stats_json/save_stats_json, on a copy: serializing an entry clears
            # it (it is how workers report), and perfkit reads the counts after this.
            text = json.dumps(copy.deepcopy(runner.stats).serialize_stats(), indent=4)
            if self.outputs.json_stdout:
                print(text, flush=True)
            if self.outputs.json_file:
                Path(f"{self.outputs.json_file}.json").write_text(text, "utf-8")
                written.append(f"{self.outputs.json_file}.json")
        return written
