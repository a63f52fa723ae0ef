"""Zero-shot CLIP: classify by cosine similarity to the class text embeddings."""

from __future__ import annotations

from clipadapt.methods.base import FitData, Method
from clipadapt.methods.common import FixedTextScores, check_fit_data, scale_tensor


class ZeroShot(FixedTextScores, Method):
    """``logits = logit_scale * f @ T.T`` with T the (normalised) class text embeddings."""

    name = "zeroshot"
    reads = frozenset()
    training_free = True

    def _fit(self, data: FitData) -> None:
        check_fit_data(self, data)
        self.set_state(text=data.class_embeddings, logit_scale=scale_tensor(data))
