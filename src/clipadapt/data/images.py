"""Which files count as images, and decoding them."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from PIL import Image

from clipadapt.data.errors import ImageDecodeError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


def is_image_file(path: Path) -> bool:
    """A visible regular file whose extension (any case) is in ``IMAGE_EXTENSIONS``."""
    return (
        not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
    )


def decode_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open ``path`` as a fully loaded RGB image (first frame of animations).

    Raises ``ImageDecodeError`` naming the file for anything unreadable: a missing file, a
    file that is not an image, a corrupt or truncated one.
    """
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode == "P" and "transparency" in image.info:
                return image.convert("RGBA").convert("RGB")
            return image.convert("RGB")
    except Exception as exc:  # PIL raises many types for broken files; all mean "cannot decode"
        raise ImageDecodeError(path, f"{type(exc).__name__}: {exc}") from exc


def content_hash(path: str | os.PathLike[str]) -> str:
    """sha256 of the file's bytes (raises ImageDecodeError if it cannot be read).

    Memoised per (path, size, modification time), so hashing a dataset twice in one process
    reads each file once; a file edited in place gets a new size or time and is read again.
    """
    try:
        stat = os.stat(path)
        return _hash_file(os.fspath(path), stat.st_size, stat.st_mtime_ns)
    except OSError as exc:
        raise ImageDecodeError(path, f"{type(exc).__name__}: {exc}") from exc


@functools.lru_cache(maxsize=1 << 18)
def _hash_file(path: str, _size: int, _mtime_ns: int) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
