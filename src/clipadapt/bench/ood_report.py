"""The OOD section of ``clipadapt report``: open-set results (task ``open_set``) aggregated
over seeds, and their score histograms and ROC curves.

Tables (percent, mean ± sample std over seeds), per protocol and dataset at each shot
count: AUROC per method x detector x target (plus the mean over targets when there are
several), and per method x detector the means over targets of AUROC, FPR95, AUPR_IN,
AUPR_OUT and, at the validation-calibrated threshold, H-score and OSCR, with the closed-set
accuracy on known-class inputs.

Figures, a fixed choice (never picked by test results): for every protocol, source and
method at the largest shot count and the smallest seed, small multiples of the ID-vs-OOD
score histograms of *every* detector that ran (with its calibrated threshold) and one panel
of all their ROC curves. Scores are those saved beside each result; with several targets
(open-set DG) they are pooled over the targets.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipadapt.bench.aggregate import ordered
from clipadapt.bench.plots import detector_panels
from clipadapt.bench.tables import Table, fmt, mean_std
from clipadapt.methods import METHODS
from clipadapt.ood import DETECTORS
from clipadapt.pipeline.results import OPEN_SET_TASK, load_scores

PROTOCOL_ORDER = ("near_ood", "open_set_dg", "far_ood")
PROTOCOL_TITLES = {
    "near_ood": "near OOD (held-out classes of the source domain)",
    "open_set_dg": "open-set domain generalisation (held-out classes, other domains)",
    "far_ood": "far OOD (another dataset)",
}
METRICS = ("AUROC", "FPR95", "AUPR_IN", "AUPR_OUT", "H_score", "OSCR")
CSV_COLUMNS = (
    "protocol",
    "dataset",
    "source",
    "target",
    "method",
    "detector",
    "shots",
    "seeds",
    "closed_set_acc_mean",
    *(f"{m}_{s}" for m in METRICS for s in ("mean", "std")),
)


@dataclass
class OodCell:
    """Metric values over seeds for one (protocol, dataset, source, target, method, det, K)."""

    values: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    seeds: list[int] = field(default_factory=list)


@dataclass
class OodSection:
    protocol: str
    dataset: str
    results: list[tuple[Path, dict[str, Any]]]

    @property
    def title(self) -> str:
        return f"{self.protocol} · {self.dataset}: {PROTOCOL_TITLES.get(self.protocol, '')}"

    @property
    def stem(self) -> str:
        return f"ood_{self.protocol}_{self.dataset}".replace("/", "_")

    @property
    def groups(self) -> list[str]:
        return ordered(r.group for _, r in self.results)

    @property
    def methods(self) -> list[str]:
        return ordered((r.method for _, r in self.results), METHODS)

    @property
    def shots(self) -> list[int]:
        return sorted({r.shots for _, r in self.results})

    def targets(self, group: str) -> list[str]:
        found = [t for _, r in self.results if r.group == group for t in r.metrics["targets"]]
        return list(dict.fromkeys(found))

    def detectors(self) -> list[str]:
        found = {
            d
            for _, r in self.results
            for t in r.metrics["targets"].values()
            for d, m in t["scores"].items()
            if "AUROC" in m
        }
        return ordered(found, DETECTORS)

    def cells(self) -> dict[tuple, OodCell]:
        """Keyed by (group, target, method, detector, shots); target "mean" averages targets
        within each run first."""
        cells: dict[tuple, OodCell] = defaultdict(OodCell)
        for _, r in self.results:
            targets = r.metrics["targets"]
            per_det: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
            for target, t in targets.items():
                for det, m in t["scores"].items():
                    if "AUROC" not in m:
                        continue
                    cell = cells[(r.group, target, r.method, det, r.shots)]
                    cell.seeds.append(r.seed)
                    cell.values["closed_set_acc"].append(t["closed_set_acc"])
                    for k in METRICS:
                        cell.values[k].append(m[k])
                        per_det[det][k].append(m[k])
                    per_det[det]["closed_set_acc"].append(t["closed_set_acc"])
            for det, values in per_det.items():
                cell = cells[(r.group, "mean", r.method, det, r.shots)]
                cell.seeds.append(r.seed)
                for k, v in values.items():
                    cell.values[k].append(statistics.fmean(v))
        return dict(cells)


def ood_results(paths: list[Path], results: list[dict[str, Any]]) -> list[tuple[Path, dict]]:
    return [(p, r) for p, r in zip(paths, results, strict=True) if r.task == OPEN_SET_TASK]


def make_ood_sections(found: list[tuple[Path, dict[str, Any]]]) -> list[OodSection]:
    grouped: dict[tuple[str, str], list] = defaultdict(list)
    for path, r in found:
        grouped[(r.protocol, r.dataset)].append((path, r))
    order = {p: i for i, p in enumerate(PROTOCOL_ORDER)}
    keys = sorted(grouped, key=lambda k: (order.get(k[0], 99), k))
    return [OodSection(p, d, grouped[(p, d)]) for p, d in keys]


def ood_tables(section: OodSection) -> list[Table]:
    cells, detectors, tables = section.cells(), section.detectors(), []
    for shots in section.shots:
        for g in section.groups:
            targets = section.targets(g)
            columns = targets + (["mean"] if len(targets) > 1 else [])
            rows = [
                [m, d] + [fmt(_values(cells, (g, t, m, d, shots), "AUROC")) for t in columns]
                for m in section.methods
                for d in detectors
            ]
            tables.append(
                Table(
                    f"Source {g}, K={shots}: AUROC (%) per target",
                    ["method", "detector", *columns],
                    rows,
                )
            )
            rows = []
            for m in section.methods:
                for d in detectors:
                    key = (g, "mean", m, d, shots)
                    rows.append(
                        [m, d, fmt(_values(cells, key, "closed_set_acc"))]
                        + [fmt(_values(cells, key, k)) for k in METRICS]
                    )
            what = "mean over targets" if len(targets) > 1 else targets[0]
            tables.append(
                Table(
                    f"Source {g}, K={shots}: {what}; H-score at the validation-calibrated "
                    "threshold (%)",
                    ["method", "detector", "closed-set acc", *METRICS],
                    rows,
                )
            )
    return tables


def _values(cells: dict[tuple, OodCell], key: tuple, metric: str) -> list[float] | None:
    cell = cells.get(key)
    return None if cell is None else cell.values.get(metric)


def ood_csv_rows(sections: list[OodSection]) -> list[dict[str, Any]]:
    rows = []
    for s in sections:
        for (group, target, method, det, shots), cell in sorted(s.cells().items()):
            row = {
                "protocol": s.protocol,
                "dataset": s.dataset,
                "source": group,
                "target": target,
                "method": method,
                "detector": det,
                "shots": shots,
                "seeds": len(cell.seeds),
                "closed_set_acc_mean": f"{mean_std(cell.values['closed_set_acc'])[0]:.4f}",
            }
            for k in METRICS:
                mean, std = mean_std(cell.values[k])
                row[f"{k}_mean"], row[f"{k}_std"] = f"{mean:.4f}", f"{std:.4f}"
            rows.append(row)
    return rows


def ood_figures(section: OodSection) -> list[tuple[str, Any]]:
    """Per source and method: histograms of every detector + ROC panel (largest K, first seed)."""
    figures = []
    top = section.shots[-1]
    for g in section.groups:
        for m in section.methods:
            runs = [
                (p, r) for p, r in section.results if (r.group, r.method, r.shots) == (g, m, top)
            ]
            if not runs:
                continue
            path, result = min(runs, key=lambda pr: pr[1].seed)
            saved = load_scores(path)
            if not saved:
                continue
            pooled: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            for det in section.detectors():
                pairs = [saved[t][det] for t in saved if det in saved[t]]
                if pairs:
                    pooled[det] = (
                        np.concatenate([p[0] for p in pairs]),
                        np.concatenate([p[1] for p in pairs]),
                    )
            first = next(iter(result.metrics["targets"].values()))["scores"]
            thresholds = {d: first[d]["threshold"] for d in pooled if "threshold" in first[d]}
            targets = ", ".join(result.metrics["targets"])
            title = (
                f"{section.protocol}: {m} on {g} -> {targets} "
                f"(K={top}, seed {result.seed}; dashed: calibrated threshold)"
            )
            figures.append(
                (
                    f"{section.stem}_{g}_{m}.png",
                    detector_panels(pooled, thresholds=thresholds, title=title),
                )
            )
    return figures
