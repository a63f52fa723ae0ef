"""CLIP-Adapter (Gao et al., 2021, arXiv:2110.04544): a residual bottleneck MLP on features.

    A(f) = ReLU(W_up ReLU(W_down f)),  f' = ratio * A(f) + (1 - ratio) * f,
    logits(f) = s * normalize(f') @ T.T

as in the reference code (no biases, hidden size D / reduction). The MLP is trained with
cross-entropy; the residual ratio is searched (see :mod:`clipadapt.methods.selection`),
training one adapter per grid value; a smaller ratio, closer to zero-shot CLIP, counts as the
stronger regularisation.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F

from clipadapt.methods.base import DataKind, FitData
from clipadapt.methods.common import cosine_logits, scale_tensor, support_sets
from clipadapt.methods.selection import (
    Grid,
    GridFit,
    Search,
    Searchable,
    SearchedMethod,
    fit_each,
    search_value,
)
from clipadapt.methods.training import train_adamw

Adapter = tuple[torch.Tensor, torch.Tensor, float]  # down, up, ratio


def adapt(
    features: torch.Tensor, down: torch.Tensor, up: torch.Tensor, ratio: float | torch.Tensor
) -> torch.Tensor:
    """The normalised residual-adapted features ``normalize(ratio * A(f) + (1 - ratio) * f)``."""
    residual = torch.relu(torch.relu(features @ down.T) @ up.T)
    return F.normalize(ratio * residual + (1 - ratio) * features, dim=-1)


class ClipAdapter(SearchedMethod):
    """CLIP-Adapter on frozen features. Each adapter trains for ``epochs`` full-batch AdamW
    steps (cosine schedule); epoch e sees the support set (e = 0) or an augmented view,
    cycling through them. Initialisation follows ``nn.Linear``, seeded by ``data.seed``.
    ``ratio`` is searched when None or a list (the paper's generic 0.2 preferred on
    validation ties)."""

    name = "clip_adapter"
    reads = frozenset({DataKind.SUPPORT, DataKind.SUPPORT_VIEWS, DataKind.VALIDATION})
    training_free = False
    supports_new_classes = True  # the adapter acts on image features, any text classifier works
    searches: ClassVar[dict[str, Search]] = {"ratio": Search((0.2, 0.4, 0.6), 0.2, stronger="low")}

    def __init__(
        self,
        ratio: Searchable = None,
        reduction: int = 4,
        epochs: int = 25,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__()
        self.ratio = search_value("ratio", ratio)
        self.reduction = int(reduction)
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)

    def _fit_grid(self, data: FitData, grid: Grid) -> GridFit:
        text, scale, labels = data.class_embeddings, scale_tensor(data), data.support_labels.long()
        sets = support_sets(data)
        dim = text.shape[1]
        hidden = max(dim // self.reduction, 1)

        def train(ratio: float) -> Adapter:
            generator = torch.Generator().manual_seed(data.seed)
            down = _linear_init(hidden, dim, generator)
            up = _linear_init(dim, hidden, generator)

            def loss(step: int) -> torch.Tensor:
                adapted = adapt(sets[step % len(sets)], down, up, ratio)
                return F.cross_entropy(cosine_logits(adapted, text, scale), labels)

            train_adamw([down, up], loss, self.epochs, self.lr, self.weight_decay)
            return down.detach(), up.detach(), ratio

        return fit_each(
            grid["ratio"],
            train,
            lambda m, f: cosine_logits(adapt(f, *m), text, scale),
            lambda m, ratio: {
                "text": text,
                "logit_scale": scale,
                "down": m[0],
                "up": m[1],
                "ratio": torch.tensor(ratio),
            },
        )

    def predict_logits(self, features: torch.Tensor) -> torch.Tensor:
        s = self.state
        adapted = adapt(features, s("down"), s("up"), s("ratio"))
        return cosine_logits(adapted, s("text"), s("logit_scale"))

    def transfer_logits(
        self, features: torch.Tensor, class_embeddings: torch.Tensor, classnames: list[str]
    ) -> torch.Tensor:
        s = self.state
        adapted = adapt(features, s("down"), s("up"), s("ratio"))
        return cosine_logits(adapted, class_embeddings, s("logit_scale"))


def _linear_init(out_features: int, in_features: int, generator: torch.Generator) -> torch.Tensor:
    """A trainable (out, in) weight drawn like ``nn.Linear``'s: U(-1/sqrt(in), 1/sqrt(in))."""
    bound = 1.0 / math.sqrt(in_features)
    weight = torch.empty(out_features, in_features).uniform_(-bound, bound, generator=generator)
    return weight.requires_grad_()
