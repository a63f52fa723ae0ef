"""Extraction throughput of ``lite``: the image tower alone, the pipeline from JPEG files, and
the machine's matmul ceiling, measured side by side in one process.

Method. The process starts with ``clipadapt.runtime.configure_threads()`` and
``configure_allocator()`` (OMP_WAIT_POLICY=PASSIVE unless exported, glibc mmap off), as the
CLI does; ``benchmarks/runtime_settings.py`` measures those settings against the defaults.
Every side runs once per repeat; the order rotates each repeat so no side always runs first
or after the same neighbour; each side had one untimed warm-up pass. Reported: the median
over repeats of each side's images per wall second and of each per-repeat ratio, and the
process CPU time per image (all threads, decoding workers included). The machine is shared
and noisy (load averages at start and end are recorded): wall rates fall when other
processes take the cores, CPU time per image much less so.

Sides (``--images`` PACS-100 JPEGs from photo, art_painting and cartoon):

* ``tower_old_b64_t2``: the EfficientNet-Lite0 forward as it was before issue 14 (kept below:
  ``F.pad`` before every depthwise convolution, out-of-place ReLU6 and residual add), BN
  fused, channels_last, batches of 64 pre-decoded tensors, 2 torch threads.
* ``tower_b{16,64}_t{1,2}``: ``backend.encode_images`` (the current forward, centring and
  normalisation) on the same pre-decoded batches.
* ``pipeline_b{16,64}_t{1,2}``: ``clipadapt.features.extract_features`` from the JPEG files,
  no cache: read, decode and preprocess in its thread pool (default workers), encode.
* ``matmul_t2``: float32 1024x1024 matmuls, the GFLOP/s ceiling of this machine now (also
  per CPU-second). The tower's achieved GFLOP/s uses its FLOPs counted by
  ``torch.utils.flop_counter`` (a multiply-add is 2 FLOPs; depthwise convolutions are
  memory-bound, so far below the ceiling).

Writes ``benchmarks/results/extraction_throughput.json``.

    python benchmarks/extraction_throughput.py [--images 128] [--repeats 4]
"""

# ruff: noqa: E402 (the runtime settings must come before torch is imported)

from __future__ import annotations

from clipadapt import runtime

runtime.configure_threads()  # before torch is imported: OpenMP reads its environment once
runtime.configure_allocator()

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from clipadapt.atomic import atomic_write_json
from clipadapt.data import decode_image, load_dataset
from clipadapt.features import extract_features
from clipadapt.models import create_backend
from clipadapt.models.efficientnet_lite import EfficientNetLite0, SameConv2d

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pacs100"
OUT = Path(__file__).resolve().parent / "results" / "extraction_throughput.json"
MATMUL_N = 1024


def old_conv(conv: SameConv2d, x: torch.Tensor) -> torch.Tensor:
    """The pre-issue-14 ``SameConv2d.forward``: pad explicitly whenever SAME needs padding."""
    pads = []
    for size, k, s in zip(x.shape[-2:], conv.kernel_size, conv.stride, strict=True):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom))
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)


def old_forward_features(net: EfficientNetLite0, x: torch.Tensor) -> torch.Tensor:
    """The pre-issue-14 forward (out-of-place ReLU6 and residual add) over ``net``'s weights."""
    x = F.relu6(net._bn0(old_conv(net._conv_stem, x)))
    for block in net._blocks:
        h = x
        if block.has_expand:
            h = F.relu6(block._bn0(old_conv(block._expand_conv, h)))
        h = F.relu6(block._bn1(old_conv(block._depthwise_conv, h)))
        h = block._bn2(old_conv(block._project_conv, h))
        x = h + x if block.residual else h
    x = F.relu6(net._bn1(old_conv(net._conv_head, x)))
    return x.mean(dim=(-2, -1))


def matmul_gflop() -> float:
    """Run 20 float32 1024x1024 matmuls; return the GFLOP done."""
    a, b = torch.randn(MATMUL_N, MATMUL_N), torch.randn(MATMUL_N, MATMUL_N)
    reps = 20
    for _ in range(reps):
        torch.mm(a, b)
    return reps * 2 * MATMUL_N**3 / 1e9


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def timed(count: int, work: Callable[[], float]) -> Callable[[], tuple[float, float]]:
    """``work`` (returning units done) under ``count`` torch threads -> (units per wall
    second, process CPU milliseconds per unit, all threads: decoding workers included)."""

    def run() -> tuple[float, float]:
        before = torch.get_num_threads()
        torch.set_num_threads(count)
        try:
            wall, cpu = time.perf_counter(), time.process_time()
            units = work()
            return units / (time.perf_counter() - wall), (time.process_time() - cpu) * 1e3 / units
        finally:
            torch.set_num_threads(before)

    return run


def median_of(values: list[float]) -> dict[str, float | list[float]]:
    return {"median": statistics.median(values), "all": values}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    load_start = os.getloadavg()
    backend = create_backend("lite")
    net = backend.image_tower
    domains = load_dataset(DATA)
    jpegs = [p for d in ("photo", "art_painting", "cartoon") for p in domains[d].paths]
    paths = jpegs[:: max(1, len(jpegs) // args.images)][: args.images]
    pixels = torch.stack([backend.preprocess(decode_image(p)) for p in paths])

    def batches(size: int) -> list[torch.Tensor]:
        return [
            pixels[i : i + size].contiguous(memory_format=torch.channels_last)
            for i in range(0, len(pixels), size)
        ]

    by_size = {16: batches(16), 64: batches(64)}

    def tower(size: int) -> Callable[[], float]:
        def run() -> float:
            for batch in by_size[size]:
                backend.encode_images(batch)
            return len(pixels)

        return run

    def tower_old() -> float:
        with torch.inference_mode():
            for batch in by_size[64]:
                old_forward_features(net, batch)
        return len(pixels)

    def pipeline(size: int) -> Callable[[], float]:
        def run() -> float:
            extract_features(backend, paths, cache=None, batch_size=size, progress=False)
            return len(paths)

        return run

    sides: dict[str, Callable[[], tuple[float, float]]] = {
        "tower_old_b64_t2": timed(2, tower_old),
        "tower_b64_t2": timed(2, tower(64)),
        "tower_b16_t2": timed(2, tower(16)),
        "tower_b16_t1": timed(1, tower(16)),
        "pipeline_b64_t2": timed(2, pipeline(64)),
        "pipeline_b16_t2": timed(2, pipeline(16)),
        "pipeline_b16_t1": timed(1, pipeline(16)),
        "matmul_t2": timed(2, matmul_gflop),
    }
    with torch.inference_mode():
        old, new = old_forward_features(net, by_size[64][0]), net.forward_features(by_size[64][0])
    max_abs_diff = float((old - new).abs().max())
    for run in sides.values():
        run()  # warm-up
    names = list(sides)
    results: dict[str, list[float]] = {name: [] for name in names}
    cpu_ms: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names[repeat:] + names[:repeat]:  # rotate the order every repeat
            rate, cpu = sides[name]()
            results[name].append(rate)
            cpu_ms[name].append(cpu)
            print(f"repeat {repeat} {name}: {rate:.1f}/s, {cpu:.1f} CPU ms each", flush=True)

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net.forward_features(pixels[:1].contiguous(memory_format=torch.channels_last))
    gflop_per_image = counter.get_total_flops() / 1e9
    images = [n for n in names if n != "matmul_t2"]
    towers = [n for n in names if n.startswith("tower_b")]
    pipelines = [n for n in names if n.startswith("pipeline_")]
    best_tower = max(towers, key=lambda n: statistics.median(results[n]))
    best_pipeline = max(pipelines, key=lambda n: statistics.median(results[n]))

    def ratio(a: str, b: str) -> dict[str, float | list[float]]:
        return median_of([x / y for x, y in zip(results[a], results[b], strict=True)])

    def ratio_cpu(a: str, b: str) -> dict[str, float | list[float]]:
        return median_of([x / y for x, y in zip(cpu_ms[a], cpu_ms[b], strict=True)])

    tower_gflops = [gflop_per_image * v for v in results[best_tower]]
    result = {
        "model": "lite",
        "images": len(paths),
        "source": "pacs100 photo/art_painting/cartoon JPEG files",
        "repeats": args.repeats,
        "machine": {
            "cpu": cpu_name(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "load_average_start": load_start,
            "load_average_end": os.getloadavg(),
        },
        "runtime": runtime.runtime_settings(),
        "images_per_s": {name: median_of(results[name]) for name in images},
        "cpu_ms_per_image": {name: median_of(cpu_ms[name]) for name in images},
        "best_tower": best_tower,
        "best_pipeline": best_pipeline,
        "ratio_best_pipeline_over_best_tower": ratio(best_pipeline, best_tower),
        "ratio_new_over_old_tower_b64_t2": ratio("tower_b64_t2", "tower_old_b64_t2"),
        # CPU time per image, same batch and threads: what decoding adds, whatever the load.
        "ratio_cpu_ms_tower_over_pipeline_b16_t2": ratio_cpu("tower_b16_t2", "pipeline_b16_t2"),
        "ratio_cpu_ms_old_over_new_tower_b64_t2": ratio_cpu("tower_old_b64_t2", "tower_b64_t2"),
        # 2,000 CPU ms per second on 2 cores: a bound, reached only with both cores busy.
        "images_per_s_bound_2_cores": {
            name: 2e3 / statistics.median(cpu_ms[name]) for name in images
        },
        "old_vs_new_tower_max_abs_diff": max_abs_diff,
        "tower_gflop_per_image": gflop_per_image,
        "tower_best_gflops": median_of(tower_gflops),
        "matmul_gflops_t2": median_of(results["matmul_t2"]),
        "tower_fraction_of_matmul_ceiling": statistics.median(
            t / m for t, m in zip(tower_gflops, results["matmul_t2"], strict=True)
        ),
        # Per CPU-second, so less exposed to other processes taking the cores.
        "tower_gflop_per_cpu_s": {
            name: gflop_per_image * 1e3 / statistics.median(cpu_ms[name]) for name in towers
        },
        "matmul_gflop_per_cpu_s": 1e3 / statistics.median(cpu_ms["matmul_t2"]),
    }
    atomic_write_json(OUT, result)
    for name in names:
        print(
            f"{name:>18}: median {statistics.median(results[name]):7.1f}/s, "
            f"{statistics.median(cpu_ms[name]):6.1f} CPU ms each"
        )
    for key in (
        "ratio_best_pipeline_over_best_tower",
        "ratio_new_over_old_tower_b64_t2",
        "ratio_cpu_ms_tower_over_pipeline_b16_t2",
        "ratio_cpu_ms_old_over_new_tower_b64_t2",
        "tower_best_gflops",
    ):
        print(f"{key}: median {result[key]['median']:.3f}")
    print(
        f"best tower {best_tower}, best pipeline {best_pipeline}, "
        f"{gflop_per_image:.3f} GFLOP/image, old-vs-new max abs diff {max_abs_diff}"
    )


if __name__ == "__main__":
    main()
