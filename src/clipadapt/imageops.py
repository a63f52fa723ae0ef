"""Torch-free image geometry shared by backends' preprocessing and image views."""

from __future__ import annotations

from PIL import Image


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """torchvision's ``Resize(size, bicubic, antialias)`` then ``CenterCrop(size)``, in PIL.

    The short side becomes ``size`` (the long side ``int(size * long / short)``), then the
    centre ``size`` x ``size`` square is kept.
    """
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.BICUBIC)
    top = round((new_h - size) / 2.0)
    left = round((new_w - size) / 2.0)
    return image.crop((left, top, left + size, top + size))
