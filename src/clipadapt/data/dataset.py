"""Datasets as plain objects: a list of samples plus the class list."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipadapt.data.errors import DatasetError, ImageDecodeError
from clipadapt.data.images import content_hash

UNLABELED = -1
"""``Sample.label`` of a caption-only CSV row (the dataset then has no classes)."""
CLASS_DROPPED = "class dropped"
"""How a ``skipped`` reason starts when a whole class was left out (all its input unusable)."""


@dataclass(frozen=True)
class Sample:
    """One image: absolute path, class index (``UNLABELED`` if none), optional caption/domain."""

    path: Path
    label: int
    caption: str | None = None
    domain: str | None = None


@dataclass(repr=False)
class ImageDataset:
    """Images with labels and/or captions.

    ``class_ids`` are the raw class keys (folder names or CSV labels), sorted; ``classnames``
    are the matching human names used in prompts; ``Sample.label`` indexes both.
    ``skipped`` lists ``{"path", "reason"}`` for input dropped because ``skip_bad`` was set,
    including classes left without usable images (reason ``class dropped: ...``).
    """

    name: str
    root: Path
    class_ids: list[str]
    classnames: list[str]
    samples: list[Sample]
    skipped: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.class_ids) != len(self.classnames):
            raise ValueError(
                f"dataset {self.name!r}: {len(self.class_ids)} class ids but "
                f"{len(self.classnames)} class names"
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, root={str(self.root)!r}, "
            f"{len(self)} samples, {len(self.class_ids)} classes, {len(self.skipped)} skipped)"
        )

    @property
    def labels(self) -> np.ndarray:
        """Class index of every sample, int64 (``UNLABELED`` for caption-only samples)."""
        return np.fromiter((s.label for s in self.samples), dtype=np.int64, count=len(self))

    @property
    def paths(self) -> list[Path]:
        return [s.path for s in self.samples]

    @property
    def is_labeled(self) -> bool:
        return bool(self.class_ids)

    def relpaths(self) -> list[str]:
        """Sample paths relative to ``root``, with ``/`` separators."""
        return [Path(os.path.relpath(s.path, self.root)).as_posix() for s in self.samples]

    def subset(self, indices: Iterable[int]) -> ImageDataset:
        """The samples at ``indices`` (in that order), same classes, name and root."""
        return dataclasses.replace(
            self,
            class_ids=list(self.class_ids),
            classnames=list(self.classnames),
            samples=[self.samples[i] for i in indices],
            skipped=list(self.skipped),
        )

    def counts_per_class(self) -> dict[str, int]:
        """Number of samples per class id, in class order (classes without samples give 0)."""
        counts = Counter(s.label for s in self.samples)
        return {cid: counts.get(i, 0) for i, cid in enumerate(self.class_ids)}

    def fingerprint(self) -> str:
        """sha256 hex digest identifying this exact data.

        Covers the classnames and, for every sample in order, its path relative to ``root``,
        label, caption and the sha256 of its bytes. Editing, adding, removing or relabelling
        a file changes it; copying the data elsewhere (new modification times) does not.
        """
        digest = hashlib.sha256(json.dumps(self.classnames).encode())
        for sample, rel in zip(self.samples, self.relpaths(), strict=True):
            try:
                content = content_hash(sample.path)
            except ImageDecodeError as exc:
                raise DatasetError(
                    f"dataset {self.name!r}: cannot read {sample.path} ({exc.reason}); "
                    "restore the file or load the dataset again"
                ) from exc
            record = [rel, sample.label, sample.caption, content]
            digest.update(json.dumps(record).encode() + b"\n")
        return digest.hexdigest()
