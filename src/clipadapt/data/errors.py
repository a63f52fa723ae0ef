"""Errors raised for input that cannot be used as given; messages say what to do."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from clipadapt.paths import display_path


class DatasetError(ValueError):
    """A dataset folder, CSV, classnames file or split file that cannot be used as given."""


class ImageDecodeError(DatasetError):
    """An image file that cannot be read or decoded (missing, corrupt, truncated, not an image)."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(
            f"cannot decode image {display_path(self.path)}: {reason}; "
            "remove or replace the file, or pass --skip-bad to skip it"
        )

    def __reduce__(self) -> tuple[type[ImageDecodeError], tuple[Path, str]]:
        return type(self), (self.path, self.reason)


def quoted(items: Sequence[str], limit: int = 10) -> str:
    """``'a', 'b' and 3 more``: a short list of names for an error message."""
    shown = ", ".join(repr(item) for item in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
