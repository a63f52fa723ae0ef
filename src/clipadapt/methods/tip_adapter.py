"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022): a key-value cache of the support set.

With T the text embeddings, s the logit scale, cache keys F (N, D) and one-hot values L (N, C):

    logits(f) = s * f @ T.T + alpha * exp(-beta * (1 - f @ F.T)) @ L

alpha weighs the cache against zero-shot CLIP and beta sharpens the affinities; both are
searched jointly, as in the paper (see :mod:`clipadapt.methods.selection`; smaller values of
either, which bring the logits closer to zero-shot CLIP, count as the stronger
regularisation, alpha deciding first). Keys are the normalised support features averaged
over the augmented views when given (the paper averages 10 augmentations). Tip-Adapter-F
then fine-tunes the keys with cross-entropy (alpha and beta as given, else at their
preferred values), uses them unnormalised as the paper does, and searches alpha and beta
after training.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from clipadapt.methods.base import DataKind, FitData
from clipadapt.methods.common import cosine_logits, scale_tensor, support_sets
from clipadapt.methods.selection import (
    Grid,
    GridFit,
    Position,
    Search,
    Searchable,
    SearchedMethod,
    search_value,
)
from clipadapt.methods.training import train_adamw

ALPHA_GRID = tuple(0.25 * i for i in range(1, 41))  # 0.25 .. 10
BETA_GRID = tuple(0.5 * i for i in range(1, 25))  # 0.5 .. 12


def cache_logits(
    features: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, beta: torch.Tensor
) -> torch.Tensor:
    """``exp(-beta * (1 - f @ keys.T)) @ values``; ``beta`` may be a scalar or (B, 1, 1)."""
    return torch.exp(-beta * (1.0 - features @ keys.T)) @ values


class TipAdapter(SearchedMethod):
    """Training-free Tip-Adapter; ``alpha`` and ``beta`` are searched when None or lists
    (the paper's ablation optimum alpha=1, beta=5.5 preferred on validation ties)."""

    name = "tip_adapter"
    reads = frozenset({DataKind.SUPPORT, DataKind.SUPPORT_VIEWS, DataKind.VALIDATION})
    training_free = True
    searches: ClassVar[dict[str, Search]] = {
        "alpha": Search(ALPHA_GRID, 1.0, stronger="low"),
        "beta": Search(BETA_GRID, 5.5, stronger="low"),
    }

    def __init__(self, alpha: Searchable = None, beta: Searchable = None) -> None:
        super().__init__()
        self.alpha = search_value("alpha", alpha)
        self.beta = search_value("beta", beta)

    def _fit_grid(self, data: FitData, grid: Grid) -> GridFit:
        text, scale = data.class_embeddings, scale_tensor(data)
        values = F.one_hot(data.support_labels.long(), data.num_classes).to(torch.float32)
        keys = F.normalize(torch.stack(support_sets(data)).mean(dim=0), dim=-1)
        keys = self._tune_keys(data, keys, values)
        alphas, betas = grid["alpha"], grid["beta"]

        def logits(f: torch.Tensor) -> torch.Tensor:  # (alpha, beta, M, C)
            beta = torch.tensor(betas).view(-1, 1, 1)
            alpha = torch.tensor(alphas).view(-1, 1, 1, 1)
            return cosine_logits(f, text, scale) + alpha * cache_logits(f, keys, values, beta)

        def state(position: Position) -> dict[str, torch.Tensor]:
            return {
                "text": text,
                "logit_scale": scale,
                "keys": keys,
                "values": values,
                "alpha": torch.tensor(alphas[position[0]]),
                "beta": torch.tensor(betas[position[1]]),
            }

        return GridFit(logits, state)

    def _tune_keys(self, data: FitData, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return keys

    def predict_logits(self, features: torch.Tensor) -> torch.Tensor:
        s = self.state
        cache = cache_logits(features, s("keys"), s("values"), s("beta"))
        return cosine_logits(features, s("text"), s("logit_scale")) + s("alpha") * cache


class TipAdapterF(TipAdapter):
    """Tip-Adapter-F: the cache keys are trained for ``epochs`` full-batch AdamW steps
    (paper: lr 1e-3, eps 1e-4, cosine schedule, 20 epochs); epoch e sees the support set
    (e = 0) or an augmented view, cycling through them."""

    name = "tip_adapter_f"
    training_free = False

    def __init__(
        self, alpha: Searchable = None, beta: Searchable = None, epochs: int = 20, lr: float = 1e-3
    ) -> None:
        super().__init__(alpha, beta)
        self.epochs = int(epochs)
        self.lr = float(lr)

    def _tune_keys(self, data: FitData, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        scale, labels = scale_tensor(data), data.support_labels.long()
        sets = support_sets(data)
        zero_shot = [cosine_logits(x, data.class_embeddings, scale) for x in sets]
        keys = keys.clone().requires_grad_()
        alpha, beta = self.fixed_value("alpha"), torch.tensor(self.fixed_value("beta"))

        def loss(step: int) -> torch.Tensor:
            x = sets[step % len(sets)]
            logits = zero_shot[step % len(sets)] + alpha * cache_logits(x, keys, values, beta)
            return F.cross_entropy(logits, labels)

        train_adamw([keys], loss, steps=self.epochs, lr=self.lr, eps=1e-4)
        return keys.detach()
