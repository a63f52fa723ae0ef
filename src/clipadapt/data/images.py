"""Which files count as images, reading, hashing and decoding them.

Decoding turns any file Pillow reads into the RGB image a model sees: the EXIF orientation is
applied, and high-bit-depth pixels are scaled to 8 bits by their type's full range rather
than clipped (see ``to_8bit``). Changing what ``decode_image`` returns changes cached
features: bump ``clipadapt.models.base.IMAGE_DECODING`` with it.

Content hashes are remembered per file *stamp* (size, modification time, change time and
inode) in this process, and, through the feature cache, across processes. A stamp is
remembered only when both times are older than ``RACY_NS`` before the file was read: a file
rewritten within one tick of the file system's clock may keep its stamp (git's "racy clean"
problem), and such a file is re-hashed instead. What goes undetected is only a rewrite that
keeps size, inode and both times, which needs a changed system clock or raw disk writes
(rsync's default check, size and mtime, is weaker).
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from clipadapt.data.errors import DatasetError, ImageDecodeError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
RACY_NS = 2_000_000_000  # 2 s: coarser than any file system's timestamp tick
EMPTY_FILE = "empty file (0 bytes)"
FileStamp = str  # "size:mtime_ns:ctime_ns:inode"


def is_image_file(path: Path) -> bool:
    """A visible regular file whose extension (any case) is in ``IMAGE_EXTENSIONS``."""
    return (
        not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
    )


def image_paths(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files as given, folders expanded to their image files (recursively, sorted)."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if is_image_file(p))
        elif item.is_file():
            paths.append(item)
        else:
            raise DatasetError(f"{item} does not exist; give image files or folders of images")
    if not paths:
        raise DatasetError(f"no images found in {', '.join(map(str, inputs))}")
    return paths


def file_stamp(stat: os.stat_result) -> FileStamp:
    """What identifies one version of a file without reading it."""
    return f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}:{stat.st_ino}"


def stat_image(path: str | os.PathLike[str]) -> os.stat_result:
    """``os.stat(path)``; a missing or empty file raises ``ImageDecodeError`` naming it."""
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise ImageDecodeError(path, f"{type(exc).__name__}: {exc}") from exc
    if stat.st_size == 0:
        raise ImageDecodeError(path, EMPTY_FILE)
    return stat


def decode_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open ``path`` as a fully loaded RGB image (first frame of animations).

    Raises ``ImageDecodeError`` naming the file for anything unreadable: a missing or empty
    file, a file that is not an image, a corrupt or truncated one.
    """
    return load_image(path)[0]


def load_image(path: str | os.PathLike[str]) -> tuple[Image.Image, str]:
    """The decoded RGB image and the sha256 of exactly the bytes it was decoded from.

    The file is read once, so a file replaced meanwhile can never pair one version's hash
    with another version's pixels.
    """
    data = _read(path)
    return decode_bytes(data, path), hashlib.sha256(data).hexdigest()


def decode_bytes(data: bytes, path: str | os.PathLike[str]) -> Image.Image:
    """Decode an image file's ``data`` (read from ``path``, named in errors) as RGB."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            if image.mode == "P" and "transparency" in image.info:
                return image.convert("RGBA").convert("RGB")
            return to_8bit(image).convert("RGB")
    except Exception as exc:  # PIL raises many types for broken files; all mean "cannot decode"
        raise ImageDecodeError(path, f"{type(exc).__name__}: {exc}") from exc


def to_8bit(image: Image.Image) -> Image.Image:
    """A single-channel high-bit-depth image as 8-bit ``L``; other modes unchanged.

    Integers are scaled by the full range of their type, as an image viewer does: 16-bit
    (``I;16*``, and ``I`` holding values in 0..65535, which is how Pillow opens 16-bit PGM)
    keep their top 8 bits. Floats (``F``) in [0, 1] are multiplied by 255, the usual float
    image convention. Data with no type range to scale by (``I`` outside 0..65535, ``F``
    outside [0, 1]) is stretched from its own minimum to maximum; non-finite values read as
    the minimum.
    """
    if not image.mode.startswith(("I", "F")):
        return image
    values = np.asarray(image)
    if image.mode.startswith("I") and values.min() >= 0 and values.max() <= 0xFFFF:
        scaled = values.astype(np.uint16) >> 8
    elif image.mode == "F" and np.all((values >= 0) & (values <= 1)):
        scaled = np.rint(values * 255)
    else:
        values = values.astype(np.float64)
        finite = values[np.isfinite(values)]
        low, high = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
        values = np.where(np.isfinite(values), values, low)
        scaled = np.rint((values - low) * (255 / (high - low))) if high > low else values - low
    return Image.fromarray(scaled.astype(np.uint8), "L")


def content_hash(path: str | os.PathLike[str]) -> str:
    """sha256 of the file's bytes (raises ImageDecodeError if it cannot be read).

    Remembered per file stamp in this process (see the module docstring), so hashing a
    dataset twice reads each file once while an edited file is read again.
    """
    key = os.fspath(path)
    stamp = file_stamp(stat_image(key))
    return remembered_hash(key, stamp) or hash_file(key)[0]


def hash_file(path: str | os.PathLike[str]) -> tuple[str, FileStamp | None]:
    """sha256 of the file's bytes and the stamp they belong to, remembered in this process.

    The stamp is ``None`` when it cannot be trusted to identify these bytes (a file changed
    while being read, or too recently for its times to tell a later rewrite apart).
    """
    started = time.time_ns()
    try:
        with open(path, "rb") as handle:
            before = os.fstat(handle.fileno())
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
            after = os.fstat(handle.fileno())
    except OSError as exc:
        raise ImageDecodeError(path, f"{type(exc).__name__}: {exc}") from exc
    if before.st_size == 0:
        raise ImageDecodeError(path, EMPTY_FILE)
    stamp = file_stamp(after)
    settled = max(after.st_mtime_ns, after.st_ctime_ns) < started - RACY_NS
    if stamp != file_stamp(before) or not settled:
        return digest, None
    remember_hash(os.fspath(path), stamp, digest)
    return digest, stamp


def _read(path: str | os.PathLike[str]) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ImageDecodeError(path, f"{type(exc).__name__}: {exc}") from exc
    if not data:
        raise ImageDecodeError(path, EMPTY_FILE)
    return data


_MEMO_SIZE = 1 << 18
_memo: dict[str, tuple[FileStamp, str]] = {}
_memo_lock = threading.Lock()


def remembered_hash(path: str, stamp: FileStamp) -> str | None:
    """The hash remembered in this process for ``path`` at exactly ``stamp``, if any."""
    entry = _memo.get(path)
    return entry[1] if entry is not None and entry[0] == stamp else None


def remember_hash(path: str, stamp: FileStamp, digest: str) -> None:
    """Remember ``digest`` for ``path`` at ``stamp`` (only for a stamp ``hash_file`` trusts)."""
    with _memo_lock:
        _memo.pop(path, None)
        if len(_memo) >= _MEMO_SIZE:
            del _memo[next(iter(_memo))]
        _memo[path] = (stamp, digest)


def forget_hashes() -> None:
    """Drop what this process remembers (for measuring a fresh process's cost)."""
    with _memo_lock:
        _memo.clear()
