"""A tiny deterministic backend and tiny image folders for the bench and adapt tests.

``ColorBackend`` embeds 8x8 thumbnails by a fixed random projection, and embeds a text as
the thumbnail of the colour its class name names: zero-shot works, a little, and everything
runs in milliseconds.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from clipadapt.models.base import Backend, ModelInfo

COLORS = {
    "red": (200, 40, 40),
    "green": (40, 180, 40),
    "blue": (40, 40, 200),
    "gold": (200, 170, 30),
}
SIDE = 8


class ColorBackend(Backend):
    """Images: ``normalize(P @ thumbnail)``; texts: the same of the named colour's swatch."""

    def __init__(self, dim: int = 24, seed: int = 0) -> None:
        self.device = torch.device("cpu")
        self.info = ModelInfo(spec="fake", model="fake", pretrained=f"projection-{seed}")
        self.preprocess = transforms.Compose(
            [transforms.Resize((SIDE, SIDE)), transforms.ToTensor()]
        )
        self.preprocess_description = f"resize{SIDE}+totensor"
        self.embed_dim = dim
        self.logit_scale = 100.0
        generator = torch.Generator().manual_seed(seed)
        self.projection = torch.randn(3 * SIDE * SIDE, dim, generator=generator)

    def encode_image_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.flatten(1) - 0.5) @ self.projection

    def encode_text_batch(self, texts: list[str]) -> torch.Tensor:
        rows = []
        for text in texts:
            color = next((c for name, c in COLORS.items() if name in text), (128, 128, 128))
            swatch = self.preprocess(Image.new("RGB", (SIDE, SIDE), color))
            wobble = zlib.crc32(text.encode()) % 7 / 100  # templates differ a little
            rows.append(self.encode_image_batch(swatch[None] + wobble)[0])
        return torch.stack(rows)

    def weight_tensors(self, tower: str) -> Iterable[torch.Tensor]:
        return [self.projection]


def make_folder(root: Path, counts: dict[str, int], shade: float = 1.0, seed: int = 0) -> Path:
    """``root/<colour>/<i>.png``: noisy swatches of each class's colour, darkened by ``shade``."""
    rng = np.random.default_rng(seed)
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            base = np.array(COLORS[name], dtype=np.float64) * shade
            pixels = base + rng.normal(0, 60, size=(12, 12, 3))
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            image.save(root / name / f"{i:03d}.png")
    return root


def make_domains(
    root: Path, classes: Iterable[str] = ("blue", "green", "red"), n: int = 14
) -> Path:
    """Domain folders ``root/{bright,dark}/<colour>/<i>.png`` with ``n`` images per class."""
    counts = dict.fromkeys(classes, n)
    make_folder(root / "bright", counts, shade=1.0, seed=1)
    make_folder(root / "dark", counts, shade=0.6, seed=2)
    return root
