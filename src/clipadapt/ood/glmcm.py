"""GL-MCM (Miyai et al., 2023): global plus local maximum concept matching (ViT towers).

The paper's score is ``-(p_global + lambda * p_local)`` with ``p_global = max_c softmax(logits /
(s * tau))_c`` and ``p_local = max_{p, c} softmax(l_p @ T.T / tau)_c``. The global term is MCM
on the method's logits (exactly the paper's for zero-shot CLIP, whose logits are
``s * cos``); the local term compares every L2-normalised patch feature ``l_p`` (see
:mod:`clipadapt.ood.local`) with the class text embeddings ``T``. The paper uses ``tau = 1``
and ``lambda = 1``.

The score here is ``(1 - p_global) + lambda * (1 - p_local)``, the paper's plus the constant
``1 + lambda``: the same ranking, but each ``1 - p`` comes from the log-odds of
``neg_logit_msp`` in float64, so no confident input rounds to exactly ``p = 1``.
"""

from __future__ import annotations

import torch

from clipadapt.methods.base import FitData
from clipadapt.ood.base import ScoreInput, TextEncoder
from clipadapt.ood.logit_scores import MCM, neg_logit_msp


class GLMCM(MCM):
    """MCM on the method's logits plus MCM of the best-matching patch."""

    name = "gl_mcm"
    uses = frozenset({ScoreInput.LOGITS, ScoreInput.LOCAL_FEATURES})
    score_version = 2  # 1: -(p_global + lambda * p_local) in float32

    def __init__(self, temperature: float = 1.0, local_weight: float = 1.0) -> None:
        super().__init__(temperature)
        self.local_weight = float(local_weight)

    def _fit(self, data: FitData, *, encode_texts: TextEncoder | None = None) -> None:
        self.set_state(text=data.class_embeddings)
        super()._fit(data)

    def _score(self, features, logits, local_features) -> torch.Tensor:
        global_doubt = super()._score(features, logits, local_features).sigmoid()  # 1 - p
        local = neg_logit_msp(local_features @ self.state("text").T / self.temperature)  # (N, P)
        return global_doubt + self.local_weight * local.amin(dim=1).sigmoid()
