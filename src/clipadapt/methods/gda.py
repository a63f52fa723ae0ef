"""GDA: Gaussian discriminant analysis on CLIP features (Wang et al., ICLR 2024,
"A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation").

Class means mu_k and one shared covariance from the support features (and views). The
precision is the paper's empirical-Bayes ridge estimate, with Xc the class-centred features
(n, D) and S = Xc^T Xc / (n - 1):

    P = D * (Xc^T Xc + tr(S) I)^-1

giving the linear classifier w_k = P mu_k, b_k = log(1/C) - mu_k^T P mu_k / 2, and

    logits(f) = s * f @ T.T + alpha * (f @ W.T + b)

with alpha searched (the paper's grid of powers of ten; see :mod:`clipadapt.methods.selection`;
smaller alpha, closer to zero-shot CLIP, counts as the stronger regularisation). The estimate
corresponds to Sigma = ((n - 1) S + tr(S) I) / D, a scaled and shrunk sample covariance, so
Mahalanobis distances are on that scale; class rankings and OOD rankings are unaffected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from clipadapt.methods.base import DataKind, FitData
from clipadapt.methods.common import class_means, cosine_logits, scale_tensor, stacked_support
from clipadapt.methods.selection import (
    Grid,
    GridFit,
    Position,
    Search,
    Searchable,
    SearchedMethod,
    search_value,
)


@dataclass
class Precision:
    """``P = a I + b B^T (L L^T)^-1 B``: basis B (m, D), Cholesky factor L (m, m), (a, b)."""

    basis: torch.Tensor
    cholesky: torch.Tensor
    scales: torch.Tensor

    @classmethod
    def identity(cls, dim: int) -> Precision:
        return cls(torch.zeros(1, dim), torch.ones(1, 1), torch.tensor([1.0, 0.0]))

    def apply(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows @ P`` (P is symmetric) for rows (N, D)."""
        inner = torch.cholesky_solve(self.basis @ rows.T, self.cholesky)  # (m, N)
        return self.scales[0] * rows + self.scales[1] * (inner.T @ self.basis)

    def quadratic(self, rows: torch.Tensor) -> torch.Tensor:
        """``f^T P f`` for every row f of ``rows`` (N, D)."""
        projected = self.basis @ rows.T  # (m, N)
        inner = torch.cholesky_solve(projected, self.cholesky)
        return self.scales[0] * rows.pow(2).sum(-1) + self.scales[1] * (projected * inner).sum(0)


def ridge_precision(centered: torch.Tensor) -> Precision | None:
    """``D * (Xc^T Xc + tr(S) I)^-1`` for class-centred rows ``Xc`` (n, D), in factored form;
    None if Xc = 0. Works in the smaller of the n- and D-dimensional spaces: when n < D,
    Woodbury gives ``(D/r) (I - Xc^T (Xc Xc^T + r I)^-1 Xc)`` with r = tr(S), so the fit never
    forms a D x D matrix (an n x n Cholesky factor instead)."""
    n, dim = centered.shape
    small = n < dim
    gram = centered @ centered.T if small else centered.T @ centered
    ridge = float(gram.trace()) / max(n - 1, 1)  # tr(S)
    if ridge <= 0:
        return None
    gram.diagonal().add_(ridge)
    if small:
        scales = torch.tensor([dim / ridge, -dim / ridge])
        return Precision(centered, torch.linalg.cholesky(gram), scales)
    return Precision(torch.eye(dim), torch.linalg.cholesky(gram), torch.tensor([0.0, dim]))


class GDA(SearchedMethod):
    """Training-free GDA on top of zero-shot CLIP; ``alpha`` is searched when None or a list
    (0.1 preferred on validation ties and used without validation data).

    With one example per class and no views there is no within-class scatter; the precision
    falls back to the identity (Euclidean nearest mean), recorded in ``selected``.
    """

    name = "gda"
    reads = frozenset({DataKind.SUPPORT, DataKind.SUPPORT_VIEWS, DataKind.VALIDATION})
    training_free = True
    searches: ClassVar[dict[str, Search]] = {
        "alpha": Search(tuple(10.0**i for i in range(-4, 5)), 0.1, stronger="low")
    }

    def __init__(self, alpha: Searchable = None) -> None:
        super().__init__()
        self.alpha = search_value("alpha", alpha)

    def _fit_grid(self, data: FitData, grid: Grid) -> GridFit:
        text, scale = data.class_embeddings, scale_tensor(data)
        x, y = stacked_support(data)
        means = class_means(self, x, y, data.num_classes)
        precision = ridge_precision(x - means[y])
        notes = {}
        if precision is None:
            precision = Precision.identity(x.shape[1])
            notes["precision"] = {
                "value": "identity",
                "how": "no within-class scatter (one example per class, no views)",
            }
        weight = precision.apply(means)
        bias = math.log(1.0 / data.num_classes) - 0.5 * (weight * means).sum(dim=-1)
        alphas = grid["alpha"]

        def logits(f: torch.Tensor) -> torch.Tensor:  # (alpha, M, C)
            alpha = torch.tensor(alphas).view(-1, 1, 1)
            return cosine_logits(f, text, scale) + alpha * (f @ weight.T + bias)

        def state(position: Position) -> dict[str, torch.Tensor]:
            return {
                "text": text,
                "logit_scale": scale,
                "means": means,
                "precision_basis": precision.basis,
                "precision_cholesky": precision.cholesky,
                "precision_scales": precision.scales,
                "weight": weight,
                "bias": bias,
                "alpha": torch.tensor(alphas[position[0]]),
            }

        return GridFit(logits, state, notes)

    def predict_logits(self, features: torch.Tensor) -> torch.Tensor:
        s = self.state
        gda = features @ s("weight").T + s("bias")
        return cosine_logits(features, s("text"), s("logit_scale")) + s("alpha") * gda

    def precision(self) -> torch.Tensor:
        """The shared precision matrix P (D, D), formed on request."""
        return self._precision().apply(torch.eye(self.state("means").shape[1]))

    def _precision(self) -> Precision:
        s = self.state
        return Precision(s("precision_basis"), s("precision_cholesky"), s("precision_scales"))

    def mahalanobis_distance(self, features: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance to the nearest class mean, min_k (f-mu_k)^T P (f-mu_k)."""
        s = self.state
        quadratic = self._precision().quadratic(features)[:, None]
        cross = features @ s("weight").T  # f^T P mu_k (P is symmetric)
        constant = (s("weight") * s("means")).sum(dim=-1)  # mu_k^T P mu_k
        return (quadratic - 2 * cross + constant).min(dim=-1).values.clamp_min(0.0)
