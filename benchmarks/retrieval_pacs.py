"""Zero-shot text<->image retrieval on PACS-100: one gallery of all four domains' images.

Each (domain, class) pair gets the caption "a {domain} of a {class}" (domain words: photo, art
painting, cartoon, sketch); every image of that domain and class is relevant to it. Scores:
recall@1/5/10 and mAP in both directions, CLIP_benchmark's names and conventions (see
``clipadapt.retrieval_metrics``), as a ``zeroshot_retrieval`` result. ``--model`` takes any
model spec, so the same command scores a fine-tuned model directory.

    .venv/bin/python benchmarks/retrieval_pacs.py --model lite --cache-dir /tmp/clipadapt-cache
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clipadapt.atomic import atomic_write_json
from clipadapt.data import load_domain_folders
from clipadapt.feature_cache import FeatureCache
from clipadapt.models import create_backend
from clipadapt.pipeline.retrieval import domain_class_task, run_retrieval

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pacs100"
RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lite", help="model spec or fine-tuned model dir")
    parser.add_argument("--data", type=Path, default=DATA, help="PACS domain folders")
    parser.add_argument("--cache-dir", type=Path, help="feature cache (default: the user's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--out", type=Path, help="result JSON (default: results/retrieval_pacs100_<model>.json)"
    )
    args = parser.parse_args()
    slug = "".join(c if c.isalnum() or c in "-." else "_" for c in args.model)
    out = args.out or RESULTS / f"retrieval_pacs100_{slug}.json"
    task = domain_class_task(load_domain_folders(args.data), "pacs100")
    backend = create_backend(args.model, args.device)
    result = run_retrieval(backend, task, cache=FeatureCache(args.cache_dir))
    atomic_write_json(out, result)
    print(json.dumps(result["metrics"], indent=2))
    print(f"{result['n_texts']} captions, {result['n_images']} images; written to {out}")


if __name__ == "__main__":
    main()
