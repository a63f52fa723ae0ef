"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022): a key-value cache of the support set.

With T the text embeddings, s the logit scale, cache keys F (N, D) and one-hot values L (N, C):

    logits(f) = s * f @ T.T + alpha * exp(-beta * (1 - f @ F.T)) @ L

alpha weighs the cache against zero-shot CLIP and beta sharpens the affinities; both are
searched jointly on the validation set, as in the paper. Keys are the normalised support
features averaged over the augmented views when given (the paper averages 10 augmentations).
Tip-Adapter-F then fine-tunes the keys with cross-entropy (alpha, beta at their defaults),
uses them unnormalised as the paper does, and searches alpha and beta after training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import torch
import torch.nn.functional as F

from clipadapt.methods.base import DataKind, FitData, Method
from clipadapt.methods.common import check_fit_data, cosine_logits, scale_tensor, support_sets
from clipadapt.methods.selection import choose
from clipadapt.methods.training import train_adamw

ALPHA_GRID = tuple(0.25 * i for i in range(1, 41))  # 0.25 .. 10
BETA_GRID = tuple(0.5 * i for i in range(1, 25))  # 0.5 .. 12


def cache_logits(
    features: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, beta: torch.Tensor
) -> torch.Tensor:
    """``exp(-beta * (1 - f @ keys.T)) @ values``; ``beta`` may be a scalar or (B, 1, 1)."""
    return torch.exp(-beta * (1.0 - features @ keys.T)) @ values


class TipAdapter(Method):
    """Training-free Tip-Adapter; ``alpha``/``beta`` are the no-validation defaults (the
    paper's ablation optimum alpha=1, beta=5.5) and the grids are searched otherwise."""

    name = "tip_adapter"
    reads = frozenset({DataKind.SUPPORT, DataKind.SUPPORT_VIEWS, DataKind.VALIDATION})
    training_free = True

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 5.5,
        alpha_grid: Sequence[float] = ALPHA_GRID,
        beta_grid: Sequence[float] = BETA_GRID,
    ) -> None:
        super().__init__()
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.alpha_grid = tuple(float(v) for v in alpha_grid)
        self.beta_grid = tuple(float(v) for v in beta_grid)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "beta": self.beta,
            "alpha_grid": list(self.alpha_grid),
            "beta_grid": list(self.beta_grid),
        }

    def fit(self, data: FitData) -> Self:
        check_fit_data(self, data)
        text, scale = data.class_embeddings, scale_tensor(data)
        values = F.one_hot(data.support_labels.long(), data.num_classes).to(torch.float32)
        keys = F.normalize(torch.stack(support_sets(data)).mean(dim=0), dim=-1)
        keys = self._tune_keys(data, keys, values)

        def val_logits(f: torch.Tensor) -> torch.Tensor:  # (alpha, beta, M, C)
            beta = torch.tensor(self.beta_grid).view(-1, 1, 1)
            alpha = torch.tensor(self.alpha_grid).view(-1, 1, 1, 1)
            return cosine_logits(f, text, scale) + alpha * cache_logits(f, keys, values, beta)

        chosen = choose(
            self,
            data,
            {"alpha": self.alpha_grid, "beta": self.beta_grid},
            {"alpha": self.alpha, "beta": self.beta},
            val_logits,
        )
        self.set_state(
            text=text,
            logit_scale=scale,
            keys=keys,
            values=values,
            alpha=torch.tensor(chosen["alpha"]),
            beta=torch.tensor(chosen["beta"]),
        )
        return self

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
        self,
        alpha: float = 1.0,
        beta: float = 5.5,
        alpha_grid: Sequence[float] = ALPHA_GRID,
        beta_grid: Sequence[float] = BETA_GRID,
        epochs: int = 20,
        lr: float = 1e-3,
    ) -> None:
        super().__init__(alpha, beta, alpha_grid, beta_grid)
        self.epochs = int(epochs)
        self.lr = float(lr)

    def hyperparameters(self) -> dict[str, Any]:
        return {**super().hyperparameters(), "epochs": self.epochs, "lr": self.lr}

    def _tune_keys(self, data: FitData, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        scale, labels = scale_tensor(data), data.support_labels.long()
        sets = support_sets(data)
        zero_shot = [cosine_logits(x, data.class_embeddings, scale) for x in sets]
        keys = keys.clone().requires_grad_()
        beta = torch.tensor(self.beta)

        def loss(step: int) -> torch.Tensor:
            x = sets[step % len(sets)]
            logits = zero_shot[step % len(sets)] + self.alpha * cache_logits(x, keys, values, beta)
            return F.cross_entropy(logits, labels)

        train_adamw([keys], loss, steps=self.epochs, lr=self.lr, eps=1e-4)
        return keys.detach()
