"""Linear probes on frozen features: plain logistic regression and a zero-shot-anchored one."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from clipadapt.methods.base import DataKind, FitData
from clipadapt.methods.common import cosine_logits, scale_tensor, stacked_support
from clipadapt.methods.selection import (
    Grid,
    GridFit,
    Search,
    Searchable,
    SearchedMethod,
    fit_each,
    search_value,
)
from clipadapt.methods.training import minimize_lbfgs

Linear = tuple[torch.Tensor, torch.Tensor]
C_GRID = tuple(10.0 ** (k / 2) for k in range(-12, 13))
"""The CLIP paper's range for the inverse regularisation, 1e-6 to 1e6, at half-decade steps
(the paper sweeps 96 log-spaced values, then refines): few-shot seeds prefer values far
below the 0.03 that an earlier grid of 0.03-100 started at."""
PENALTY_GRID = (10000.0, 3000.0, 1000.0, 300.0, 100.0, 30.0, 10.0, 1.0, 0.1)


class LinearProbe(SearchedMethod):
    """Multinomial logistic regression ``logits = f @ W.T + b`` on the support features
    (and views), minimising ``0.5 ||W||^2 + c * sum_i CE_i`` like scikit-learn's
    ``LogisticRegression(C=c)`` (bias unpenalised), with full-batch L-BFGS from zero.

    ``c`` is searched when None or a list (1.0 preferred on validation ties; a smaller c
    regularises more); a grid is fitted in its order, each fit warm-started from the previous.
    """

    name = "linear_probe"
    reads = frozenset({DataKind.SUPPORT, DataKind.SUPPORT_VIEWS, DataKind.VALIDATION})
    training_free = False
    searches: ClassVar[dict[str, Search]] = {"c": Search(C_GRID, 1.0, stronger="low")}

    def __init__(self, c: Searchable = None, max_iter: int = 100) -> None:
        super().__init__()
        self.c = search_value("c", c)
        self.max_iter = int(max_iter)

    def _fit_grid(self, data: FitData, grid: Grid) -> GridFit:
        x, y = stacked_support(data)
        dim = x.shape[1]
        previous = (torch.zeros(data.num_classes, dim), torch.zeros(data.num_classes))

        def fit_c(c: float) -> Linear:
            nonlocal previous
            weight, bias = (t.clone().requires_grad_() for t in previous)
            penalty = 1.0 / (2.0 * c * len(x))

            def loss() -> torch.Tensor:
                return F.cross_entropy(x @ weight.T + bias, y) + penalty * weight.pow(2).sum()

            minimize_lbfgs([weight, bias], loss, self.max_iter)
            previous = (weight.detach(), bias.detach())
            return previous

        return fit_each(
            grid["c"],
            fit_c,
            lambda m, f: f @ m[0].T + m[1],
            lambda m, _: {"weight": m[0], "bias": m[1]},
        )

    def predict_logits(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.state("weight").T + self.state("bias")


class ZeroShotLinearProbe(SearchedMethod):
    """Linear probe initialised at, and pulled towards, the zero-shot classifier (after CLAP,
    Silva-Rodriguez et al., CVPR 2024, and LP++). With T the text embeddings and s the
    logit scale, ``logits = s * f @ W.T`` and W minimises (from ``W = T``)

        mean_i CE(s f_i W^T, y_i) + penalty * (1/C) sum_k lambda_k ||w_k - t_k||^2,

    where ``lambda_k`` is CLAP's class-adaptive weight: the mean zero-shot probability of
    class k over class k's support examples (trust the text where zero-shot already works).
    CLAP fixes ``penalty = 1`` (with its own feature scaling); here it is searched when None
    or a list (300 preferred on validation ties; a larger penalty regularises more), a grid
    fitted in its order, each fit warm-started from the previous. A very large penalty keeps
    W at T, i.e. zero-shot CLIP. The problem is convex (W is not renormalised, unlike CLAP),
    solved by full-batch L-BFGS for at most ``max_iter`` steps.
    """

    name = "lp_zs"
    reads = frozenset({DataKind.SUPPORT, DataKind.SUPPORT_VIEWS, DataKind.VALIDATION})
    training_free = False
    searches: ClassVar[dict[str, Search]] = {
        "penalty": Search(PENALTY_GRID, 300.0, stronger="high")
    }

    def __init__(self, penalty: Searchable = None, max_iter: int = 100) -> None:
        super().__init__()
        self.penalty = search_value("penalty", penalty)
        self.max_iter = int(max_iter)

    def _fit_grid(self, data: FitData, grid: Grid) -> GridFit:
        x, y = stacked_support(data)
        text, scale = data.class_embeddings, scale_tensor(data)
        zero_shot = cosine_logits(x, text, scale).softmax(dim=-1)
        one_hot = F.one_hot(y, data.num_classes).to(x.dtype)
        trust = (one_hot * zero_shot).sum(0) / one_hot.sum(0).clamp_min(1.0)  # lambda_k
        previous = text.clone()

        def fit_penalty(penalty: float) -> torch.Tensor:
            nonlocal previous
            weight = previous.clone().requires_grad_()

            def loss() -> torch.Tensor:
                anchor = (trust * (weight - text).pow(2).sum(-1)).mean()
                return F.cross_entropy(cosine_logits(x, weight, scale), y) + penalty * anchor

            minimize_lbfgs([weight], loss, self.max_iter)
            previous = weight.detach()
            return previous

        return fit_each(
            grid["penalty"],
            fit_penalty,
            lambda w, f: cosine_logits(f, w, scale),
            lambda w, _: {"weight": w, "logit_scale": scale},
        )

    def predict_logits(self, features: torch.Tensor) -> torch.Tensor:
        return cosine_logits(features, self.state("weight"), self.state("logit_scale"))
