"""Image features held in memory by dataset index, read through the feature cache once.

The runner asks for rows by dataset index; the bank embeds each image's plain view once,
augmented views only for the images that need them (the support sets) and other named views
(corruptions) only for the images tested under them, so a grid of methods x shots x seeds
costs one pass over the cache.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from clipadapt.data import ImageDataset
from clipadapt.data.errors import DatasetError
from clipadapt.feature_cache import FeatureCache
from clipadapt.features import extract_features
from clipadapt.models.base import Backend
from clipadapt.views import CENTER, DEFAULT_AUGMENT, augmented_view_name

_TODO, _OK, _UNREADABLE = 0, 1, -1


class FeatureBank:
    """``rows(dataset, indices)`` and ``views(dataset, indices, count)`` from cached features.

    Images are embedded on first request (``ensure`` requests many at once). With
    ``skip_bad`` unreadable images have no features and ``readable`` filters them out of an
    index list; without it, an unreadable image raises when it is first embedded.
    """

    def __init__(
        self,
        backend: Backend,
        cache: FeatureCache | None,
        *,
        skip_bad: bool = False,
        progress: bool = True,
        augment: tuple[str, ...] = DEFAULT_AUGMENT,
    ) -> None:
        self.backend = backend
        self.augment = augment
        self.cache = cache
        self.skip_bad = skip_bad
        self.progress = progress
        self._plain: dict[str, tuple[torch.Tensor, np.ndarray]] = {}  # features, state
        self._views: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
        self.skipped: list[dict[str, str]] = []

    def _embed(self, dataset: ImageDataset, indices: list[int], view: str):
        feats = extract_features(
            self.backend,
            [dataset.samples[i].path for i in indices],
            view=view,
            cache=self.cache,
            skip_bad=self.skip_bad,
            progress=self.progress,
        )
        self.skipped += feats.skipped
        return feats

    def ensure(self, dataset: ImageDataset, indices: Iterable[int]) -> None:
        """Embed the plain view of those ``indices`` not embedded yet, in one pass."""
        if dataset.name not in self._plain:
            table = torch.zeros(len(dataset), self.backend.embed_dim)
            self._plain[dataset.name] = (table, np.full(len(dataset), _TODO, dtype=np.int8))
        table, state = self._plain[dataset.name]
        todo = sorted({i for i in indices if state[i] == _TODO})
        if todo:
            feats = self._embed(dataset, todo, CENTER)
            done = [todo[j] for j in feats.indices]
            table[done] = feats.features
            state[todo] = _UNREADABLE
            state[done] = _OK

    def readable(self, dataset: ImageDataset, indices: list[int]) -> list[int]:
        """``indices`` without the images that could not be read (only with ``skip_bad``)."""
        self.ensure(dataset, indices)
        state = self._plain[dataset.name][1]
        return [i for i in indices if state[i] == _OK]

    def rows(self, dataset: ImageDataset, indices: list[int]) -> torch.Tensor:
        """Plain-view features (len(indices), D) of readable images."""
        self.ensure(dataset, indices)
        table, state = self._plain[dataset.name]
        bad = [str(dataset.samples[i].path) for i in indices if state[i] != _OK]
        if bad:
            raise DatasetError(f"no features for unreadable image(s) {bad[:3]}; filter them first")
        return table[indices]

    def prefetch_view(self, dataset: ImageDataset, indices: list[int], view: str) -> None:
        """Embed ``view`` of the readable ``indices`` (through the cache) in one pass."""
        store = self._views.setdefault((dataset.name, view), {})
        todo = sorted(set(self.readable(dataset, indices)) - store.keys())
        if todo:
            feats = self._embed(dataset, todo, view)
            store.update(zip((todo[i] for i in feats.indices), feats.features, strict=True))

    def view_rows(self, dataset: ImageDataset, indices: list[int], view: str) -> torch.Tensor:
        """Features (len(indices), D) of readable images under ``view``."""
        if view == CENTER:
            return self.rows(dataset, indices)
        self.prefetch_view(dataset, indices, view)
        store = self._views[(dataset.name, view)]
        if not indices:
            return torch.zeros(0, self.backend.embed_dim)
        return torch.stack([store[i] for i in indices])

    def prefetch_views(self, dataset: ImageDataset, indices: list[int], count: int) -> None:
        """Embed ``aug0``..``aug{count-1}`` of ``indices`` (through the cache) in one pass each."""
        for v in range(count):
            self.prefetch_view(dataset, indices, augmented_view_name(v, self.augment))

    def views(self, dataset: ImageDataset, indices: list[int], count: int) -> torch.Tensor:
        """Augmented-view features (count, len(indices), D)."""
        names = [augmented_view_name(v, self.augment) for v in range(count)]
        return torch.stack([self.view_rows(dataset, indices, name) for name in names])
