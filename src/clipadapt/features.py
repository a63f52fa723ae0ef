"""Batched feature extraction with parallel decoding, through the feature cache.

Images are hashed by content, looked up in the cache, and only the missing ones are decoded
(in a thread pool, a bounded number ahead of the model) and encoded. A warm cache therefore
does no model forward at all.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from clipadapt.data.errors import ImageDecodeError
from clipadapt.data.images import content_hash, decode_image
from clipadapt.feature_cache import FeatureCache
from clipadapt.models.base import Backend
from clipadapt.views import CENTER, view_key, view_transform

DEFAULT_BATCH = 64


@dataclass
class Features:
    """Embeddings of the images that could be read, in input order."""

    features: torch.Tensor  # (n_ok, D), L2-normalised
    indices: list[int]  # positions in the input list of each row
    skipped: list[dict[str, str]] = field(default_factory=list)
    cached: int = 0
    computed: int = 0


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def extract_features(
    backend: Backend,
    paths: Sequence[str | os.PathLike[str]],
    *,
    view: str = CENTER,
    cache: FeatureCache | None = None,
    batch_size: int = DEFAULT_BATCH,
    workers: int | None = None,
    skip_bad: bool = False,
    progress: bool = True,
) -> Features:
    """Embed ``paths`` under ``view``; bad images raise, or are skipped when ``skip_bad``."""
    workers = workers or default_workers()
    transform = view_transform(backend.preprocess, view)
    model_key, key = backend.image_fingerprint, view_key(view)
    skipped: list[dict[str, str]] = []
    hashes: dict[int, str] = {}
    with ThreadPoolExecutor(workers) as pool:
        for i, result in enumerate(pool.map(_try(content_hash), paths)):
            if isinstance(result, ImageDecodeError):
                _fail_or_skip(result, skip_bad, skipped)
            else:
                hashes[i] = result
        found = cache.get_many(model_key, key, list(hashes.values())) if cache else {}
        todo = [i for i in hashes if hashes[i] not in found]
        store = None
        if cache is not None:

            def store(items: list[tuple[int, np.ndarray]]) -> None:
                cache.put_many(
                    model_key, backend.info.spec, key, [(hashes[i], v) for i, v in items]
                )

        computed = _encode_missing(
            backend,
            paths,
            todo,
            hashes,
            transform,
            pool,
            batch_size,
            store,
            skip_bad,
            skipped,
            progress,
        )
    vectors = {i: found.get(hashes[i], computed.get(i)) for i in hashes}
    ok = [i for i in sorted(vectors) if vectors[i] is not None]
    dim = backend.embed_dim
    stacked = np.stack([vectors[i] for i in ok]) if ok else np.zeros((0, dim), np.float32)
    return Features(
        features=torch.from_numpy(stacked.astype(np.float32, copy=False)),
        indices=ok,
        skipped=skipped,
        cached=len(hashes) - len(todo),
        computed=len(computed),
    )


def _try(fn):
    def wrapped(*args):
        try:
            return fn(*args)
        except ImageDecodeError as err:
            return err

    return wrapped


def _fail_or_skip(err: ImageDecodeError, skip_bad: bool, skipped: list[dict[str, str]]) -> None:
    if not skip_bad:
        raise err
    skipped.append({"path": str(err.path), "reason": err.reason})


def _encode_missing(
    backend, paths, todo, hashes, transform, pool, batch_size, store, skip_bad, skipped, progress
) -> dict[int, np.ndarray]:
    """Decode ``todo`` images in the pool, a bounded window ahead, and encode them in batches.

    Each encoded batch goes to ``store`` (the cache) at once, in its own transaction.
    """

    def load(i: int) -> torch.Tensor | ImageDecodeError:
        try:
            return transform(decode_image(paths[i]), hashes[i])
        except ImageDecodeError as err:
            return err

    out: dict[int, np.ndarray] = {}
    window = 2 * batch_size
    pending: deque[tuple[int, Future]] = deque()
    feed = iter(todo)
    for i in feed:
        pending.append((i, pool.submit(load, i)))
        if len(pending) >= window:
            break
    bar = tqdm(
        total=len(todo),
        desc=f"embed {backend.info.spec}",
        unit="img",
        disable=not (progress and todo),
    )
    batch_ids: list[int] = []
    batch: list[torch.Tensor] = []
    while pending:
        i, future = pending.popleft()
        nxt = next(feed, None)
        if nxt is not None:
            pending.append((nxt, pool.submit(load, nxt)))
        result = future.result()
        if isinstance(result, ImageDecodeError):
            _fail_or_skip(result, skip_bad, skipped)
            bar.update(1)
        else:
            batch_ids.append(i)
            batch.append(result)
        if len(batch) == batch_size or (not pending and batch):
            vectors = backend.encode_images(torch.stack(batch)).numpy()
            items = list(zip(batch_ids, vectors, strict=True))
            out.update(items)
            if store is not None:
                store(items)
            bar.update(len(batch))
            batch_ids, batch = [], []
    bar.close()
    return out
