"""``auto``: pick a method by cross-validation on the labelled few-shot images.

The candidates are the methods that read cached features only (those that run a tower take
minutes per fit), from the simplest to the most flexible: ``zeroshot``, ``ncm``, ``gda``,
``tip_adapter`` (training-free, fewest learned numbers first), then ``lp_zs``,
``linear_probe``, ``tip_adapter_f``, ``clip_adapter`` (trained). That order is the tie rule:
of equally scored candidates the earlier one wins.

Each candidate is scored by the pooled held-out acc1 of stratified k-fold cross-validation
over support + validation images (:func:`clipadapt.methods.selection.cv_folds`: plain
features, ``k = min(5, smallest class count)``, folds seeded by ``FitData.seed``). Inside the
folds a candidate's searched hyperparameters are fixed at their preferred values: a nested
search in every fold costs several times more (seconds per candidate at 16 shots), and
scoring each candidate at its best grid point instead would favour the candidates with the
largest grids (the maximum of 960 noisy Tip-Adapter scores is biased upwards). The winner
is fitted on ``FitData`` as given (support, views and validation, as it reads them),
choosing its own hyperparameters by ``FitData.selection``, and predictions delegate to it.
With fewer than two labelled images in some class there are no folds and the first
candidate is used. With ``FitData.selection == "crafted_shift"`` candidates are scored
instead by their acc1 on the validation set as given (the validation images under crafted
shifts), fitted on the support set (and views) at their preferred hyperparameters.

``selected["method"]`` records the choice and every candidate's score; the chosen method's
own records follow. Saving writes the chosen method's directory (``load_method`` returns the
chosen method), the ``method`` record kept in its ``selected``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from clipadapt.estimator import NotFittedError
from clipadapt.methods.base import DataKind, FitData, Method
from clipadapt.methods.clip_adapter import ClipAdapter
from clipadapt.methods.common import check_fit_data, validation_set
from clipadapt.methods.gda import GDA
from clipadapt.methods.linear import LinearProbe, ZeroShotLinearProbe
from clipadapt.methods.ncm import NearestClassMean
from clipadapt.methods.selection import SearchedMethod, cv_folds
from clipadapt.methods.tip_adapter import TipAdapter, TipAdapterF
from clipadapt.methods.zeroshot import ZeroShot

CANDIDATES: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        ZeroShot,
        NearestClassMean,
        GDA,
        TipAdapter,
        ZeroShotLinearProbe,
        LinearProbe,
        TipAdapterF,
        ClipAdapter,
    )
}


def at_preferred(cls: type[Method]) -> Method:
    """A candidate with its searched hyperparameters fixed at their preferred values."""
    if issubclass(cls, SearchedMethod):
        return cls(**{name: search.preferred for name, search in cls.searches.items()})
    return cls()


class Auto(Method):
    """The candidate with the best cross-validated acc1 (see the module docstring);
    ``candidates`` restricts and orders them (default: all, in the documented order)."""

    name = "auto"
    reads = frozenset({DataKind.SUPPORT, DataKind.SUPPORT_VIEWS, DataKind.VALIDATION})
    training_free = False

    def __init__(self, candidates: Sequence[str] | None = None) -> None:
        super().__init__()
        if candidates is not None:
            candidates = tuple(candidates)
            unknown = [name for name in candidates if name not in CANDIDATES]
            if unknown or not candidates:
                raise ValueError(
                    f"auto: candidates {list(candidates)}: choose among {', '.join(CANDIDATES)}"
                )
        self.candidates = candidates
        self.chosen: Method | None = None

    def _fit(self, data: FitData) -> None:
        check_fit_data(self, data)
        names = list(self.candidates or CANDIDATES)
        crafted = data.selection == "crafted_shift" and validation_set(data) is not None
        folds = [] if crafted else cv_folds(data)
        scores = {}
        if crafted:
            support = data.only(frozenset({DataKind.SUPPORT, DataKind.SUPPORT_VIEWS}))
            for name in names:
                cls = CANDIDATES[name]
                candidate = at_preferred(cls).fit(support.only(cls.reads))
                scores[name] = float(
                    (candidate.predict(data.val_features) == data.val_labels).float().mean()
                )
            best = max(scores.values())
            choice = next(name for name in names if scores[name] == best)
            record = {
                "value": choice,
                "how": "acc1 on the validation images under crafted shifts, candidates fitted "
                "on the support set at their preferred hyperparameters; ties to the earlier one",
                "mode": "crafted_shift",
                "candidates": scores,
            }
        elif folds:
            for name in names:
                correct = 0
                for fold, held, labels in folds:
                    candidate = at_preferred(CANDIDATES[name]).fit(fold)
                    correct += int((candidate.predict(held) == labels).sum())
                scores[name] = correct / sum(len(labels) for _, _, labels in folds)
            best = max(scores.values())
            choice = next(name for name in names if scores[name] == best)
            record = {
                "value": choice,
                "how": f"{len(folds)}-fold cross-validation acc1 on support+validation, "
                "candidates at their preferred hyperparameters; ties to the earlier candidate",
                "mode": "cv",
                "candidates": scores,
                "folds": len(folds),
            }
        else:
            choice = names[0]
            record = {
                "value": choice,
                "how": "first candidate (a class has under 2 labelled images: no folds)",
                "mode": "cv",
                "candidates": dict.fromkeys(names),
            }
        chosen = CANDIDATES[choice]().fit(data.only(CANDIDATES[choice].reads))
        chosen.selected = {"method": record, **chosen.selected}
        self.selected = chosen.selected
        self.chosen = chosen

    def _method(self) -> Method:
        if self.chosen is None:
            raise NotFittedError(f"{self.name}: call fit() before using the method")
        return self.chosen

    @property
    def supports_new_classes(self) -> bool:  # type: ignore[override]
        return self.chosen is not None and self.chosen.supports_new_classes

    def predict_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self._method().predict_logits(features)

    def transfer_logits(
        self, features: torch.Tensor, class_embeddings: torch.Tensor, classnames: list[str]
    ) -> torch.Tensor:
        return self._method().transfer_logits(features, class_embeddings, classnames)

    def save(
        self, directory: str | os.PathLike[str], extra_config: dict[str, Any] | None = None
    ) -> Path:
        """Save the chosen method (``load_method`` gives it back), with the choice's record."""
        return self._method().save(directory, extra_config)
