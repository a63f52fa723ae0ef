"""Hand a method exactly the data it declares, fit it and time it.

``gather`` collects the support, validation (and unlabeled training-pool) features of
few-shot splits from a ``FeatureBank``; ``fit_data`` turns them into the ``FitData`` a
method may see: only the kinds in ``method.reads`` are filled in, and test images are never
part of either.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipadapt.calibration import calibration_metrics
from clipadapt.data import FewShotSplit
from clipadapt.methods import DataKind, FitData, Method
from clipadapt.metrics import classification_metrics
from clipadapt.models.base import Backend
from clipadapt.pipeline.featurebank import FeatureBank
from clipadapt.views import DEFAULT_AUGMENT

FIT_THREADS = 1
"""Torch threads while fitting and predicting: the fits are tiny, and two threads on a busy
2-core machine made them several times slower (GDA at 16 shots: 150-200 ms vs 80-90 ms)."""


@contextmanager
def torch_threads(count: int = FIT_THREADS) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class FewShotData:
    """What the few-shot splits offer a method: support (with files and augmented views),
    validation and, when asked for, the rest of the training pool as unlabeled images."""

    support: torch.Tensor
    support_labels: torch.Tensor
    support_paths: list[str]
    val: torch.Tensor
    val_labels: torch.Tensor
    val_paths: list[str]
    views: torch.Tensor | None = None  # (V, N, D)
    unlabeled: torch.Tensor | None = None
    unlabeled_paths: list[str] | None = None
    crafted_val: torch.Tensor | None = None  # the validation images under crafted shifts
    crafted_val_labels: torch.Tensor | None = None


def unlabeled_indices(split: FewShotSplit) -> list[int]:
    """The training pool outside support and validation: never a test image."""
    taken = set(split.support) | set(split.val) | set(split.test)
    return [i for i in range(len(split.dataset)) if i not in taken]


def gather(
    bank: FeatureBank,
    splits: Sequence[FewShotSplit],
    *,
    views: int = 0,
    unlabeled: bool = False,
    classes: Sequence[int] | None = None,
    crafted: Sequence[str] = (),
) -> FewShotData:
    """Concatenate the splits' support and validation sets (and, with ``unlabeled``, the rest
    of their training pools), keeping ``classes`` relabelled 0..len-1 in that order (None
    keeps every class); ``views`` augmented views of each support image; the validation
    images under each of the ``crafted`` views (view-major) as ``crafted_val``."""
    parts: dict[str, list] = defaultdict(list)
    for split in splits:
        dataset, labels = split.dataset, split.dataset.labels
        mapping = label_map(len(dataset.class_ids), classes)
        groups = {"support": split.support, "val": split.val}
        if unlabeled:
            groups["unlabeled"] = unlabeled_indices(split)
        for part, indices in groups.items():
            kept = [i for i in bank.readable(dataset, indices) if mapping[labels[i]] >= 0]
            parts[part].append(bank.rows(dataset, kept))
            parts[f"{part}_labels"].append(torch.from_numpy(mapping[labels[kept]]))
            parts[f"{part}_paths"] += [str(dataset.samples[i].path) for i in kept]
            if part == "support" and views:
                parts["views"].append(bank.views(dataset, kept, views))
            if part == "val":
                for view in crafted:
                    parts["crafted_val"].append(bank.view_rows(dataset, kept, view))
                    parts["crafted_val_labels"].append(parts["val_labels"][-1])
    return FewShotData(
        support=torch.cat(parts["support"]),
        support_labels=torch.cat(parts["support_labels"]),
        support_paths=parts["support_paths"],
        val=torch.cat(parts["val"]),
        val_labels=torch.cat(parts["val_labels"]),
        val_paths=parts["val_paths"],
        views=torch.cat(parts["views"], dim=1) if views else None,
        unlabeled=torch.cat(parts["unlabeled"]) if unlabeled else None,
        unlabeled_paths=parts["unlabeled_paths"] if unlabeled else None,
        crafted_val=torch.cat(parts["crafted_val"]) if crafted else None,
        crafted_val_labels=torch.cat(parts["crafted_val_labels"]) if crafted else None,
    )


def fit_data(
    method: Method,
    data: FewShotData,
    *,
    class_embeddings: torch.Tensor,
    logit_scale: float,
    classnames: list[str],
    seed: int,
    backend: Backend,
    checkpoint_dir: Path | None = None,
    unlabeled_includes_test: bool = False,
    selection: str = "validation",
    feature_cache: Any = None,
    augment: tuple[str, ...] = DEFAULT_AUGMENT,
) -> FitData:
    """The ``FitData`` for ``method``: only the kinds it ``reads`` are filled in. Unlabeled
    images are the training pool's unless the caller says they include test images;
    ``selection`` is how searched hyperparameters are chosen ("validation", "cv", or
    "crafted_shift": the validation set is then ``data.crafted_val``)."""
    crafted = selection == "crafted_shift"
    if crafted and data.crafted_val is None:
        raise ValueError("selection crafted_shift: gather the validation set's crafted views")
    return FitData(
        class_embeddings=class_embeddings,
        logit_scale=logit_scale,
        classnames=list(classnames),
        support_features=data.support,
        support_labels=data.support_labels,
        support_views=data.views,
        val_features=data.crafted_val if crafted else data.val,
        val_labels=data.crafted_val_labels if crafted else data.val_labels,
        unlabeled_features=data.unlabeled,
        unlabeled_paths=data.unlabeled_paths,
        unlabeled_includes_test=unlabeled_includes_test,
        seed=seed,
        backend=backend,
        support_paths=data.support_paths,
        val_paths=None if crafted else data.val_paths,
        checkpoint_dir=None if method.training_free else checkpoint_dir,
        selection=selection,
        feature_cache=feature_cache,
        augment=augment,
    ).only(method.reads)


def views_given(method: Method, views: int) -> int:
    """How many augmented views ``method`` gets (0 unless it reads them)."""
    reads = method.reads
    return views if {DataKind.SUPPORT, DataKind.SUPPORT_VIEWS} <= reads else 0


def reads_unlabeled(method: Method) -> bool:
    return DataKind.UNLABELED in method.reads


def timed_fit(method: Method, data: FitData) -> float:
    """Fit on one torch thread; return the wall time in seconds."""
    with torch_threads():
        start = time.perf_counter()
        method.fit(data)
        return time.perf_counter() - start


def score(
    predict: Callable[[torch.Tensor], torch.Tensor],
    features: torch.Tensor,
    labels: np.ndarray,
    temperature: float | None = None,
) -> tuple[dict[str, Any], float]:
    """``classification_metrics`` (plus ``n``) of ``predict(features)`` and its wall time;
    ``calibration``: the calibration metrics of the raw logits (``uncalibrated``) and, given a
    ``temperature``, of the logits divided by it (``temperature_scaled``)."""
    with torch_threads(), torch.inference_mode():
        start = time.perf_counter()
        logits = predict(features)
        seconds = time.perf_counter() - start
    truth = torch.from_numpy(labels)
    calibration = {"uncalibrated": calibration_metrics(logits, truth)}
    if temperature is not None:
        calibration["temperature_scaled"] = calibration_metrics(logits, truth, temperature)
    metrics = classification_metrics(logits, truth) | {"calibration": calibration}
    return metrics | {"n": len(labels)}, seconds


def label_map(num_classes: int, classes: Sequence[int] | None) -> np.ndarray:
    """An array mapping each old label to its position in ``classes`` (-1: dropped)."""
    if classes is None:
        return np.arange(num_classes, dtype=np.int64)
    mapping = np.full(num_classes, -1, dtype=np.int64)
    mapping[list(classes)] = np.arange(len(classes))
    return mapping
