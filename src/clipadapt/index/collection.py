"""Index a collection of images: find them, embed them through the feature cache, index them,
and encode a search query with the model the index was built with."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipadapt.data import image_paths, load_dataset
from clipadapt.feature_cache import FeatureCache
from clipadapt.features import Features, extract_features
from clipadapt.index.kinds import RECALL_TARGET
from clipadapt.index.store import ImageIndex, build_index
from clipadapt.models.base import Backend
from clipadapt.views import CENTER


def collection_paths(data: str | os.PathLike[str], **csv_options: Any) -> list[str]:
    """The images of ``data``: every image under a directory (recursively, sorted; any
    layout), or the images of a CSV file or ``builtin:<name>`` dataset, each once.
    Absolute paths."""
    if Path(data).is_dir():
        found = image_paths([data])
    else:
        loaded = load_dataset(data, min_classes=1, **csv_options)
        datasets = loaded.values() if isinstance(loaded, dict) else [loaded]
        found = [sample.path for dataset in datasets for sample in dataset.samples]
    return list(dict.fromkeys(os.path.abspath(p) for p in found))  # a CSV may repeat an image


def index_images(
    backend: Backend,
    paths: Sequence[str],
    out: str | os.PathLike[str],
    *,
    kind: str = "auto",
    cache: FeatureCache | None = None,
    skip_bad: bool = False,
    seed: int = 0,
    recall_target: float = RECALL_TARGET,
    progress: bool = True,
) -> tuple[ImageIndex, Features]:
    """Embed ``paths`` (centre view; cached features are reused) and index them in ``out``.

    Unreadable images raise, or with ``skip_bad`` are left out (``Features.skipped``)."""
    feats = extract_features(backend, paths, cache=cache, skip_bad=skip_bad, progress=progress)
    index = build_index(
        feats.features.numpy(),
        [paths[i] for i in feats.indices],
        out,
        model_spec=backend.info.spec,
        image_fingerprint=backend.image_fingerprint,
        kind=kind,
        seed=seed,
        recall_target=recall_target,
        extra={"view": CENTER, "skipped": feats.skipped},
    )
    return index, feats


def check_query_backend(index: ImageIndex, backend: Backend, directory: str) -> None:
    """The query must be encoded by the model whose image features the index holds."""
    if backend.image_fingerprint != index.image_fingerprint:
        raise ValueError(
            f"{directory} was built with image fingerprint {index.image_fingerprint} "
            f"(model {index.model_spec}) but model {backend.info.spec} has "
            f"{backend.image_fingerprint}; search with --model {index.model_spec} or rebuild "
            "the index"
        )


def encode_query(
    backend: Backend,
    *,
    text: str | None = None,
    image: str | os.PathLike[str] | None = None,
    cache: FeatureCache | None = None,
) -> np.ndarray:
    """The (1, D) L2-normalised float32 embedding of one text or one image file."""
    if (text is None) == (image is None):
        raise ValueError("give exactly one query: a text or an image")
    if text is not None:
        return backend.encode_texts([text]).numpy()
    return extract_features(backend, [image], cache=cache, progress=False).features.numpy()
