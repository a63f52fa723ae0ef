"""Nearest class mean: cosine similarity to the normalised mean support feature of each class."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipadapt.methods.base import DataKind, FitData, Method
from clipadapt.methods.common import (
    check_fit_data,
    class_means,
    cosine_logits,
    scale_tensor,
    stacked_support,
)


class NearestClassMean(Method):
    """``logits = logit_scale * f @ P.T`` with ``p_k`` the normalised mean of class k's support
    features (augmented views included when given). Ignores the text embeddings."""

    name = "ncm"
    reads = frozenset({DataKind.SUPPORT, DataKind.SUPPORT_VIEWS})
    training_free = True

    def _fit(self, data: FitData) -> None:
        check_fit_data(self, data)
        x, y = stacked_support(data)
        prototypes = F.normalize(class_means(self, x, y, data.num_classes), dim=-1)
        self.set_state(prototypes=prototypes, logit_scale=scale_tensor(data))

    def predict_logits(self, features: torch.Tensor) -> torch.Tensor:
        return cosine_logits(features, self.state("prototypes"), self.state("logit_scale"))
