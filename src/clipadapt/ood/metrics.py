"""OOD and open-set metrics; ``metric_conventions`` names how each is defined.

Scores are "higher = more likely out-of-distribution" (pytorch-ood's sign); an input is
*accepted* (called in-distribution) when its score is at most the threshold. Predicted and
true labels use ``OOD_LABEL`` (-1) for "unknown".

- ``AUROC``: area under the ROC curve with OOD as the positive class (the same number with ID
  positive, ranked by ``-score``).
- ``FPR95``: ID is the positive class: the fraction of OOD inputs accepted at the threshold
  that accepts 95% of the in-distribution (ID) inputs, i.e. the smallest threshold ``t`` with
  ``mean(id <= t) >= 0.95`` (``accept_threshold``). Lower is better. This is the quantity the
  MCM and NegLabel papers report. pytorch-ood's ``FPR95TPR`` and OpenOOD's ``FPR@95`` take
  OOD as positive instead: the fraction of ID inputs rejected when 95% of the OOD inputs are.
- ``AUPR_IN``: ID positive, ranked by ``-score``; ``AUPR_OUT``: OOD positive, ranked by
  ``score``. Both are average precision, ``sum_k (R_k - R_{k-1}) P_k`` over the thresholds
  (scikit-learn's ``average_precision_score``, no interpolation). pytorch-ood and OpenOOD
  integrate the precision-recall curve by trapezoids instead, which reads higher when
  precision drops between recall steps.
- ``H_score``: harmonic mean of the known-class accuracy (a known input counts as correct only
  when accepted *and* given its true class) and the unknown accuracy (the fraction of unknown
  inputs rejected), at one threshold.
- ``OSCR`` (Dhamija et al., NeurIPS 2018): the area under the curve of the correct
  classification rate (known inputs accepted and correctly classified) against the false
  positive rate (unknown inputs accepted), as the threshold sweeps all values. With a perfect
  classifier it equals AUROC.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

OOD_LABEL = -1
TPR = 0.95

ArrayLike = np.ndarray | torch.Tensor | list[float]


def as_scores(values: ArrayLike, name: str = "scores") -> np.ndarray:
    """A finite, non-empty 1-d float64 array (clear errors otherwise)."""
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 1 or len(array) == 0:
        raise ValueError(f"{name}: expected a non-empty 1-d array of scores, got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: scores must be finite (got NaN or inf)")
    return array


def _binary(id_scores: ArrayLike, ood_scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated scores and the OOD indicator (1 = OOD)."""
    ids, oods = as_scores(id_scores, "id_scores"), as_scores(ood_scores, "ood_scores")
    return np.concatenate([ids, oods]), np.r_[np.zeros(len(ids)), np.ones(len(oods))]


def _sklearn():
    """``sklearn.metrics``, imported on first use: it takes about a second, which a process
    that only predicts should not pay."""
    from sklearn import metrics

    return metrics


def auroc(id_scores: ArrayLike, ood_scores: ArrayLike) -> float:
    """Area under the ROC curve, OOD positive."""
    scores, is_ood = _binary(id_scores, ood_scores)
    return float(_sklearn().roc_auc_score(is_ood, scores))


def aupr_in(id_scores: ArrayLike, ood_scores: ArrayLike) -> float:
    """Average precision with ID positive, ranked by ``-score`` (not trapezoidal)."""
    scores, is_ood = _binary(id_scores, ood_scores)
    return float(_sklearn().average_precision_score(1 - is_ood, -scores))


def aupr_out(id_scores: ArrayLike, ood_scores: ArrayLike) -> float:
    """Average precision with OOD positive, ranked by ``score`` (not trapezoidal)."""
    scores, is_ood = _binary(id_scores, ood_scores)
    return float(_sklearn().average_precision_score(is_ood, scores))


def accept_threshold(id_scores: ArrayLike, accept: float = TPR) -> float:
    """The smallest threshold ``t`` with ``mean(id_scores <= t) >= accept``.

    This is the ``ceil(accept * n)``-th smallest ID score: exactly that many ID inputs (or more,
    with ties) are accepted.
    """
    if not 0 < accept <= 1:
        raise ValueError(f"accept must be in (0, 1], got {accept}")
    scores = np.sort(as_scores(id_scores, "id_scores"))
    rank = max(math.ceil(accept * len(scores) - 1e-9), 1)
    return float(scores[rank - 1])


def fpr_at_tpr(id_scores: ArrayLike, ood_scores: ArrayLike, tpr: float = TPR) -> float:
    """Fraction of OOD inputs accepted at ``accept_threshold(id_scores, tpr)``: the false
    positive rate at ``tpr`` with ID as the positive class."""
    threshold = accept_threshold(id_scores, tpr)
    return float((as_scores(ood_scores, "ood_scores") <= threshold).mean())


AVERAGE_PRECISION = (
    "average precision: sum_k (R_k - R_{k-1}) P_k (sklearn average_precision_score); "
    "pytorch-ood and OpenOOD integrate the PR curve by trapezoids"
)


def metric_conventions() -> dict[str, Any]:
    """How each metric here is defined (JSON-ready), for results to carry beside the numbers.

    For ``AUROC``, ``FPR95``, ``AUPR_IN`` and ``AUPR_OUT``: the ``positive`` class and what
    inputs are ``ranked_by``, then the ``area`` or the ``tpr`` the false positive rate is
    read at.
    """
    return {
        "score": "higher = more likely out-of-distribution",
        "accepted_when": "score <= threshold",
        "AUROC": {"positive": "OOD", "ranked_by": "score", "area": "ROC, ties count half"},
        "FPR95": {
            "positive": "ID",
            "ranked_by": "-score",
            "tpr": TPR,
            "reads": "share of OOD accepted at the threshold accepting 95% of ID "
            "(as MCM and NegLabel report it); pytorch-ood FPR95TPR and OpenOOD FPR@95 take "
            "OOD as positive: share of ID rejected when 95% of OOD is",
        },
        "AUPR_IN": {"positive": "ID", "ranked_by": "-score", "area": AVERAGE_PRECISION},
        "AUPR_OUT": {"positive": "OOD", "ranked_by": "score", "area": AVERAGE_PRECISION},
        "H_score": "harmonic mean of acc_known (accepted and right class) and acc_unknown "
        "(rejected) at the calibrated threshold",
        "OSCR": "area under correct-and-accepted known rate against accepted unknown rate",
        "threshold": "the ceil(accept * n)-th smallest of n known-class calibration scores: "
        "the few-shot validation set, plus held-out support scores where given; never test",
    }


def ood_metrics(id_scores: ArrayLike, ood_scores: ArrayLike) -> dict[str, float]:
    """``AUROC``, ``FPR95``, ``AUPR_IN`` and ``AUPR_OUT`` for one ID/OOD pair."""
    return {
        "AUROC": auroc(id_scores, ood_scores),
        "FPR95": fpr_at_tpr(id_scores, ood_scores),
        "AUPR_IN": aupr_in(id_scores, ood_scores),
        "AUPR_OUT": aupr_out(id_scores, ood_scores),
    }


def reject(predictions: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """``predictions`` with ``OOD_LABEL`` wherever ``scores > threshold``."""
    if predictions.shape != scores.shape:
        raise ValueError(
            f"predictions {tuple(predictions.shape)} and scores {tuple(scores.shape)} disagree"
        )
    return torch.where(scores > threshold, torch.full_like(predictions, OOD_LABEL), predictions)


def closed_set_accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of the closed-set predictions on known-class inputs."""
    if predictions.shape != labels.shape or len(labels) == 0:
        raise ValueError(
            f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} must be "
            "equal, non-empty 1-d tensors"
        )
    return float((predictions == labels).float().mean())


def h_score(
    known_predictions: torch.Tensor, known_labels: torch.Tensor, unknown_predictions: torch.Tensor
) -> dict[str, float]:
    """``acc_known``, ``acc_unknown`` and their harmonic mean ``H_score``.

    Predictions are open-set (``OOD_LABEL`` for rejected inputs), e.g. from ``reject``.
    """
    acc_known = closed_set_accuracy(known_predictions, known_labels)
    if len(unknown_predictions) == 0:
        raise ValueError("h_score needs at least one unknown input")
    acc_unknown = float((unknown_predictions == OOD_LABEL).float().mean())
    total = acc_known + acc_unknown
    return {
        "acc_known": acc_known,
        "acc_unknown": acc_unknown,
        "H_score": 0.0 if total == 0 else 2 * acc_known * acc_unknown / total,
    }


def oscr(id_scores: ArrayLike, id_correct: ArrayLike, ood_scores: ArrayLike) -> float:
    """Open-set classification rate: area under CCR(t) against FPR(t), accepting ``score <= t``.

    ``id_correct`` says for each known input whether its closed-set prediction is right.
    Ties between known and unknown scores count half, as in AUROC.
    """
    scores, is_ood = _binary(id_scores, ood_scores)
    correct = np.asarray(id_correct, dtype=bool)
    if correct.shape != (int((is_ood == 0).sum()),):
        raise ValueError(f"id_correct must have one entry per ID score, got {correct.shape}")
    hits = np.r_[correct, np.zeros(int(is_ood.sum()), dtype=bool)].astype(np.float64)
    order = np.argsort(scores, kind="mergesort")
    scores, is_ood, hits = scores[order], is_ood[order], hits[order]
    last_of_value = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    ccr = np.r_[0.0, np.cumsum(hits)[last_of_value] / len(correct)]
    fpr = np.r_[0.0, np.cumsum(is_ood)[last_of_value] / is_ood.sum()]
    return float(np.trapezoid(ccr, fpr))
