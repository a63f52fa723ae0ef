"""Image views: the plain evaluation view and seeded augmented views.

An augmented view ``aug<i>`` is a random resized crop and horizontal flip whose parameters
come from a generator seeded by the image's content hash and ``i``, so the same image always
gets the same view, whichever thread or process computes it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as TF

CENTER = "center"
AUG_SCALE = (0.5, 1.0)
AUG_RATIO = (3 / 4, 4 / 3)
AUG_DESCRIPTION = f"rrc{AUG_SCALE}{AUG_RATIO}+hflip"


def augmented_view_name(index: int) -> str:
    return f"aug{index}"


def view_key(view: str) -> str:
    """What the cache stores for a view: its name plus the augmentation recipe."""
    return view if view == CENTER else f"{view}:{AUG_DESCRIPTION}"


def _seed(content_hash: str, view: str) -> int:
    return int(hashlib.sha256(f"{content_hash}|{view}".encode()).hexdigest()[:16], 16)


def augment(image: Image.Image, content_hash: str, view: str) -> Image.Image:
    """A random resized crop (scale 0.5-1, aspect 3/4-4/3) and a coin-flip mirror."""
    rng = np.random.default_rng(_seed(content_hash, view))
    width, height = image.size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*AUG_SCALE)
        ratio = math.exp(rng.uniform(math.log(AUG_RATIO[0]), math.log(AUG_RATIO[1])))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            break
    else:
        side = min(width, height)
        top, left, w, h = (height - side) // 2, (width - side) // 2, side, side
    image = image.crop((left, top, left + w, top + h))
    return TF.hflip(image) if rng.random() < 0.5 else image


def view_transform(
    preprocess: Callable[[Image.Image], torch.Tensor], view: str
) -> Callable[[Image.Image, str], torch.Tensor]:
    """``(image, content_hash) -> tensor`` for ``view`` on top of a backend's preprocessing."""
    if view == CENTER:
        return lambda image, _content: preprocess(image)
    if not view.startswith("aug") or not view[3:].isdigit():
        raise ValueError(f"unknown view {view!r}: use 'center' or 'aug<i>' (aug0, aug1, ...)")
    return lambda image, content: preprocess(augment(image, content, view))
