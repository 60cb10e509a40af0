"""history.html: what it shows, from fixed data; its size at 1,000 runs; and the page of a
50-run history in a real headless Chromium (Debian's, driven by Playwright), hovered,
clicked through to a run's report, driven by keyboard and filtered.

The 50 runs are SIMULATED (tests/synthetic.py): run 31 on makes the results endpoint about
40 % slower, so the history has a known change point there."""

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lxml.html
import pytest

from perfkit.analysis.compare import TARGET
from perfkit.analysis.history import ChangePoint
from perfkit.history import import_runs, list_runs, load_series, open_history
from perfkit.kpi_file import load_kpi_targets
from perfkit.report import rebuild_report
from perfkit.report.history_html import (
    build_history_page,
    find_report_links,
    render_history_html,
)
from tests.synthetic import START_T, EndpointSpec, RunSpec, make_run, simulated_history

HEALTH = "GET /api/v1/health"
RESULTS = "GET /api/v1/research/products/{id}"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
DAY_S = 86_400
KEPT = (29, 30, 49)  # indices of the runs whose report.html is written
EXTERNAL = re.compile(r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?"""
                      r"""(?:https?:)?//|@import|fetch\(|XMLHttpRequest|new WebSocket""", re.I)


def page_data(page: str) -> dict[str, Any]:
    script = lxml.html.fromstring(page).get_element_by_id("history-data")
    data: dict[str, Any] = json.loads(script.text)
    return data


def test_kpi_levels_go_to_their_series_and_change_points_to_their_run(tmp_path: Path) -> None:
    runs = [{"run_id": f"r{i}", "started_at": START_T + i * DAY_S, "git_revision": f"c{i}",
             "variants": "n_plus_one" if i >= 6 else "", "verdict": "pass"} for i in range(10)]
    series = {("s", HEALTH, "p99_ms"): [(i, 40.0) for i in range(10)],
              ("s", HEALTH, "p50_ms"): [(i, 2.0) for i in range(10) if i != 4],
              ("s", RESULTS, "p50_ms"): [(i, 10.0 if i < 6 else 30.0) for i in range(2, 10)],
              ("s", TARGET, "rss_mb_peak"): [(i, 100.0 + i / 3) for i in range(10)]}
    cp = ChangePoint("s", RESULTS, "p50_ms", index=4, run_id="r6", previous_run_id="r5",
                     direction="regression", before=10.0, after=30.0, change_percent=200.0,
                     p_value=1e-9, runs_before=4, runs_after=4, revision_before="c5",
                     revision_after="c6")
    page = build_history_page(runs, series, [cp], load_kpi_targets(None),
                              ["../r0/report.html", *[None] * 9])
    by_key = {(s["endpoint"], s["metric"]): s for s in page["data"]["series"]}
    # the defaults: health p99 target 100 ms, allowed 200 ms; the RSS peak 1 GB (1024 MB)
    assert [(t["level"], t["value"]) for t in by_key[HEALTH, "p99_ms"]["thresholds"]] == [
        ("target", 100.0), ("allowed", 200.0)]
    assert [(t["level"], t["value"]) for t in by_key[TARGET, "rss_mb_peak"]["thresholds"]] == [
        ("allowed", 1024.0)]
    assert by_key[HEALTH, "p50_ms"]["thresholds"] == []
    # a series with a gap lists its runs; one without names its first
    assert by_key[HEALTH, "p50_ms"]["i"] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert by_key[RESULTS, "p50_ms"]["first"] == 2 and "i" not in by_key[RESULTS, "p50_ms"]
    # The change point's index is its place in the series (which starts at run 2): the run is 6
    changes = by_key[RESULTS, "p50_ms"]["changes"]
    assert [(c["at"], c["direction"], c["commits"]) for c in changes] == [(6, "regression",
                                                                          "c5..c6")]
    assert page["data"]["series"][0]["endpoint"] == RESULTS  # changed series first
    assert by_key[TARGET, "rss_mb_peak"]["unit"] == "MB"
    assert page["data"]["runs"][0]["report"] == "../r0/report.html"
    assert page["data"]["runs"][6]["variants"] == "n_plus_one"
    assert page["reports"] == 1 and page["regressions"] == 1
    # the metric filter lists latencies, then the target's resources, each with its unit
    assert page["data"]["metrics"] == [("p50_ms", "p50 latency (ms)"),
                                       ("p99_ms", "p99 latency (ms)"),
                                       ("rss_mb_peak", "target RSS peak (MB)")]

    html = render_history_html(runs, series, [cp], load_kpi_targets(None),
                               ["../r0/report.html", *[None] * 9])
    assert page_data(html)["runs"][9]["when"] == "2025-12-05 04:06"
    tree = lxml.html.fromstring(html)
    rows = tree.xpath("//table[@id='series-table']/tbody/tr")
    assert len(rows) == 4
    assert [c.text_content() for c in rows[0].xpath("td")][:5] == [
        "s", RESULTS, "p50 latency (ms)", "8", "30"]
    assert "regression at r6 (+200.0 %)" in rows[0].text_content()
    assert "target 100, allowed 200" in tree.xpath("//tr[@data-metric='p99_ms']")[0].text_content()
    change = tree.xpath("//table[@id='change-table']/tbody/tr")[0].text_content()
    assert "r5 → r6" in change and "c5..c6" in change and "10 → 30" in change


def test_a_run_name_cannot_end_the_pages_script() -> None:
    runs = [{"run_id": "</script><script>alert(1)</script>", "started_at": START_T}]
    html = render_history_html(runs, {("s", HEALTH, "p50_ms"): [(0, 1.0)]}, [])
    assert "</script><script>alert(1)" not in html
    assert page_data(html)["runs"][0]["id"] == runs[0]["run_id"]


def test_report_links_are_relative_and_only_where_the_report_is(tmp_path: Path) -> None:
    kept, gone = tmp_path / "runs" / "kept run", tmp_path / "runs" / "gone"
    kept.mkdir(parents=True)
    gone.mkdir()
    (kept / "report.html").write_text("<!doctype html>")
    out = tmp_path / "pages" / "history"
    runs = [{"source": str(kept)}, {"source": str(gone)}, {"source": None}]
    assert find_report_links(runs, out) == ["../../runs/kept%20run/report.html", None, None]


@pytest.mark.parametrize("endpoints", [4, 10])
def test_a_history_of_1000_runs_stays_under_3_mb(endpoints: int) -> None:
    runs, series = simulated_history(1000, endpoints)
    links = [f"../{run['run_id']}/report.html" for run in runs]
    html = render_history_html(runs, series, [], load_kpi_targets(None), links)
    size_mb = len(html.encode()) / 1e6
    assert size_mb < 3.0, size_mb
    data = page_data(html)
    assert len(data["runs"]) == 1000 and len(data["series"]) == len(series)
    assert all(len(s["v"]) == 1000 and s["first"] == 0 for s in data["series"])
    assert not EXTERNAL.search(html)


# The page in Chromium.

@pytest.fixture(scope="module")
def fifty_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """50 simulated runs a day apart, imported into a SQLite history with perfkit's own
    import; the results endpoint 40 % slower from run 31 (the n_plus_one variant); report.html
    written for three of them (runs 30, 31, 50), the others' reports not kept."""
    root = tmp_path_factory.mktemp("history50")
    dirs = []
    for k in range(50):
        endpoints = {HEALTH: EndpointSpec(rps=20, median_ms=3),
                     RESULTS: EndpointSpec(rps=10, median_ms=30 if k < 30 else 42)}
        run_dir = root / "runs" / f"run-{k + 1:03d}"
        make_run(run_dir, RunSpec(duration_s=10, endpoints=endpoints, job_completion_s=None,
                                  with_app=False, start_t=START_T + k * DAY_S, seed=k,
                                  git_revision=f"{(k + 1) * 7919:07x}",
                                  variants=("n_plus_one",) if k >= 30 else ()))
        dirs.append(run_dir)
    for k in KEPT:
        rebuild_report(dirs[k])
    import_runs(open_history(root / "history.db"), dirs)
    return root, dirs


@pytest.fixture(scope="module")
def history_page(fifty_runs: tuple[Path, list[Path]]) -> Path:
    """history.html as `perfkit history analyze` writes it, with a KPI file whose p95 target
    for the results endpoint lies among its values."""
    root, _ = fifty_runs
    kpi = root / "kpi.toml"
    kpi.write_text(f'[[kpi]]\nname = "results p95"\nmetric = "p95_ms"\nendpoint = "{RESULTS}"\n'
                   'target = "70ms"\nallowed = "90ms"\n')
    out = root / "pages"
    done = subprocess.run([sys.executable, "-m", "perfkit", "history", "analyze", "--history",
                           str(root / "history.db"), "--kpi", str(kpi), "--out", str(out)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PERFKIT_HISTORY": "off"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "regression  research GET /api/v1/research/products/{id} p50_ms" in done.stdout
    return out / "history.html"


@pytest.fixture
def page(browser: Any, history_page: Path) -> Iterator[Any]:
    """history.html open at 1280x900; every request and page error kept for the checks."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.requests, opened.errors = [], []
    opened.on("request", lambda request: opened.requests.append(request.url))
    opened.on("pageerror", lambda error: opened.errors.append(str(error)))
    opened.on("console", lambda message: opened.errors.append(message.text)
              if message.type == "error" else None)
    opened.goto(history_page.as_uri())
    yield opened
    assert opened.errors == []
    # Self-contained: nothing but files on this machine is ever requested.
    assert all(url.startswith("file:") for url in opened.requests), opened.requests
    context.close()


def chart(page: Any, endpoint: str, label: str) -> Any:
    return page.locator("figure.chart").filter(has_text=f"{endpoint} — {label}")


def point_position(page: Any, figure: Any, k: int) -> tuple[float, float]:
    """Where the k-th dot of a chart is drawn on the screen (from its path's own data)."""
    position: tuple[float, float] = figure.locator("svg").evaluate(
        """(svg, k) => {
             const d = svg.querySelector('path.dots').getAttribute('d');
             const [x, y] = d.split('M').filter(Boolean)[k].replace('h0', '').split(',')
               .map(Number);
             const p = new DOMPoint(x, y).matrixTransform(svg.getScreenCTM());
             return [p.x, p.y];
           }""", k)
    return position


def history_values(root: Path, run_id: str, endpoint: str, metric: str) -> float:
    store = open_history(root / "history.db")
    runs = list_runs(store)
    index = [run["run_id"] for run in runs].index(run_id)
    return dict(load_series(store, runs)["research", endpoint, metric])[index]


# The contrast of every piece of text with what is behind it (WCAG 2's formula): an HTML
# element's colour against its nearest background, an SVG text's fill against the chart's.
CONTRASTS_JS = """() => {
  const rgb = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => [r, g, b].map((v) => {
    v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  }).reduce((sum, v, k) => sum + v * [0.2126, 0.7152, 0.0722][k], 0);
  const background = (e) => {
    for (; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const found = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const e = node.parentElement;
    if (!node.textContent.trim() || !e.checkVisibility() || e.closest('script, .sr-only')) continue;
    const style = getComputedStyle(e);
    const fg = rgb(e instanceof SVGElement ? style.fill : style.color);
    const [a, b] = [lum(fg), lum(background(e))].sort((x, y) => y - x);
    found.push([(a + 0.05) / (b + 0.05), node.textContent.trim().slice(0, 40)]);
  }
  return found;
}"""


def test_the_page_shows_every_series_with_axes_levels_and_change_points(
        page: Any, fifty_runs: tuple[Path, list[Path]]) -> None:
    figures = page.locator("figure.chart")
    rows = page.locator("#series-table tbody tr")
    assert figures.count() == rows.count() == 20  # 2 endpoints x 9 metrics, CPU and RSS
    assert page.locator("#shown").inner_text() == "20 of 20 charts, runs 1–50 of 50"
    p50 = chart(page, RESULTS, "p50 latency (ms)")
    texts = p50.locator("svg text").all_text_contents()
    assert "ms" in texts and "2025-11-26" in texts and "#1" in texts and "#50" in texts
    assert any(re.fullmatch(r"▲ \+4\d\.\d %", text) for text in texts), texts
    assert "regression at run #31 (run-031)" in p50.locator("figcaption").inner_text()
    assert p50.locator("path.dots").get_attribute("d").count("M") == 50
    p95 = chart(page, RESULTS, "p95 latency (ms)")
    assert {"KPI target 70 ms", "KPI allowed 90 ms"} <= set(p95.locator("svg text")
                                                            .all_text_contents())
    # the health p99 target (100 ms) is far above its 3-ms values: named, not drawn
    health = chart(page, HEALTH, "p99 latency (ms)")
    assert "KPI target 100 ms: above the chart" in health.locator("figcaption").inner_text()
    assert figures.first.evaluate("e => e.getBoundingClientRect().width") > 500
    contrasts = page.evaluate(CONTRASTS_JS)
    assert len(contrasts) > 500  # every chart's labels, the tables' cells
    low = [(round(ratio, 2), text) for ratio, text in contrasts if ratio < 4.5]
    assert low == []  # WCAG AA for normal text
    # a phone's width: the charts shrink to it, wide tables scroll inside their own box
    page.set_viewport_size({"width": 400, "height": 800})
    assert page.evaluate("document.documentElement.scrollWidth") <= 400
    assert 300 < figures.first.evaluate("e => e.getBoundingClientRect().width") < 400


def test_hovering_a_point_names_its_run_and_a_click_opens_its_report(
        page: Any, fifty_runs: tuple[Path, list[Path]]) -> None:
    root, dirs = fifty_runs
    p50 = chart(page, RESULTS, "p50 latency (ms)")
    page.mouse.move(*point_position(page, p50, 30))
    tip = page.locator("#tip")
    assert tip.is_visible()
    value = history_values(root, "run-031", RESULTS, "p50_ms")
    assert tip.inner_text().splitlines() == [
        "#31 run-031", "2025-12-26 04:06 UTC", f"commit {31 * 7919:07x}",
        "variants: n_plus_one", f"p50 latency: {float(f'{value:.4g}'):g} ms", "verdict: pass",
        "click or Enter: open its report"]
    # the README's picture (docs/img/history.png is a copy)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "history.png")
    assert 10_000 < (ARTIFACTS / "history.png").stat().st_size < 300_000
    # a run whose report was not kept says so, and a click leaves the page where it is
    page.mouse.move(*point_position(page, p50, 10))
    assert tip.inner_text().splitlines()[0:2] == ["#11 run-011", "2025-12-06 04:06 UTC"]
    assert tip.inner_text().splitlines()[-1] == "report not kept"
    here = page.url
    page.mouse.click(*point_position(page, p50, 10))
    assert page.url == here
    page.mouse.click(*point_position(page, p50, 30))
    page.wait_for_url("**/run-031/report.html")
    assert page.url == (dirs[30] / "report.html").as_uri()
    assert "run-031" in page.locator("body").inner_text()


def test_a_chart_is_read_and_opened_by_keyboard(
        page: Any, fifty_runs: tuple[Path, list[Path]]) -> None:
    _, dirs = fifty_runs
    page.locator("#f-changed").focus()
    page.keyboard.press("Tab")  # the first chart: a changed one
    focused = page.evaluate("document.activeElement.closest('figure').querySelector('h3')"
                            ".textContent")
    assert RESULTS in focused
    assert page.locator("#tip").inner_text().startswith("#50 run-050")
    page.keyboard.press("ArrowLeft")
    assert page.locator("#tip").inner_text().startswith("#49 run-049")
    assert page.locator("#announce").inner_text().startswith("run 49 of 50, run-049")
    page.keyboard.press("Home")
    assert page.locator("#tip").inner_text().startswith("#1 run-001")
    page.keyboard.press("End")
    page.keyboard.press("Enter")
    page.wait_for_url("**/run-050/report.html")
    assert page.url == (dirs[49] / "report.html").as_uri()


def test_filters_and_the_numbers_in_tables(page: Any,
                                           fifty_runs: tuple[Path, list[Path]]) -> None:
    root, _ = fifty_runs
    page.select_option("#f-endpoint", HEALTH)
    titles = page.locator("figure.chart h3").all_inner_texts()
    assert len(titles) == 9 and all(HEALTH in title for title in titles)
    visible = page.locator("#series-table tbody tr:visible td:nth-child(2)").all_inner_texts()
    assert visible == [HEALTH] * 9
    page.select_option("#f-metric", "p95_ms")
    assert page.locator("figure.chart h3").all_inner_texts() == [
        f"research · {HEALTH} — p95 latency (ms)"]
    page.select_option("#f-newest", "20")
    assert page.locator("#shown").inner_text() == "1 of 20 charts, runs 31–50 of 50"
    figure = page.locator("figure.chart")
    assert figure.locator("path.dots").get_attribute("d").count("M") == 20
    figure.locator("summary").click()
    figure.locator("table tbody tr").first.wait_for()  # built when the details open
    cells = figure.locator("table tbody tr").first.locator("td").all_inner_texts()
    value = history_values(root, "run-031", HEALTH, "p95_ms")
    assert cells == ["31", "run-031", "2025-12-26 04:06", f"{31 * 7919:07x}", "n_plus_one",
                     "pass", f"{float(f'{value:.4g}'):g}", "report"]
    assert figure.locator("table tbody tr").count() == 20
    assert figure.locator("table tbody tr").nth(1).locator("td").last.inner_text() == (
        "report not kept")
    page.select_option("#f-endpoint", "")
    page.select_option("#f-metric", "")
    page.check("#f-changed")
    assert {title.split(" — ")[0] for title in page.locator("figure.chart h3")
            .all_inner_texts()} == {f"research · {RESULTS}"}


def test_a_thousand_runs_in_chromium(browser: Any, tmp_path: Path) -> None:
    """1,000 runs: every chart drawn with a point per run and a rolling median, the newest
    100 a click away, a run found by keyboard."""
    runs, series = simulated_history(1000, 4)
    gap = series["research", TARGET, "rss_mb_peak"]
    gap.pop(500)  # a run that recorded no RSS
    path = tmp_path / "history.html"
    path.write_text(render_history_html(runs, series, [], load_kpi_targets(None),
                                        [None] * len(runs)))
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.goto(path.as_uri())
    figures = opened.locator("figure.chart")
    assert figures.count() == len(series) == 38
    first = figures.first
    assert first.locator("path.dots").get_attribute("d").count("M") == 1000
    assert "line: rolling median of 21 runs" in first.locator("figcaption").inner_text()
    rss = opened.locator("figure.chart").filter(has_text="target RSS peak")
    assert rss.locator("path.dots").get_attribute("d").count("M") == 999
    opened.select_option("#f-newest", "100")
    assert first.locator("path.dots").get_attribute("d").count("M") == 100
    assert "rolling median" not in first.locator("figcaption").inner_text()
    first.locator("svg").focus()
    opened.keyboard.press("Home")
    assert opened.locator("#tip").inner_text().startswith("#901 2026-0900-load-research")
    assert errors == []
    context.close()
