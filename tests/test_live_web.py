"""`perfkit load --web`: the live page of a running load, opened in a real headless Chromium
(Debian's, driven by Playwright) against tests/targets/switchable.py, a target whose latency
the test switches mid-run through its control URL."""

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from perfkit import rundir
from perfkit.analysis import stats
from perfkit.analysis.kpi import judge_window
from perfkit.kpi_file import load_kpi_targets
from perfkit.run.recorder import Tally
from perfkit.run.web import SAMPLE_COLUMNS, LivePage, judge_so_far, merge_tally
from perfkit.units import format_value
from tests.targets import SWITCHABLE, running_target
from tests.test_history_html import CONTRASTS_JS

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
HEALTH = "GET /api/v1/health"
KPI_FILE = (f'replace_defaults = true\n[[kpi]]\nname = "health p99"\nmetric = "p99_ms"\n'
            f'endpoint = "{HEALTH}"\ntarget = "100ms"\nallowed = "200ms"\n')
# The page talks to its own server only (EventSource, fetch): no absolute URL, no import.
OUTSIDE = re.compile(r"""(?:https?:)?//(?!www\.w3\.org/2000/svg)[\w.-]+[:/]|@import|"""
                     r"""new WebSocket""", re.I)
LIVE_LINE = re.compile(r"live page (http://\S+/)\s+\(its Stop button asks for the token (\S+)\)")


class Perfkit:
    """`perfkit ...` as a process whose output lines are read as they come."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "perfkit", *args], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PERFKIT_HISTORY": "off"})
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in self.process.stdout:
                self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: re.Pattern[str], timeout_s: float = 60.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            found = pattern.search(line)
            if found:
                return found
        raise AssertionError(f"no line matching {pattern.pattern!r} in:\n" + "\n".join(self.seen))

    def end(self, timeout_s: float = 60.0) -> int:
        code = self.process.wait(timeout_s)
        self.reader.join(10)  # its output read to the end, the pipe closed
        return code

    def stop(self) -> None:
        """A test that failed midway: SIGTERM (a clean stop, as Ctrl-C), then a kill."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.reader.join(10)


def post(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url, method="POST", headers={"X-Perfkit-Token": token}
                                     if token is not None else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def requests_shown(page: Any) -> int:
    return int(page.locator("#endpoints").get_attribute("data-requests") or 0)


def points_drawn(page: Any) -> int:
    return int(page.locator("#chart-rps polyline").first.get_attribute("data-points") or 0)


def kpi_verdict(page: Any) -> str:
    return str(page.locator("#kpis tr[data-kpi='health p99']").get_attribute("data-verdict"))


@pytest.mark.serial
def test_the_live_page_follows_a_run_sees_a_kpi_fail_and_stops_it(browser: Any,
                                                                  tmp_path: Path) -> None:
    kpi = tmp_path / "kpi.toml"
    kpi.write_text(KPI_FILE)
    run_dir = tmp_path / "run"
    with running_target(SWITCHABLE, "--delay-ms", "5") as (target, target_process):
        # No run time: the load runs until Stop (the test's own bound: Perfkit.end).
        run = Perfkit("load", "--target", target, "--target-pid", str(target_process.pid),
                      "--scenario", "health", "--rate", "20", "--users", "8",
                      "--warmup", "1s", "--kpi", str(kpi), "--out", str(run_dir),
                      "--web", "--web-port", "0")
        try:
            live = run.wait_for(LIVE_LINE)
            url, token = live.group(1), live.group(2)
            assert LIVE_LINE.search(run.seen[0]), "the URL is perfkit's first line"
            assert url.startswith("http://127.0.0.1:")
            with urllib.request.urlopen(url, timeout=10) as response:
                html = response.read().decode("utf-8")
            assert len(html.encode("utf-8")) < 1_000_000
            assert not OUTSIDE.search(html), "the page loads nothing from elsewhere"
            assert token not in html, "the page itself cannot stop the run"
            rebound = urllib.request.Request(url, headers={"Host": "attacker.example"})
            with pytest.raises(urllib.error.HTTPError, match="421"):
                urllib.request.urlopen(rebound, timeout=10)
            tunnelled = urllib.request.Request(url, headers={"Host": "localhost:9999"})
            with urllib.request.urlopen(tunnelled, timeout=10) as response:
                assert response.status == 200  # an SSH tunnel's port is fine

            context = browser.new_context(viewport={"width": 1280, "height": 1000})
            page = context.new_page()
            errors: list[str] = []
            asked: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: asked.append(request.url))
            page.goto(url)
            page.wait_for_function("Number(document.querySelector('#endpoints')"
                                   ".dataset.requests || 0) > 0", timeout=30_000)
            page.wait_for_function("document.querySelector('#kpis tr[data-kpi]')"
                                   "?.dataset.verdict === 'pass'", timeout=30_000)
            first = requests_shown(page), points_drawn(page)
            page.wait_for_timeout(2500)
            second = requests_shown(page), points_drawn(page)
            assert second[0] > first[0] > 0, "the request count grows"
            assert second[1] > first[1] > 0, "the chart grows"
            assert page.locator("#clock").inner_text().count("until Stop") == 1

            # The target slows down beyond the KPI's allowed level: the verdict so far turns.
            assert post(f"{target}/control?delay_ms=400") == 200
            page.wait_for_function("document.querySelector('#kpis tr[data-kpi]')"
                                   "?.dataset.verdict === 'fail'", timeout=30_000)
            assert "beyond the 200 ms allowed" in \
                page.locator("#kpis tr[data-kpi] td.reason").inner_text()
            page.wait_for_function("document.querySelectorAll('#alarms li').length > 0 && "
                                   "document.querySelector('#alarms li').textContent"
                                   ".includes('health p99')", timeout=30_000)
            # the README's picture (docs/img/live.png is a copy)
            page.screenshot(path=str(ARTIFACTS / "live.png"), full_page=True)
            contrasts = page.evaluate(CONTRASTS_JS)
            assert len(contrasts) > 50  # the tables' cells, the charts' labels
            assert [(round(r, 2), text) for r, text in contrasts if r < 4.5] == []  # WCAG AA
            assert page.locator("svg.chart[role=img][aria-label*='latest']").count() == 5
            # From the keyboard: Tab reaches the token field, then the Stop button.
            page.locator("body").focus()
            page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.id") == "token"
            page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.id") == "stop"

            # Read-only without the token, from the page and from anything else.
            assert post(url + "stop") == 403
            assert post(url + "stop", "not-the-token") == 403
            page.fill("#token", "wrong")
            page.click("#stop")
            page.wait_for_function("document.querySelector('#stop-result').textContent"
                                   ".includes('token')")
            assert run.process.poll() is None, "a wrong token stops nothing"

            page.fill("#token", token)
            page.keyboard.press("Enter")  # the form submits from the keyboard
            # The page turns into the final report once it is written.
            page.wait_for_url(re.compile(r"/report$"), timeout=60_000)
            assert page.locator("header#verdict").get_attribute("data-verdict") == "fail"
            assert run.end() == 130
            assert errors == []
            assert asked and all(a.startswith(url) for a in asked), asked
        finally:
            run.stop()
    run.wait_for(re.compile(r"^Report: "))
    assert any("stopped by the live page's Stop" in line for line in run.seen)
    assert (run_dir / "report.html").exists()
    meta = rundir.load_run(run_dir).meta
    assert meta.status == "interrupted"
    assert meta.verdict == "fail"
    shown = ARTIFACTS / "live.png"
    assert 10_000 < shown.stat().st_size < 300_000


def test_the_live_page_elsewhere_than_loopback_is_asked_for_and_warned_about(
        tmp_path: Path) -> None:
    with running_target(SWITCHABLE, "--delay-ms", "1") as (target, _):
        run = Perfkit("load", "--target", target, "--scenario", "health", "--rate", "5",
                      "--users", "1", "--duration", "2s", "--out", str(tmp_path / "run"),
                      "--web", "--web-host", "0.0.0.0", "--web-port", "0")
        try:
            run.wait_for(LIVE_LINE)
            run.wait_for(re.compile(r"WARNING: the live page listens on 0\.0\.0\.0"))
            assert run.end() in (0, 1)
        finally:
            run.stop()
    assert rundir.load_run(tmp_path / "run").meta.status == "completed"


def test_without_web_nothing_listens(tmp_path: Path) -> None:
    with running_target(SWITCHABLE, "--delay-ms", "1") as (target, _):
        run = Perfkit("load", "--target", target, "--scenario", "health", "--rate", "5",
                      "--users", "1", "--duration", "3s", "--web-port", "0",
                      "--out", str(tmp_path / "run"))
        assert run.end() in (0, 1)
    run.wait_for(re.compile(r"^Report: "))
    assert not any("live page" in line for line in run.seen)



def test_the_verdict_so_far_is_kpi_py_on_every_second_merged(tmp_path: Path) -> None:
    """Fixed data: 100 requests at 10 ms in each of two seconds, then 100 at 400 ms, and the
    target's memory 100, 100, then 600 MB. The page's merged tally judges as kpi.py judges the
    same seconds, pass before the slow second and fail after it; a lower bound (throughput)
    waits for the end."""
    kpi = tmp_path / "kpi.toml"
    kpi.write_text(KPI_FILE + '[[kpi]]\nname = "throughput"\nmetric = "rps"\ntarget = "50rps"\n'
                   '[[kpi]]\nname = "memory"\nmetric = "rss_mb_peak"\ntarget = "512MB"\n')
    targets = load_kpi_targets(kpi)
    seconds = []
    for latency_ms in (10.0, 10.0, 400.0):
        tally = Tally()
        for _ in range(100):
            stats.record_ms(tally.hist, latency_ms)
        tally.count = 100
        seconds.append(tally)
    so_far, verdicts, samples = Tally(), [], []
    for t, tally in enumerate(seconds):
        merge_tally(so_far, tally)
        sample = {"t": t, "rss_mb": 600.0 if t == 2 else 100.0}
        samples.append(tuple(sample.get(column) for column in SAMPLE_COLUMNS))
        record = {"t": 0, "name": HEALTH, "count": so_far.count, "failures": 0,
                  "hist": stats.encode_histogram(so_far.hist)}
        rows, cpu_s = judge_so_far([record], samples, 0, t + 1, targets)
        assert cpu_s >= 0
        verdicts.append([row["verdict"] for row in rows])
        each_second = [{"t": s, "name": HEALTH, "count": 100, "failures": 0,
                        "hist": stats.encode_histogram(seconds[s].hist)} for s in range(t + 1)]
        direct = judge_window(each_second, None, 0, t + 1, targets)
        assert direct[0].verdict == rows[0]["verdict"]
        assert rows[0]["value"] == format_value(direct[0].value, "ms")
    assert so_far.count == 300
    assert verdicts == [["pass", "at the end", "pass"], ["pass", "at the end", "pass"],
                        ["fail", "at the end", "fail"]]


def test_the_database_and_queue_charts_read_the_targets_metrics_endpoint() -> None:
    """Fixed samples of the app collector (cumulative: 100 queries at 2 ms mean, then 300 at
    3 ms mean): the page plots the mean of the 200 queries between them, 3.5 ms, and the
    queue's depth; nothing before a second sample, nothing without a metrics endpoint."""
    first = {"t": 1, "db_total_queries": 100.0, "db_average_ms": 2.0, "queue_depth": 4.0}
    samples = iter([first, first,
                    {"t": 6, "db_total_queries": 300.0, "db_average_ms": 3.0, "queue_depth": 0.0},
                    {"t": 6, "db_total_queries": 300.0, "db_average_ms": 3.0, "queue_depth": 0.0}])
    app = SimpleNamespace(latest=lambda: next(samples))
    page = LivePage("127.0.0.1", 0, lambda line: None, "test")
    try:
        page.state = SimpleNamespace(app=app)  # type: ignore[assignment]
        assert page.read_app() == page.read_app() == {"db_ms": None, "queue": 4.0}
        # A sample is shown until the collector's next one (it samples every few seconds).
        assert page.read_app() == page.read_app() == {"db_ms": 3.5, "queue": 0.0}
        page.state = SimpleNamespace(app=None)  # type: ignore[assignment]
        assert page.read_app() == {}
    finally:
        page.close()
