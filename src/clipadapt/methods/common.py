"""Input checks and small tensor helpers shared by the methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipadapt.methods.base import DataKind, FitData, Method


def check_fit_data(method: Method, data: FitData, reads: frozenset[DataKind] | None = None) -> None:
    """Raise ``ValueError`` naming the field when ``data`` lacks or garbles what ``method`` reads
    (or ``reads``, when given).

    The support set is required by methods that read it; augmented views and the
    validation set are optional (methods fall back to defaults without them).
    """
    name = method.name
    reads = method.reads if reads is None else reads
    embeddings = data.class_embeddings
    if embeddings is None or embeddings.ndim != 2:
        shape = None if embeddings is None else tuple(embeddings.shape)
        raise ValueError(f"{name}: FitData.class_embeddings must be a (C, D) tensor, got {shape}")
    num_classes, dim = embeddings.shape
    if not data.logit_scale > 0:
        raise ValueError(f"{name}: FitData.logit_scale must be positive, got {data.logit_scale}")
    if DataKind.SUPPORT in reads:
        for field in ("support_features", "support_labels"):
            if getattr(data, field) is None:
                raise ValueError(
                    f"{name}: fit needs FitData.{field} (the method reads "
                    f"{DataKind.SUPPORT.value!r}), but it is None"
                )
        _check_labeled(
            name, "support", data.support_features, data.support_labels, num_classes, dim
        )
        views = data.support_views
        if DataKind.SUPPORT_VIEWS in reads and views is not None:
            expected = (len(data.support_features), dim)
            if views.ndim != 3 or tuple(views.shape[1:]) != expected:
                raise ValueError(
                    f"{name}: FitData.support_views must be (V, {expected[0]}, {dim}), "
                    f"got {tuple(views.shape)}"
                )
    if DataKind.VALIDATION in reads and validation_set(data) is not None:
        if data.val_labels is None:
            raise ValueError(
                f"{name}: FitData.val_features is given but FitData.val_labels is None"
            )
        _check_labeled(name, "val", data.val_features, data.val_labels, num_classes, dim)


def _check_labeled(
    name: str, prefix: str, features: torch.Tensor, labels: torch.Tensor, num_classes: int, dim: int
) -> None:
    if features.ndim != 2 or features.shape[1] != dim:
        raise ValueError(
            f"{name}: FitData.{prefix}_features must be (N, {dim}) like class_embeddings, "
            f"got {tuple(features.shape)}"
        )
    if labels.shape != (len(features),):
        raise ValueError(
            f"{name}: FitData.{prefix}_labels must be ({len(features)},), got {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"{name}: FitData.{prefix}_labels must be integer, got {labels.dtype}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"{name}: FitData.{prefix}_labels must lie in [0, {num_classes}), "
            f"got [{int(labels.min())}, {int(labels.max())}]"
        )


def validation_set(data: FitData) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The validation features and labels, or None when there are no validation examples."""
    if data.val_features is None or len(data.val_features) == 0:
        return None
    return data.val_features, data.val_labels


def support_sets(data: FitData) -> list[torch.Tensor]:
    """The support features followed by each augmented view: a list of (N, D) tensors."""
    views = [] if data.support_views is None else list(data.support_views.unbind(0))
    return [data.support_features, *views]


def stacked_support(data: FitData) -> tuple[torch.Tensor, torch.Tensor]:
    """Support features and views stacked into one labeled set ((1+V)*N, D), ((1+V)*N,)."""
    sets = support_sets(data)
    return torch.cat(sets), data.support_labels.long().repeat(len(sets))


def class_means(method: Method, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class means (C, D); every class needs at least one example."""
    counts = torch.bincount(y, minlength=num_classes)
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"{method.name}: no support examples for classes {missing}")
    return F.one_hot(y, num_classes).to(x.dtype).T @ x / counts[:, None].to(x.dtype)


def cosine_logits(
    features: torch.Tensor, weights: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """CLIP-style scores ``scale * f @ W.T`` (cosines when both sides are normalised)."""
    return scale * (features @ weights.T)


def scale_tensor(data: FitData) -> torch.Tensor:
    """``data.logit_scale`` as a float32 scalar tensor, the form methods store and use."""
    return torch.tensor(float(data.logit_scale), dtype=torch.float32)


class FixedTextScores:
    """``predict_logits``/``transfer_logits`` for methods that score image features against
    text embeddings they keep unchanged (state ``text`` and ``logit_scale``): zero-shot, and
    image-side adapters whose ``feature_backend`` produces the features."""

    supports_new_classes = True

    def predict_logits(self, features: torch.Tensor) -> torch.Tensor:
        return cosine_logits(features, self.state("text"), self.state("logit_scale"))

    def transfer_logits(
        self, features: torch.Tensor, class_embeddings: torch.Tensor, classnames: list[str]
    ) -> torch.Tensor:
        return cosine_logits(features, class_embeddings, self.state("logit_scale"))
