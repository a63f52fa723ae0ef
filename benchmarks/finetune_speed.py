"""Fine-tuning speed and resume: LiT from cached image features against re-encoding, an epoch
of full fine-tuning of ``lite``, and a SIGKILLed ``clipadapt finetune`` resumed.

Data: PACS-100 photo (``../shared/data/pacs100/photo``), its train split (seed 1, 30% test:
490 images), one caption per image, "a photo of a {class}.".

1. **LiT, cached vs re-encoding.** The same text-tower training (loss clip, batch 64, fp32)
   with the image tower locked; ``image_path="cached"`` reads the image features from a
   feature cache filled beforehand (the fill is timed and reported apart), ``"reencode"``
   decodes, preprocesses and runs the locked tower for every batch. Each side trains
   ``--epochs`` epochs per run; the sides alternate (cached, re-encode, cached, ...) for
   ``--repeats`` runs each after one untimed warm-up run of each; reported: the median
   seconds per epoch of each side and their ratio.
2. **Full fine-tuning epoch.** Both towers of ``lite`` trained (``train all``, loss clip,
   batch 32) on the 490 pairs, fp32 and bf16 autocast alternating, ``--repeats`` one-epoch
   runs each after a warm-up; median seconds per epoch and images per second.
3. **Kill and resume.** ``clipadapt finetune --train text --epochs 4`` on the same images in a
   child process, SIGKILLed as soon as its checkpoint of epoch 1 exists, then the same
   command again (it resumes); its ``towers.safetensors`` is compared tensor by tensor with
   an uninterrupted run's. The resumed run restores weights, optimizer and schedule
   exactly (an in-process interruption resumes bit for bit: tests/test_finetune_core.py);
   across processes MKL/oneDNN kernels may round differently with other memory alignment,
   so the largest difference is reported beside the bit-identity count.

Threads: torch's default as ``clipadapt.runtime`` configures them (all cores); the machine
must be otherwise idle. Writes ``benchmarks/results/finetune_speed.json``.

    .venv/bin/python benchmarks/finetune_speed.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clipadapt import runtime

runtime.configure_threads()  # as the CLI does, before torch loads
runtime.configure_allocator()

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from clipadapt.atomic import atomic_write_json  # noqa: E402
from clipadapt.data import load_dataset, train_test_split  # noqa: E402
from clipadapt.data.pairs import pairs_from_classes  # noqa: E402
from clipadapt.feature_cache import FeatureCache  # noqa: E402
from clipadapt.features import extract_features  # noqa: E402
from clipadapt.models import create_backend  # noqa: E402
from clipadapt.saved import FINETUNE_CHECKPOINT  # noqa: E402
from clipadapt.train.contrastive import finetune_pairs  # noqa: E402
from clipadapt.train.options import FinetuneOptions  # noqa: E402

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "results" / "finetune_speed.json"
PHOTO = ROOT.parent.parent / "shared" / "data" / "pacs100" / "photo"


def train_pairs(limit: int | None):
    dataset = load_dataset(PHOTO)
    split = train_test_split(dataset, seed=1)
    train = split.train[:limit] if limit else split.train
    pairs = pairs_from_classes(dataset, ["a photo of a {}."])
    return pairs.subset(train), [str(dataset.samples[i].path) for i in train]


def epoch_seconds(backend, pairs, options, cache) -> list[float]:
    return finetune_pairs(backend, pairs, options, cache=cache, progress=False).log.seconds


def lit_side_by_side(backend, pairs, paths, cache, epochs: int, repeats: int) -> dict:
    began = time.perf_counter()
    extract_features(backend, paths, cache=cache, progress=False)
    fill = time.perf_counter() - began
    sides = {
        side: FinetuneOptions(
            towers=("text",), epochs=epochs, batch_size=64, image_path=side, seed=1
        )
        for side in ("cached", "reencode")
    }
    seconds: dict[str, list[float]] = {side: [] for side in sides}
    for run in range(repeats + 1):
        for side, options in sides.items():
            spent = epoch_seconds(backend, pairs, options, cache)
            if run:  # run 0 is the warm-up
                seconds[side] += spent
    medians = {side: statistics.median(values) for side, values in seconds.items()}
    return {
        "cache_fill_seconds": round(fill, 2),
        "epoch_seconds": {s: [round(v, 3) for v in values] for s, values in seconds.items()},
        "median_epoch_seconds": {s: round(v, 3) for s, v in medians.items()},
        "speedup_cached_over_reencode": round(medians["reencode"] / medians["cached"], 1),
    }


def full_epoch(backend, pairs, cache, repeats: int) -> dict:
    sides = {
        p: FinetuneOptions(towers=("image", "text"), epochs=1, batch_size=32, precision=p)
        for p in ("fp32", "bf16")
    }
    seconds: dict[str, list[float]] = {p: [] for p in sides}
    for run in range(repeats + 1):
        for precision, options in sides.items():
            spent = epoch_seconds(backend, pairs, options, cache)
            if run:
                seconds[precision] += spent
    return {
        p: {
            "epoch_seconds": [round(v, 2) for v in values],
            "median_epoch_seconds": round(statistics.median(values), 2),
            "images_per_second": round(len(pairs) / statistics.median(values), 1),
        }
        for p, values in seconds.items()
    }


def kill_and_resume(paths: list[str], work: Path) -> dict:
    data = work / "data"
    for path in paths:  # the train split as a class folder, as a user would pass it
        target = data / Path(path).parent.name / Path(path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    cli = "import sys; from clipadapt.cli import main; sys.exit(main())"
    base = [sys.executable, "-c", cli, "finetune", "-q", "--data", str(data)]
    base += ["--train", "text", "--epochs", "4", "--batch-size", "64", "--lr", "1e-4"]
    base += ["--cache-dir", str(work / "cache")]
    subprocess.run([*base, "--out", str(work / "whole")], check=True, capture_output=True)
    killed = work / "killed"
    child = subprocess.Popen([*base, "--out", str(killed)], stderr=subprocess.DEVNULL)
    while not (killed / FINETUNE_CHECKPOINT).exists() and child.poll() is None:
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    resumed_at = torch.load(killed / FINETUNE_CHECKPOINT, weights_only=True)["epoch"]
    subprocess.run([*base, "--out", str(killed)], check=True, capture_output=True)
    a = load_file(str(work / "whole" / "towers.safetensors"))
    b = load_file(str(killed / "towers.safetensors"))
    equal = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return {
        "killed_after_epoch": resumed_at,
        "tensors": len(a),
        "identical_to_uninterrupted": equal,
        "tensors_bit_identical": sum(torch.equal(a[k], b[k]) for k in a),
        "max_abs_difference": max(float((a[k] - b[k]).abs().max()) for k in a),
        "max_abs_weight": max(float(a[k].abs().max()) for k in a),
        "checkpoint_removed": not (killed / FINETUNE_CHECKPOINT).exists(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="LiT epochs per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, help="train images (default: all 490)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    pairs, paths = train_pairs(args.limit)
    backend = create_backend("lite")
    backend.logit_scale  # noqa: B018 - build the text tower before timing
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(Path(tmp) / "cache")
        result = {
            "images": len(paths),
            "torch_threads": torch.get_num_threads(),
            "runtime": runtime.runtime_settings(),
            "lit": lit_side_by_side(backend, pairs, paths, cache, args.epochs, args.repeats),
            "full_finetuning_epoch": full_epoch(backend, pairs, cache, args.repeats),
            "kill_and_resume": kill_and_resume(paths, Path(tmp)),
        }
    atomic_write_json(args.out, result)
    print(result)


if __name__ == "__main__":
    main()
