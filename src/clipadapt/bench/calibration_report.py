"""The calibration and effective-robustness section of ``clipadapt report``.

Calibration (closed-set results; conventions in ``clipadapt.calibration.CONVENTIONS``): per
source, method and shot count, ECE (%), adaptive ECE (%), Brier and NLL per target, before
(``raw``) and after temperature scaling (``T``: one temperature per run, fitted on the
source's few-shot validation set and applied unchanged to every target, so the shifted
targets show how a source-calibrated temperature holds under shift); mean ± sample std over
seeds. "shifted" is, per run, the mean over the targets other than the in-domain one (the
other domains for single_source, novel classes for base_to_novel), then mean ± std over
seeds. Reliability diagrams, one figure per method at the largest shot count: in-domain and
the pool of the shifted targets, before and after scaling, with the bins' image counts,
confidences and right answers summed over seeds (and shifted targets), so a panel's ECE is
that of the pooled images, not a mean over runs.

Effective robustness (single_source): per run, in-domain acc1 against the mean acc1 over the
other domains. The baseline is the least-squares line, in logit space (``logit(acc)`` with
accuracies clipped to [0.001, 0.999]), through these points of the same source: zero-shot
(one point: the mean over its runs, which do not depend on shots or seed) and linear_probe at
each shot count (mean over seeds); with exactly two points it is the line through them. A
run's effective robustness is its shifted accuracy minus the line's prediction at its
in-domain accuracy, mapped back to accuracy: percentage points of linear accuracy (Taori et
al. 2020, "Measuring robustness to natural distribution shifts"); mean ± std over seeds.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from clipadapt.bench import plots
from clipadapt.bench.aggregate import method_label, ordered, source_label
from clipadapt.bench.plots import LOGIT_CLIP
from clipadapt.bench.protocols import BASE, IN_DOMAIN, OTHERS_MEAN
from clipadapt.bench.tables import Table, fmt
from clipadapt.methods import METHODS
from clipadapt.pipeline.results import CLASSIFICATION_TASK, RunResult

RAW, SCALED = "uncalibrated", "temperature_scaled"
SCALING_SHORT = {RAW: "raw", SCALED: "T"}
METRIC_TITLES = {
    "ece": "ECE (%)",
    "adaptive_ece": "adaptive ECE (%)",
    "brier": "Brier",
    "nll": "NLL",
}
PERCENT_METRICS = ("ece", "adaptive_ece")
IN_DOMAIN_ROLES = (IN_DOMAIN, BASE)
SHIFTED = "shifted"  # the mean (tables) or pool (diagrams) of the non-in-domain targets
BASELINE_METHODS = ("zeroshot", "linear_probe")
CALIBRATION_NOTE = (
    "ECE: 15 equal-width bins on top-1 confidence, |accuracy - confidence| weighted by the "
    "bin's share of images; adaptive ECE: 15 equal-mass bins; Brier: sum over classes of the "
    "squared error against the one-hot label, mean over images (0 best, 2 worst); NLL: mean "
    "negative natural log of the true class's probability; probabilities are softmax(logits "
    "/ T) in float64. raw: T = 1; T: one temperature per run, fitted by minimising the NLL "
    "on the source's few-shot validation set (never test images) and applied unchanged to "
    "every target, so the other domains show how a source-calibrated temperature holds under "
    "shift. Where every validation image is already right the NLL has no finite minimiser and "
    "T stays 1 (counted in the temperature table). Mean ± sample std over seeds; 'shifted' = "
    "per run the mean over the targets other than the in-domain one. Reliability diagrams: "
    "largest shot count, bins summed over seeds (and over the shifted targets), so their ECE "
    "is that of the pooled images."
)
ROBUSTNESS_NOTE = (
    "Effective robustness (single_source): x = in-domain acc1 (source test split), y = mean "
    "acc1 over the other domains, both on logit-scaled axes. Baseline: least-squares line in "
    "logit space (accuracies clipped to [0.1%, 99.9%]) through zero-shot (one point, the mean "
    "of its runs: it does not depend on shots or seed) and linear_probe at each shot count "
    "(mean over seeds); through exactly two points it is the line through them. Effective "
    "robustness = shifted acc1 minus the line's prediction at the run's in-domain acc1, in "
    "percentage points of linear accuracy, mean ± std over seeds (Taori et al. 2020)."
)
CSV_COLUMNS = (
    "protocol",
    "dataset",
    "source",
    "target",
    "role",
    "method",
    "shots",
    "seeds",
    "scaling",
    "temperature_mean",
    "acc1_mean",
    *(f"{m}_{s}" for m in METRIC_TITLES for s in ("mean", "std")),
)


@dataclass
class CalibrationSection:
    """The closed-set results of one (protocol, dataset) that record calibration metrics."""

    protocol: str
    dataset: str
    results: list[RunResult]

    @property
    def title(self) -> str:
        return f"{self.protocol} · {self.dataset}"

    @property
    def stem(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", f"calibration_{self.protocol}_{self.dataset}")

    @property
    def groups(self) -> list[str]:
        return ordered(r.group for r in self.results)

    @property
    def methods(self) -> list[str]:
        return ordered((method_label(r) for r in self.results), METHODS)

    @property
    def shots(self) -> list[int]:
        return sorted({r.shots for r in self.results})

    @property
    def scalings(self) -> list[str]:
        scaled = any(
            r.calibration and r.calibration.get("mode") == "temperature" for r in self.results
        )
        return [RAW, SCALED] if scaled else [RAW]

    @property
    def max_seeds(self) -> int:
        return max(
            len(self.runs(g, m, k)) for g in self.groups for m in self.methods for k in self.shots
        )

    def runs(self, group: str, method: str, shots: int) -> list[RunResult]:
        return sorted(
            (
                r
                for r in self.results
                if (r.group, method_label(r), r.shots) == (group, method, shots)
            ),
            key=lambda r: r.seed,
        )

    def targets(self, group: str) -> list[tuple[str, str]]:
        """(name, role) of the group's targets, in result order."""
        found = {t["name"]: t["role"] for r in self.results if r.group == group for t in r.targets}
        return list(found.items())


def make_calibration_sections(results: list[RunResult]) -> list[CalibrationSection]:
    grouped: dict[tuple[str, str], list[RunResult]] = defaultdict(list)
    for r in results:
        if r.task == CLASSIFICATION_TASK and _has_calibration(r):
            grouped[(r.protocol, r.dataset)].append(r)
    return [CalibrationSection(p, d, grouped[(p, d)]) for p, d in sorted(grouped)]


def _has_calibration(result: RunResult) -> bool:
    return any("calibration" in (m or {}) for m in result.metrics.values())


# -- per-run values ---------------------------------------------------------------------------
def _scored(result: RunResult, target: str, scaling: str) -> dict[str, Any] | None:
    metrics = result.metrics.get(target)
    return None if metrics is None else metrics["calibration"].get(scaling)


def _shifted_names(section: CalibrationSection, group: str) -> list[str]:
    return [name for name, role in section.targets(group) if role not in IN_DOMAIN_ROLES]


def _value(section: CalibrationSection, r: RunResult, target: str, scaling: str, metric: str):
    """One run's ``metric`` on ``target`` (``SHIFTED``: mean over the shifted targets)."""
    names = _shifted_names(section, r.group) if target == SHIFTED else [target]
    found = [_scored(r, name, scaling) for name in names]
    if not found or any(f is None for f in found):
        return None
    return statistics.fmean(f[metric] for f in found)


def _values(section, group, method, shots, target, scaling, metric) -> list[float] | None:
    runs = section.runs(group, method, shots)
    if not runs:
        return None
    values = [_value(section, r, target, scaling, metric) for r in runs]
    return [v for v in values if v is not None]


def _cell(section, group, method, shots, target, scaling, metric) -> str:
    values = _values(section, group, method, shots, target, scaling, metric)
    if metric in PERCENT_METRICS:
        return fmt(values, section.max_seeds)
    return fmt(values, section.max_seeds, scale=1.0, digits=3)


def _in_domain(section: CalibrationSection, group: str) -> str | None:
    return next((n for n, role in section.targets(group) if role in IN_DOMAIN_ROLES), None)


# -- tables -------------------------------------------------------------------------------------
def calibration_tables(section: CalibrationSection) -> list[Table]:
    """Per source: ECE before/after per target at every shot count, the temperatures, the
    other metrics in-domain vs shifted at the largest shot count, and effective robustness."""
    tables = []
    top, scalings = section.shots[-1], section.scalings
    for g in section.groups:
        label = source_label(section.protocol, g)
        columns = [n for n, _ in section.targets(g)] + (
            [SHIFTED] if _shifted_names(section, g) else []
        )
        in_domain = _in_domain(section, g)
        names = [f"{c} (in-domain)" if c == in_domain else c for c in columns]
        header = ["method"] + [f"{n}: {SCALING_SHORT[s]}" for n in names for s in scalings]
        for k in section.shots:
            rows = [
                [m] + [_cell(section, g, m, k, c, s, "ece") for c in columns for s in scalings]
                for m in section.methods
            ]
            title = f"Source {label}: ECE (%) per target at {k} shots, raw and temperature-scaled"
            tables.append(
                Table(title if len(scalings) > 1 else title.split(", raw")[0], header, rows)
            )
        if len(scalings) > 1:
            tables.append(_temperature_table(section, g))
        pools = [
            p for p in (in_domain, SHIFTED) if p is not None and (p != SHIFTED or len(columns) > 1)
        ]
        header = ["method"] + [
            f"{METRIC_TITLES[metric]} {'in' if p == in_domain else SHIFTED}: {SCALING_SHORT[s]}"
            for metric in ("adaptive_ece", "brier", "nll")
            for p in pools
            for s in scalings
        ]
        rows = [
            [m]
            + [
                _cell(section, g, m, top, p, s, metric)
                for metric in ("adaptive_ece", "brier", "nll")
                for p in pools
                for s in scalings
            ]
            for m in section.methods
        ]
        tables.append(
            Table(f"Source {label}: adaptive ECE, Brier and NLL at {top} shots", header, rows)
        )
        if section.protocol == "single_source":
            tables.append(_robustness_table(section, g))
    return tables


def _temperature_table(section: CalibrationSection, group: str) -> Table:
    rows = []
    for m in section.methods:
        row = [m]
        for k in section.shots:
            runs = [r for r in section.runs(group, m, k) if r.calibration]
            kept = sum(r.calibration.get("reason") is not None for r in runs)
            text = fmt(
                [r.calibration["temperature"] for r in runs], section.max_seeds, scale=1.0, digits=3
            )
            row.append(f"{text} ({kept}/{len(runs)} left at 1)" if kept else text)
        rows.append(row)
    return Table(
        f"Source {source_label(section.protocol, group)}: temperature T (fitted on the few-shot "
        "validation set)",
        ["method"] + [f"K={k}" for k in section.shots],
        rows,
    )


# -- effective robustness ---------------------------------------------------------------------
def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(p, LOGIT_CLIP, 1 - LOGIT_CLIP)
    return np.log(p / (1 - p))


def robustness_points(
    section: CalibrationSection, group: str
) -> dict[str, dict[int, list[tuple[float, float]]]]:
    """{method: {shots: [(in-domain acc1, mean acc1 over the other domains) per seed]}}."""
    out: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for m in section.methods:
        for k in section.shots:
            pairs = [
                (r.summary[IN_DOMAIN], r.summary[OTHERS_MEAN])
                for r in section.runs(group, m, k)
                if r.summary.get(IN_DOMAIN) is not None and r.summary.get(OTHERS_MEAN) is not None
            ]
            if pairs:
                out.setdefault(m, {})[k] = pairs
    return out


def baseline_line(
    points: dict[str, dict[int, list[tuple[float, float]]]],
) -> tuple[float, float] | None:
    """(slope, intercept) of the logit-space least-squares line through zero-shot (mean of all
    its runs) and linear_probe (mean over seeds at each shot count); None under two points."""
    chosen = []
    if "zeroshot" in points:
        chosen.append(np.mean([p for runs in points["zeroshot"].values() for p in runs], axis=0))
    chosen += [np.mean(runs, axis=0) for runs in points.get("linear_probe", {}).values()]
    if len(chosen) < 2:
        return None
    x, y = _logit(np.array(chosen)).T
    if np.ptp(x) == 0:
        return None
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def line_at(line: tuple[float, float], accuracy: float) -> float:
    slope, intercept = line
    return float(1 / (1 + math.exp(-(slope * _logit(accuracy) + intercept))))


def _robustness_table(section: CalibrationSection, group: str) -> Table:
    points = robustness_points(section, group)
    line = baseline_line(points)
    seeds = section.max_seeds
    rows = []
    for m, by in points.items():
        for k, runs in by.items():
            xs, ys = [x for x, _ in runs], [y for _, y in runs]
            predicted = None if line is None else [line_at(line, x) for x in xs]
            rows.append(
                [
                    m,
                    str(k),
                    fmt(xs, seeds),
                    fmt(ys, seeds),
                    "" if predicted is None else fmt(predicted, seeds),
                    "no baseline"
                    if predicted is None
                    else fmt([y - p for y, p in zip(ys, predicted, strict=True)], seeds),
                ]
            )
    about = (
        "no baseline line: it needs zero-shot and linear_probe results"
        if line is None
        else (f"line: logit(shifted) = {line[0]:.3f} logit(in-domain) {line[1]:+.3f}")
    )
    return Table(
        f"Source {source_label(section.protocol, group)}: effective robustness ({about})",
        ["method", "shots", "in-domain acc1 (%)", "shifted acc1 (%)", "baseline at in-domain (%)",
         "effective robustness (points)"],
        rows,
    )  # fmt: skip


# -- figures ----------------------------------------------------------------------------------
def calibration_figures(section: CalibrationSection) -> list[tuple[str, Figure]]:
    """One reliability figure per method at the largest shot count; the effective-robustness
    figure for single_source."""
    figures = []
    top = section.shots[-1]
    for m in section.methods:
        rows = []
        for g in section.groups:
            panels = _reliability_panels(section, g, m, top)
            if panels:
                rows.append((f"source {source_label(section.protocol, g)}", panels))
        if rows:
            seeds = sorted({r.seed for g in section.groups for r in section.runs(g, m, top)})
            title = (
                f"{m}, {top} shots: reliability, bins summed over seeds "
                f"{', '.join(map(str, seeds))} (and over the shifted targets)"
            )
            name = f"{section.stem}_reliability_{re.sub(r'[^A-Za-z0-9._-]+', '_', m)}.png"
            figures.append((name, plots.reliability_figure(rows, title)))
    if section.protocol == "single_source":
        figures.append((f"{section.stem}_effective_robustness.png", _robustness_figure(section)))
    return figures


def _reliability_panels(section, group, method, shots) -> list[tuple[str, dict[str, list[float]]]]:
    runs = section.runs(group, method, shots)
    in_domain = _in_domain(section, group)
    pools = [(f"in-domain ({in_domain})", [in_domain])] if in_domain else []
    shifted = _shifted_names(section, group)
    if shifted:
        pools.append(
            (
                f"shifted ({', '.join(shifted)})"
                if len(shifted) < 3
                else f"shifted ({len(shifted)} domains)",
                shifted,
            )
        )
    panels = []
    for title, names in pools:
        for s in section.scalings:
            found = [_scored(r, n, s) for r in runs for n in names]
            found = [f["reliability"] for f in found if f is not None]
            if found:
                summed = {
                    key: np.sum([f[key] for f in found], axis=0).tolist()
                    for key in ("count", "confidence_sum", "correct")
                }
                panels.append((f"{title}, {'raw' if s == RAW else 'temperature-scaled'}", summed))
    return panels


def _robustness_figure(section: CalibrationSection) -> Figure:
    panels = []
    for g in section.groups:
        points = robustness_points(section, g)
        means = {
            m: {k: tuple(np.mean(runs, axis=0)) for k, runs in by.items()}
            for m, by in points.items()
        }
        panels.append(
            (f"source: {source_label(section.protocol, g)}", means, baseline_line(points))
        )
    return plots.effective_robustness_figure(
        panels,
        xlabel="in-domain acc1 (%, source test split; logit scale)",
        ylabel="mean acc1 over the other domains (%; logit scale)",
        baseline="baseline: zero-shot + linear_probe (logit fit)",
    )


# -- CSV ----------------------------------------------------------------------------------------
def calibration_csv_rows(sections: list[CalibrationSection]) -> list[dict[str, Any]]:
    rows = []
    for section in sections:
        for g in section.groups:
            columns = [n for n, _ in section.targets(g)] + (
                [SHIFTED] if _shifted_names(section, g) else []
            )
            roles = dict(section.targets(g)) | {SHIFTED: SHIFTED}
            for m in section.methods:
                for k in section.shots:
                    runs = section.runs(g, m, k)
                    for target in columns:
                        for s in section.scalings:
                            row = {
                                "protocol": section.protocol,
                                "dataset": section.dataset,
                                "source": source_label(section.protocol, g),
                                "target": target,
                                "role": roles[target],
                                "method": m,
                                "shots": k,
                                "seeds": len(runs),
                                "scaling": s,
                                "temperature_mean": _mean_temperature(runs) if s == SCALED else "1",
                                "acc1_mean": _mean_acc(section, runs, target),
                            }
                            for metric in METRIC_TITLES:
                                values = _values(section, g, m, k, target, s, metric) or []
                                row[f"{metric}_mean"] = (
                                    f"{statistics.fmean(values):.4f}" if values else ""
                                )
                                row[f"{metric}_std"] = (
                                    f"{statistics.stdev(values):.4f}"
                                    if len(values) > 1
                                    else ("0.0000" if values else "")
                                )
                            rows.append(row)
    return rows


def _mean_temperature(runs: list[RunResult]) -> str:
    values = [
        r.calibration["temperature"]
        for r in runs
        if r.calibration and "temperature" in r.calibration
    ]
    return f"{statistics.fmean(values):.4f}" if values else ""


def _mean_acc(section: CalibrationSection, runs: list[RunResult], target: str) -> str:
    names = _shifted_names(section, runs[0].group) if target == SHIFTED else [target]
    values = []
    for r in runs:
        found = [(r.metrics.get(n) or {}).get("acc1") for n in names]
        if found and None not in found:
            values.append(statistics.fmean(found))
    return f"{statistics.fmean(values):.4f}" if values else ""
