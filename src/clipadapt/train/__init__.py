"""Training that updates tower weights on image-text pairs: the losses, and the registry that
names them.

``LOSSES`` is a plain mapping built from ``clipadapt.catalog.LOSS_CLASSES``; adding a loss
means adding its entry there (and its import here, to export it).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from clipadapt.catalog import LOSS_CLASSES, check_loss, load_classes
from clipadapt.train.losses import (
    ClipLoss,
    CWCLLoss,
    DistillLoss,
    InfoLOOBLoss,
    LogitScale,
    SigLipLoss,
    SupervisedContrastiveLoss,
)

LOSSES: dict[str, type[nn.Module]] = load_classes(LOSS_CLASSES)


def create_loss(name: str, **hyperparameters: Any) -> nn.Module:
    """A new loss module by registry name, e.g. ``create_loss("siglip", init_bias=-5.0)``."""
    return LOSSES[check_loss(name)](**hyperparameters)


__all__ = [
    "LOSSES",
    "CWCLLoss",
    "ClipLoss",
    "DistillLoss",
    "InfoLOOBLoss",
    "LogitScale",
    "SigLipLoss",
    "SupervisedContrastiveLoss",
    "create_loss",
]
