"""Compare runs: per endpoint and per target resource, baseline against current, with a verdict
that needs both a practical threshold and statistical evidence (docs/regression.md), and that
knows what else the machine was doing (perfkit.analysis.environment).

The evidence is the noise within the runs (a block bootstrap over time), or, for a baseline of
several runs, the spread between the runs (a t interval on per-run values). Pure computation
on loaded runs; writing the artefacts is perfkit.report.compare_html's job.
"""

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

from ..errors import ConfigError
from ..result import RunResult
from . import stats
from .environment import check_environment, summarize_environment
from .kpi import judged_window

# metric key -> (percentile or None, higher is worse, unit)
ENDPOINT_METRICS: dict[str, tuple[float | None, bool, str]] = {
    "p50_ms": (50.0, True, "ms"),
    "p95_ms": (95.0, True, "ms"),
    "p99_ms": (99.0, True, "ms"),
    "rps": (None, False, "req/s"),
}
# metric key (<resources.csv column>_<stat>, as the KPIs name them) -> (column, higher is
# worse, unit). cpu_percent is % of one core summed over the tree, not the KPIs'
# cpu_machine_percent: the ratio is the same, the numbers shown are not.
RESOURCE_METRICS: dict[str, tuple[str, bool, str]] = {
    "cpu_percent_mean": ("cpu_percent", True, "%"),
    "rss_mb_peak": ("rss_mb", True, "MB"),
}
METRIC_KEYS = (*ENDPOINT_METRICS, *RESOURCE_METRICS)
# The names before the resource metrics were named like the KPIs: `--threshold` still takes
# them, so existing CI jobs keep their thresholds.
RENAMED_METRICS = {"cpu_mean_percent": "cpu_percent_mean", "rss_peak_mb": "rss_mb_peak"}
TARGET = "target"  # the subject of resource metrics: the target's process tree

# A percentile is judged only when each side has at least this many requests beyond it;
# below that the bootstrap of a tail percentile is a bootstrap of a handful of maxima.
MIN_BEYOND_PERCENTILE = 5
# Long runs are cut into at most this many blocks, so the bootstrap stays fast.
MAX_BLOCKS = 600
# Between-run evidence needs a spread to estimate: two runs give one degree of freedom, whose
# t quantile at a family-wise level is in the hundreds.
MIN_BETWEEN_RUNS = 3
WITHIN_RUNS = "within runs"
BETWEEN_RUNS = "between runs"


@dataclass(frozen=True)
class CompareSettings:
    thresholds: dict[str, float] = field(default_factory=dict)  # metric key -> fraction
    default_threshold: float = 0.10
    confidence: float = 0.99
    resamples: int = 2000
    seed: int = 0
    warmup_s: float | None = None  # None: each run's own warm-up setting
    # Judge against the spread between the baseline's runs (at least MIN_BETWEEN_RUNS) rather
    # than the noise within them: what a baseline saved from several runs asks for.
    between_runs: bool = False

    def threshold_for(self, metric: str) -> float:
        return self.thresholds.get(metric, self.default_threshold)


@dataclass
class MetricComparison:
    subject: str          # endpoint name, or TARGET for resource metrics
    metric: str           # one of METRIC_KEYS
    unit: str
    higher_is_worse: bool
    baseline: float | None
    current: float | None
    ratio: float | None   # current / baseline
    ci_low: float | None
    ci_high: float | None
    p_value: float | None  # Mann-Whitney U on per-block values
    threshold: float
    verdict: str          # stats.VERDICTS
    note: str = ""
    evidence: str = WITHIN_RUNS  # or BETWEEN_RUNS: what the interval and p come from
    # Per-run values (between-run evidence only): baseline and current are their geometric
    # means, the ratio theirs.
    baseline_per_run: list[float] = field(default_factory=list)
    current_per_run: list[float] = field(default_factory=list)


@dataclass
class Comparison:
    scenario: str
    baseline_runs: list[str]
    current_runs: list[str]
    confidence: float
    resamples: int
    block_s: dict[str, float]  # "baseline" / "current" -> block length used
    metrics: list[MetricComparison]
    only_in_baseline: list[str]
    only_in_current: list[str]
    notes: list[str]
    evidence: str = WITHIN_RUNS
    # What else the machine was doing in each run and whether it explains a regression
    # (analysis.environment.check_environment); "explained" lists the metrics whose
    # regression it turned into inconclusive.
    environment: dict[str, Any] = field(default_factory=dict)

    @property
    def regressed(self) -> list[MetricComparison]:
        return [m for m in self.metrics if m.verdict == "regressed"]

    @property
    def regressed_subjects(self) -> list[str]:
        return list(dict.fromkeys(m.subject for m in self.regressed))


def parse_thresholds(texts: tuple[str, ...] | list[str]) -> tuple[float, dict[str, float]]:
    """'10%' sets the default, 'p99_ms=20%' one metric; returns (default, per metric)."""
    default, per_metric = 0.10, {}
    for text in texts:
        key, _, value = text.rpartition("=")
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%?\s*", value)
        if not match:
            raise ConfigError(f"bad threshold {text!r}: use e.g. 10% or p99_ms=20%")
        fraction = float(match.group(1)) / 100.0
        metric = RENAMED_METRICS.get(key.strip(), key.strip())
        if not key:
            default = fraction
        elif metric in METRIC_KEYS:
            per_metric[metric] = fraction
        else:
            raise ConfigError(f"bad threshold {text!r}: metric must be one of "
                              f"{', '.join(METRIC_KEYS)}")
    return default, per_metric


@dataclass
class _Side:
    """One side of the comparison (one or more pooled runs) cut into time blocks."""
    block_s: float
    latency: dict[str, list[list[str]]]     # name -> per block: encoded histograms
    resources: pd.DataFrame | None           # judged samples with a "block" column
    n_blocks: int
    blocks_per_run: list[int]


def _cut_blocks(runs: list[RunResult], warmup_s: float | None) -> _Side:
    """Blocks of whole buckets inside each run's judged window, runs appended one after the
    other (pooling runs: one longer sample of the same build)."""
    bucket_s = float(runs[0].meta.settings.bucket_s or 1.0)
    windows = [judged_window(run, warmup_s) for run in runs]
    total_buckets = sum(max(0, int((end - math.ceil(start)) // bucket_s)) for start, end in windows)
    block_s = bucket_s * max(1, math.ceil(total_buckets / MAX_BLOCKS))
    latency: dict[str, list[list[str]]] = {}
    resource_frames = []
    offset = 0
    blocks_per_run = []
    for run, (start, end) in zip(runs, windows, strict=True):
        t0 = math.ceil(start)
        n_blocks = max(0, int((end - t0) // block_s))
        blocks_per_run.append(n_blocks)
        rows = run.latency
        index = ((rows["t"] - t0) // block_s).astype(int) if len(rows) else pd.Series([], dtype=int)
        inside = (rows["t"] >= t0) & (index < n_blocks)
        for name in rows["name"].unique():
            latency.setdefault(str(name), [[] for _ in range(offset)])
        for name, blocks in latency.items():
            blocks.extend([] for _ in range(n_blocks))
            mine = rows[inside & (rows["name"] == name)]
            for block, encoded in zip(index[mine.index], mine["hist"], strict=True):
                blocks[offset + int(block)].append(encoded)
        if run.resources is not None and len(run.resources):
            res = run.resources
            block_index = ((res["t"] - t0) // block_s)
            keep = (res["t"] >= t0) & (block_index < n_blocks)
            frame = res.loc[keep, [c for c in ("cpu_percent", "rss_mb") if c in res]].copy()
            frame["block"] = block_index[keep].astype(int) + offset
            resource_frames.append(frame)
        offset += n_blocks
    for blocks in latency.values():
        blocks.extend([] for _ in range(offset - len(blocks)))
    resources = pd.concat(resource_frames, ignore_index=True) if resource_frames else None
    return _Side(block_s=block_s, latency=latency, resources=resources, n_blocks=offset,
                 blocks_per_run=blocks_per_run)


def _check_comparable(baselines: list[RunResult], currents: list[RunResult]) -> None:
    scenarios = {str(run.meta.scenario) for run in [*baselines, *currents]}
    if len(scenarios) > 1:
        raise ConfigError("cannot compare runs of different scenarios: "
                          + ", ".join(f"{run.run_dir} ran {run.meta.scenario!r}"
                                      for run in [*baselines, *currents]))
    for group, label in ((baselines, "baseline"), (currents, "current")):
        if not group:
            raise ConfigError(f"no {label} run to compare")


def _settings_notes(baselines: list[RunResult], currents: list[RunResult]) -> list[str]:
    notes = []
    base, cur = baselines[0].meta, currents[0].meta
    for key in ("users", "rate", "duration_s", "workers"):
        b, c = getattr(base.settings, key), getattr(cur.settings, key)
        if b != c:
            notes.append(f"settings differ: {key} baseline {b}, current {c}")
    # a target perfkit started itself gets a new port every run: that is no difference
    managed = base.target_managed and cur.target_managed
    keys = ("variants", "extra_latency", "latency_profile")
    for key in keys if managed else (*keys, "target"):
        b, c = getattr(base, key), getattr(cur, key)
        if b != c:
            notes.append(f"{key} differs: baseline {b}, current {c}")
    if base.machine.get("hostname") != cur.machine.get("hostname"):
        notes.append("the runs were made on different machines")
    for run in [*baselines, *currents]:
        if run.meta.status != "completed":
            notes.append(f"{run.run_dir} did not complete: {run.meta.status}")
        if (run.meta.loadgen or {}).get("saturated"):
            notes.append(f"{run.run_dir}: the load generator was saturated; its latencies are "
                         "not trustworthy")
    return notes


def compare_runs(baselines: list[RunResult], currents: list[RunResult],
                 settings: CompareSettings | None = None) -> Comparison:
    """Compare pooled baseline runs with pooled current runs (usually one of each)."""
    settings = settings or CompareSettings()
    _check_comparable(baselines, currents)
    base, cur = _cut_blocks(baselines, settings.warmup_s), _cut_blocks(currents, settings.warmup_s)
    base_names = {n for n, blocks in base.latency.items() if any(blocks)}
    cur_names = {n for n, blocks in cur.latency.items() if any(blocks)}
    common = sorted(base_names & cur_names)
    if not common:
        raise ConfigError("the runs share no endpoint: baseline has "
                          f"{', '.join(sorted(base_names)) or 'none'}; current has "
                          f"{', '.join(sorted(cur_names)) or 'none'}")
    if base.n_blocks < 2 or cur.n_blocks < 2:
        raise ConfigError("a run is too short to compare (fewer than 2 judged time buckets)")
    rng = np.random.default_rng(settings.seed)
    # float weights: numpy multiplies float matrices with BLAS, integer ones without
    base_weights = stats.bootstrap_weights(base.blocks_per_run, settings.resamples,
                                           rng).astype(float)
    cur_weights = stats.bootstrap_weights(cur.blocks_per_run, settings.resamples,
                                          rng).astype(float)
    evidence: list[_Evidence] = []
    for name in common:
        evidence.extend(_compare_endpoint(name, base, cur, base_weights, cur_weights, settings))
    evidence.extend(_compare_resources(base, cur, base_weights, cur_weights, settings))
    notes = _settings_notes(baselines, currents)
    between = settings.between_runs and len(baselines) >= MIN_BETWEEN_RUNS
    if settings.between_runs and not between:
        notes.append(f"between-run evidence needs a baseline of at least {MIN_BETWEEN_RUNS} "
                     f"runs (this one has {len(baselines)}): judged within runs")
    metrics = _judge_all(evidence, settings, between)
    environment = _check_environment(baselines, currents, settings, metrics)
    if environment["note"]:
        notes.append(environment["note"])
    return Comparison(
        scenario=str(baselines[0].meta.scenario),
        baseline_runs=[str(run.run_dir) for run in baselines],
        current_runs=[str(run.run_dir) for run in currents],
        confidence=settings.confidence,
        resamples=settings.resamples,
        block_s={"baseline": base.block_s, "current": cur.block_s},
        metrics=metrics,
        only_in_baseline=sorted(base_names - cur_names),
        only_in_current=sorted(cur_names - base_names),
        notes=notes,
        evidence=BETWEEN_RUNS if between else WITHIN_RUNS,
        environment=environment,
    )


def _check_environment(baselines: list[RunResult], currents: list[RunResult],
                       settings: CompareSettings,
                       metrics: list[MetricComparison]) -> dict[str, Any]:
    """The machine's other work in each run (over the judged windows compared); where the
    current runs ran beside materially more of it, every regression the machine can explain
    (up to its `explainable_ratio`) becomes inconclusive: the machine explains it as well as
    the change does. A larger one stays a regression; an improvement stays one."""
    def environments(runs: list[RunResult]) -> list[dict[str, Any] | None]:
        return [summarize_environment(run.resources, *judged_window(run, settings.warmup_s),
                                      (run.meta.machine or {}).get("cpu_count"))
                for run in runs]

    record = check_environment(environments(baselines), environments(currents),
                               ([run.run_id for run in baselines],
                                [run.run_id for run in currents]))
    if record["busier"] == "current":
        limit = record["explainable_ratio"]
        for m in metrics:
            if m.verdict != "regressed" or not m.ratio:
                continue
            slower = m.ratio if m.higher_is_worse else 1.0 / m.ratio
            if slower > limit:
                m.note = "; ".join(filter(None, [m.note, (
                    f"the machine was busier in the current run, but x{slower:.2f} is more "
                    f"than it explains (x{limit:.2f} at most)")]))
                record["unexplained"].append(f"{m.subject} {m.metric}")
                continue
            m.verdict = "inconclusive"
            m.note = "; ".join(filter(None, [m.note, "the machine was busier in the current "
                                             "run: not judged a regression"]))
            record["explained"].append(f"{m.subject} {m.metric}")
    return record


@dataclass
class _Evidence:
    """A metric's point estimates and what its verdict is judged on."""
    metric: MetricComparison
    base_boot: np.ndarray | None = None      # bootstrap replicates of the metric
    cur_boot: np.ndarray | None = None
    base_blocks: np.ndarray | None = None    # per-block values, for Mann-Whitney U
    cur_blocks: np.ndarray | None = None
    base_runs: np.ndarray | None = None      # per-run values, for between-run evidence
    cur_runs: np.ndarray | None = None

    @property
    def judgeable(self) -> bool:
        m = self.metric
        return (m.ratio is not None and not m.note and self.base_boot is not None
                and self.cur_boot is not None)


def _measure(subject: str, metric: str, unit: str, higher_is_worse: bool,
             baseline: float | None, current: float | None, settings: CompareSettings,
             note: str = "", **evidence: Any) -> _Evidence:
    ratio = current / baseline if baseline and current is not None else None
    return _Evidence(MetricComparison(
        subject, metric, unit, higher_is_worse, baseline, current, ratio, None, None, None,
        settings.threshold_for(metric), "missing", note), **evidence)


def _judge_all(evidence: list[_Evidence], settings: CompareSettings,
               between: bool) -> list[MetricComparison]:
    """Verdicts at a family-wise level: `confidence` holds for the comparison as a whole."""
    level = stats.family_confidence(settings.confidence, sum(e.judgeable for e in evidence))
    for e in evidence:
        m = e.metric
        prob_greater = None
        if e.judgeable and between and _positive(e.base_runs) and _positive(e.cur_runs):
            assert e.base_runs is not None and e.cur_runs is not None
            m.evidence = BETWEEN_RUNS
            m.baseline_per_run = [float(v) for v in e.base_runs]
            m.current_per_run = [float(v) for v in e.cur_runs]
            (m.baseline, m.current, m.ratio, m.ci_low, m.ci_high, m.p_value,
             prob_greater) = between_runs_interval(e.base_runs, e.cur_runs, level)
        elif e.judgeable and m.ratio is not None:
            assert e.base_boot is not None and e.cur_boot is not None
            if between:
                m.note = "judged within runs: a run has no value of its own"
            m.ci_low, m.ci_high = stats.ratio_interval(e.base_boot, e.cur_boot, m.ratio, level)
            if e.base_blocks is not None and e.cur_blocks is not None:
                m.p_value, prob_greater = stats.mann_whitney(e.cur_blocks, e.base_blocks)
        m.verdict = stats.judge_ratio(m.ratio, m.ci_low, m.ci_high, m.p_value, prob_greater,
                                      m.threshold, level, m.higher_is_worse)
    return [e.metric for e in evidence]


def _positive(values: np.ndarray | None) -> bool:
    return values is not None and values.size > 0 and bool(np.all(np.isfinite(values))
                                                           & np.all(values > 0))


def between_runs_interval(baseline: np.ndarray, current: np.ndarray, confidence: float
                          ) -> tuple[float, float, float, float, float, float, float]:
    """The current runs against the spread between runs, on the log scale: (baseline,
    current, ratio, ci_low, ci_high, p_value, prob_greater).

    baseline and current are the geometric means of the per-run values, ratio theirs. The
    interval is Student's t on the difference of mean logs with the runs' pooled variance
    (n + m - 2 degrees of freedom); for one current run it is the prediction interval of a new
    run from the baseline's runs, mean ± t·s·√(1 + 1/n). prob_greater is 1 or 0 by the sign
    of the difference: the t test is the significance, there is no second opinion to add."""
    logs_b, logs_c = np.log(baseline), np.log(current)
    n, m = logs_b.size, logs_c.size
    diff = float(logs_c.mean() - logs_b.mean())
    df = n + m - 2
    pooled = (float(((logs_b - logs_b.mean()) ** 2).sum() + ((logs_c - logs_c.mean()) ** 2).sum())
              / df)
    se = math.sqrt(pooled * (1.0 / n + 1.0 / m))
    half = float(student_t.ppf(0.5 + confidence / 2.0, df)) * se
    if se > 0:
        p_value = float(2.0 * student_t.sf(abs(diff) / se, df))
    else:  # identical runs on each side: any difference is certain, none is none
        p_value = 0.0 if diff else 1.0
    prob_greater = 0.5 if diff == 0 else float(diff > 0)
    return (math.exp(float(logs_b.mean())), math.exp(float(logs_c.mean())), math.exp(diff),
            math.exp(diff - half), math.exp(diff + half), p_value, prob_greater)


@dataclass
class _Latency:
    """One side's latency of one endpoint, ready for the bootstrap."""
    values_us: np.ndarray     # exact HdrHistogram cells
    counts: np.ndarray        # block × cell
    point_us: np.ndarray      # percentiles of the whole side
    boot_us: np.ndarray       # resample × percentile
    block_us: np.ndarray      # block × percentile (NaN for an empty block)
    block_totals: np.ndarray  # requests per block
    duration_s: float
    block_s: float
    run_us: np.ndarray        # run × percentile (NaN for a run without requests)
    run_rps: np.ndarray       # requests per second of each run (NaN for a run without blocks)


def _measure_latency(side: _Side, name: str, weights: np.ndarray) -> _Latency:
    percentiles = [p for p, _, _ in ENDPOINT_METRICS.values() if p is not None]
    values_us, counts = stats.block_counts(side.latency[name])
    bin_values, bin_counts = stats.coarsen_counts(values_us, counts)
    run_counts = _per_run(counts, side.blocks_per_run, np.sum)
    with np.errstate(divide="ignore", invalid="ignore"):
        run_rps = run_counts.sum(axis=1) / (np.asarray(side.blocks_per_run) * side.block_s)
    return _Latency(
        values_us=values_us, counts=counts,
        point_us=stats.percentiles_of_counts(values_us, counts.sum(axis=0), percentiles)[0],
        boot_us=stats.percentiles_of_counts(bin_values, weights @ bin_counts.astype(float),
                                            percentiles),
        block_us=stats.percentiles_of_counts(values_us, counts, percentiles),
        block_totals=counts.sum(axis=1).astype(float),
        duration_s=side.n_blocks * side.block_s, block_s=side.block_s,
        run_us=stats.percentiles_of_counts(values_us, run_counts, percentiles),
        run_rps=np.where(np.isfinite(run_rps), run_rps, np.nan))


def _per_run(per_block: np.ndarray, blocks_per_run: list[int], reduce: Any) -> np.ndarray:
    """Rows of per-block values (blocks × k, runs one after another) reduced per run:
    runs × k; a run without blocks reduces an empty array (sum 0, max NaN)."""
    rows, offset = [], 0
    for n in blocks_per_run:
        part = per_block[offset:offset + n].astype(float)
        with np.errstate(invalid="ignore"):
            rows.append(reduce(part, axis=0) if n else np.full(per_block.shape[1:], np.nan))
        offset += n
    return np.asarray(rows, dtype=float).reshape(len(blocks_per_run), *per_block.shape[1:])


def _compare_endpoint(name: str, base: _Side, cur: _Side, base_weights: np.ndarray,
                      cur_weights: np.ndarray, settings: CompareSettings) -> list[_Evidence]:
    b = _measure_latency(base, name, base_weights)
    c = _measure_latency(cur, name, cur_weights)
    b_total, c_total = int(b.block_totals.sum()), int(c.block_totals.sum())
    results = []
    column = 0
    for metric, (percentile, higher_is_worse, unit) in ENDPOINT_METRICS.items():
        if percentile is None:
            results.append(_measure(
                name, metric, unit, higher_is_worse, b_total / b.duration_s,
                c_total / c.duration_s, settings,
                # a resample of runs of unequal length covers its own length of time
                base_boot=(base_weights @ b.block_totals) / (base_weights.sum(axis=1) * b.block_s),
                cur_boot=(cur_weights @ c.block_totals) / (cur_weights.sum(axis=1) * c.block_s),
                base_blocks=b.block_totals / b.block_s, cur_blocks=c.block_totals / c.block_s,
                base_runs=b.run_rps, cur_runs=c.run_rps))
            continue
        needed = math.ceil(MIN_BEYOND_PERCENTILE / (1.0 - percentile / 100.0))
        note = ""
        if min(b_total, c_total) < needed:
            note = f"too few requests to judge {metric} ({min(b_total, c_total)} < {needed})"
        b_point, c_point = b.point_us[column], c.point_us[column]
        results.append(_measure(
            name, metric, unit, higher_is_worse,
            None if math.isnan(b_point) else float(b_point) / 1000.0,
            None if math.isnan(c_point) else float(c_point) / 1000.0, settings, note,
            base_boot=b.boot_us[:, column], cur_boot=c.boot_us[:, column],
            base_blocks=b.block_us[:, column], cur_blocks=c.block_us[:, column],
            base_runs=b.run_us[:, column] / 1000.0, cur_runs=c.run_us[:, column] / 1000.0))
        column += 1
    return results


def _resource_blocks(side: _Side, column: str, metric: str) -> pd.DataFrame | None:
    if side.resources is None or column not in side.resources:
        return None
    samples = side.resources[["block", column]].dropna()
    if samples.empty:
        return None
    how = "max" if metric.endswith("_peak") else "sum"
    grouped = samples.groupby("block")[column].agg([how, "count"])
    return grouped.reindex(range(side.n_blocks))


def _compare_resources(base: _Side, cur: _Side, base_weights: np.ndarray,
                       cur_weights: np.ndarray, settings: CompareSettings) -> list[_Evidence]:
    results = []
    for metric, (column, higher_is_worse, unit) in RESOURCE_METRICS.items():
        points: list[float | None] = []
        boots: list[np.ndarray | None] = []
        per_block: list[np.ndarray] = []
        per_run: list[np.ndarray | None] = []
        for side, weights in ((base, base_weights), (cur, cur_weights)):
            blocks = _resource_blocks(side, column, metric)
            if blocks is None:
                points.append(None)
                boots.append(None)
                per_block.append(np.array([]))
                per_run.append(None)
                continue
            present = blocks["count"].fillna(0).to_numpy()
            if metric.endswith("_peak"):
                peaks = blocks["max"].to_numpy(dtype=float)
                points.append(float(np.nanmax(peaks)))
                drawn = np.where((weights > 0) & (present > 0), peaks[None, :], -np.inf)
                boot = drawn.max(axis=1)
                boots.append(np.where(np.isfinite(boot), boot, np.nan))
                per_block.append(peaks[present > 0])
                # blocks without samples are NaN: out of the max (nanmax warns on a run of
                # them), and a run with none is NaN again
                run_peaks = _per_run(np.where(np.isnan(peaks), -np.inf, peaks),
                                     side.blocks_per_run, np.max)
                per_run.append(np.where(np.isfinite(run_peaks), run_peaks, np.nan))
            else:
                sums = blocks["sum"].fillna(0).to_numpy(dtype=float)
                points.append(float(sums.sum() / present.sum()))
                with np.errstate(divide="ignore", invalid="ignore"):
                    boots.append((weights @ sums) / (weights @ present))
                    per_block.append((sums / present)[present > 0])
                    per_run.append(_per_run(sums, side.blocks_per_run, np.sum)
                                   / _per_run(present, side.blocks_per_run, np.sum))
        note = "" if None not in points else "not measured in both runs"
        results.append(_measure(TARGET, metric, unit, higher_is_worse, points[0], points[1],
                                settings, note, base_boot=boots[0], cur_boot=boots[1],
                                base_blocks=per_block[0], cur_blocks=per_block[1],
                                base_runs=per_run[0], cur_runs=per_run[1]))
    return results


def comparison_record(comparison: Comparison) -> dict[str, Any]:
    """compare.json: the comparison as it is, plus the headline."""
    from dataclasses import asdict

    record = asdict(comparison)
    record["regression"] = bool(comparison.regressed)
    record["regressed_endpoints"] = comparison.regressed_subjects
    return record
