"""Aggregate bench results over seeds: acc1 mean and std per protocol, dataset, source, target,
method and shots, plus the derived "mean of the other domains" and base/novel harmonic mean.
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
    HELD_OUT,
    HM,
    IN_DOMAIN,
    NOVEL,
    OTHER_DOMAIN,
    OTHERS_MEAN,
)
from clipadapt.pipeline.results import RunResult, find_results, read_result

PRIMARY_ROLES: dict[str, tuple[str, ...]] = {
    "fewshot": (IN_DOMAIN,),
    "single_source": (IN_DOMAIN, OTHERS_MEAN),
    "lodo": (HELD_OUT,),
    "base_to_novel": (BASE, NOVEL, HM),
}
ROLE_TITLES = {
    IN_DOMAIN: "in-domain (source test split)",
    OTHER_DOMAIN: "other domain (all images)",
    OTHERS_MEAN: "mean over the other domains",
    HELD_OUT: "held-out domain (all images)",
    BASE: "base classes (test split)",
    NOVEL: "novel classes (test split, zero-shot transfer)",
    HM: "harmonic mean of base and novel",
}
DERIVED_TARGETS = {OTHERS_MEAN: "mean of others", HM: "HM"}


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
