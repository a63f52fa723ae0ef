"""GL-MCM (Miyai et al., 2023): global plus local maximum concept matching (ViT towers).

``score = -(max_c softmax(logits / (s * tau))_c + lambda * max_{p, c} softmax(l_p @ T.T / tau)_c)``

The global term is MCM on the method's logits (exactly the paper's for zero-shot CLIP, whose
logits are ``s * cos``); the local term compares every L2-normalised patch feature ``l_p``
(see :mod:`clipadapt.ood.local`) with the class text embeddings ``T``. The paper uses
``tau = 1`` and ``lambda = 1``.
"""

from __future__ import annotations

import torch

from clipadapt.methods.base import FitData
from clipadapt.ood.base import ScoreInput, TextEncoder
from clipadapt.ood.logit_scores import MCM, max_softmax


class GLMCM(MCM):
    """MCM on the method's logits plus MCM of the best-matching patch."""

    name = "gl_mcm"
    uses = frozenset({ScoreInput.LOGITS, ScoreInput.LOCAL_FEATURES})

    def __init__(self, temperature: float = 1.0, local_weight: float = 1.0) -> None:
        super().__init__(temperature)
        self.local_weight = float(local_weight)

    def _fit(self, data: FitData, *, encode_texts: TextEncoder | None = None) -> None:
        self.set_state(text=data.class_embeddings)
        super()._fit(data)

    def _score(self, features, logits, local_features) -> torch.Tensor:
        global_term = super()._score(features, logits, local_features)
        local = max_softmax(local_features @ self.state("text").T / self.temperature)  # (N, P)
        return global_term - self.local_weight * local.amax(dim=1)
