"""Extraction throughput of ``lite`` on PACS-100 JPEGs against the image tower alone.

Side by side in one process, interleaved over repeats in alternating order: (a) the image
tower alone on pre-decoded, pre-processed, pre-batched tensors; (b) the full pipeline (hash,
decode, preprocess, encode) from the JPEG files with no cache; (c) the same pipeline on a warm
cache, counting model forwards.
Writes ``benchmarks/results/extraction_throughput.json``.

    python benchmarks/extraction_throughput.py [--images 448] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from clipadapt.atomic import atomic_write_json
from clipadapt.data import decode_image, load_dataset
from clipadapt.feature_cache import FeatureCache
from clipadapt.features import DEFAULT_BATCH, extract_features
from clipadapt.models import create_backend

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pacs100"
OUT = Path(__file__).resolve().parent / "results" / "extraction_throughput.json"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=448)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    backend = create_backend("lite")
    domains = load_dataset(DATA)
    jpegs = [p for d in ("photo", "art_painting", "cartoon") for p in domains[d].paths]
    paths = jpegs[:: max(1, len(jpegs) // args.images)][: args.images]
    pixels = torch.stack([backend.preprocess(decode_image(p)) for p in paths])
    batches = [
        pixels[i : i + DEFAULT_BATCH].contiguous(memory_format=torch.channels_last)
        for i in range(0, len(pixels), DEFAULT_BATCH)
    ]

    def tower_alone() -> float:
        start = time.perf_counter()
        for batch in batches:
            backend.encode_images(batch)
        return len(pixels) / (time.perf_counter() - start)

    def pipeline() -> float:
        start = time.perf_counter()
        extract_features(backend, paths, cache=None, progress=False)
        return len(paths) / (time.perf_counter() - start)

    tower_alone()  # warm-up (allocator, kernels)
    tower, full, ratios = [], [], []
    for repeat in range(args.repeats):  # alternate the order so neither side always goes first
        if repeat % 2:
            b, a = pipeline(), tower_alone()
        else:
            a, b = tower_alone(), pipeline()
        tower.append(a)
        full.append(b)
        ratios.append(b / a)

    forwards = 0
    original = backend.encode_image_batch

    def counting(batch: torch.Tensor) -> torch.Tensor:
        nonlocal forwards
        forwards += 1
        return original(batch)

    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(tmp)
        extract_features(backend, paths, cache=cache, progress=False)
        backend.encode_image_batch = counting  # type: ignore[method-assign]
        start = time.perf_counter()
        warm = extract_features(backend, paths, cache=cache, progress=False)
        warm_seconds = time.perf_counter() - start
        cache.close()

    result = {
        "model": "lite",
        "images": len(paths),
        "source": "pacs100 photo/art_painting/cartoon JPEG files",
        "batch_size": DEFAULT_BATCH,
        "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "tower_alone_images_per_s": {"median": statistics.median(tower), "all": tower},
        "pipeline_from_jpeg_images_per_s": {"median": statistics.median(full), "all": full},
        "ratio_pipeline_over_tower": {"median": statistics.median(ratios), "all": ratios},
        "target_ratio": 0.85,
        "warm_cache": {
            "seconds": warm_seconds,
            "model_forwards": forwards,
            "cached": warm.cached,
            "computed": warm.computed,
        },
    }
    atomic_write_json(OUT, result)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=1))
    for key in (
        "tower_alone_images_per_s",
        "pipeline_from_jpeg_images_per_s",
        "ratio_pipeline_over_tower",
    ):
        print(f"{key}: median {result[key]['median']:.3f}")
    print("warm cache:", result["warm_cache"])


if __name__ == "__main__":
    main()
