"""Reloading cached features: rows per second when every image's feature is already cached.

For N small PNG files (distinct 8x8 images, N = 1,000, 5,000 and 20,000 by default) in a
temporary folder, the feature cache is filled directly with random 512-d vectors under each
file's sha256; the model is a stand-in whose forward raises, so no decoding or encoding can
hide in the timing. What is timed is one call

    extract_features(backend, paths, cache=cache, progress=False)

(stat every file, find its hash, fetch the vectors, stack them) in two states:

- ``warm``: a re-run in a new process: features cached and the file-hash index filled. The
  in-process memory of hashes is dropped before each repeat, so the index is what is read.
- ``rehash``: features cached but no file hash known (a copied or re-extracted dataset, or
  the first run after upgrading clipadapt): every file is read and hashed, from the page
  cache here, and its hash recorded. Each repeat starts from a freshly filled cache.

Each figure is the median of ``--repeats`` runs. Results: benchmarks/results/warm_reload.json.

    .venv/bin/python benchmarks/warm_reload.py [--sizes 1000 5000 20000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipadapt.atomic import atomic_write_json
from clipadapt.data.images import RACY_NS, forget_hashes
from clipadapt.feature_cache import FeatureCache
from clipadapt.features import default_workers, extract_features
from clipadapt.models.base import Backend, ModelInfo

DIM = 512
OUT = Path(__file__).parent / "results" / "warm_reload.json"


class CachedOnly(Backend):
    """A model whose features all come from the cache: any forward is a benchmark error."""

    info = ModelInfo(spec="cached-only", model="cached-only", pretrained="none")
    preprocess_description = "none"
    embed_dim = DIM
    logit_scale = 100.0
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.preprocess = lambda image: torch.zeros(3, 8, 8)

    def encode_image_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("a warm reload ran the model: some feature was not cached")

    def encode_text_batch(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def weight_tensors(self, tower: str) -> Iterable[torch.Tensor]:
        return [torch.zeros(1)]


def write_images(folder: Path, n: int) -> tuple[list[Path], list[str]]:
    """``n`` distinct 8x8 PNG files and the sha256 of each."""
    folder.mkdir(parents=True)
    paths, hashes = [], []
    for i in range(n):
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (i % 256, i // 256 % 256, i // 65536)).save(buffer, "PNG")
        path = folder / f"{i:06d}.png"
        path.write_bytes(buffer.getvalue())
        paths.append(path)
        hashes.append(hashlib.sha256(buffer.getvalue()).hexdigest())
    return paths, hashes


def filled_cache(directory: Path, backend: Backend, hashes: list[str]) -> FeatureCache:
    vectors = np.random.default_rng(0).standard_normal((len(hashes), DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cache = FeatureCache(directory)
    cache.put_many(
        backend.image_fingerprint, backend.info.spec, "center", zip(hashes, vectors, strict=True)
    )
    return cache


def timed_reload(backend: Backend, paths: list[Path], cache: FeatureCache) -> float:
    forget_hashes()
    start = time.perf_counter()
    out = extract_features(backend, paths, cache=cache, progress=False)
    seconds = time.perf_counter() - start
    assert out.cached == len(paths) and out.computed == 0
    return seconds


def measure(root: Path, n: int, repeats: int) -> dict[str, float]:
    backend = CachedOnly()
    paths, hashes = write_images(root / f"images{n}", n)
    time.sleep(RACY_NS / 1e9 + 0.1)  # older than the racy window, so hashes can be indexed
    rehash = []
    for r in range(repeats):
        cache = filled_cache(root / f"cache{n}-{r}", backend, hashes)
        rehash.append(timed_reload(backend, paths, cache))
        if r < repeats - 1:
            cache.close()
    warm = [timed_reload(backend, paths, cache) for _ in range(repeats)]
    cache.close()
    return {
        "warm_seconds": statistics.median(warm),
        "warm_rows_per_s": n / statistics.median(warm),
        "rehash_seconds": statistics.median(rehash),
        "rehash_rows_per_s": n / statistics.median(rehash),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            results[str(n)] = measure(Path(tmp), n, args.repeats)
            print(
                f"{n:6d} images: warm {results[str(n)]['warm_rows_per_s']:9.0f} rows/s, "
                f"rehash {results[str(n)]['rehash_rows_per_s']:9.0f} rows/s"
            )
    atomic_write_json(
        OUT,
        {
            "timed": "extract_features on a cache holding every feature (see the docstring)",
            "dim": DIM,
            "repeats": args.repeats,
            "statistic": "median",
            "workers": default_workers(),
            "cpus": os.cpu_count(),
            "load_average_1min_at_end": os.getloadavg()[0],  # other work sharing the CPUs
            "python": platform.python_version(),
            "results": results,
        },
    )
    print(f"written to {OUT}")


if __name__ == "__main__":
    main()
