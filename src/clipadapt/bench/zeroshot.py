"""Zero-shot classification of a labeled dataset (all of it, or a seeded test split)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from clipadapt.data import ImageDataset, train_test_split
from clipadapt.feature_cache import FeatureCache
from clipadapt.features import extract_features
from clipadapt.metrics import classification_metrics
from clipadapt.models.base import Backend
from clipadapt.pipeline.results import base_result
from clipadapt.prompts import PromptSet, class_embeddings

SPLITS = ("all", "test")


def run_zeroshot(
    backend: Backend,
    dataset: ImageDataset,
    prompts: PromptSet,
    *,
    split: str = "all",
    seed: int = 1,
    test_fraction: float = 0.3,
    split_file: str | Path | None = None,
    cache: FeatureCache | None = None,
    skip_bad: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``dataset`` (or its test split) with the prompt-ensembled zero-shot classifier.

    With ``split="test"`` the seeded split is written to ``split_file`` when given, so the run
    can be repeated exactly.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: use one of {SPLITS}")
    start = time.perf_counter()
    protocol: dict[str, Any] = {"split": split}
    indices = list(range(len(dataset)))
    if split == "test":
        chosen = train_test_split(dataset, test_fraction=test_fraction, seed=seed)
        indices = chosen.test
        protocol |= {"seed": seed, "test_fraction": test_fraction}
        if split_file is not None:
            protocol["split_file"] = str(chosen.save(split_file))
    paths = [dataset.samples[i].path for i in indices]
    feats = extract_features(backend, paths, cache=cache, skip_bad=skip_bad, progress=progress)
    weights = class_embeddings(backend, dataset.classnames, prompts)
    logits = backend.logit_scale * feats.features @ weights.T
    labels = dataset.labels[[indices[i] for i in feats.indices]]
    metrics = classification_metrics(logits, torch.from_numpy(labels))
    protocol |= {
        "templates": list(prompts.templates),
        "templates_source": prompts.source,
        "descriptions": sorted(prompts.descriptions) or None,
    }
    return base_result(
        task="zeroshot_classification",
        dataset=dataset.name,
        backend=backend,
        metrics=metrics,
        protocol=protocol,
        classnames=dataset.classnames,
        n_samples=len(feats.indices),
        skipped=dataset.skipped + feats.skipped,
        data_fingerprint=dataset.fingerprint(),
        features={"cached": feats.cached, "computed": feats.computed},
        wall_time_s=round(time.perf_counter() - start, 3),
    )
