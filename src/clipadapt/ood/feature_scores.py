"""Scores in feature space: k-nearest-neighbour distance and Mahalanobis distance.

Both read the image features and statistics of the labeled support set, not the method's
logits, so they reject the same inputs whichever method classifies.

- KNN (Sun et al., ICML 2022): the Euclidean distance from the L2-normalised feature to its
  k-th nearest neighbour among the normalised support features (and their augmented views).
  The paper picks k for full training sets of thousands of images per class; with a few
  shots per class the bank is tiny and any k beyond the shot count reaches into other
  classes, so the default is ``k = 1``: the distance to the nearest support image.
- Mahalanobis (Lee et al., NeurIPS 2018): ``min_k (f - mu_k)^T P (f - mu_k)`` with the class
  means and the shared (ridge-regularised) precision of GDA, computed by
  :meth:`clipadapt.methods.GDA.mahalanobis_distance` on a GDA fitted to the same data.
"""

from __future__ import annotations

from pathlib import Path

import torch

from clipadapt.methods.base import DataKind, FitData
from clipadapt.methods.common import check_fit_data, stacked_support
from clipadapt.methods.gda import GDA
from clipadapt.ood.base import Detector, ScoreInput, TextEncoder

GDA_DIR = "gda"


class KNN(Detector):
    """Distance to the k-th nearest support feature (normalised features)."""

    name = "knn"
    uses = frozenset({ScoreInput.FEATURES})
    reads = frozenset({DataKind.SUPPORT, DataKind.SUPPORT_VIEWS})

    def __init__(self, k: int = 1) -> None:
        super().__init__()
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"knn: k must be a positive integer, got {k!r}")
        self.k = k

    def _fit(self, data: FitData, *, encode_texts: TextEncoder | None = None) -> None:
        check_fit_data(self, data)
        bank, _ = stacked_support(data)
        if len(bank) < self.k:
            raise ValueError(f"knn: k={self.k} but the support set has only {len(bank)} features")
        self.set_state(bank=torch.nn.functional.normalize(bank, dim=-1))

    def _score(self, features, logits, local_features) -> torch.Tensor:
        cosine = torch.nn.functional.normalize(features, dim=-1) @ self.state("bank").T
        kth = cosine.topk(self.k, dim=-1).values[:, -1]
        return (2.0 - 2.0 * kth).clamp_min(0.0).sqrt()


class Mahalanobis(Detector):
    """Squared Mahalanobis distance to the nearest class mean under GDA's shared covariance."""

    name = "mahalanobis"
    uses = frozenset({ScoreInput.FEATURES})
    reads = GDA.reads

    def __init__(self) -> None:
        super().__init__()
        self.gda: GDA | None = None

    def _fit(self, data: FitData, *, encode_texts: TextEncoder | None = None) -> None:
        # the distance does not depend on GDA's alpha: fix it rather than search it
        self.gda = GDA(alpha=GDA.searches["alpha"].preferred).fit(data)
        self.info["precision"] = self.gda.selected.get("precision", {"value": "ridge"})

    def _score(self, features, logits, local_features) -> torch.Tensor:
        return self.gda.mahalanobis_distance(features)

    def _save_extra(self, directory: Path) -> None:
        self.gda.save(directory / GDA_DIR)

    def _load_extra(self, directory: Path) -> None:
        self.gda = GDA.load(directory / GDA_DIR)
