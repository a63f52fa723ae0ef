"""Scores on a method's logits: MSP, MCM, maximum logit and energy.

Every score here reads only ``method.predict_logits(features)``, so it sits on top of any
method. Higher = more likely out-of-distribution.

- MSP (Hendrycks & Gimpel, 2017) ranks inputs by the maximum softmax probability ``p``. The
  score is its negated log-odds, ``log((1 - p) / p) = logsumexp_{j != top} l_j - max l``
  (``neg_logit_msp``): the same order as ``-p``, so AUROC, FPR95 and the calibrated
  decisions are those of MSP, but computed in log space it never saturates. ``-p`` itself
  rounds to exactly -1 in float32 once the top logit leads by ~17 (GDA's logits lead by
  hundreds), tying most inputs.
- MCM (Ming et al., NeurIPS 2022): the same on ``softmax(cos / tau)``, the softmax of the
  cosine similarities to the class text embeddings at temperature ``tau``; the paper's default
  is ``tau = 1`` (a softmax over unscaled cosines). Methods here return ``logit_scale * cos``
  (zero-shot) or that plus an adapter term, so MCM reads ``logits / (logit_scale * tau)``:
  exactly the paper's ranking for zero-shot CLIP and a temperature-scaled MSP for adapted
  methods. ``tau = 1 / logit_scale`` gives MSP back.
- MaxLogit (Hendrycks et al., ICML 2022): ``-max logits``.
- Energy (Liu et al., NeurIPS 2020): ``-T * logsumexp(logits / T)``, ``T = 1`` by default.
"""

from __future__ import annotations

import torch

from clipadapt.methods.base import FitData
from clipadapt.methods.common import scale_tensor
from clipadapt.ood.base import Detector, ScoreInput, TextEncoder


def neg_logit_msp(logits: torch.Tensor) -> torch.Tensor:
    """``log((1 - p) / p)`` for ``p = max softmax(logits)``, in float64 log space (N,).

    With ``t`` the top class it is ``logsumexp_{j != t} (l_j - l_t)``: finite whatever the
    margin, and increasing as ``p`` falls. Written out in place, it costs less than a softmax.
    """
    logits = logits.double()
    top, index = logits.max(dim=-1, keepdim=True)
    others = (logits - top).scatter_(-1, index, float("-inf"))  # l_j - l_t, without t
    peak = others.amax(dim=-1, keepdim=True)
    return others.sub_(peak).exp_().sum(dim=-1).log_().add_(peak.squeeze(-1))


def _check_temperature(name: str, temperature: float) -> float:
    if not temperature > 0:
        raise ValueError(f"{name}: temperature must be positive, got {temperature}")
    return float(temperature)


class MSP(Detector):
    """Maximum softmax probability of the method's logits, as negated log-odds."""

    name = "msp"
    uses = frozenset({ScoreInput.LOGITS})
    score_version = 2  # 1: -p in float32

    def _score(self, features, logits, local_features) -> torch.Tensor:
        return neg_logit_msp(logits)


class MCM(Detector):
    """Maximum concept matching: ``neg_logit_msp(logits / (logit_scale * temperature))``.

    ``temperature`` is the paper's tau on cosine similarities (default 1, as in the paper).
    """

    name = "mcm"
    uses = frozenset({ScoreInput.LOGITS})
    score_version = 2  # 1: -max softmax in float32

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = _check_temperature(self.name, temperature)

    def _fit(self, data: FitData, *, encode_texts: TextEncoder | None = None) -> None:
        self.set_state(logit_scale=scale_tensor(data))

    def _score(self, features, logits, local_features) -> torch.Tensor:
        return neg_logit_msp(logits / (self.state("logit_scale") * self.temperature))


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
