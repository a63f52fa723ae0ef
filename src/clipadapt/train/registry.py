"""The training-loss registry: ``LOSSES`` maps each name of
``clipadapt.catalog.LOSS_CLASSES`` to its class."""

from __future__ import annotations

from typing import Any

from torch import nn

from clipadapt.catalog import LOSS_CLASSES, check_loss, load_classes

LOSSES: dict[str, type[nn.Module]] = load_classes(LOSS_CLASSES)


def create_loss(name: str, **hyperparameters: Any) -> nn.Module:
    """A new loss module by registry name, e.g. ``create_loss("siglip", init_bias=-5.0)``."""
    return LOSSES[check_loss(name)](**hyperparameters)
