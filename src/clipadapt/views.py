"""Image views: the plain evaluation view, seeded augmented views and corruption views.

An augmented view ``aug<i>`` is a random resized crop and horizontal flip whose parameters
come from a generator seeded by the image's content hash and ``i``, so the same image always
gets the same view, whichever thread or process computes it. Another recipe (a subset of
``AUGMENTATIONS``, e.g. crops only for digits and text, which a mirror changes) is part of the
view's name, ``aug<i>@crop``, and so of its cache key. The strong recipe item ``shift``
(``aug<i>@crop+flip+shift``) then applies one of ``CRAFTED_SHIFTS``, drawn by the same
generator: training on the crafted shifts, where ``selection: crafted_shift`` validates
on them.

A corruption view ``<corruption>@<severity>`` (``fog@3``; see :mod:`clipadapt.corruptions`)
frames the image as the plain view of a 224-pixel tower does (short side resized to 224,
bicubic; centre crop), corrupts that 224 x 224 canvas, ImageNet-C's, with numbers drawn from
a generator seeded by the image's content hash and the view name, then hands it to the
backend's preprocessing (for a 224 tower only the normalisation is left to do; another
input size resizes the corrupted canvas). Its cache key carries the corruption definitions'
``VERSION``. A style view (``grayscale``, ``edges``, ``posterize``) is framed the same way
and has no severity.

``CRAFTED_SHIFTS`` is the fixed list of views that ``selection: crafted_shift`` validates
on (after "Crafting distribution shifts for validation", single-source DG): three style
changes and five corruptions at severity 3, all outside ImageNet-C's 15 test corruptions
except ``contrast`` and ``pixelate`` (there is no overlap with a domain-shift test set).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from clipadapt import corruptions
from clipadapt.imageops import resize_center_crop

if TYPE_CHECKING:
    import torch

CENTER = "center"
CRAFTED_SHIFTS = (
    "grayscale",
    "edges",
    "posterize",
    "gaussian_blur@3",
    "speckle_noise@3",
    "saturate@3",
    "contrast@3",
    "pixelate@3",
)
AUG_SCALE = (0.5, 1.0)
AUG_RATIO = (3 / 4, 4 / 3)
AUGMENTATIONS = {
    "crop": f"rrc{AUG_SCALE}{AUG_RATIO}",
    "flip": "hflip",
    "shift": "crafted:"
    + ",".join(CRAFTED_SHIFTS)
    + f":{corruptions.VERSION}+{corruptions.STYLE_VERSION}",
}
DEFAULT_AUGMENT = ("crop", "flip")


def parse_augment(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """A recipe from ``"crop,flip"`` or a list: known transforms, in ``AUGMENTATIONS`` order."""
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown or not names:
        raise ValueError(
            f"augment {value!r}: use one or more of {', '.join(AUGMENTATIONS)}, comma-separated"
        )
    return tuple(n for n in AUGMENTATIONS if n in names)


def augmented_view_name(index: int, augment: tuple[str, ...] = DEFAULT_AUGMENT) -> str:
    recipe = "" if augment == DEFAULT_AUGMENT else "@" + "+".join(augment)
    return f"aug{index}{recipe}"


def corruption_view_name(corruption: str, severity: int) -> str:
    return f"{corruption}@{severity}"


def parse_corruption_view(view: str) -> tuple[str, int] | None:
    """``(corruption, severity)`` of a corruption view; None for any other view name."""
    name, _, severity = view.partition("@")
    if name not in corruptions.CORRUPTIONS:
        return None
    if not (severity.isdigit() and int(severity) in corruptions.SEVERITIES):
        raise ValueError(f"view {view!r}: a corruption view is '{name}@<severity 1-5>'")
    return name, int(severity)


def _recipe(view: str) -> tuple[str, ...]:
    """The transforms of augmented view ``view`` (its name after ``@``, or the default)."""
    name, _, recipe = view.partition("@")
    if not name.startswith("aug") or not name[3:].isdigit():
        raise ValueError(
            f"unknown view {view!r}: use 'center', 'aug<i>' (aug0, aug1, ...), "
            "'<corruption>@<severity>' (gaussian_noise@3, ...) or a style (grayscale, edges, "
            "posterize)"
        )
    return parse_augment(recipe.replace("+", ",")) if recipe else DEFAULT_AUGMENT


def view_key(view: str) -> str:
    """What the cache stores for a view: its name plus the augmentation recipe, or the
    corruption definitions' version and canvas."""
    if view == CENTER:
        return view
    if parse_corruption_view(view):
        return f"{view}:{corruptions.VERSION}:canvas{corruptions.CANVAS}"
    if view in corruptions.STYLES:
        return f"{view}:{corruptions.STYLE_VERSION}:canvas{corruptions.CANVAS}"
    return f"{view}:{'+'.join(AUGMENTATIONS[n] for n in _recipe(view))}"


def _seed(content_hash: str, view: str) -> int:
    return int(hashlib.sha256(f"{content_hash}|{view}".encode()).hexdigest()[:16], 16)


def augment(image: Image.Image, content_hash: str, view: str) -> Image.Image:
    """A random resized crop (scale 0.5-1, aspect 3/4-4/3), a coin-flip mirror and one
    crafted shift, or the subset of them the view's recipe names (by default crop and flip)."""
    recipe = _recipe(view)
    rng = np.random.default_rng(_seed(content_hash, view.partition("@")[0]))
    if "crop" in recipe:
        image = _crop(image, rng)
    if "flip" in recipe and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)  # as torchvision's hflip
    if "shift" in recipe:
        shift = CRAFTED_SHIFTS[int(rng.integers(len(CRAFTED_SHIFTS)))]
        image = corrupt_view(image, f"{content_hash}|{view}", shift)
    return image


def corrupt_view(image: Image.Image, content_hash: str, view: str) -> Image.Image:
    """The 224 x 224 canvas of corruption or style view ``view`` (see the module notes)."""
    parsed = parse_corruption_view(view)
    if parsed is None and view not in corruptions.STYLES:
        raise ValueError(f"{view!r} is not a corruption or style view")
    canvas = np.asarray(resize_center_crop(image.convert("RGB"), corruptions.CANVAS))
    if parsed is None:
        return Image.fromarray(corruptions.STYLES[view](canvas))
    rng = np.random.default_rng(_seed(content_hash, view))
    return Image.fromarray(corruptions.corrupt(canvas, *parsed, rng))


def _crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
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
    return image.crop((left, top, left + w, top + h))


def view_transform(
    preprocess: Callable[[Image.Image], torch.Tensor], view: str
) -> Callable[[Image.Image, str], torch.Tensor]:
    """``(image, content_hash) -> tensor`` for ``view`` on top of a backend's preprocessing."""
    if view == CENTER:
        return lambda image, _content: preprocess(image)
    parsed = parse_corruption_view(view)
    if parsed is not None or view in corruptions.STYLES:
        if parsed is not None:
            corruptions.require(parsed[0])  # fails now, not at the first image
        return lambda image, content: preprocess(corrupt_view(image, content, view))
    _recipe(view)  # checks the name
    return lambda image, content: preprocess(augment(image, content, view))
