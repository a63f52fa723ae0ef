"""Aggregate bench results over seeds: acc1 mean and std per protocol, dataset, source, target,
method and shots, plus the derived "mean of the other domains", base/novel harmonic mean and
mean corruption accuracy, and the corruption errors (mCE) against zero-shot.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipadapt.bench.protocols import (
    BASE,
    CLEAN,
    CORRUPTED,
    CORRUPTION_MEAN,
    EXTRA_CORRUPTION_MEAN,
    HELD_OUT,
    HM,
    IN_DOMAIN,
    NOVEL,
    OTHER_DOMAIN,
    OTHERS_MEAN,
)
from clipadapt.corruptions import COMMON
from clipadapt.pipeline.results import RunResult, find_results, read_result

PRIMARY_ROLES: dict[str, tuple[str, ...]] = {
    "fewshot": (IN_DOMAIN,),
    "single_source": (IN_DOMAIN, OTHERS_MEAN),
    "lodo": (HELD_OUT,),
    "base_to_novel": (BASE, NOVEL, HM),
    "corruptions": (CLEAN, CORRUPTION_MEAN),
}
ROLE_TITLES = {
    IN_DOMAIN: "in-domain (source test split)",
    OTHER_DOMAIN: "other domain (all images)",
    OTHERS_MEAN: "mean over the other domains",
    HELD_OUT: "held-out domain (all images)",
    BASE: "base classes (test split)",
    NOVEL: "novel classes (test split, zero-shot transfer)",
    HM: "harmonic mean of base and novel",
    CLEAN: "clean (source test split)",
    CORRUPTED: "one corruption at one severity (source test split)",
    CORRUPTION_MEAN: "mean over ImageNet-C's 15 corruptions x severities (mCA)",
    EXTRA_CORRUPTION_MEAN: "mean over the extra corruptions x severities",
}
DERIVED_TARGETS = {
    OTHERS_MEAN: "mean of others",
    HM: "HM",
    CORRUPTION_MEAN: "mean corruption",
    EXTRA_CORRUPTION_MEAN: "mean extra corruption",
}
CE_BASELINE = "zeroshot"
"""The baseline of corruption errors (ImageNet-C's AlexNet): zero-shot, same model and split."""


@dataclass(frozen=True)
class Key:
    protocol: str
    dataset: str
    group: str
    target: str
    role: str
    method: str
    shots: int


@dataclass
class Cell:
    """One aggregated entry: acc1 per seed (None: not applicable for that run) and timings."""

    acc1: list[float | None] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    fit_seconds: list[float] = field(default_factory=list)
    confusion: np.ndarray | None = None  # summed over seeds
    classnames: list[str] | None = None  # the classes the confusion matrix is over

    @property
    def values(self) -> list[float]:
        return [v for v in self.acc1 if v is not None]

    @property
    def applicable(self) -> bool:
        return bool(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (0 for one seed)."""
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


def load_results(root: str | Path) -> list[RunResult]:
    """Every result under ``root`` (refusing incompatible ones); an error if there are none."""
    paths = find_results(root)
    if not paths:
        raise FileNotFoundError(
            f"no bench results under {root} (expected "
            "<protocol>/<dataset>/<source>/<method>/K<shots>_s<seed>.json); run clipadapt bench"
        )
    return [read_result(path) for path in paths]


def aggregate(results: Iterable[RunResult]) -> dict[Key, Cell]:
    """Cells keyed by (protocol, dataset, source group, target, role, method, shots)."""
    cells: dict[Key, Cell] = defaultdict(Cell)
    for r in results:
        entries = [(t["name"], t["role"], r.metrics[t["name"]], t["classnames"]) for t in r.targets]
        summary = r.summary
        for role, label in DERIVED_TARGETS.items():
            if role in summary:
                entries.append((label, role, {"acc1": summary[role]}, None))
        method = method_label(r)
        for target, role, metrics, classnames in entries:
            key = Key(r.protocol, r.dataset, r.group, target, role, method, r.shots)
            cell = cells[key]
            if r.seed in cell.seeds:
                raise ValueError(f"two results for {key} with seed {r.seed}")
            cell.seeds.append(r.seed)
            cell.acc1.append(None if metrics is None else metrics.get("acc1"))
            cell.fit_seconds.append(r.timing["fit_seconds"])
            matrix = (metrics or {}).get("confusion_matrix")
            if matrix is not None:
                matrix, cell.classnames = np.asarray(matrix), classnames
                cell.confusion = matrix if cell.confusion is None else cell.confusion + matrix
    return dict(cells)


TRANSDUCTIVE = " (transductive)"


def method_label(result: RunResult) -> str:
    """The method's row label; transductive results (fitted with the test images as
    unlabeled data) never share a row with inductive ones."""
    return result.method + (TRANSDUCTIVE if result.transductive else "")


def source_label(protocol: str, group: str) -> str:
    return f"all but {group}" if protocol == "lodo" else group


def ordered(values: Iterable[str], preferred: Iterable[str] = ()) -> list[str]:
    """Unique values, those in ``preferred`` first in that order, the rest sorted."""
    values = set(values)
    first = [v for v in preferred if v in values]
    return first + sorted(values - set(first))


@dataclass
class CorruptionErrors:
    """Corruption errors of one method against the baseline, one value per seed.

    Hendrycks & Dietterich (2019): ``CE_c = sum_s E(c, s) / sum_s E_base(c, s)`` and relative
    ``CE_c = sum_s (E(c, s) - E_clean) / sum_s (E_base(c, s) - E_base_clean)`` with errors
    ``E = 1 - acc1`` over the severities run; mCE and relative mCE average them over
    ImageNet-C's 15 corruptions (``COMMON``) present. A ratio, 1.0 = the baseline; None where
    the baseline's denominator is 0.
    """

    ce: dict[str, list[float | None]]  # corruption -> per seed
    relative_ce: dict[str, list[float | None]]
    mce: list[float | None]
    relative_mce: list[float | None]


def corruption_errors(
    cells: dict[Key, Cell], group: str, method: str, shots: int
) -> CorruptionErrors | None:
    """``method``'s corruption errors in ``group`` at ``shots`` against ``CE_BASELINE`` (its
    mean over seeds at the same shots, else at any shots: zero-shot ignores them); None
    without a baseline or corrupted targets."""
    mine = _errors_by_target(cells, group, method, shots)
    base = _errors_by_target(cells, group, CE_BASELINE, shots)
    if not base:
        others = sorted({k.shots for k in cells if (k.group, k.method) == (group, CE_BASELINE)})
        base = _errors_by_target(cells, group, CE_BASELINE, others[0]) if others else {}
    if not mine or not base or CLEAN not in mine or CLEAN not in base:
        return None
    base_mean = {t: statistics.fmean(v.values()) for t, v in base.items() if v}
    by_corruption: dict[str, list[str]] = defaultdict(list)
    for target in mine:
        if target != CLEAN and target in base_mean:
            by_corruption[target.rpartition("@")[0]].append(target)
    seeds = sorted(mine[CLEAN])
    ce: dict[str, list[float | None]] = {}
    relative: dict[str, list[float | None]] = {}
    for corruption, targets in by_corruption.items():
        ce[corruption], relative[corruption] = [], []
        denominator = sum(base_mean[t] for t in targets)
        relative_denominator = sum(base_mean[t] - base_mean[CLEAN] for t in targets)
        for seed in seeds:
            errors = [mine[t].get(seed) for t in targets]
            if None in errors:
                ce[corruption].append(None)
                relative[corruption].append(None)
                continue
            gap = sum(e - mine[CLEAN][seed] for e in errors)
            ce[corruption].append(sum(errors) / denominator if denominator else None)
            relative[corruption].append(
                gap / relative_denominator if relative_denominator else None
            )
    common = [c for c in COMMON if c in ce]
    return CorruptionErrors(
        ce, relative, _mean_per_seed(ce, common), _mean_per_seed(relative, common)
    )


def _errors_by_target(
    cells: dict[Key, Cell], group: str, method: str, shots: int
) -> dict[str, dict[int, float]]:
    """``{target: {seed: 1 - acc1}}`` of the clean and corrupted targets."""
    out: dict[str, dict[int, float]] = {}
    for key, cell in cells.items():
        if (key.group, key.method, key.shots) == (group, method, shots) and key.role in (
            CLEAN,
            CORRUPTED,
        ):
            out[key.target] = {
                seed: 1 - acc
                for seed, acc in zip(cell.seeds, cell.acc1, strict=True)
                if acc is not None
            }
    return out


def _mean_per_seed(values: dict[str, list[float | None]], names: list[str]) -> list[float | None]:
    if not names:
        return []
    per_seed = zip(*(values[n] for n in names), strict=True)
    return [None if None in row else statistics.fmean(row) for row in per_seed]
