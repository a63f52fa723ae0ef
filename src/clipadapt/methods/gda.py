"""GDA: Gaussian discriminant analysis on CLIP features (Wang et al., ICLR 2024,
"A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation").

Class means mu_k and one shared covariance from the support features (and views). The
precision is the paper's empirical-Bayes ridge estimate, with Xc the class-centred features
(n, D) and S = Xc^T Xc / (n - 1):

    P = D * (Xc^T Xc + tr(S) I)^-1

giving the linear classifier w_k = P mu_k, b_k = log(1/C) - mu_k^T P mu_k / 2, and

    logits(f) = s * f @ T.T + alpha * (f @ W.T + b)

with alpha searched on the validation set (the paper's grid of powers of ten). The estimate
corresponds to Sigma = ((n - 1) S + tr(S) I) / D, a scaled and shrunk sample covariance, so
Mahalanobis distances are on that scale; class rankings and OOD rankings are unaffected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Self

import torch

from clipadapt.methods.base import DataKind, FitData, Method
from clipadapt.methods.common import (
    check_fit_data,
    class_means,
    cosine_logits,
    scale_tensor,
    stacked_support,
)
from clipadapt.methods.selection import choose


def ridge_precision(centered: torch.Tensor) -> torch.Tensor | None:
    """``D * (Xc^T Xc + tr(S) I)^-1`` for class-centred rows ``Xc`` (n, D); None if Xc = 0.

    Inverts in the smaller of the n- and D-dimensional spaces (Woodbury when n < D).
    """
    n, dim = centered.shape
    ridge = float(centered.pow(2).sum()) / max(n - 1, 1)  # tr(S)
    if ridge <= 0:
        return None
    if n < dim:  # (Xc^T Xc + r I)^-1 = (I - Z^T Z) / r with Z = chol(r I + Xc Xc^T)^-1 Xc
        gram = centered @ centered.T + ridge * torch.eye(n)
        z = torch.linalg.solve_triangular(torch.linalg.cholesky(gram), centered, upper=False)
        return torch.addmm(torch.eye(dim), z.T, z, beta=dim / ridge, alpha=-dim / ridge)
    scatter = centered.T @ centered + ridge * torch.eye(dim)
    return dim * torch.cholesky_inverse(torch.linalg.cholesky(scatter))


class GDA(Method):
    """Training-free GDA on top of zero-shot CLIP; ``alpha`` is the no-validation default.

    With one example per class and no views there is no within-class scatter; the precision
    falls back to the identity (Euclidean nearest mean), recorded in ``selected``.
    """

    name = "gda"
    reads = frozenset({DataKind.SUPPORT, DataKind.SUPPORT_VIEWS, DataKind.VALIDATION})
    training_free = True

    def __init__(
        self,
        alpha: float = 0.1,
        alpha_grid: Sequence[float] = tuple(10.0**i for i in range(-4, 5)),
    ) -> None:
        super().__init__()
        self.alpha = float(alpha)
        self.alpha_grid = tuple(float(v) for v in alpha_grid)

    def hyperparameters(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "alpha_grid": list(self.alpha_grid)}

    def fit(self, data: FitData) -> Self:
        check_fit_data(self, data)
        text, scale = data.class_embeddings, scale_tensor(data)
        x, y = stacked_support(data)
        means = class_means(self, x, y, data.num_classes)
        precision = ridge_precision(x - means[y])
        if precision is None:
            precision = torch.eye(x.shape[1])
            self.selected["precision"] = {
                "value": "identity",
                "how": "no within-class scatter (one example per class, no views)",
            }
        weight = means @ precision
        bias = math.log(1.0 / data.num_classes) - 0.5 * (weight * means).sum(dim=-1)

        def val_logits(f: torch.Tensor) -> torch.Tensor:  # (alpha, M, C)
            alpha = torch.tensor(self.alpha_grid).view(-1, 1, 1)
            return cosine_logits(f, text, scale) + alpha * (f @ weight.T + bias)

        chosen = choose(self, data, {"alpha": self.alpha_grid}, {"alpha": self.alpha}, val_logits)
        self.set_state(
            text=text,
            logit_scale=scale,
            means=means,
            precision=precision,
            weight=weight,
            bias=bias,
            alpha=torch.tensor(chosen["alpha"]),
        )
        return self

    def predict_logits(self, features: torch.Tensor) -> torch.Tensor:
        s = self.state
        gda = features @ s("weight").T + s("bias")
        return cosine_logits(features, s("text"), s("logit_scale")) + s("alpha") * gda

    def mahalanobis_distance(self, features: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance to the nearest class mean, min_k (f-mu_k)^T P (f-mu_k)."""
        s = self.state
        quadratic = ((features @ s("precision")) * features).sum(dim=-1, keepdim=True)
        cross = features @ s("weight").T  # f^T P mu_k (P is symmetric)
        constant = (s("weight") * s("means")).sum(dim=-1)  # mu_k^T P mu_k
        return (quadratic - 2 * cross + constant).min(dim=-1).values.clamp_min(0.0)
