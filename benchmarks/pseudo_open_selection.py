"""How the ``pseudo_open`` detector's settings fare on the digits domains, never PACS.

Near OOD and open-set DG by held-out classes on digits (source MNIST, known zero..three,
unknown four..nine; targets MNIST's test split, all of USPS and all of MNIST-M), 16 shots,
seeds 1-3, the built-in ``lite`` model. Every setting of a small grid is scored by its AUROC
averaged over the three targets and the seeds, beside the shipped default. This is the
held-out check of defaults that were chosen on PACS runs (see ``clipadapt.ood.pseudo_open``);
the result is an analysis, not a selection the package applies (see the module docstring).
The settings come from ``clipadapt.bench.protocols`` and run through the same
``Experiment`` as ``clipadapt bench``.

    .venv/bin/python benchmarks/pseudo_open_selection.py
    .venv/bin/python benchmarks/pseudo_open_selection.py --seeds 1 --grid-size 2 --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import tempfile
from pathlib import Path

from clipadapt.atomic import atomic_write_json
from clipadapt.bench.protocols import NEAR_OOD, OPEN_SET_DG, as_domains, settings
from clipadapt.data import load_dataset
from clipadapt.feature_cache import FeatureCache
from clipadapt.methods import FitData, create_method
from clipadapt.models import create_backend
from clipadapt.ood import create_detector
from clipadapt.pipeline.experiment import Experiment
from clipadapt.pipeline.task import Setting, Splits
from clipadapt.prompts import make_prompt_set

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "digits"
OUT = Path(__file__).resolve().parent / "results" / "pseudo_open_selection.json"
GRID = {
    "penalty": [0.0, 0.001, 0.01, 0.1, 1.0, 10.0],
    "mix": [(0.0, 1.0), (0.3, 0.7)],
    "ratio": [1.0, 4.0],
}
DEFAULT = {"penalty": 1.0, "mix": (0.0, 1.0), "ratio": 1.0}
SHOTS = 16


def digits_setting(domains: dict) -> Setting:
    """MNIST's held-out classes in its test split (near OOD) and in all of USPS and MNIST-M
    (open-set DG), fitted once on MNIST's known classes."""
    near = settings(NEAR_OOD, "digits", domains, ("mnist",))[0]
    dg = settings(OPEN_SET_DG, "digits", domains, ("mnist",))[0]
    return dataclasses.replace(
        near, protocol="pseudo_open_selection", targets=near.targets + dg.targets
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated (default: 1,2,3)")
    parser.add_argument("--grid-size", type=int, help="only the first N grid settings (a check)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    grid = [dict(zip(GRID, v, strict=True)) for v in itertools.product(*GRID.values())]
    if args.grid_size:  # the default and the first others
        others = [s for s in grid if s != DEFAULT]
        grid = [DEFAULT, *others[: args.grid_size - 1]]
    default = grid.index(DEFAULT)

    backend = create_backend("lite")
    _, domains = as_domains(load_dataset(str(DATA)))
    setting = digits_setting(domains)
    with tempfile.TemporaryDirectory() as splits_dir:
        splits = Splits(
            domains, Path(splits_dir), split_seed=1, test_fraction=0.3, on_too_few="error"
        )
        run = Experiment(
            backend,
            domains,
            splits,
            make_prompt_set("default"),
            cache=FeatureCache(),
            progress=False,
        )
        aurocs: dict[int, list[float]] = {i: [] for i in range(len(grid))}
        for seed in seeds:
            data = run.gather(setting, SHOTS, seed, views=0, unlabeled=False)
            fitted = run.fit(create_method("zeroshot"), setting, data, seed=seed)
            support = FitData(
                class_embeddings=run.class_text(setting.classes),
                logit_scale=backend.logit_scale,
                classnames=run.names(setting.classes),
                support_features=data.support,
                support_labels=data.support_labels,
                seed=seed,
            )
            for i, s in enumerate(grid):
                low, high = s["mix"]
                detector = create_detector(
                    "pseudo_open",
                    penalty=s["penalty"],
                    mix_low=low,
                    mix_high=high,
                    ratio=s["ratio"],
                ).fit(support)
                found = run.evaluate_open_set(
                    fitted, setting, {"p": detector}, {}, SHOTS, seed, 0.95
                )
                targets = found.metrics["targets"].values()
                aurocs[i] += [t["scores"]["p"]["AUROC"] for t in targets]
    rows = [
        {**s, "mix": list(s["mix"]), "mean_auroc": statistics.fmean(aurocs[i])}
        for i, s in enumerate(grid)
    ]
    best = max(range(len(rows)), key=lambda i: (rows[i]["mean_auroc"], i == default))
    result = {
        "benchmark": "pseudo_open_selection",
        "data": "digits: source mnist, known zero..three, targets mnist (test), usps, mnistm",
        "shots": SHOTS,
        "seeds": seeds,
        "model": backend.info.spec,
        "default": rows[default],
        "best": rows[best],
        "grid": rows,
    }
    atomic_write_json(args.out, result)
    print(json.dumps({"default": rows[default], "best": rows[best]}, indent=1))


if __name__ == "__main__":
    main()
