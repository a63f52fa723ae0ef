"""Prompt learning from unlabeled images: distillation from a teacher, pseudo-labels, entropy.

All three learn CoOp's context against the cached features of unlabeled images
(``FitData.unlabeled_features``). Whether those images include test images is the runner's
``FitData.unlabeled_includes_test``; the method records it in ``selected["transductive"]`` so
it travels with the saved model and every result (inductive and transductive results never
share a table column).

* ``prompt_distill`` (PromptKD-style; Li et al., CVPR 2024, arXiv:2403.02781): the student's
  logits match a teacher's with ``T^2 KL(softmax(t/T) || softmax(s/T))``. The teacher is
  either a registered method fitted first, inside the same ``fit``, on the same labeled
  support (``teacher="tip_adapter_f"``, ``teacher_params={...}``), so it has seen exactly the
  K shots the student's result claims; or a saved fitted method (``teacher=<directory>``),
  possibly adapted on another, larger model (see ``teacher.py``).
* ``coop_unsupervised`` with ``objective="pseudo_label"`` (UPL; Huang et al., 2022,
  arXiv:2204.03649): cross-entropy to zero-shot predictions, keeping the ``per_class`` most
  confident images of each predicted class.
* ``objective="entropy"`` (entropy minimisation on the target domain, as in AD-CLIP,
  arXiv:2308.05659): mean prediction entropy minus the entropy of the mean prediction (the
  information-maximisation form, which prevents collapse onto one class).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from clipadapt.methods.base import DataKind, FitData
from clipadapt.methods.common import check_fit_data, cosine_logits, scale_tensor
from clipadapt.methods.prompting.coop import CoOp
from clipadapt.methods.prompting.teacher import teacher_logits
from clipadapt.train.loop import world

OBJECTIVES = ("pseudo_label", "entropy")


def _unlabeled(method: CoOp, data: FitData) -> torch.Tensor:
    check_fit_data(method, data, frozenset({DataKind.UNLABELED, DataKind.TOWER}))
    if data.unlabeled_features is None or len(data.unlabeled_features) == 0:
        raise ValueError(
            f"{method.name}: fit needs FitData.unlabeled_features (the method reads "
            "'unlabeled'), but there are none"
        )
    method.selected["transductive"] = bool(data.unlabeled_includes_test)
    return data.unlabeled_features


class PromptDistill(CoOp):
    """CoOp context distilled from a teacher's logits on unlabeled images."""

    name = "prompt_distill"
    reads: ClassVar[frozenset[DataKind]] = frozenset(
        {
            DataKind.UNLABELED,
            DataKind.TOWER,
            DataKind.SUPPORT,
            DataKind.SUPPORT_VIEWS,
            DataKind.VALIDATION,
        }
    )
    """The labeled kinds are for a teacher fitted in ``fit``; the student itself learns from
    the teacher's predictions on the unlabeled images only.

    The default teacher, Tip-Adapter-F, was chosen for being fast and tuning itself on the
    validation shots, not from benchmark results."""

    def __init__(
        self,
        teacher: str = "tip_adapter_f",
        teacher_params: dict[str, Any] | None = None,
        temperature: float = 1.0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.teacher = teacher
        self.teacher_params = dict(teacher_params or {})
        self.temperature = float(temperature)

    def _fit(self, data: FitData) -> None:
        from clipadapt.methods import METHODS

        if self.teacher in METHODS:  # fitted on the labeled support first
            check_fit_data(self, data)
        features = _unlabeled(self, data)
        logits, self.selected["teacher"] = teacher_logits(
            self.name, self.teacher, self.teacher_params, data, features
        )
        target = F.softmax(logits / self.temperature, dim=-1)
        if target.shape != (len(features), data.num_classes):
            raise ValueError(
                f"{self.name}: the teacher gives scores of shape {tuple(target.shape)}, the "
                f"data needs ({len(features)}, {data.num_classes})"
            )
        t = self.temperature

        def objective(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            student = F.log_softmax(logits / t, dim=-1)
            return t * t * F.kl_div(student, target[rows], reduction="batchmean")

        self._fit_context(data, lambda _e, rows: features[rows], features, objective)


class UnsupervisedCoOp(CoOp):
    """CoOp context from unlabeled images by zero-shot pseudo-labels or entropy minimisation."""

    name = "coop_unsupervised"
    reads: ClassVar[frozenset[DataKind]] = frozenset({DataKind.UNLABELED, DataKind.TOWER})

    def __init__(self, objective: str = "pseudo_label", per_class: int = 16, **kwargs: Any):
        super().__init__(**kwargs)
        if objective not in OBJECTIVES:
            raise ValueError(f"objective {objective!r}: use one of {OBJECTIVES}")
        self.objective = objective
        self.per_class = int(per_class)

    def _fit(self, data: FitData) -> None:
        features = _unlabeled(self, data)
        if self.objective == "entropy" and world()[1] > 1:
            raise ValueError(
                f"{self.name}: the entropy objective's diversity term is a function of the "
                "whole batch's mean prediction, which ranks that each hold a share cannot "
                "reproduce; run it as one process (or use objective='pseudo_label')"
            )
        if self.objective == "entropy":

            def objective(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
                probs = F.softmax(logits, dim=-1)
                mean = probs.mean(0)
                return (
                    -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()
                    + (mean * mean.clamp_min(1e-12).log()).sum()
                )

            self._fit_context(data, lambda _e, rows: features[rows], features, objective)
        else:
            keep, labels = self._pseudo_labels(data, features)
            chosen = features[keep]
            self.selected["pseudo_labelled"] = len(keep)
            self._fit_context(
                data,
                lambda _e, rows: chosen[rows],
                chosen,
                lambda logits, rows: F.cross_entropy(logits, labels[rows]),
            )

    def _pseudo_labels(
        self, data: FitData, features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``per_class`` most confident zero-shot predictions of each class."""
        probs = F.softmax(cosine_logits(features, data.class_embeddings, scale_tensor(data)), -1)
        confidence, predicted = probs.max(-1)
        keep = []
        for c in range(data.num_classes):
            members = torch.nonzero(predicted == c).flatten()
            order = confidence[members].argsort(descending=True, stable=True)
            keep.append(members[order[: self.per_class]])
        rows = torch.cat(keep).sort().values
        return rows, predicted[rows]
