"""The backend interface every model family implements.

A backend maps images and texts into one embedding space. ``encode_images`` takes a batch
already passed through ``preprocess`` (PIL image -> tensor); both encoders return
L2-normalised float32 embeddings on the CPU. ``image_fingerprint`` identifies everything that
determines an image embedding (weights, preprocessing, output transform), so the feature
cache can key on it; ``text_fingerprint`` does the same for texts.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn

TEXT_CHUNK = 256  # texts per forward pass: 1,000 classes x many templates stay within memory
IMAGE_DECODING = "decode2: exif orientation, high bit depth scaled"
"""What ``clipadapt.data.images.decode_image`` does, part of every image fingerprint: changing
the decoding changes the features, so the feature cache must never serve older entries."""


@dataclass(frozen=True)
class ModelInfo:
    """How results name a model: CLIP_benchmark's ``model`` and ``pretrained`` fields."""

    spec: str
    model: str
    pretrained: str


class Backend(ABC):
    """Images and texts into one embedding space."""

    info: ModelInfo
    preprocess: Callable[[Image.Image], torch.Tensor]
    preprocess_description: str
    embed_dim: int
    logit_scale: float
    device: torch.device
    preferred_batch_size: int = 64
    """Images per forward when extracting features (a CNN's activations at 64 take GBs)."""

    @abstractmethod
    def encode_image_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unnormalised embeddings of a preprocessed batch (B, 3, H, W) on ``self.device``."""

    @abstractmethod
    def encode_text_batch(self, texts: list[str]) -> torch.Tensor:
        """Unnormalised embeddings of a batch of texts."""

    @abstractmethod
    def weight_tensors(self, tower: str) -> Iterable[torch.Tensor]:
        """The tensors that determine ``tower`` ("image" or "text") outputs, in a fixed order."""

    # -- shared behaviour ------------------------------------------------------------------
    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.encode_image_batch(pixels.to(self.device))
        return nn.functional.normalize(out.float(), dim=-1).cpu()

    @torch.inference_mode()
    def encode_texts(self, texts: list[str], chunk: int = TEXT_CHUNK) -> torch.Tensor:
        if not texts:
            raise ValueError("encode_texts: got no texts")
        parts = [
            nn.functional.normalize(self.encode_text_batch(texts[i : i + chunk]).float(), dim=-1)
            for i in range(0, len(texts), chunk)
        ]
        return torch.cat(parts).cpu()

    @property
    def image_fingerprint(self) -> str:
        if not hasattr(self, "_image_fp"):
            self._image_fp = hash_tensors(
                self.weight_tensors("image"),
                extra=f"{type(self).__name__}|{self.preprocess_description}|{IMAGE_DECODING}",
            )
        return self._image_fp

    @property
    def text_fingerprint(self) -> str:
        if not hasattr(self, "_text_fp"):
            self._text_fp = hash_tensors(self.weight_tensors("text"), extra=type(self).__name__)
        return self._text_fp

    @property
    def fingerprint(self) -> str:
        """One hash for the whole model (both towers and preprocessing)."""
        return hashlib.sha256(
            f"{self.image_fingerprint}|{self.text_fingerprint}".encode()
        ).hexdigest()[:16]


class ImageAdaptedBackend(Backend):
    """``base`` with its image side adapted by ``image_extras`` (pixel or deep prompts, LoRA
    adapters): texts go through ``base`` unchanged, and the image fingerprint covers
    ``base``'s image weights plus the extras. Subclasses implement ``encode_image_batch``."""

    def __init__(self, base: Backend, image_extras: list[torch.Tensor]) -> None:
        self.base = base
        self.image_extras = image_extras
        self.info = base.info
        self.preprocess = base.preprocess
        self.preprocess_description = base.preprocess_description
        self.embed_dim = base.embed_dim
        self.logit_scale = base.logit_scale
        self.device = base.device

    def encode_text_batch(self, texts: list[str]) -> torch.Tensor:
        return self.base.encode_text_batch(texts)

    def weight_tensors(self, tower: str) -> Iterable[torch.Tensor]:
        extra = self.image_extras if tower == "image" else []
        return [*self.base.weight_tensors(tower), *extra]

    @property
    def text_fingerprint(self) -> str:
        return self.base.text_fingerprint  # the text tower is ``base``'s, unchanged


def hash_tensors(tensors: Iterable[torch.Tensor], extra: str = "") -> str:
    """A short sha256 over the tensors' shapes, dtypes and bytes, and ``extra``."""
    digest = hashlib.sha256(extra.encode())
    for tensor in tensors:
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{tuple(t.shape)}{t.dtype}".encode())
        digest.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))  # no copy
    return digest.hexdigest()[:16]


def describe_transform(transform: object) -> str:
    """A stable text description of a torchvision transform pipeline (for fingerprints)."""
    return " ".join(repr(transform).split())
