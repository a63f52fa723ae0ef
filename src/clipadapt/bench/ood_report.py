"""The OOD section of ``clipadapt report``: open-set results (task ``open_set``) aggregated
over seeds, and their score histograms and ROC curves.

Detectors that read only image features (``knn``, ``mahalanobis``, ``neglabel``,
``pseudo_open``: no ``ScoreInput.LOGITS`` in ``Detector.uses``) are fitted once per sample
and score alike under every method, so their detection metrics appear once per source and
shot count, as method ``(image features)``; a method that adapted the image side (its
``feature_fingerprint`` differs from the backend's ``image_fingerprint``) keeps its own rows.

Tables (percent, mean ± sample std over seeds), per protocol, dataset, source and shot
count: detection (AUROC per target, plus the mean over targets when there are several, and
the means over targets of FPR95, AUPR_IN and AUPR_OUT) per method x detector; then, per
method, the H-score at the validation-calibrated threshold (beside the closed-set accuracy
on known-class inputs) and OSCR of every detector, both of which depend on the method's
predictions.

Figures, a fixed choice (never picked by test results): at the largest shot count and the
smallest seed, the ID-vs-OOD score histograms (with the calibrated threshold) and ROC curves
of the image-feature detectors once per source, and of the other detectors per method. With
several targets the ID scores are pooled over the distinct known-image sets (far-OOD targets
share one) and each OOD target has its own colour.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from clipadapt.bench.aggregate import ordered
from clipadapt.bench.plots import detector_panels
from clipadapt.bench.tables import Table, fmt, mean_std
from clipadapt.methods import METHODS
from clipadapt.ood import DETECTORS, ScoreInput
from clipadapt.pipeline.results import OPEN_SET_TASK, OpenSetResult, RunResult, load_scores

PROTOCOL_ORDER = ("near_ood", "open_set_dg", "far_ood")
PROTOCOL_TITLES = {
    "near_ood": "near OOD (held-out classes of the source domain)",
    "open_set_dg": "open-set domain generalisation (held-out classes, other domains)",
    "far_ood": "far OOD (another dataset)",
}
METRICS = ("AUROC", "FPR95", "AUPR_IN", "AUPR_OUT", "H_score", "OSCR")
DETECTION = ("FPR95", "AUPR_IN", "AUPR_OUT")  # beside AUROC per target
IMAGE_FEATURES = "(image features)"  # the method column of method-independent rows
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


def reads_image_features_only(detector: str) -> bool:
    """Whether ``detector`` scores without the method's logits (alike under every method)."""
    cls = DETECTORS.get(detector)
    return cls is not None and ScoreInput.LOGITS not in cls.uses


def adapted_image_side(result: RunResult) -> bool:
    """Whether the method's image features differ from the backend's."""
    return result.feature_fingerprint != result.image_fingerprint


@dataclass
class OodCell:
    """Metric values over seeds for one (protocol, dataset, source, target, method, det, K)."""

    values: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    seeds: list[int] = field(default_factory=list)


@dataclass
class OodSection:
    protocol: str
    dataset: str
    results: list[tuple[Path, OpenSetResult]]

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

    def own_image_side(self) -> set[str]:
        """Methods whose runs adapted the image side."""
        return {r.method for _, r in self.results if adapted_image_side(r)}

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

    def rows(self) -> list[tuple[str, str]]:
        """(method, detector) rows of the detection table: image-feature detectors once, as
        ``IMAGE_FEATURES``, except under methods that adapted the image side."""
        own, detectors = self.own_image_side(), self.detectors()
        rows = [
            (m, d)
            for m in self.methods
            for d in detectors
            if m in own or not reads_image_features_only(d)
        ]
        if set(self.methods) - own:
            rows += [(IMAGE_FEATURES, d) for d in detectors if reads_image_features_only(d)]
        return rows

    def _contributions(self) -> Iterator[tuple[str, OpenSetResult, bool]]:
        """(method label, result, image-feature detectors only): every run under its method,
        and one run per (source, shots, seed) of a method on the backend's features under
        ``IMAGE_FEATURES``."""
        seen = set()
        for _, r in self.results:
            yield r.method, r, False
            sample = (r.group, r.shots, r.seed)
            if not adapted_image_side(r) and sample not in seen:
                seen.add(sample)
                yield IMAGE_FEATURES, r, True

    def cells(self) -> dict[tuple, OodCell]:
        """Keyed by (group, target, method, detector, shots); target "mean" averages targets
        within each run first."""
        cells: dict[tuple, OodCell] = defaultdict(OodCell)
        for label, r, image_only in self._contributions():
            per_det: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
            for target, t in r.metrics["targets"].items():
                for det, m in t["scores"].items():
                    if "AUROC" not in m or (image_only and not reads_image_features_only(det)):
                        continue
                    cell = cells[(r.group, target, label, det, r.shots)]
                    cell.seeds.append(r.seed)
                    cell.values["closed_set_acc"].append(t["closed_set_acc"])
                    for k in METRICS:
                        cell.values[k].append(m[k])
                        per_det[det][k].append(m[k])
                    per_det[det]["closed_set_acc"].append(t["closed_set_acc"])
            for det, values in per_det.items():
                cell = cells[(r.group, "mean", label, det, r.shots)]
                cell.seeds.append(r.seed)
                for k, v in values.items():
                    cell.values[k].append(statistics.fmean(v))
        return dict(cells)


def ood_results(paths: list[Path], results: list[RunResult]) -> list[tuple[Path, OpenSetResult]]:
    return [(p, r) for p, r in zip(paths, results, strict=True) if r.task == OPEN_SET_TASK]


def make_ood_sections(found: list[tuple[Path, OpenSetResult]]) -> list[OodSection]:
    grouped: dict[tuple[str, str], list] = defaultdict(list)
    for path, r in found:
        grouped[(r.protocol, r.dataset)].append((path, r))
    order = {p: i for i, p in enumerate(PROTOCOL_ORDER)}
    keys = sorted(grouped, key=lambda k: (order.get(k[0], 99), k))
    return [OodSection(p, d, grouped[(p, d)]) for p, d in keys]


def ood_tables(section: OodSection) -> list[Table]:
    cells, tables = section.cells(), []
    for shots in section.shots:
        for g in section.groups:
            tables += [
                _detection_table(section, cells, g, shots),
                _per_method_table(section, cells, g, shots, "H_score"),
                _per_method_table(section, cells, g, shots, "OSCR"),
            ]
    return tables


def _over_targets(section: OodSection, group: str) -> str:
    targets = section.targets(group)
    return "means over targets" if len(targets) > 1 else targets[0]


def _detection_table(section: OodSection, cells: dict, g: str, shots: int) -> Table:
    """AUROC per target (and their mean), FPR95 and AUPR: image-feature detectors once."""
    targets = section.targets(g)
    columns = [f"AUROC {t}" for t in targets] + ["AUROC mean"] if len(targets) > 1 else ["AUROC"]
    rows = []
    for m, d in section.rows():
        auroc = [_values(cells, (g, t, m, d, shots), "AUROC") for t in targets]
        if len(targets) > 1:
            auroc.append(_values(cells, (g, "mean", m, d, shots), "AUROC"))
        rest = [_values(cells, (g, "mean", m, d, shots), k) for k in DETECTION]
        rows.append([m, d, *map(fmt, auroc), *map(fmt, rest)])
    return Table(
        f"Source {g}, K={shots}: detection (%), {_over_targets(section, g)}; method "
        f"{IMAGE_FEATURES}: the detectors that read only image features, alike under every "
        "method",
        ["method", "detector", *columns, *DETECTION],
        rows,
    )


def _per_method_table(section: OodSection, cells: dict, g: str, shots: int, metric: str) -> Table:
    """``metric`` of every detector per method (it depends on the method's predictions); the
    H-score table also gives the closed-set accuracy."""
    detectors, h_score = section.detectors(), metric == "H_score"
    rows = []
    for m in section.methods:
        found = {d: cells.get((g, "mean", m, d, shots)) for d in detectors}
        row = [m, *(fmt(c.values[metric]) if c else "" for c in found.values())]
        if h_score:
            accuracy = next((c.values["closed_set_acc"] for c in found.values() if c), None)
            row.insert(1, fmt(accuracy))
        rows.append(row)
    what = "H-score (%) at the validation-calibrated threshold" if h_score else f"{metric} (%)"
    return Table(
        f"Source {g}, K={shots}: {what}, {_over_targets(section, g)}",
        ["method", *(["closed-set acc"] if h_score else []), *detectors],
        rows,
    )


def _values(cells: dict[tuple, OodCell], key: tuple, metric: str) -> list[float] | None:
    cell = cells.get(key)
    return None if cell is None else cell.values.get(metric)


def ood_csv_rows(sections: list[OodSection]) -> list[dict[str, Any]]:
    """One row per (source, target, method, detector, shots), every method's own rows."""
    rows = []
    for s in sections:
        for (group, target, method, det, shots), cell in sorted(s.cells().items()):
            if method == IMAGE_FEATURES:
                continue
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


def pooled_scores(
    result: OpenSetResult, saved: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], det: str
) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """``detector``'s ID scores over the run's distinct known-image sets (far-OOD targets test
    one known set against several OOD sets) and its OOD scores per target."""
    known_sets = {
        t["name"]: (t["domain"], t["part"], tuple(t["classes"] or ())) for t in result.targets
    }
    ids: dict[tuple, np.ndarray] = {}
    oods: dict[str, np.ndarray] = {}
    for target, by_detector in saved.items():
        if det in by_detector:
            ids.setdefault(known_sets.get(target, (target,)), by_detector[det][0])
            oods[target] = by_detector[det][1]
    return (np.concatenate(list(ids.values())), oods) if oods else None


def ood_figures(section: OodSection) -> list[tuple[str, Figure]]:
    """Histograms and ROC curves at the largest K and first seed: the image-feature
    detectors once per source, the others per method."""
    figures = []
    top, own = section.shots[-1], section.own_image_side()
    detectors = section.detectors()
    for g in section.groups:
        panels: list[tuple[str, str, list[str]]] = []  # (file suffix, method, detectors)
        shared = next((m for m in section.methods if m not in own), None)
        if shared is not None:
            panels.append(
                ("image_features", shared, list(filter(reads_image_features_only, detectors)))
            )
        for m in section.methods:
            chosen = [d for d in detectors if m in own or not reads_image_features_only(d)]
            panels.append((m, m, chosen))
        for suffix, m, chosen in panels:
            figure = _figure(section, g, m, top, chosen, suffix == "image_features")
            if figure is not None:
                figures.append((f"{section.stem}_{g}_{suffix}.png", figure))
    return figures


def _figure(
    section: OodSection, group: str, method: str, shots: int, detectors: list[str], shared: bool
) -> Figure | None:
    wanted = (group, method, shots)
    runs = [(p, r) for p, r in section.results if (r.group, r.method, r.shots) == wanted]
    if not runs or not detectors:
        return None
    path, result = min(runs, key=lambda pr: pr[1].seed)
    saved = load_scores(path)
    scores = {d: s for d in detectors if (s := pooled_scores(result, saved, d)) is not None}
    if not scores:
        return None
    first = next(iter(result.metrics["targets"].values()))["scores"]
    thresholds = {d: first[d]["threshold"] for d in scores if "threshold" in first[d]}
    who = "image-feature detectors (alike under every method)" if shared else method
    title = (
        f"{section.protocol}: {who} on {group} -> {', '.join(result.metrics['targets'])} "
        f"(K={shots}, seed {result.seed}; dashed: calibrated threshold)"
    )
    return detector_panels(scores, thresholds=thresholds, title=title)
