"""Support images for re-encoding prompt learners: pixels and their hash from one read."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from bench_fakes import ColorBackend
from PIL import Image

from clipadapt.data import images
from clipadapt.methods.prompting.images import SupportPixels


def png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_file_replaced_while_read_pairs_its_pixels_with_their_own_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decoded pixels seed their augmentation with the hash of the bytes they came from,
    never with that of a later version of the file (which would poison cached views)."""
    path = tmp_path / "swatch.png"
    before, after = png((200, 30, 30)), png((30, 30, 200))
    path.write_bytes(after)  # on disk now; the image was read while it still held `before`
    monkeypatch.setattr(images, "_read", lambda p: before)
    support = SupportPixels(ColorBackend(), [str(path)], n_views=1)
    assert support.hashes == [hashlib.sha256(before).hexdigest()]
    assert np.asarray(support.images[0])[0, 0].tolist() == [200, 30, 30]
