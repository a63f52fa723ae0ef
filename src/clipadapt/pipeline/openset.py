"""Open-set evaluation: every fitted detector on top of a fitted method, per target.

Each detector's threshold is calibrated on the few-shot validation set only (known classes,
never test images), accepting ``accept`` of it. Per target the result holds the closed-set
accuracy on the known inputs and, per detector, ``AUROC``, ``FPR95``, ``AUPR_IN``,
``AUPR_OUT`` (conventions in :mod:`clipadapt.ood.metrics`), ``OSCR`` and, at the
calibrated threshold, the accepted share of known inputs, ``acc_known``, ``acc_unknown`` and
``H_score``. The raw scores come back too, for plots.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from clipadapt.methods import Method
from clipadapt.ood.base import Detector, ScoreInput
from clipadapt.ood.metrics import (
    closed_set_accuracy,
    h_score,
    metric_conventions,
    ood_metrics,
    oscr,
    reject,
)
from clipadapt.ood.openset import calibrate_threshold, detector_scores

LOCAL_SKIP = "needs local patch features (a ViT image tower)"


@dataclass
class FeatureSet:
    """Features of an image set: the backend's (N, D), labels (N,) (``OOD_LABEL`` for
    unknown images), optional patches (N, P, D), and the features the method reads when it
    adapted the image side (else ``features``)."""

    features: torch.Tensor
    labels: torch.Tensor
    local_features: torch.Tensor | None = None
    method_features: torch.Tensor | None = None

    def scores(self, method: Method, detector: Detector) -> torch.Tensor:
        return detector_scores(
            method,
            detector,
            self.features,
            method_features=self.method_features,
            local_features=self.local_features,
        )

    def predictions(self, method: Method) -> torch.Tensor:
        return method.predict(
            self.features if self.method_features is None else self.method_features
        )


@dataclass
class OpenSetEvaluation:
    """JSON-ready ``metrics`` and, for plots, the raw (known, unknown) scores."""

    metrics: dict[str, Any]
    scores: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]  # target -> detector -> pair


def evaluate_open_set(
    method: Method,
    detectors: Mapping[str, Detector],
    val: FeatureSet,
    targets: Mapping[str, tuple[FeatureSet, FeatureSet]],
    *,
    accept: float = 0.95,
    held_out: Mapping[str, torch.Tensor | None] | None = None,
) -> OpenSetEvaluation:
    """Metrics of every fitted detector on top of the fitted ``method``, per target.

    Thresholds pool the validation scores with a detector's ``held_out`` scores of the
    support images where it has them (``calibrate_threshold``).

    Detectors that need patch features are reported as skipped when ``val`` has none (CNN
    towers).
    """
    thresholds: dict[str, float] = {}
    calibrated_on: dict[str, int] = {}  # known images each threshold was set on
    skipped: dict[str, str] = {}
    for name, detector in detectors.items():
        if ScoreInput.LOCAL_FEATURES in detector.uses and val.local_features is None:
            skipped[name] = LOCAL_SKIP
            continue
        pooled = (held_out or {}).get(name)
        thresholds[name] = calibrate_threshold(val.scores(method, detector), accept, pooled)
        calibrated_on[name] = len(val.labels) + (0 if pooled is None else len(pooled))
    metrics: dict[str, Any] = {
        "accept": accept,
        "calibrated_on_n": calibrated_on,
        "conventions": metric_conventions(),
        "targets": {},
    }
    raw: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for target, (known, unknown) in targets.items():
        predictions = known.predictions(method)
        unknown_predictions = unknown.predictions(method)
        per_detector: dict[str, Any] = {name: {"skipped": why} for name, why in skipped.items()}
        raw[target] = {}
        for name, threshold in thresholds.items():
            detector = detectors[name]
            id_scores, ood_scores = known.scores(method, detector), unknown.scores(method, detector)
            open_known = reject(predictions, id_scores, threshold)
            open_unknown = reject(unknown_predictions, ood_scores, threshold)
            per_detector[name] = {
                **ood_metrics(id_scores, ood_scores),
                "OSCR": oscr(id_scores, (predictions == known.labels).numpy(), ood_scores),
                "threshold": threshold,
                "known_accepted": float((id_scores <= threshold).float().mean()),
                **h_score(open_known, known.labels, open_unknown),
            }
            raw[target][name] = (id_scores.numpy(), ood_scores.numpy())
        metrics["targets"][target] = {
            "n_known": len(known.labels),
            "n_unknown": len(unknown.labels),
            "closed_set_acc": closed_set_accuracy(predictions, known.labels),
            "scores": {name: per_detector[name] for name in detectors},
        }
    return OpenSetEvaluation(metrics, raw)


def false_unknown_rate(n_val: int, accept: float, level: float = 0.9) -> dict[str, float]:
    """How often a known-class image will be called unknown by a threshold calibrated on
    ``n_val`` known-image scores (validation, pooled with held-out support scores where the
    detector has them): the ``ceil(accept * n_val)``-th smallest, as ``accept_threshold``
    sets it. For exchangeable scores the accepted share of a new image's
    distribution is Beta(r, n - r + 1) (the coverage of the r-th order statistic), so the
    false-unknown rate has mean (n - r + 1) / (n + 1) and a ``level`` central interval from
    the Beta quantiles: with few validation images it is wide, whatever ``accept`` says."""
    from scipy.stats import beta

    r = max(math.ceil(accept * n_val - 1e-9), 1)
    spread = beta(n_val - r + 1, r)
    tail = (1 - level) / 2
    return {
        "n_val": n_val,
        "expected": (n_val - r + 1) / (n_val + 1),
        "low": float(spread.ppf(tail)),
        "high": float(spread.ppf(1 - tail)),
        "level": level,
    }


def summarize_open_set(metrics: dict[str, Any]) -> dict[str, Any]:
    """Per detector, means over the run's targets of AUROC, FPR95 and H-score."""
    targets = list(metrics["targets"].values())
    out: dict[str, Any] = {"closed_set_acc": float(np.mean([t["closed_set_acc"] for t in targets]))}
    for detector in targets[0]["scores"]:
        rows = [t["scores"][detector] for t in targets]
        if any("AUROC" not in r for r in rows):
            continue
        out[detector] = {
            k: float(np.mean([r[k] for r in rows])) for k in ("AUROC", "FPR95", "H_score")
        }
    return out
