"""Memory and time of one CoOp step over 1,000 classes (ImageNet class names).

With more classes than ``text_chunk`` the text tower is run and back-propagated chunk by
chunk (see ``ClassPrompts.backward_chunked``). Each configuration runs in a fresh process so
its peak resident memory is its own.

    .venv/bin/python benchmarks/prompt_many_classes.py
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from clipadapt.atomic import atomic_write_json

OUT = Path(__file__).resolve().parent / "results" / "prompt_many_classes.json"
CONFIGS = [("lite", 256), ("lite", 1000), ("open_clip:ViT-B-32/random", 256)]


def one(spec: str, chunk: int, steps: int) -> dict:
    from clipadapt.methods import FitData
    from clipadapt.methods.prompting import CoOp
    from clipadapt.models import create_backend
    from clipadapt.models.lite_alignment import imagenet_classnames

    torch.set_num_threads(1)
    torch.manual_seed(0)
    backend = create_backend(spec)
    names = imagenet_classnames()
    generator = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(32, backend.embed_dim, generator=generator), dim=-1)
    text = backend.encode_texts([f"a photo of a {n}." for n in names])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    data = FitData(
        class_embeddings=text,
        logit_scale=backend.logit_scale,
        classnames=names,
        support_features=feats,
        support_labels=torch.randint(0, len(names), (32,), generator=generator),
        backend=backend,
    )
    method = CoOp(epochs=steps, batch_size=32, text_chunk=chunk)
    began = time.perf_counter()
    method.fit(data)
    return {
        "backend": spec,
        "classes": len(names),
        "text_chunk": chunk,
        "steps": steps,
        "seconds_per_step": round(statistics.median(method.epoch_seconds), 2),
        "fit_seconds_total": round(time.perf_counter() - began, 1),
        "peak_rss_gb_before_fit": round(before, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=2, metavar=("SPEC", "CHUNK"))
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.steps)))
        return
    runs = []
    for spec, chunk in CONFIGS:
        out = subprocess.run(
            [sys.executable, __file__, "--one", spec, str(chunk), "--steps", str(args.steps)],
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]))
    atomic_write_json(OUT, {"benchmark": "prompt_many_classes", "method": "coop", "runs": runs})


if __name__ == "__main__":
    main()
