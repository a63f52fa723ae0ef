"""Zero-shot CLIP: classify by cosine similarity to the class text embeddings."""

from __future__ import annotations

from typing import Self

import torch

from clipadapt.methods.base import FitData, Method
from clipadapt.methods.common import check_fit_data, cosine_logits, scale_tensor


class ZeroShot(Method):
    """``logits = logit_scale * f @ T.T`` with T the (normalised) class text embeddings."""

    name = "zeroshot"
    reads = frozenset()
    training_free = True
    supports_new_classes = True

    def fit(self, data: FitData) -> Self:
        check_fit_data(self, data)
        self.set_state(text=data.class_embeddings, logit_scale=scale_tensor(data))
        return self

    def predict_logits(self, features: torch.Tensor) -> torch.Tensor:
        return cosine_logits(features, self.state("text"), self.state("logit_scale"))

    def transfer_logits(
        self, features: torch.Tensor, class_embeddings: torch.Tensor, classnames: list[str]
    ) -> torch.Tensor:
        return cosine_logits(features, class_embeddings, self.state("logit_scale"))
