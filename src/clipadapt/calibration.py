"""Calibration metrics of a classifier's probabilities, and temperature scaling.

Conventions (every function here, and every result that records them):

* probabilities are ``softmax(logits / T)`` computed in float64 (GDA's logits saturate a
  float32 softmax); the prediction is the arg-max (the first class on ties) and its
  probability the top-1 *confidence*;
* ``ece``: expected calibration error over 15 equal-width confidence bins
  ``(0, 1/15], (1/15, 2/15], ...``: ``sum_b (n_b / N) |acc_b - conf_b|`` (Guo et al. 2017);
* ``adaptive_ece``: the same over 15 equal-mass bins (images sorted by confidence, split
  into 15 groups of nearly equal size; fewer when there are fewer than 15 images);
* ``brier``: multi-class Brier score, ``mean_i sum_c (p_ic - [y_i = c])^2`` (0 best, 2 worst);
* ``nll``: mean negative log-likelihood of the true class, natural log.

Temperature scaling (Guo et al. 2017) fits one scalar ``T > 0`` minimising the NLL of
``softmax(logits / T)`` on held-out labelled data (in clipadapt: the few-shot validation set,
never test images). The NLL is convex in ``1/T``, hence unimodal in ``log T``; a golden-section
search over ``log T`` in ``TEMPERATURE_BOUNDS`` finds it deterministically. When every
held-out image is already classified right (common with 4 validation images per class) the
NLL falls towards 0 as ``T -> 0`` and has no minimum: ``choose_temperature`` then keeps
``T = 1`` and says why, rather than making every prediction certain.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

BINS = 15
TEMPERATURE_BOUNDS = (0.01, 100.0)
GOLDEN = (math.sqrt(5) - 1) / 2
CONVENTIONS = (
    "probabilities = softmax(logits / T) in float64; ECE: 15 equal-width bins on top-1 "
    "confidence, sum of |accuracy - confidence| weighted by the bin's share of images; "
    "adaptive ECE: the same over 15 equal-mass bins; Brier: sum over classes of the squared "
    "error of the probability vector against the one-hot label, mean over images; NLL: mean "
    "negative natural log of the true class's probability"
)


def probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``softmax(logits / temperature)`` in float64."""
    return (logits.detach().double() / temperature).softmax(dim=-1)


def _checked(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0] or logits.shape[0] == 0:
        raise ValueError(
            f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)}: need (N, C) and "
            "(N,) with N > 0"
        )
    return logits.detach().double().cpu(), labels.detach().long().cpu()


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (natural log) of ``softmax(logits / temperature)``."""
    logits, labels = _checked(logits, labels)
    log_p = (logits / temperature).log_softmax(dim=-1)
    return float(-log_p.gather(1, labels[:, None]).mean())


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score: sum over classes of squared error, mean over images."""
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(labels)), labels] = 1.0
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def top1(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 confidence and whether the top-1 class is right, per image."""
    return probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(np.float64)


def bin_index(confidence: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Equal-width bin of each confidence: bin b holds ``(b / bins, (b + 1) / bins]``."""
    return np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> dict[str, Any]:
    """Per equal-width bin: image count, summed confidence and number right (sums pool over
    runs and targets; a reliability diagram plots ``correct / count`` against
    ``confidence_sum / count``)."""
    index = bin_index(confidence, bins)
    return {
        "bins": bins,
        "count": np.bincount(index, minlength=bins).tolist(),
        "confidence_sum": np.bincount(index, confidence, minlength=bins).tolist(),
        "correct": np.bincount(index, correct, minlength=bins).tolist(),
    }


def ece_from_reliability(table: dict[str, Any]) -> float:
    """ECE from ``reliability`` sums (of one run, or pooled over several)."""
    count = np.asarray(table["count"], dtype=np.float64)
    gap = np.abs(np.asarray(table["correct"]) - np.asarray(table["confidence_sum"]))
    return float(gap.sum() / count.sum())


def ece(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error over ``bins`` equal-width bins (see the module notes)."""
    return ece_from_reliability(reliability(confidence, correct, bins))


def adaptive_ece(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> float:
    """ECE over ``bins`` equal-mass bins of the confidence-sorted images."""
    order = np.argsort(confidence, kind="stable")
    groups = [g for g in np.array_split(order, bins) if len(g)]
    gaps = [abs(correct[g].sum() - confidence[g].sum()) for g in groups]
    return float(sum(gaps) / len(confidence))


def calibration_metrics(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> dict[str, Any]:
    """``ece``, ``adaptive_ece``, ``brier``, ``nll`` of ``softmax(logits / temperature)`` and
    the ``reliability`` sums behind the ECE."""
    logits, labels = _checked(logits, labels)
    probs = probabilities(logits, temperature).numpy()
    y = labels.numpy()
    confidence, correct = top1(probs, y)
    return {
        "ece": ece(confidence, correct),
        "adaptive_ece": adaptive_ece(confidence, correct),
        "brier": brier(probs, y),
        "nll": nll(logits, labels, temperature),
        "reliability": reliability(confidence, correct),
    }


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature and the NLL it gives on the data it was fitted on."""

    temperature: float
    nll_before: float  # at T = 1
    nll_after: float
    at_bound: bool  # the optimum lies at (or beyond) a bound of TEMPERATURE_BOUNDS

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def fit_temperature(
    logits: torch.Tensor,
    labels: torch.Tensor,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
    tolerance: float = 1e-6,
) -> TemperatureFit:
    """The ``T`` in ``bounds`` minimising ``nll(logits, labels, T)``: golden-section search
    over ``log T`` down to an interval of ``tolerance`` (deterministic)."""
    logits, labels = _checked(logits, labels)
    low, high = math.log(bounds[0]), math.log(bounds[1])

    def loss(log_t: float) -> float:
        return nll(logits, labels, math.exp(log_t))

    a, b = low, high
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    fc, fd = loss(c), loss(d)
    while b - a > tolerance:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - GOLDEN * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + GOLDEN * (b - a)
            fd = loss(d)
    best = (a + b) / 2
    return TemperatureFit(
        temperature=math.exp(best),
        nll_before=nll(logits, labels),
        nll_after=loss(best),
        at_bound=min(best - low, high - best) < 10 * tolerance,
    )


def choose_temperature(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """The temperature to apply: ``fit_temperature``'s, or 1 (with a ``reason``) when the
    NLL's minimum lies at a search bound; the NLL at T = 1 and at the applied T; the search."""
    found = fit_temperature(logits, labels)
    applied, reason = found.temperature, None
    if found.at_bound:
        applied = 1.0
        reason = (
            f"the held-out NLL keeps falling towards the search bound T = "
            f"{found.temperature:.3g} (towards 0: every held-out image is already classified "
            "right), so no finite temperature minimises it; T left at 1"
        )
    return {
        "temperature": applied,
        "nll_before": found.nll_before,
        "nll_after": nll(logits, labels, applied),
        "search": found.to_json(),
        "reason": reason,
    }
