"""Performance history: the numbers a run leaves in the history store, change points in their
series over time, and the verdict of interleaved A/B trials (docs/regression.md, "History"
and "Interleaved A/B trials").

Pure computation on data in memory; the store is perfkit.history, the A/B driver
perfkit.run.ab, the pages perfkit.report.history_html.

Change points: ruptures' PELT with a linear kernel (least squares on the log of the series,
exact segmentation, C implementation) proposes breaks with a penalty scaled by the series' own
noise; each break is kept only when the runs on both sides of it differ by more than a
practical threshold and a Welch t-test finds the difference significant, as Apache Otava
(E-Divisive means with a t-test) does. Otava and MongoDB's signal_processing_algorithms pin
numpy < 2.3 and < 2 and cannot be installed beside perfkit's numpy 2.4 (docs/regression.md).
"""

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..result import RunResult
from . import stats
from .compare import ENDPOINT_METRICS, RESOURCE_METRICS, TARGET
from .kpi import judged_window, summarize_judged

# metric -> higher is worse; the metrics whose series are searched for change points
TRACKED_METRICS: dict[str, bool] = {
    **{key: worse for key, (_, worse, _) in ENDPOINT_METRICS.items()},
    "mean_ms": True,
    **{key: worse for key, (_, worse, _) in RESOURCE_METRICS.items()},
}
# also stored, not searched: counts and rates that follow the offered load
STORED_ENDPOINT_KEYS = ("count", "failures", "rps", "error_rate_percent", "p50_ms", "p95_ms",
                        "p99_ms", "mean_ms", "max_ms")


def run_metrics(run: RunResult) -> list[tuple[str, str, float]]:
    """(endpoint, metric, value) of a run's judged window: summary.json's per-endpoint numbers
    and the target's CPU mean and RSS peak (named as in compare). Not measured: left out."""
    summaries = run.endpoints or summarize_judged(run)
    rows: list[tuple[str, str, float]] = []
    for name, summary in summaries.items():
        for key in STORED_ENDPOINT_KEYS:
            value = summary.get(key)
            if value is not None and math.isfinite(float(value)):
                rows.append((str(name), key, float(value)))
    resources = run.resources
    if resources is not None and len(resources) and "t" in resources:
        start, end = judged_window(run)
        window = resources[(resources["t"] >= start) & (resources["t"] <= end)]
        for metric, (column, _, _) in RESOURCE_METRICS.items():
            if column not in window:
                continue
            values = window[column].dropna()
            if values.empty:
                continue
            value = float(values.max() if metric.endswith("_peak") else values.mean())
            rows.append((TARGET, metric, value))
    return rows


@dataclass(frozen=True)
class ChangePointSettings:
    min_change: float = 0.10       # practical threshold: relative change of the segment means
    alpha: float = 0.01            # Welch t-test on the logs, per break
    min_runs: int = 4              # runs on each side of a break
    penalty: float = 3.0           # PELT penalty per break, in units of noise variance × ln n
    metrics: tuple[str, ...] = ("p50_ms", "p95_ms", "p99_ms", "rps", "cpu_percent_mean",
                                "rss_mb_peak")


@dataclass
class ChangePoint:
    scenario: str
    endpoint: str
    metric: str
    index: int                 # position of the first run after the change in the series
    run_id: str                # first run after the change
    previous_run_id: str       # last run before it
    direction: str             # "regression" | "improvement"
    before: float              # mean of the segment before
    after: float               # mean of the segment after
    change_percent: float      # (after / before - 1) × 100
    p_value: float
    runs_before: int
    runs_after: int
    revision_before: str | None = None
    revision_after: str | None = None


def find_breaks(values: np.ndarray, settings: ChangePointSettings) -> list[int]:
    """Indices where a new level starts (each a PELT break confirmed by threshold and t-test)."""
    import ruptures

    n = len(values)
    if n < 2 * settings.min_runs or np.any(~np.isfinite(values)):
        return []
    positive = bool(np.all(values > 0))
    series = np.log(values) if positive else values / max(float(np.mean(np.abs(values))), 1e-12)
    noise = _noise_sd(series)
    scaled = (series - series.mean()) / noise
    algo = ruptures.KernelCPD(kernel="linear", min_size=settings.min_runs, jump=1)
    candidates = algo.fit(scaled.reshape(-1, 1)).predict(pen=settings.penalty * math.log(n))
    bounds = [0, *[int(c) for c in candidates]]
    if bounds[-1] != n:
        bounds.append(n)
    kept: list[int] = []
    # Each break is judged between its neighbours; dropping one merges its two segments, so
    # judge again until every remaining break holds.
    while True:
        inner = bounds[1:-1]
        failing = [b for i, b in enumerate(inner)
                   if not _break_holds(values, bounds[i], b, bounds[i + 2], settings)]
        if not failing:
            kept = inner
            break
        bounds.remove(failing[0])
    return kept


def _noise_sd(series: np.ndarray) -> float:
    """Run-to-run noise from successive differences (a level shift moves one difference only):
    median absolute difference / (0.6745 √2), floored at 0.1 %."""
    if len(series) < 3:
        return 1e-3
    diffs = np.abs(np.diff(series))
    return max(float(np.median(diffs)) / (0.6745 * math.sqrt(2.0)), 1e-3)


def _break_holds(values: np.ndarray, start: int, at: int, end: int,
                 settings: ChangePointSettings) -> bool:
    before, after = values[start:at], values[at:end]
    if len(before) < settings.min_runs or len(after) < settings.min_runs:
        return False
    mean_before, mean_after = float(before.mean()), float(after.mean())
    if mean_before == 0 or abs(mean_after / mean_before - 1.0) < settings.min_change:
        return False
    return welch_p_value(_logs(before), _logs(after)) < settings.alpha


def _logs(values: np.ndarray) -> np.ndarray:
    """Latencies vary by factors: compare their logs (values ≤ 0 as they are)."""
    return np.log(values) if bool(np.all(values > 0)) else values


def _t_sf(t: float, df: float) -> float:
    from scipy.stats import t as student_t

    return float(student_t.sf(t, df))


def welch_p_value(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of Welch's t-test; 0 for two different constant samples."""
    var_a, var_b = float(np.var(a, ddof=1)), float(np.var(b, ddof=1))
    se2 = var_a / len(a) + var_b / len(b)
    diff = float(np.mean(b) - np.mean(a))
    if se2 <= 0:
        return 0.0 if diff else 1.0
    df = se2 ** 2 / ((var_a / len(a)) ** 2 / (len(a) - 1) + (var_b / len(b)) ** 2 / (len(b) - 1))
    return float(2.0 * _t_sf(abs(diff) / math.sqrt(se2), df))


def detect_change_points(runs: list[dict[str, Any]], series: dict[tuple[str, str, str],
                                                                  list[tuple[int, float]]],
                         settings: ChangePointSettings | None = None) -> list[ChangePoint]:
    """Change points of every (scenario, endpoint, metric) series. `runs` are the history's
    runs, oldest first (dicts with run_id and git_revision); `series` maps a key to
    (index in `runs`, value) pairs in run order."""
    settings = settings or ChangePointSettings()
    found: list[ChangePoint] = []
    for (scenario, endpoint, metric), points in sorted(series.items()):
        if metric not in settings.metrics or metric not in TRACKED_METRICS:
            continue
        indices = [i for i, _ in points]
        values = np.array([v for _, v in points], dtype=float)
        bounds = [0, *find_breaks(values, settings), len(values)]
        for k in range(1, len(bounds) - 1):
            start, at, end = bounds[k - 1], bounds[k], bounds[k + 1]
            before, after = values[start:at], values[at:end]
            mean_before, mean_after = float(before.mean()), float(after.mean())
            worse = (mean_after > mean_before) == TRACKED_METRICS[metric]
            run_after, run_before = runs[indices[at]], runs[indices[at - 1]]
            found.append(ChangePoint(
                scenario=scenario, endpoint=endpoint, metric=metric, index=at,
                run_id=str(run_after["run_id"]), previous_run_id=str(run_before["run_id"]),
                direction="regression" if worse else "improvement",
                before=mean_before, after=mean_after,
                change_percent=(mean_after / mean_before - 1.0) * 100.0,
                p_value=welch_p_value(_logs(before), _logs(after)), runs_before=len(before),
                runs_after=len(after), revision_before=run_before.get("git_revision"),
                revision_after=run_after.get("git_revision")))
    return found


def regressions_in_newest(change_points: list[ChangePoint], runs: list[dict[str, Any]],
                          newest: int) -> list[ChangePoint]:
    """The regression change points whose first run after the change is among the newest
    `newest` runs of the history."""
    recent = {str(run["run_id"]) for run in runs[-newest:]} if newest > 0 else set()
    return [cp for cp in change_points if cp.direction == "regression" and cp.run_id in recent]


# Interleaved A/B trials: the runs are the samples.

AB_METRICS = ("p50_ms", "p95_ms")


@dataclass(frozen=True)
class TrialSettings:
    threshold: float = 0.10
    confidence: float = 0.95       # for the comparison as a whole (Bonferroni over metrics)
    metrics: tuple[str, ...] = AB_METRICS
    min_requests: int = 5          # beyond the percentile, per run (as compare)


@dataclass
class TrialMetric:
    endpoint: str
    metric: str
    a_values: list[float]
    b_values: list[float]
    ratio: float | None            # geometric mean of B/A over the pairs
    ci_low: float | None
    ci_high: float | None
    p_value: float | None          # paired t-test on log(B/A)
    threshold: float
    verdict: str                   # regressed, improved, unchanged, inconclusive, missing
    note: str = ""


@dataclass
class TrialVerdict:
    # "regression" | "no regression" | "inconclusive" | "not judged" (no pair was measured)
    outcome: str
    pairs: int
    confidence: float
    threshold: float
    metrics: list[TrialMetric] = field(default_factory=list)

    @property
    def regressed(self) -> list[TrialMetric]:
        return [m for m in self.metrics if m.verdict == "regressed"]

    @property
    def regressed_endpoints(self) -> list[str]:
        return list(dict.fromkeys(m.endpoint for m in self.regressed))


def judge_trials(pairs: list[tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]],
                 settings: TrialSettings | None = None) -> TrialVerdict:
    """Verdict of interleaved A/B trials from each pair's endpoint summaries (A's, B's).

    Each pair ran back to back on the same machine, so the paired difference of the logs
    cancels the machine's slow drift; the spread of those differences between pairs is the
    run-to-run noise the verdict is judged against (a paired t interval on log(B/A) with
    pairs − 1 degrees of freedom). A metric regressed when the ratio is beyond the threshold
    and its interval lies wholly above 1 at the family-wise confidence.
    """
    settings = settings or TrialSettings()
    endpoints = sorted(set.intersection(*[set(a) & set(b) for a, b in pairs])) if pairs else []
    candidates: list[tuple[str, str, list[float], list[float], str]] = []
    for endpoint in endpoints:
        for metric in settings.metrics:
            a_values, b_values, note = _paired_values(pairs, endpoint, metric, settings)
            candidates.append((endpoint, metric, a_values, b_values, note))
    judged = sum(1 for *_, note in candidates if not note)
    level = stats.family_confidence(settings.confidence, judged)
    metrics = [_judge_metric(endpoint, metric, a, b, note, level, settings)
               for endpoint, metric, a, b, note in candidates]
    # A metric with too few requests is listed, not decisive: an endpoint the scenario calls
    # twice a run cannot make every trial inconclusive.
    decisive = [m for m in metrics if not m.note]
    outcome = "no regression"
    if not pairs:
        outcome = "not judged"
    elif any(m.verdict == "regressed" for m in metrics):
        outcome = "regression"
    elif not decisive or any(m.verdict != "unchanged" and m.verdict != "improved"
                             for m in decisive):
        outcome = "inconclusive"
    return TrialVerdict(outcome=outcome, pairs=len(pairs), confidence=settings.confidence,
                        threshold=settings.threshold, metrics=metrics)


def _paired_values(pairs: list[tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]],
                   endpoint: str, metric: str,
                   settings: TrialSettings) -> tuple[list[float], list[float], str]:
    percentile = ENDPOINT_METRICS.get(metric, (None, True, ""))[0]
    needed = (math.ceil(settings.min_requests / (1.0 - percentile / 100.0))
              if percentile is not None else 1)
    a_values: list[float] = []
    b_values: list[float] = []
    note = ""
    for a, b in pairs:
        va, vb = a[endpoint].get(metric), b[endpoint].get(metric)
        counts = min(int(a[endpoint].get("count") or 0), int(b[endpoint].get("count") or 0))
        if va is None or vb is None or va <= 0 or vb <= 0:
            note = f"{metric} not measured in every run"
            continue
        if counts < needed:
            note = f"too few requests to judge {metric} ({counts} < {needed} in a run)"
        a_values.append(float(va))
        b_values.append(float(vb))
    if len(a_values) < 2:
        note = note or "fewer than 2 pairs"
    return a_values, b_values, note


def _judge_metric(endpoint: str, metric: str, a_values: list[float], b_values: list[float],
                  note: str, level: float, settings: TrialSettings) -> TrialMetric:
    higher_is_worse = TRACKED_METRICS.get(metric, True)
    result = TrialMetric(endpoint, metric, a_values, b_values, None, None, None, None,
                         settings.threshold, "missing", note)
    if len(a_values) < 2:
        return result
    diffs = np.log(np.array(b_values)) - np.log(np.array(a_values))
    n = len(diffs)
    mean, sd = float(diffs.mean()), float(diffs.std(ddof=1))
    result.ratio = math.exp(mean)
    if note:
        result.verdict = "inconclusive"
        return result
    half = stats.t_quantile(1.0 - (1.0 - level) / 2.0, n - 1) * sd / math.sqrt(n)
    result.ci_low, result.ci_high = math.exp(mean - half), math.exp(mean + half)
    result.p_value = (float(2.0 * _t_sf(abs(mean) / (sd / math.sqrt(n)), n - 1))
                      if sd > 0 else (0.0 if mean else 1.0))
    result.verdict = stats.judge_ratio(result.ratio, result.ci_low, result.ci_high,
                                       result.p_value, 1.0 if mean > 0 else 0.0,
                                       settings.threshold, level, higher_is_worse)
    return result


def trial_order(repeat: int) -> list[str]:
    """A B B A A B …: pairs alternate which arm goes first, so neither always runs second."""
    return [arm for i in range(repeat) for arm in (("A", "B") if i % 2 == 0 else ("B", "A"))]


def ab_exit_code(verdict: TrialVerdict, fail_on_inconclusive: bool) -> int:
    """1 on a regression (or, in a strict gate, when the trials could not tell), 3 when no
    pair was measured (nothing to judge), else 0."""
    if verdict.outcome == "not judged":
        return 3
    if verdict.outcome == "regression":
        return 1
    return 1 if verdict.outcome == "inconclusive" and fail_on_inconclusive else 0
