"""Scores on a method's logits: MSP, MCM, maximum logit and energy.

Every score here reads only ``method.predict_logits(features)``, so it sits on top of any
method. All are negated confidences, so higher = more likely out-of-distribution.

- MSP (Hendrycks & Gimpel, 2017): ``-max softmax(logits)``.
- MCM (Ming et al., NeurIPS 2022): ``-max softmax(cos / tau)``, the softmax of the cosine
  similarities to the class text embeddings at temperature ``tau``; the paper's default is
  ``tau = 1`` (a softmax over unscaled cosines). Methods here return ``logit_scale * cos``
  (zero-shot) or that plus an adapter term, so MCM is computed as
  ``softmax(logits / (logit_scale * tau))``: exactly the paper's score for zero-shot CLIP and a
  temperature-scaled MSP for adapted methods. ``tau = 1 / logit_scale`` gives MSP back.
- MaxLogit (Hendrycks et al., ICML 2022): ``-max logits``.
- Energy (Liu et al., NeurIPS 2020): ``-T * logsumexp(logits / T)``, ``T = 1`` by default.
"""

from __future__ import annotations

import torch

from clipadapt.methods.base import FitData
from clipadapt.methods.common import scale_tensor
from clipadapt.ood.base import Detector, ScoreInput, TextEncoder


def max_softmax(logits: torch.Tensor) -> torch.Tensor:
    """``softmax(logits).max(-1)`` computed as ``1 / sum_j exp(l_j - max l)``: equal, and
    several times faster than a softmax over the few classes of a few-shot task."""
    return (logits - logits.amax(dim=-1, keepdim=True)).exp_().sum(dim=-1).reciprocal_()


def _check_temperature(name: str, temperature: float) -> float:
    if not temperature > 0:
        raise ValueError(f"{name}: temperature must be positive, got {temperature}")
    return float(temperature)


class MSP(Detector):
    """Maximum softmax probability of the method's logits, negated."""

    name = "msp"
    uses = frozenset({ScoreInput.LOGITS})

    def _score(self, features, logits, local_features) -> torch.Tensor:
        return -max_softmax(logits)


class MCM(Detector):
    """Maximum concept matching: ``-max softmax(logits / (logit_scale * temperature))``.

    ``temperature`` is the paper's tau on cosine similarities (default 1, as in the paper).
    """

    name = "mcm"
    uses = frozenset({ScoreInput.LOGITS})

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = _check_temperature(self.name, temperature)

    def _fit(self, data: FitData, *, encode_texts: TextEncoder | None = None) -> None:
        self.set_state(logit_scale=scale_tensor(data))

    def _score(self, features, logits, local_features) -> torch.Tensor:
        return -max_softmax(logits / (self.state("logit_scale") * self.temperature))


class MaxLogit(Detector):
    """The largest logit, negated."""

    name = "max_logit"
    uses = frozenset({ScoreInput.LOGITS})

    def _score(self, features, logits, local_features) -> torch.Tensor:
        return -logits.amax(dim=-1)


class Energy(Detector):
    """Free energy ``-T * logsumexp(logits / T)`` (low energy = in-distribution)."""

    name = "energy"
    uses = frozenset({ScoreInput.LOGITS})

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = _check_temperature(self.name, temperature)

    def _score(self, features, logits, local_features) -> torch.Tensor:
        if self.temperature == 1.0:  # skips two passes over the logits
            return -torch.logsumexp(logits, dim=-1)
        return -self.temperature * torch.logsumexp(logits / self.temperature, dim=-1)
