"""Bulk embedding: the local path against the Ray Data job with 1 and 2 actors, same images.

Sides (``--images`` PACS-100 files, all four domains interleaved, model ``lite``):

* ``local``: ``clipadapt.features.extract_features`` without a cache (decode thread pool and
  the tower in this process, torch's default thread count).
* ``ray_w{1,2}_c{c}``: ``clipadapt.scale.ray_embed.embed_with_ray`` into an empty shard
  folder, ``w`` actors of ``c`` CPUs (= torch threads) each, ``c`` = 1 and ``c`` = the local
  path's torch threads (the setting that gives bit-identical features). Ray itself is started
  once, before any timing, with ``num_cpus = max(cores, 2 x local threads)`` logical CPUs so
  that two actors of that many threads fit (on a 2-core machine ``ray_w2_c2`` therefore runs
  4 threads on 2 cores). Its start-up is reported apart, not in the rates. Each Ray run does
  include the actors' start (loading the model in each) and the writing of the Parquet
  shards, as a user's job does.

Every side runs once per repeat, the order rotating each repeat; reported: the median images
per wall second over repeats, the start-up of Ray, and the identity check: the max abs
difference of each Ray side's features from the local path's (0 means bit-identical; actors
with another torch thread count than the local path's may differ by float rounding: a
convolution splits its work by thread). Writes ``benchmarks/results/ray_embed.json``.

    python benchmarks/ray_embed.py [--images 512] [--repeats 3] [--shard-size 128] [--sides ...]
"""

# ruff: noqa: E402 (the runtime settings must come before torch is imported)

from __future__ import annotations

from clipadapt import runtime

runtime.configure_threads()
runtime.configure_allocator()

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clipadapt.atomic import atomic_write_json
from clipadapt.data import load_dataset
from clipadapt.features import extract_features
from clipadapt.models import create_backend
from clipadapt.scale.ray_embed import embed_with_ray, start_ray
from clipadapt.scale.shards import read_shard, shard_files

PACS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pacs100"


def pacs_paths(count: int) -> list[str]:
    """``count`` PACS-100 files, the domains interleaved so any prefix mixes them."""
    domains = load_dataset(str(PACS))
    lists = [[str(p) for p in d.paths] for d in domains.values()]
    mixed = [p for group in itertools.zip_longest(*lists) for p in group if p is not None]
    return mixed[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shard-size", type=int, default=128)
    parser.add_argument("--sides", help="comma-separated subset of the sides (default: all)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ray_embed.json"))
    args = parser.parse_args()

    paths = pacs_paths(args.images)
    backend = create_backend("lite")
    cores = os.cpu_count() or 1
    threads = torch.get_num_threads()
    load_before = os.getloadavg()
    began = time.perf_counter()
    start_ray(num_cpus=max(cores, 2 * threads), object_store_memory=512 * 2**20)
    ray_start = time.perf_counter() - began

    features: dict[str, np.ndarray] = {}

    def local() -> None:
        features["local"] = extract_features(backend, paths, progress=False).features.numpy()

    def ray_side(workers: int, cpus: int):
        name = f"ray_w{workers}_c{cpus}"

        def side() -> None:
            with tempfile.TemporaryDirectory() as folder:
                embed_with_ray(
                    backend,
                    paths,
                    folder,
                    workers=workers,
                    worker_cpus=cpus,
                    shard_size=args.shard_size,
                    progress=False,
                )
                rows = {}
                for path in shard_files(Path(folder)):
                    shard = read_shard(path)
                    rows.update(zip(shard.paths, shard.features, strict=True))
                features[name] = np.stack([rows[p] for p in paths])

        return name, side

    ray_sides = [ray_side(w, c) for c in dict.fromkeys((threads, 1)) for w in (1, 2)]
    sides = dict([("local", local), *ray_sides])
    if args.sides:
        sides = {name: sides[name] for name in args.sides.split(",")}
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for repeat in range(args.repeats):
        names = list(sides)
        names = names[repeat % len(names) :] + names[: repeat % len(names)]
        for name in names:
            began = time.perf_counter()
            sides[name]()
            rates[name].append(len(paths) / (time.perf_counter() - began))
            print(f"repeat {repeat} {name}: {rates[name][-1]:.1f} img/s", flush=True)
    result = {
        "images": len(paths),
        "model": "lite",
        "batch_size": backend.preferred_batch_size,
        "shard_size": args.shard_size,
        "cores": cores,
        "local_torch_threads": threads,
        "ray_start_seconds_excluded": ray_start,
        "images_per_second_median": {k: statistics.median(v) for k, v in rates.items()},
        "images_per_second_runs": rates,
        "max_abs_diff_vs_local": {
            k: float(np.abs(v - features["local"]).max()) if "local" in features else None
            for k, v in features.items()
        },
        "load_average": {"start": load_before, "end": os.getloadavg()},
    }
    atomic_write_json(args.out, result)
    for name, rate in result["images_per_second_median"].items():
        diff = result["max_abs_diff_vs_local"][name]
        print(f"{name:14s} {rate:7.1f} img/s   max abs diff vs local {diff}")
    print(f"ray start-up (excluded above): {ray_start:.1f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
