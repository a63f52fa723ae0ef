"""Accuracy of the prompt-learning methods on PACS-100 (built-in model by default).

Protocols (the runner's definitions): few-shot in-domain (fit on K shots of the source
domain, test on its test split), single-source domain generalisation (the same fits, tested
on every other domain), and base-to-novel (fit on the first ceil(C/2) classes; base-class
test images over the base classes, novel-class test images over the novel classes through
``transfer_logits``; harmonic mean). Distillation and pseudo-labelling read the source
domain's unlabeled training pool (never test images): inductive, flagged in the results.

    .venv/bin/python benchmarks/prompt_accuracy.py [--shots 4 16 --seeds 1]
    .venv/bin/python benchmarks/prompt_accuracy.py --model open_clip:ViT-S-32/random \
        --methods zeroshot coop maple ivlp ivlp+promptsrc --shots 4 \
        --out benchmarks/results/prompt_accuracy_vit.json   # ViT-only methods, random weights
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from clipadapt.atomic import atomic_write_json, atomic_write_text
from clipadapt.data import few_shot, load_dataset, train_test_split
from clipadapt.feature_cache import FeatureCache
from clipadapt.features import extract_features
from clipadapt.methods import FitData, create_method
from clipadapt.metrics import classification_metrics
from clipadapt.models import create_backend
from clipadapt.prompts import class_embeddings, make_prompt_set
from clipadapt.views import augmented_view_name

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pacs100"
RESULTS = Path(__file__).resolve().parent / "results"
METHODS: dict[str, tuple[str, dict]] = {  # row label: (registry name, hyperparameters)
    "zeroshot": ("zeroshot", {}),
    "coop": ("coop", {}),
    "kgcoop": ("kgcoop", {}),
    "cocoop": ("cocoop", {}),
    "visual_prompt": ("visual_prompt", {}),
    "lora_text": ("lora_text", {}),
    "prompt_distill": ("prompt_distill", {}),  # teacher: tip_adapter_f on the same support
    "coop_unsupervised": ("coop_unsupervised", {}),  # zero-shot pseudo-labels, unlabeled pool
    # ViT-only (open_clip ViT backends)
    "maple": ("maple", {}),
    "ivlp": ("ivlp", {}),
    "ivlp+promptsrc": (
        "ivlp",
        {"src_text": 25.0, "src_image": 10.0, "src_kl": 1.0, "gpa_mean": 3.0, "gpa_std": 1.0},
    ),
}
LITE_METHODS = list(METHODS)[:8]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        torch.manual_seed(args.seed_model)  # fixes random test weights (open_clip .../random)
        self.backend = create_backend(args.model)
        self.cache = FeatureCache()
        self.domains = load_dataset(args.data)
        self.source = self.domains[args.source]
        self.names = self.source.classnames
        self.text = class_embeddings(self.backend, self.names, make_prompt_set("default"))
        self.split = train_test_split(self.source, seed=1)

    def paths(self, dataset, indices) -> list[str]:
        return [str(dataset.samples[i].path) for i in indices]

    def features(self, backend, paths: list[str], view: str = "center") -> torch.Tensor:
        return extract_features(
            backend, paths, view=view, cache=self.cache, progress=False
        ).features

    def fit_data(self, shots: int, seed: int, classes: list[int]) -> FitData:
        few = few_shot(self.split, shots=shots, seed=seed)
        labels = self.source.labels
        remap = {c: i for i, c in enumerate(classes)}
        support = [i for i in few.support if labels[i] in remap]
        val = [i for i in few.val if labels[i] in remap]
        pool = [i for i in self.split.train if labels[i] in remap]
        paths = self.paths(self.source, support)
        tensor = lambda idx: torch.tensor([remap[int(labels[i])] for i in idx])  # noqa: E731
        return FitData(
            class_embeddings=self.text[classes],
            logit_scale=self.backend.logit_scale,
            classnames=[self.names[c] for c in classes],
            support_features=self.features(self.backend, paths),
            support_labels=tensor(support),
            support_views=torch.stack(
                [
                    self.features(self.backend, paths, augmented_view_name(v))
                    for v in range(self.args.views)
                ]
            ),
            val_features=self.features(self.backend, self.paths(self.source, val)),
            val_labels=tensor(val),
            unlabeled_features=self.features(self.backend, self.paths(self.source, pool)),
            unlabeled_includes_test=False,
            seed=seed,
            backend=self.backend,
            support_paths=paths,
        )

    def fit(self, label: str, data: FitData, workdir: Path):
        name, options = METHODS[label][0], dict(METHODS[label][1])
        if name == "prompt_distill":
            teacher = create_method("tip_adapter_f").fit(data)
            options["teacher"] = str(teacher.save(workdir / f"teacher-{id(data)}"))
        return create_method(name, **options).fit(data)

    def score(self, method, dataset, indices, classes, transfer: bool) -> float:
        labels = dataset.labels
        keep = [i for i in indices if labels[i] in classes]
        feats = self.features(method.feature_backend(self.backend), self.paths(dataset, keep))
        y = torch.tensor([classes.index(int(labels[i])) for i in keep])
        with torch.inference_mode():
            if transfer:
                names = [self.names[c] for c in classes]
                logits = method.transfer_logits(feats, self.text[classes], names)
            else:
                logits = method.predict_logits(feats)
        return classification_metrics(logits, y)["acc1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--source", default="photo")
    parser.add_argument("--shots", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--dg-stride", type=int, default=4, help="every k-th target image")
    parser.add_argument("--methods", nargs="+", default=LITE_METHODS, choices=list(METHODS))
    parser.add_argument("--model", default="lite")
    parser.add_argument("--seed-model", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "prompt_accuracy.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bench = Bench(args)
    everything = list(range(len(bench.names)))
    base = everything[: math.ceil(len(everything) / 2)]
    novel = everything[len(base) :]
    targets = {d: ds for d, ds in bench.domains.items() if d != args.source}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shots in args.shots:
            for seed in args.seeds:
                full = bench.fit_data(shots, seed, everything)
                half = bench.fit_data(shots, seed, base)
                for name in args.methods:
                    began = time.perf_counter()
                    method = bench.fit(name, full, Path(tmp))
                    row = {"method": name, "shots": shots, "seed": seed}
                    row["transductive"] = method.selected.get("transductive", False)
                    row["in_domain"] = bench.score(
                        method, bench.source, bench.split.test, everything, False
                    )
                    dg = {
                        d: bench.score(
                            method, ds, range(0, len(ds), args.dg_stride), everything, False
                        )
                        for d, ds in targets.items()
                    }
                    row["dg"] = dg
                    row["dg_mean"] = sum(dg.values()) / len(dg)
                    method = bench.fit(name, half, Path(tmp))
                    row["base"] = bench.score(method, bench.source, bench.split.test, base, False)
                    row["novel"] = (
                        bench.score(method, bench.source, bench.split.test, novel, True)
                        if method.supports_new_classes
                        else None
                    )
                    b, n = row["base"], row["novel"]
                    row["hm"] = None if n is None else 2 * b * n / (b + n)
                    row["seconds"] = round(time.perf_counter() - began, 1)
                    rows.append(row)
                    print(json.dumps(row))
    report = {
        "benchmark": "prompt_accuracy",
        "dataset": "pacs100",
        "model": args.model,
        "source": args.source,
        "base_classes": [bench.names[c] for c in base],
        "novel_classes": [bench.names[c] for c in novel],
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "data")},
        "rows": rows,
    }
    atomic_write_json(args.out, report)
    atomic_write_text(Path(args.out).with_suffix(".md"), markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = [
        f"# Prompt methods on PACS-100 ({report['model']}, source {report['source']})",
        "",
        f"Base classes {report['base_classes']}, novel {report['novel_classes']}. "
        "All rows inductive (unlabeled pool = source training images, no test images).",
        "",
        "| method | shots | seed | in-domain | DG mean | base | novel | HM | fit+eval s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['method']} | {r['shots']} | {r['seed']} | {pct(r['in_domain'])} | "
            f"{pct(r['dg_mean'])} | {pct(r['base'])} | {pct(r['novel'])} | {pct(r['hm'])} | "
            f"{r['seconds']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
