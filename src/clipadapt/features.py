"""Batched feature extraction with parallel decoding, through the feature cache.

With a cache, every file is stat-ed and its content hash taken from this process's memory
or the cache's index of file hashes while its stamp is unchanged, else read and hashed (a
chunk of files per worker task); cached features are then fetched in bulk. A warm cache
therefore reads no image, decodes nothing and runs no model forward.

Images without a cached feature are read once, hashed and decoded from those same bytes
(in a thread pool, a bounded number ahead of the model), encoded, and stored under the hash
of the bytes decoded: a file replaced at any moment can never put one version's feature
under another version's hash.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from clipadapt import runtime
from clipadapt.data.errors import ImageDecodeError
from clipadapt.data.images import (
    content_hash,
    file_stamp,
    hash_file,
    load_image,
    remember_hash,
    remembered_hash,
    stat_image,
)
from clipadapt.feature_cache import FeatureCache
from clipadapt.models.base import Backend
from clipadapt.paths import display_path
from clipadapt.views import CENTER, view_key, view_transform

__all__ = ["Features", "content_hash", "default_workers", "extract_features", "load_pixels"]
HASH_CHUNK = 256  # files per worker task when stat-ing and hashing

T = TypeVar("T")
Reject = Callable[[int, ImageDecodeError], None]


@dataclass
class Features:
    """Embeddings of the images that could be read, in input order.

    ``skipped`` lists ``{"path", "reason"}`` (the path as ``display_path`` prints it) for
    every input left out, in input order.
    """

    features: torch.Tensor  # (n_ok, D), L2-normalised
    indices: list[int]  # positions in the input list of each row
    skipped: list[dict[str, str]] = field(default_factory=list)
    cached: int = 0
    computed: int = 0


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def load_pixels(
    path: str, transform: Callable[[Image.Image, str], torch.Tensor]
) -> tuple[str, torch.Tensor]:
    """The sha256 of ``path``'s bytes and the tensor ``transform`` makes of the image decoded
    from exactly those bytes (raises ``ImageDecodeError`` naming the file)."""
    image, digest = load_image(path)
    return digest, transform(image, digest)


def extract_features(
    backend: Backend,
    paths: Sequence[str | os.PathLike[str]],
    *,
    view: str = CENTER,
    cache: FeatureCache | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    skip_bad: bool = False,
    progress: bool = True,
) -> Features:
    """Embed ``paths`` under ``view``; bad images raise, or are skipped when ``skip_bad``.

    Missing, empty (0-byte) and undecodable files raise ``ImageDecodeError`` naming the
    file, or with ``skip_bad`` are left out and listed in ``Features.skipped``. Images go to
    the tower ``batch_size`` at a time (default: the backend's ``preferred_batch_size``).
    """
    workers = workers or default_workers()
    batch_size = batch_size or backend.preferred_batch_size
    transform = view_transform(backend.preprocess, view)
    model_key, key = backend.image_fingerprint, view_key(view)
    names = [os.fspath(p) for p in paths]
    skipped: dict[int, dict[str, str]] = {}

    def reject(i: int, err: ImageDecodeError) -> None:
        if not skip_bad:
            raise err
        skipped[i] = {"path": display_path(names[i]), "reason": err.reason}

    with ThreadPoolExecutor(workers) as pool:
        if cache is None:
            hashes: dict[int, str] = {}
            found: dict[str, np.ndarray] = {}
            todo = list(range(len(names)))
            store = None
        else:
            hashes = _content_hashes(names, cache, pool, workers, reject, progress)
            found = cache.get_many(model_key, key, list(hashes.values()))
            todo = [i for i, digest in hashes.items() if digest not in found]

            def store(items: list[tuple[str, np.ndarray]]) -> None:
                cache.put_many(model_key, backend.info.spec, key, items)

        computed = _encode_missing(
            backend, names, todo, transform, pool, batch_size, store, reject, progress
        )
    if computed:
        runtime.release_free_memory()  # the batches' activations, kept while encoding
    rows = {i: found[digest] for i, digest in hashes.items() if digest in found} | computed
    ok = sorted(rows)
    dim = backend.embed_dim
    stacked = np.stack([rows[i] for i in ok]) if ok else np.zeros((0, dim), np.float32)
    return Features(
        features=torch.from_numpy(stacked.astype(np.float32, copy=False)),
        indices=ok,
        skipped=[skipped[i] for i in sorted(skipped)],
        cached=len(rows) - len(computed),
        computed=len(computed),
    )


def _content_hashes(
    names: list[str],
    cache: FeatureCache,
    pool: ThreadPoolExecutor,
    workers: int,
    reject: Reject,
    progress: bool,
) -> dict[int, str]:
    """sha256 of every readable file: remembered, found in the cache's index, or read.

    Newly read hashes whose stamps can be trusted go into the index in one transaction.
    """
    stamps: dict[int, str] = {}
    for i, stamp in enumerate(_map_chunked(pool, workers, _stamp, names, None)):
        if isinstance(stamp, ImageDecodeError):
            reject(i, stamp)
        else:
            stamps[i] = stamp
    hashes = {i: digest for i, s in stamps.items() if (digest := remembered_hash(names[i], s))}
    indexed = cache.file_hashes({names[i]: s for i, s in stamps.items() if i not in hashes})
    for i, stamp in stamps.items():
        if i not in hashes and names[i] in indexed:
            hashes[i] = indexed[names[i]]
            remember_hash(names[i], stamp, hashes[i])
    unread = [i for i in stamps if i not in hashes]
    with tqdm(
        total=len(unread),
        desc="hash images",
        unit="img",
        leave=False,
        disable=not (progress and unread),
    ) as bar:
        read = _map_chunked(pool, workers, hash_file, [names[i] for i in unread], bar)
    fresh = []
    for i, result in zip(unread, read, strict=True):
        if isinstance(result, ImageDecodeError):
            reject(i, result)
            continue
        hashes[i], stamp = result
        if stamp is not None:
            fresh.append((names[i], stamp, hashes[i]))
    cache.record_file_hashes(fresh)
    return hashes


def _stamp(name: str) -> str:
    return file_stamp(stat_image(name))


def _map_chunked(
    pool: ThreadPoolExecutor,
    workers: int,
    fn: Callable[[str], T],
    names: list[str],
    bar: tqdm | None,
) -> list[T | ImageDecodeError]:
    """``fn`` over ``names`` in the pool, one task per chunk; errors returned, not raised.

    ``bar`` (if any) advances as chunks finish.
    """

    def run(chunk: list[str]) -> list[T | ImageDecodeError]:
        out: list[T | ImageDecodeError] = []
        for name in chunk:
            try:
                out.append(fn(name))
            except ImageDecodeError as err:
                out.append(err)
        return out

    size = max(1, min(HASH_CHUNK, -(-len(names) // (4 * workers))))
    chunks = [names[start : start + size] for start in range(0, len(names), size)]
    results: list[T | ImageDecodeError] = []
    for part in pool.map(run, chunks):
        results += part
        if bar is not None:
            bar.update(len(part))
    return results


def _encode_missing(
    backend: Backend,
    names: list[str],
    todo: list[int],
    transform: Callable,
    pool: ThreadPoolExecutor,
    batch_size: int,
    store: Callable[[list[tuple[str, np.ndarray]]], None] | None,
    reject: Reject,
    progress: bool,
) -> dict[int, np.ndarray]:
    """Load ``todo`` images in the pool, a bounded window ahead, and encode them in batches.

    Each encoded batch goes to ``store`` (the cache) at once, in its own transaction, keyed
    by the hash of the very bytes that were decoded.
    """

    def load(i: int) -> tuple[str, torch.Tensor] | ImageDecodeError:
        try:
            return load_pixels(names[i], transform)
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
    batch_ids: list[int] = []
    digests: list[str] = []
    batch: list[torch.Tensor] = []
    with tqdm(
        total=len(todo),
        desc=f"embed {backend.info.spec}",
        unit="img",
        disable=not (progress and todo),
    ) as bar:
        while pending:
            i, future = pending.popleft()
            nxt = next(feed, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(load, nxt)))
            result = future.result()
            if isinstance(result, ImageDecodeError):
                reject(i, result)
                bar.update(1)
            else:
                batch_ids.append(i)
                digests.append(result[0])
                batch.append(result[1])
            if len(batch) == batch_size or (not pending and batch):
                vectors = backend.encode_images(torch.stack(batch)).numpy()
                out.update(zip(batch_ids, vectors, strict=True))
                if store is not None:
                    store(list(zip(digests, vectors, strict=True)))
                bar.update(len(batch))
                batch_ids, digests, batch = [], [], []
    return out
