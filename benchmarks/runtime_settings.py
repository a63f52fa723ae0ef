"""The start-up settings of ``clipadapt.runtime`` against the defaults, on the ``lite`` tower
and the extraction pipeline.

Method. OpenMP reads ``OMP_WAIT_POLICY`` once, when torch loads it, so each configuration
runs in a fresh child process: the parent sets or removes ``OMP_WAIT_POLICY`` in the child's
environment, and the child calls ``runtime.configure_allocator()`` (or not) before importing
torch. Configurations run in an order rotated every repeat. Each child builds ``lite``
(2 torch threads, the default here), pre-decodes ``--images`` PACS-100 JPEGs, warms each
side up on one batch (untimed), then runs ``--rounds`` interleaved timed passes of

* ``tower``: ``backend.encode_images`` on the pre-decoded tensors in batches of ``batch``;
* ``pipeline``: ``extract_features`` from the JPEG files, no cache, batches of ``batch``;

and reports their median img/s, CPU milliseconds per image (user + system, all threads),
minor page faults per image and system CPU seconds over the timed passes (CPU time is less
exposed than img/s to other processes taking the cores), and its peak resident size
(``ru_maxrss``). Reported per configuration: the median over repeats of each child's figures.

    python benchmarks/runtime_settings.py [--images 64] [--repeats 2] [--rounds 2]

Writes ``benchmarks/results/runtime_settings.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pacs100"
OUT = Path(__file__).resolve().parent / "results" / "runtime_settings.json"
CONFIGS: dict[str, dict[str, Any]] = {
    "defaults_b64": {"passive": False, "allocator": False, "batch": 64},
    "passive_b64": {"passive": True, "allocator": False, "batch": 64},
    "allocator_b64": {"passive": False, "allocator": True, "batch": 64},
    "passive_allocator_b64": {"passive": True, "allocator": True, "batch": 64},
    "passive_allocator_b16": {"passive": True, "allocator": True, "batch": 16},
}


def child(config: dict[str, Any], images: int, rounds: int) -> dict[str, Any]:
    """One configuration, in this (fresh) process; torch is imported only here."""
    from clipadapt import runtime

    if config["allocator"]:
        runtime.configure_allocator()
    import resource
    import time

    import torch

    from clipadapt.data import decode_image, load_dataset
    from clipadapt.features import extract_features
    from clipadapt.models import create_backend

    backend = create_backend("lite")
    domains = load_dataset(DATA)
    jpegs = [p for d in ("photo", "art_painting", "cartoon") for p in domains[d].paths]
    paths = jpegs[:: max(1, len(jpegs) // images)][:images]
    pixels = torch.stack([backend.preprocess(decode_image(p)) for p in paths])
    size = config["batch"]

    def tower(count: int = len(paths)) -> None:
        for i in range(0, count, size):
            backend.encode_images(pixels[i : min(i + size, count)])

    def pipeline(count: int = len(paths)) -> None:
        extract_features(backend, paths[:count], cache=None, batch_size=size, progress=False)

    sides = {"tower": tower, "pipeline": pipeline}
    for run in sides.values():
        run(size)  # warm-up: one batch
    rates: dict[str, list[float]] = {name: [] for name in sides}
    faults: dict[str, int] = dict.fromkeys(sides, 0)
    system: dict[str, float] = dict.fromkeys(sides, 0.0)
    cpu: dict[str, float] = dict.fromkeys(sides, 0.0)
    for r in range(rounds):
        for name in list(sides)[r % 2 :] + list(sides)[: r % 2]:
            before = resource.getrusage(resource.RUSAGE_SELF)
            start = time.perf_counter()
            sides[name]()
            rates[name].append(len(paths) / (time.perf_counter() - start))
            after = resource.getrusage(resource.RUSAGE_SELF)
            faults[name] += after.ru_minflt - before.ru_minflt
            system[name] += after.ru_stime - before.ru_stime
            cpu[name] += after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {
        **{f"{n}_images_per_s": statistics.median(v) for n, v in rates.items()},
        **{f"{n}_page_faults_per_image": faults[n] / (rounds * len(paths)) for n in sides},
        **{f"{n}_system_s": system[n] for n in sides},
        **{f"{n}_cpu_ms_per_image": 1e3 * cpu[n] / (rounds * len(paths)) for n in sides},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "runtime": runtime.runtime_settings(),
    }


def run_child(config: dict[str, Any], images: int, rounds: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if config["passive"]:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    argv = [sys.executable, __file__, "--child", json.dumps(config)]
    argv += ["--images", str(images), "--rounds", str(rounds)]
    out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child), args.images, args.rounds)))
        return
    load_start = os.getloadavg()
    names = list(CONFIGS)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names[repeat:] + names[:repeat]:
            runs[name].append(run_child(CONFIGS[name], args.images, args.rounds))
            figures = {k: round(v, 1) for k, v in runs[name][-1].items() if k != "runtime"}
            print(f"repeat {repeat} {name}: {figures}", flush=True)
    summary = {
        name: {
            "config": CONFIGS[name],
            "runtime": results[0]["runtime"],
            **{
                key: statistics.median(r[key] for r in results)
                for key in results[0]
                if key != "runtime"
            },
        }
        for name, results in runs.items()
    }
    result = {
        "model": "lite",
        "images": args.images,
        "repeats": args.repeats,
        "rounds_per_child": args.rounds,
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "configs": summary,
        "all": runs,
    }
    from clipadapt.atomic import atomic_write_json

    atomic_write_json(OUT, result)
    keys = (
        "tower_images_per_s",
        "tower_cpu_ms_per_image",
        "pipeline_images_per_s",
        "pipeline_cpu_ms_per_image",
        "tower_page_faults_per_image",
    )
    for name, figures in summary.items():
        print(f"{name:>22}: " + ", ".join(f"{k} {figures[k]:.1f}" for k in keys), end="")
        print(f", peak_rss_mb {figures['peak_rss_mb']:.0f}")


if __name__ == "__main__":
    main()
