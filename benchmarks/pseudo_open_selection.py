"""How the ``pseudo_open`` detector's settings fare on the digits domains, never PACS.

Near OOD and open-set DG by held-out classes on digits (source MNIST, known zero..three,
unknown four..nine; targets MNIST's test split, all of USPS and all of MNIST-M), 16 shots,
seeds 1-3, the built-in ``lite`` model. Every setting of a small grid is scored by its AUROC
averaged over the three targets and the seeds, beside the shipped default. This is the
held-out check of defaults that were chosen on PACS runs (see ``clipadapt.ood.pseudo_open``);
the result is an analysis, not a selection the package applies (see the module docstring).

    .venv/bin/python benchmarks/pseudo_open_selection.py
"""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path

from clipadapt.atomic import atomic_write_json
from clipadapt.data import load_dataset
from clipadapt.feature_cache import FeatureCache
from clipadapt.methods import create_method
from clipadapt.models import create_backend
from clipadapt.ood import create_detector
from clipadapt.ood.protocols import (
    class_holdout_task,
    evaluate_open_set,
    extract_task_features,
    task_fit_data,
)
from clipadapt.prompts import class_embeddings, make_prompt_set

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "digits"
OUT = Path(__file__).resolve().parent / "results" / "pseudo_open_selection.json"
GRID = {
    "penalty": [0.0, 0.001, 0.01, 0.1, 1.0, 10.0],
    "mix": [(0.0, 1.0), (0.3, 0.7)],
    "ratio": [1.0, 4.0],
}
DEFAULT = {"penalty": 1.0, "mix": (0.0, 1.0), "ratio": 1.0}
SEEDS = (1, 2, 3)


def main() -> None:
    backend = create_backend("lite")
    domains = load_dataset(str(DATA))
    cache = FeatureCache()
    prompts = make_prompt_set("default")
    grid = itertools.product(*GRID.values())
    settings = [dict(zip(GRID, values, strict=True)) for values in grid]
    aurocs: dict[int, list[float]] = {i: [] for i in range(len(settings))}
    for seed in SEEDS:
        task = class_holdout_task(
            domains, sources=["mnist"], targets=["mnist", "usps", "mnistm"], shots=16, seed=seed
        )
        features = extract_task_features(task, backend, cache=cache, progress=False)
        text = class_embeddings(backend, list(task.classnames), prompts)
        data = task_fit_data(task, features, text, backend.logit_scale)
        method = create_method("zeroshot").fit(data)
        for i, s in enumerate(settings):
            low, high = s["mix"]
            detector = create_detector(
                "pseudo_open", penalty=s["penalty"], mix_low=low, mix_high=high, ratio=s["ratio"]
            ).fit(data)
            metrics = evaluate_open_set(method, {"p": detector}, features.val, features.targets)
            aurocs[i] += [t["scores"]["p"]["AUROC"] for t in metrics.metrics["targets"].values()]
    rows = [
        {**s, "mix": list(s["mix"]), "mean_auroc": statistics.fmean(aurocs[i])}
        for i, s in enumerate(settings)
    ]
    default = next(i for i, s in enumerate(settings) if s == DEFAULT)
    best = max(range(len(rows)), key=lambda i: (rows[i]["mean_auroc"], i == default))
    result = {
        "benchmark": "pseudo_open_selection",
        "data": "digits: source mnist, known zero..three, targets mnist (test), usps, mnistm",
        "shots": 16,
        "seeds": list(SEEDS),
        "model": backend.info.spec,
        "default": rows[default],
        "best": rows[best],
        "grid": rows,
    }
    atomic_write_json(OUT, result)
    print(json.dumps({"default": rows[default], "best": rows[best]}, indent=1))


if __name__ == "__main__":
    main()
