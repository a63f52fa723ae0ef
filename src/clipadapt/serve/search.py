"""Searching an image index with a text or an image, and thumbnails of its rows.

The index must hold features of the same image tower as the served model (same image
fingerprint), else scores between a query and the index would mean nothing. Thumbnails are
read from the paths stored in the index, by row number: a client never names a file.
"""

from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipadapt.index import ImageIndex, load_index
from clipadapt.models.base import Backend
from clipadapt.serve.uploads import BadRequest, decode_upload

THUMBNAIL_SIDE = 160
THUMBNAILS_KEPT = 2048


@dataclass
class Search:
    index: ImageIndex
    backend: Backend
    max_pixels: int

    @classmethod
    def load(cls, directory: str | os.PathLike[str], backend: Backend, max_pixels: int) -> Search:
        """Load the index in ``directory``; refuse one built with another image tower."""
        index = load_index(directory)
        if index.image_fingerprint != backend.image_fingerprint:
            raise ValueError(
                f"index {directory} holds image features of {index.model_spec!r} (fingerprint "
                f"{index.image_fingerprint}), but the model is served with "
                f"{backend.info.spec!r} (fingerprint {backend.image_fingerprint}); build the "
                f"index with the model's backend: clipadapt index --model {backend.info.spec}"
            )
        return cls(index, backend, max_pixels)

    def __post_init__(self) -> None:
        self._thumbnails = functools.lru_cache(THUMBNAILS_KEPT)(self._render)

    def text(self, query: str, k: int) -> list[dict[str, Any]]:
        """The ``k`` rows nearest a text; called in the model thread."""
        return self._nearest(self.backend.encode_texts([query]), k)

    def image(self, pixels: torch.Tensor, k: int) -> list[dict[str, Any]]:
        """The ``k`` rows nearest a preprocessed image (1, 3, H, W); in the model thread."""
        return self._nearest(self.backend.encode_images(pixels), k)

    def _nearest(self, query: torch.Tensor, k: int) -> list[dict[str, Any]]:
        scores, rows = self.index.search(query.numpy(), k)
        return [
            {"row": row, "score": score, "name": _short_name(self.index.paths[row]),
             "thumbnail": f"/thumbnail/{row}"}
            for score, row in zip(scores[0].tolist(), rows[0].tolist(), strict=True)
            if row >= 0
        ]  # fmt: skip

    def thumbnail(self, row: int) -> bytes:
        """A JPEG of at most ``THUMBNAIL_SIDE`` pixels a side of index row ``row``."""
        return self._thumbnails(row)

    def _render(self, row: int) -> bytes:
        if not 0 <= row < len(self.index):
            raise BadRequest(404, f"no row {row} in the index (it has {len(self.index)} images)")
        path = Path(self.index.paths[row])
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BadRequest(404, f"the image of row {row} cannot be read any more") from exc
        image = decode_upload(data, f"row {row}", self.max_pixels)
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=85)
        return out.getvalue()


def _short_name(path: str) -> str:
    """The file name and its folder (often the class): enough to read, no server layout."""
    return "/".join(Path(path).parts[-2:])
