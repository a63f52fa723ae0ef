"""CoOp's cached path against re-encoding every support image at every step.

For each backend (the built-in ``lite`` model and a randomly initialised open_clip ViT-B-32),
CoOp trains twice on the same few-shot PACS split with the same augmented views: once reading
the views' features from the feature cache, once decoding-free re-encoding each batch through
the frozen image tower (the images are decoded once up front, so the comparison favours the
re-encoding path). Reported: median seconds per epoch of each path, their ratio, the one-time
cost of filling the cache, and test acc1 of both paths (they should agree). Each path runs
in fp32 and again with bf16 autocast (``precision="bf16"``), side by side, for the mixed
precision speed-up and its effect on accuracy.

    .venv/bin/python benchmarks/prompt_cached_path.py [--shots 8 --views 2 --epochs 6]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from clipadapt.atomic import atomic_write_json
from clipadapt.data import few_shot, load_dataset, train_test_split
from clipadapt.feature_cache import FeatureCache
from clipadapt.features import extract_features
from clipadapt.methods import FitData
from clipadapt.methods.prompting import CoOp
from clipadapt.metrics import classification_metrics
from clipadapt.models import create_backend
from clipadapt.prompts import class_embeddings, make_prompt_set
from clipadapt.views import augmented_view_name

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pacs100"
OUT = Path(__file__).resolve().parent / "results" / "prompt_cached_path.json"
BACKENDS = ("lite", "open_clip:ViT-B-32/random")


def run_backend(spec: str, args: argparse.Namespace, cache: FeatureCache) -> dict:
    backend = create_backend(spec)
    domain = load_dataset(args.data)[args.domain]
    split = few_shot(train_test_split(domain, seed=args.seed), shots=args.shots, seed=args.seed)
    paths = [str(domain.samples[i].path) for i in split.support]
    labels = torch.from_numpy(domain.labels[split.support]).long()
    test_paths = [str(domain.samples[i].path) for i in split.test[:: args.test_stride]]
    test_labels = torch.from_numpy(domain.labels[split.test[:: args.test_stride]]).long()

    began = time.perf_counter()
    support = extract_features(backend, paths, cache=cache, progress=False)
    views = [
        extract_features(backend, paths, view=augmented_view_name(i), cache=cache, progress=False)
        for i in range(args.views)
    ]
    cache_fill_s = time.perf_counter() - began
    test = extract_features(backend, test_paths, cache=cache, progress=False).features
    text = class_embeddings(backend, domain.classnames, make_prompt_set("default"))
    zeroshot = classification_metrics(backend.logit_scale * test @ text.T, test_labels)["acc1"]

    result: dict = {
        "backend": spec,
        "support_images": len(paths),
        "augmented_views": args.views,
        "test_images": len(test_paths),
        "cache_fill_s": round(cache_fill_s, 3),
        "cache_hits_on_fill": support.cached + sum(v.cached for v in views),
        "zeroshot_acc1": zeroshot,
    }
    learned = {}
    for precision in args.precisions:
        for path in ("cached", "reencode"):
            data = FitData(
                class_embeddings=text,
                logit_scale=backend.logit_scale,
                classnames=domain.classnames,
                support_features=support.features,
                support_labels=labels,
                support_views=torch.stack([v.features for v in views]),
                seed=args.seed,
                backend=backend,
                support_paths=paths,
            )
            method = CoOp(
                epochs=args.epochs, batch_size=args.batch_size, image_path=path, precision=precision
            ).fit(data)
            logits = method.predict_logits(test)
            key = path if precision == "fp32" else f"{path}_{precision}"
            result[key] = {
                "epoch_s": [round(s, 4) for s in method.epoch_seconds],
                "median_epoch_s": round(statistics.median(method.epoch_seconds), 4),
                "acc1": classification_metrics(logits, test_labels)["acc1"],
            }
            learned[key] = method.state("ctx")
    result["speedup"] = round(
        result["reencode"]["median_epoch_s"] / result["cached"]["median_epoch_s"], 1
    )
    result["ctx_max_abs_diff"] = float((learned["cached"] - learned["reencode"]).abs().max())
    for precision in args.precisions[1:]:
        result[f"{precision}_speedup"] = {
            path: round(
                result[path]["median_epoch_s"] / result[f"{path}_{precision}"]["median_epoch_s"], 2
            )
            for path in ("cached", "reencode")
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--domain", default="photo")
    parser.add_argument("--shots", type=int, default=8)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--test-stride", type=int, default=2, help="use every k-th test image")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache = FeatureCache()
    runs = []
    for spec in args.backends:
        runs.append(run_backend(spec, args, cache))
        print(json.dumps(runs[-1], indent=1))
    report = {
        "benchmark": "prompt_cached_path",
        "method": "coop",
        "dataset": f"pacs100/{args.domain}",
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "data")},
        "load_average_at_end": os.getloadavg(),
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(),
        },
        "runs": runs,
    }
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
