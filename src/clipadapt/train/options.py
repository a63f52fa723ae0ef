"""How to fine-tune, as plain values checked without torch (the CLI validates its arguments
with these before any heavy import)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from clipadapt.catalog import TOWERS, check_loss
from clipadapt.views import DEFAULT_AUGMENT

PRECISION_NAMES = ("fp32", "bf16")
IMAGE_PATHS = ("cached", "reencode")
"""Where a locked image tower's features come from: the feature cache, computed once (LiT),
or the tower run again at every step (needed for augmented views; what the cache saves)."""

TRAIN_FORMS = "all, last:N (N >= 1) or lora"
TRAIN_CHOICES = (
    "all (both towers), text (image tower locked: LiT), image (text tower locked), last:N, "
    "lora, or a tower and a mode such as image:last:2 or text:lora"
)


def parse_train(value: str) -> tuple[tuple[str, ...], str]:
    """``(towers, mode)`` for a ``finetune --train`` value (see ``TRAIN_CHOICES``)."""
    tower_name, _, rest = value.partition(":")
    if tower_name in TOWERS:
        mode = rest or "all"
        towers: tuple[str, ...] = (tower_name,)
    else:
        mode, towers = value, TOWERS
    try:
        TrainMode.parse(mode)
    except ValueError:
        raise ValueError(f"--train {value!r}: use {TRAIN_CHOICES}") from None
    return towers, mode


@dataclass(frozen=True)
class TrainMode:
    """A parsed ``train`` value."""

    kind: str  # "all", "last" or "lora"
    blocks: int = 0

    @classmethod
    def parse(cls, value: str) -> TrainMode:
        if value in ("all", "lora"):
            return cls(value)
        match = re.fullmatch(r"last:(\d+)", value)
        if match and int(match.group(1)) >= 1:
            return cls("last", int(match.group(1)))
        raise ValueError(f"train {value!r}: use {TRAIN_FORMS}")


@dataclass(frozen=True)
class FinetuneOptions:
    """How to fine-tune (see ``clipadapt.train.contrastive``): the loss, what is trained in
    which ``towers``, the optimiser, ``accumulate`` chunks per batch, the ``retention``
    regulariser's weight, ``views`` augmented views cycled with the epochs when images are
    encoded (epoch e uses view e mod (1 + views), 0 = centre), ``image_path`` for a locked
    image tower (see ``IMAGE_PATHS``)."""

    loss: str = "clip"
    train: str = "all"
    towers: tuple[str, ...] = TOWERS
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-5
    weight_decay: float = 0.1
    seed: int = 1
    precision: str = "fp32"
    accumulate: int = 1
    retention: float = 0.0
    views: int = 0
    augment: tuple[str, ...] = DEFAULT_AUGMENT
    lora_rank: int = 8
    image_path: str = "cached"

    def __post_init__(self) -> None:
        check_loss(self.loss)
        TrainMode.parse(self.train)
        if not self.towers or any(t not in TOWERS for t in self.towers):
            raise ValueError(f"towers {list(self.towers)}: name one or both of {TOWERS}")
        if self.image_path not in IMAGE_PATHS:
            raise ValueError(f"image_path {self.image_path!r}: use one of {IMAGE_PATHS}")
        if self.precision not in PRECISION_NAMES:
            raise ValueError(f"precision {self.precision!r}: use one of {PRECISION_NAMES}")
        for name in ("epochs", "batch_size", "accumulate", "lora_rank"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.accumulate > self.batch_size:
            raise ValueError(
                f"accumulate {self.accumulate} exceeds batch_size {self.batch_size}: "
                "each chunk needs at least one pair"
            )
        if self.retention < 0 or self.views < 0 or not self.lr > 0:
            raise ValueError(
                f"retention ({self.retention}) and views ({self.views}) must be >= 0 and lr "
                f"({self.lr}) > 0"
            )
