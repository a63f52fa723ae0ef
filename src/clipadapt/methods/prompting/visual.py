"""Pixel-space visual prompts: a learned border or patch added to every preprocessed image.

Bahng et al., "Exploring Visual Prompts for Adapting Large-Scale Models" (arXiv:2203.17274):
the prompt ``v`` is a learned image that is non-zero only on a frame of ``size`` pixels
("padding") or on a ``size`` x ``size`` square in the top-left corner ("patch"); the model
sees ``x + v``. The towers stay frozen and the class embeddings are the zero-shot ones;
``v`` is trained with cross-entropy through the image tower, so this works on any tower
(CNN or ViT). Because it changes the image features, test features come from
``feature_backend(backend)``, a backend that adds the prompt (and says so in its fingerprint).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from clipadapt.methods.base import DataKind, FitData
from clipadapt.methods.common import (
    FixedTextScores,
    check_fit_data,
    cosine_logits,
    scale_tensor,
)
from clipadapt.methods.prompting.base import TowerMethod, frozen
from clipadapt.methods.prompting.images import SupportPixels, require_backend, require_paths
from clipadapt.models.base import Backend, ImageAdaptedBackend
from clipadapt.models.prompt_access import backend_modules

KINDS = ("padding", "patch")


class PromptedImageBackend(ImageAdaptedBackend):
    """``base`` with a pixel prompt added to every preprocessed image before the image tower."""

    def __init__(self, base: Backend, prompt: torch.Tensor) -> None:
        self.prompt = prompt.to(base.device)
        super().__init__(base, [self.prompt])

    def encode_image_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.base.encode_image_batch(pixels + self.prompt)


def prompt_mask(kind: str, size: int, height: int, width: int) -> torch.Tensor:
    """(1, H, W) mask of the pixels a ``kind`` prompt of ``size`` pixels may change."""
    if kind not in KINDS:
        raise ValueError(f"visual prompt kind {kind!r}: use one of {KINDS}")
    if not 0 < size < min(height, width) / 2:
        raise ValueError(
            f"visual prompt size {size} must be between 1 and {min(height, width) // 2 - 1} "
            f"for {height}x{width} inputs"
        )
    mask = torch.zeros(1, height, width)
    if kind == "patch":
        mask[:, :size, :size] = 1
    else:
        mask[:] = 1
        mask[:, size:-size, size:-size] = 0
    return mask


class VisualPrompt(FixedTextScores, TowerMethod):
    """Pixel-space visual prompt (see the module docstring); ``views`` augmented views."""

    name = "visual_prompt"
    reads: ClassVar[frozenset[DataKind]] = frozenset(
        {DataKind.SUPPORT, DataKind.TOWER, DataKind.SUPPORT_IMAGES}
    )

    def __init__(
        self,
        kind: str = "padding",
        size: int = 30,
        views: int = 2,
        epochs: int = 10,
        batch_size: int = 32,
        lr: float = 1e-2,
        weight_decay: float = 0.0,
        precision: str = "fp32",
    ) -> None:
        super().__init__(epochs, batch_size, lr, weight_decay, "reencode", precision)
        self.kind = kind
        self.size = int(size)
        self.views = int(views)

    def _fit(self, data: FitData) -> None:
        check_fit_data(self, data)
        backend = require_backend(data, self.name)
        pixels = SupportPixels(backend, require_paths(data, self.name), self.views, data.augment)
        height, width = pixels.pixels(0, torch.tensor([0])).shape[-2:]
        mask = prompt_mask(self.kind, self.size, height, width).to(backend.device)
        prompt = torch.zeros(3, height, width, device=backend.device, requires_grad=True)
        text, scale = data.class_embeddings, scale_tensor(data)
        labels = data.support_labels.long()

        def loss(epoch: int, rows: torch.Tensor) -> torch.Tensor:
            batch = pixels.pixels(epoch, rows) + prompt * mask
            feats = F.normalize(backend.encode_image_batch(batch).float(), dim=-1).cpu()
            return F.cross_entropy(cosine_logits(feats, text, scale), labels[rows])

        with frozen(backend_modules(backend)):
            self._train(data, [prompt], loss)
        self.set_state(prompt=prompt * mask, text=text, logit_scale=scale)

    def feature_backend(self, backend: Backend) -> Backend:
        return PromptedImageBackend(backend, self.state("prompt"))
