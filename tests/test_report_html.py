"""The HTML report: content rendered from synthetic runs, then real pages in headless Chromium.

Chromium is driven over the DevTools protocol (aiohttp's websocket client, already a
dependency): it loads the file offline, reports console errors and network requests, measures
every chart and keeps a full-page screenshot under test-artifacts/.
"""

import asyncio
import base64
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import lxml.html
import numpy as np
import pandas as pd
import pytest

from perfkit import rundir
from perfkit.analysis import stats
from perfkit.analysis.kpi import judge_run
from perfkit.kpi_file import load_kpi_targets
from perfkit.report import charts
from perfkit.report.html import render_html
from tests.synthetic import START_T, EndpointSpec, RunSpec, make_run

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHART_SECTIONS = ("traffic", "load", "resources", "io", "database", "jobs")
ALWAYS_SECTIONS = ("verdict", "kpis", "endpoints", *CHART_SECTIONS, "slow-queries", "failures",
                   "profile", "collectors", "environment")


def render(path: Path) -> str:
    run = rundir.load_run(path)
    return render_html(judge_run(run, load_kpi_targets(None)))


def edit_meta(path: Path, **changes: Any) -> None:
    meta = json.loads((path / rundir.RUN_JSON).read_text())
    meta.update(changes)
    rundir.write_json(path / rundir.RUN_JSON, meta)


def by_id(page: lxml.html.HtmlElement, element_id: str) -> lxml.html.HtmlElement:
    found = page.xpath(f'//*[@id="{element_id}"]')
    assert found, f"no element #{element_id}"
    return found[0]


def plain(element: lxml.html.HtmlElement) -> str:
    return " ".join(element.text_content().split())


def charts_in(section: lxml.html.HtmlElement) -> list[lxml.html.HtmlElement]:
    return section.xpath('.//*[local-name()="svg" and contains(@class, "chart")]')


def kpi_rows(page: lxml.html.HtmlElement) -> dict[str, list[str]]:
    rows = {}
    for row in by_id(page, "kpis").xpath(".//tbody/tr"):
        cells = [plain(cell) for cell in row.xpath("./td")]
        name = row.xpath("./td[1]")[0].text.strip()
        rows[name] = cells
    return rows


@pytest.fixture(scope="module")
def passing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("runs") / "passing"
    make_run(path, RunSpec(duration_s=60, warmup_s=6, batch_10_completion_s=20.0))
    return path


@pytest.fixture(scope="module")
def failing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """POST p99 near 1 s against its 500 ms target; health p99 between target and allowed."""
    path = tmp_path_factory.mktemp("runs") / "failing"
    make_run(path, RunSpec(duration_s=60, warmup_s=6, endpoints={
        "GET /api/v1/health": EndpointSpec(rps=40, median_ms=60, sigma=0.4),
        "POST /api/v1/research/products": EndpointSpec(rps=10, median_ms=400, sigma=0.4,
                                                       error_rate=0.003),
        "GET /api/v1/research/products/{id}/status": EndpointSpec(rps=20, median_ms=8),
    }))
    rundir.write_json(path / rundir.FAILURES, [
        {"name": "POST /api/v1/research/products", "error": "HTTPError('503 Service Unavailable')",
         "count": 2, "example": "503 Server Error: Service Unavailable for url: /api/v1/..."}])
    (path / "profile.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="400" height="40"><rect width="400" '
        'height="40" fill="orange"/></svg>')
    return path


@pytest.fixture(scope="module")
def passing_html(passing: Path) -> str:
    return render(passing)


@pytest.fixture(scope="module")
def failing_html(failing: Path) -> str:
    return render(failing)


def test_passing_report_says_pass_and_has_every_section(passing_html: str) -> None:
    page = lxml.html.fromstring(passing_html)
    banner = by_id(page, "verdict")
    assert banner.get("data-verdict") == "pass"
    assert plain(banner).startswith("PASS")
    assert "measured KPIs met their targets" in plain(banner)
    for section in ALWAYS_SECTIONS:
        by_id(page, section)
    assert not page.xpath('//*[@id="alarms"]')  # no alarms.jsonl: no section
    # One throughput chart and one latency chart per endpoint, then one chart per section.
    assert len(charts_in(by_id(page, "traffic"))) == 1 + 4
    for section in CHART_SECTIONS[1:]:
        assert len(charts_in(by_id(page, section))) == 1, section
        assert "not measured" not in plain(by_id(page, section)), section
    endpoints = plain(by_id(page, "endpoints"))
    for name in ("GET /api/v1/health", "POST /api/v1/research/products"):
        assert name in endpoints
    assert "SIMULATED" in plain(by_id(page, "environment"))


def test_missing_kpis_show_missing_never_zero(passing_html: str) -> None:
    rows = kpi_rows(lxml.html.fromstring(passing_html))
    # The synthetic run drives 40 queries/s: database capacity cannot be proven.
    value, verdict = rows["database capacity"][1], rows["database capacity"][4]
    assert (value, verdict) == ("missing", "missing")
    assert rows["throughput"][4] == "pass"
    assert rows["10-product batch mean"][4] == "pass"


def test_failing_report_leads_with_the_worst_offender(failing_html: str) -> None:
    page = lxml.html.fromstring(failing_html)
    banner = by_id(page, "verdict")
    assert banner.get("data-verdict") == "fail"
    assert plain(banner).startswith("FAIL")
    headline = plain(banner.xpath('.//*[@class="headline"]')[0])
    assert headline.startswith("POST /api/v1/research/products p99 ")
    assert headline.endswith("% over the 500 ms target")
    # Failures first in the KPI table; the health p99 warns (between 100 and 200 ms).
    rows = list(kpi_rows(page).values())
    assert rows[0][4] == "fail"
    health = kpi_rows(page)["GET /api/v1/health p99"]
    assert health[4] == "warn" and "over" in health[5]
    failures = plain(by_id(page, "failures"))
    assert "503 Service Unavailable" in failures and "example" in failures


@pytest.mark.parametrize(("status", "verdict"), [("interrupted", "pass"),
                                                 ("target_died", "fail")])
def test_partial_run_renders_and_says_so(tmp_path: Path, status: str, verdict: str) -> None:
    make_run(tmp_path, RunSpec(duration_s=20, warmup_s=2))
    message = "stopped by Ctrl-C after 20 s" if status == "interrupted" else \
        "the target exited with code -9 at 20 s"
    edit_meta(tmp_path, status=status, message=message,
              settings={"users": 10, "duration_s": 60, "warmup_s": 2, "bucket_s": 1})
    page = lxml.html.fromstring(render(tmp_path))
    banner = by_id(page, "verdict")
    assert banner.get("data-verdict") == verdict
    assert status.replace("_", " ").upper() in plain(banner)
    alert = plain(by_id(page, "run-status"))
    assert message in alert
    assert "Partial run: the figures cover 20 s of the planned 1 min 00 s" in alert
    if status == "target_died":
        assert "the run ended with status target_died" in plain(banner)
    assert len(charts_in(by_id(page, "traffic"))) == 5


def test_absent_data_is_not_measured_not_an_empty_chart(tmp_path: Path) -> None:
    make_run(tmp_path, RunSpec(duration_s=30, with_app=False, job_completion_s=None))
    (tmp_path / rundir.RESOURCES).unlink()
    (tmp_path / rundir.TIMELINE).unlink()
    page = lxml.html.fromstring(render(tmp_path))
    for section in ("load", "resources", "io", "database", "jobs", "slow-queries"):
        element = by_id(page, section)
        assert not charts_in(element), section
        assert "not measured" in plain(element), section
    assert "not available" in plain(by_id(page, "database"))  # the app collector's note
    rows = kpi_rows(page)
    for name in ("target memory RSS mean", "target CPU peak", "database capacity",
                 "research job completion max"):
        assert rows[name][1] == "missing" and rows[name][4] == "missing", name
    assert len(charts_in(by_id(page, "traffic"))) == 5


def test_run_that_failed_before_any_request_still_renders(tmp_path: Path) -> None:
    rundir.write_json(tmp_path / rundir.RUN_JSON, {
        "run_id": "early", "command": "load", "started_at": float(START_T), "ended_at": None,
        "status": "failed", "message": "the target never became ready",
        "settings": {"duration_s": 60, "warmup_s": 6}})
    page = lxml.html.fromstring(render(tmp_path))
    banner = by_id(page, "verdict")
    assert banner.get("data-verdict") == "error"  # nothing was measured: not judged
    assert "the target never became ready" in plain(banner)
    for section in ALWAYS_SECTIONS[1:]:
        assert not charts_in(by_id(page, section)), section
    for section in ("traffic", "load", "resources", "database", "jobs", "failures"):
        assert "not measured" in plain(by_id(page, section)), section
    assert {row[1] for row in kpi_rows(page).values()} == {"missing"}


def test_run_data_is_escaped(tmp_path: Path) -> None:
    name = "GET /api/<b>bold</b>"
    make_run(tmp_path, RunSpec(duration_s=10, endpoints={name: EndpointSpec(rps=5)}))
    rundir.write_json(tmp_path / rundir.FAILURES, [
        {"name": name, "error": "<script>alert('error')</script>", "count": 1,
         "example": "<img src=x onerror=alert(1)>"}])
    edit_meta(tmp_path, scenario="<script>alert('scenario')</script>",
              argv=["perfkit", "load", "--scenario", "<script>"])
    html = render(tmp_path)
    assert "<script" not in html and "<b>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(&#39;scenario&#39;)&lt;/script&gt;" in html
    assert "GET /api/&lt;b&gt;bold&lt;/b&gt;" in html  # table and chart titles alike


def test_saturated_load_generator_alarms_and_profile(tmp_path: Path) -> None:
    make_run(tmp_path, RunSpec(duration_s=30))
    timeline = (tmp_path / rundir.TIMELINE).read_text().replace(",35.0", ",97.0")
    (tmp_path / rundir.TIMELINE).write_text(timeline)
    edit_meta(tmp_path, loadgen={"saturated": True, "max_cpu_percent": 97.0})
    rundir.append_jsonl(tmp_path / rundir.ALARMS, [
        {"t": START_T + 12, "kpi": "GET /api/v1/health p99", "value": 250.0, "limit": 200.0,
         "message": "health p99 250 ms over its 200 ms allowed"}])
    (tmp_path / "profile.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="100" height="20"><rect width="100" '
        'height="20" fill="orange"/></svg>')
    page = lxml.html.fromstring(render(tmp_path))
    warning = plain(by_id(page, "loadgen-saturated"))
    assert "97 %" in warning and "not trustworthy" in warning
    assert "saturated" in plain(by_id(page, "load"))  # marked on the chart too
    assert "health p99 250 ms over its 200 ms allowed" in plain(by_id(page, "alarms"))
    image = by_id(page, "profile").xpath(".//img")[0]
    assert image.get("src").startswith("data:image/svg+xml;base64,")


def test_chart_points_merge_the_histograms_of_their_window(tmp_path: Path) -> None:
    make_run(tmp_path, RunSpec(duration_s=40, endpoints={"GET /a": EndpointSpec(rps=30)},
                               job_completion_s=None))
    run = rundir.load_run(tmp_path)
    binned = charts.bin_latency(run.latency, START_T, START_T + 40, window_s=8.0)
    assert len(binned) == 5
    for i, row in enumerate(binned.itertuples()):
        rows = run.latency[(run.latency["t"] >= START_T + 8 * i)
                           & (run.latency["t"] < START_T + 8 * (i + 1))]
        merged = stats.merge_histograms(rows["hist"])
        assert row.count == rows["count"].sum()
        assert row.rps == pytest.approx(rows["count"].sum() / 8.0)
        assert row.t_s == 8 * i + 4
        for column, q in charts.PERCENTILES.items():
            assert getattr(row, column) == stats.percentile_ms(merged, q), (i, column)


def test_resource_charts_follow_the_samples_and_show_only_real_gaps() -> None:
    """A sampler a little slower than 1 Hz (1.004 s apart, with the jitter of a busy
    machine) on 1 s windows: every sample is drawn at its own time, no false gap; a collector
    that stopped for 5 s leaves one gap, there."""
    started_at = START_T + 0.62
    jitter = np.random.default_rng(3).uniform(-0.01, 0.01, 120)
    t = started_at + 0.9 + 1.004 * np.arange(120) + jitter
    frame = pd.DataFrame({"t": t, "cpu_busiest_percent": np.linspace(10, 60, 120),
                          "rss_mb": 100.0})
    drawn = charts.resample_frame(frame, started_at, started_at + 122, window_s=1.0)
    assert len(drawn) == 120 and drawn[["cpu_busiest_percent", "rss_mb"]].notna().all().all()
    assert drawn["t_s"].to_numpy() == pytest.approx(t - started_at)
    assert drawn["cpu_busiest_percent"].to_numpy() == pytest.approx(np.linspace(10, 60, 120))

    stopped = frame[(frame["t"] < started_at + 40) | (frame["t"] > started_at + 45)]
    drawn = charts.resample_frame(stopped, started_at, started_at + 122, window_s=1.0)
    holes = drawn[drawn["cpu_busiest_percent"].isna()]
    assert len(drawn) == len(stopped) + 1 and len(holes) == 1
    assert 39 < holes["t_s"].iloc[0] < 46

    # An hour on 6 s windows: groups of six consecutive samples, none empty.
    t = started_at + 0.9 + 1.004 * np.arange(3580)
    hour = pd.DataFrame({"t": t, "cpu_busiest_percent": 50.0})
    drawn = charts.resample_frame(hour, started_at, started_at + 3600, window_s=6.0, how="max")
    assert len(drawn) == math.ceil(3580 / 6) <= charts.MAX_POINTS
    assert drawn["cpu_busiest_percent"].notna().all()


def test_an_hour_is_drawn_with_at_most_600_points() -> None:
    assert charts.choose_window_s(3600, 1.0) == 6.0
    assert charts.choose_window_s(60, 1.0) == 1.0
    assert charts.choose_window_s(7200, 5.0) == 15.0


# Headless Chromium over the DevTools protocol.

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-extensions", "--remote-debugging-port=0", "--window-size=1280,2000")
VIEWPORT = {"width": 1280, "height": 900}

INSPECT_JS = """(() => {
  const box = (e) => {
    const r = e.getBoundingClientRect(), s = getComputedStyle(e);
    return {width: r.width, height: r.height,
            shown: s.visibility !== 'hidden' && s.display !== 'none' && Number(s.opacity) > 0};
  };
  const banner = document.querySelector('#verdict');
  return {
    label: banner.querySelector('.verdict').textContent.trim(),
    verdict: banner.dataset.verdict,
    kpisTop: document.querySelector('#kpis').getBoundingClientRect().top,
    charts: [...document.querySelectorAll('svg.chart')].map(box),
    images: [...document.querySelectorAll('img')].map(
        (e) => ({...box(e), loaded: e.complete && e.naturalWidth > 0})),
    height: document.documentElement.scrollHeight,
  };
})()"""


class DevTools:
    """One page's DevTools websocket: commands by id, every event kept for later checks."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.last_id = 0
        self.events: list[dict[str, Any]] = []

    async def _receive(self) -> dict[str, Any]:
        message: dict[str, Any] = await asyncio.wait_for(self.ws.receive_json(), timeout=60)
        return message

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.last_id += 1
        await self.ws.send_json({"id": self.last_id, "method": method, "params": params})
        while True:
            message = await self._receive()
            if message.get("id") == self.last_id:
                assert "error" not in message, f"{method}: {message['error']}"
                result: dict[str, Any] = message["result"]
                return result
            self.events.append(message)

    async def wait_for(self, method: str) -> None:
        if any(event.get("method") == method for event in self.events):
            return
        while True:
            message = await self._receive()
            self.events.append(message)
            if message.get("method") == method:
                return

    def errors(self) -> list[str]:
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(json.dumps(params["exceptionDetails"])[:500])
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                found.append(json.dumps(params["args"])[:500])
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(params["entry"]["text"])
        return found

    def requests(self) -> list[str]:
        return [event["params"]["request"]["url"] for event in self.events
                if event.get("method") == "Network.requestWillBeSent"]


async def inspect_page(port: int, url: str, screenshot: Path) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        page = next(target for target in targets if target["type"] == "page")
        async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            tools = DevTools(ws)
            for domain in ("Runtime", "Log", "Page", "Network"):
                await tools.call(f"{domain}.enable")
            await tools.call("Emulation.setDeviceMetricsOverride", deviceScaleFactor=1,
                             mobile=False, **VIEWPORT)
            await tools.call("Page.navigate", url=url)
            await tools.wait_for("Page.loadEventFired")
            found = await tools.call("Runtime.evaluate", expression=INSPECT_JS,
                                     returnByValue=True)
            info: dict[str, Any] = found["result"]["value"]
            shot = await tools.call("Page.captureScreenshot", format="png",
                                    captureBeyondViewport=True,
                                    clip={"x": 0, "y": 0, "width": VIEWPORT["width"],
                                          "height": min(info["height"], 16000), "scale": 1})
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            info["errors"] = tools.errors()
            info["requests"] = tools.requests()
            return info


def open_in_chromium(html_path: Path, screenshot: Path) -> dict[str, Any]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: the report must be checked in a real browser. "
                    "Install Debian's chromium (apt-get install chromium); scripts/test.sh does.")
    with tempfile.TemporaryDirectory(prefix="perfkit-chromium-") as profile:
        proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                 "about:blank"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 60
            while not (port_file.exists() and port_file.read_text().strip()):
                assert proc.poll() is None, f"chromium exited with code {proc.returncode}"
                assert time.monotonic() < deadline, "chromium opened no DevTools port in 60 s"
                time.sleep(0.05)
            port = int(port_file.read_text().split()[0])
            return asyncio.run(inspect_page(port, html_path.as_uri(), screenshot))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def check_page(info: dict[str, Any], html: str, verdict: str) -> None:
    assert info["errors"] == []
    # Offline: nothing but the file itself (and data: URIs) is ever requested.
    assert all(url.startswith(("file:", "data:")) for url in info["requests"]), info["requests"]
    assert info["verdict"] == verdict and info["label"] == verdict.upper()
    assert info["kpisTop"] < VIEWPORT["height"]  # verdict, worst offender and KPIs first
    page = lxml.html.fromstring(html)
    assert len(info["charts"]) == len(charts_in(page)) > 0
    for chart in info["charts"] + info["images"]:
        assert chart["shown"] and chart["width"] > 200 and chart["height"] > 50, chart
    assert all(image["loaded"] for image in info["images"])


def test_real_run_report_in_chromium(tmp_path: Path) -> None:
    """A real short run of the bundled service; the banner agrees with the exit code."""
    run_dir = tmp_path / "real"
    done = subprocess.run(
        [sys.executable, "-m", "perfkit", "load", "--duration", "4s", "--users", "4", "--fast",
         "--out", str(run_dir)], capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    html_path = run_dir / "report.html"
    html = html_path.read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    # 4 users cannot reach the 50 RPS throughput target: exit code 1 and a FAIL banner.
    expected = {0: ("pass", "warn"), 1: ("fail",)}[done.returncode]
    assert summary["verdict"] in expected
    ARTIFACTS.mkdir(exist_ok=True)
    info = open_in_chromium(html_path, ARTIFACTS / "report-real-run.png")
    check_page(info, html, summary["verdict"])
    assert (ARTIFACTS / "report-real-run.png").stat().st_size > 10_000


def test_failing_synthetic_report_in_chromium(failing: Path, failing_html: str) -> None:
    html_path = failing / "report.html"
    html_path.write_text(failing_html)
    ARTIFACTS.mkdir(exist_ok=True)
    info = open_in_chromium(html_path, ARTIFACTS / "report-failing-synthetic.png")
    check_page(info, failing_html, "fail")
    assert len(info["images"]) == 1  # the profile
