"""Zero-shot image-text retrieval as a strategy over the pipeline: describe which texts
query which images (``RetrievalTask``), embed both with a model (images through the feature
cache) and score both directions (``run_retrieval``), in CLIP_benchmark's result form."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clipadapt.data import ImageDataset
from clipadapt.feature_cache import FeatureCache
from clipadapt.features import extract_features
from clipadapt.models.base import Backend
from clipadapt.pipeline.results import base_result
from clipadapt.retrieval_metrics import CONVENTIONS, RECALL_KS, retrieval_metrics

RETRIEVAL_TASK = "zeroshot_retrieval"  # CLIP_benchmark's task name
DOMAIN_CAPTION = "a {domain} of a {classname}"


@dataclass(frozen=True)
class RetrievalTask:
    """Texts, images, and ``relevant[t, i]``: image ``i`` answers text ``t``."""

    dataset: str
    texts: list[str]
    image_paths: list[str]
    relevant: np.ndarray  # (len(texts), len(image_paths)) bool
    protocol: dict[str, Any] = field(default_factory=dict)
    data_fingerprints: dict[str, str] = field(default_factory=dict)


def domain_class_task(
    datasets: Mapping[str, ImageDataset], name: str, template: str = DOMAIN_CAPTION
) -> RetrievalTask:
    """One caption per (domain, class), ``template`` filled with the domain word (the domain
    folder's name with ``_`` as spaces: ``art_painting`` -> "art painting") and the class name;
    every image of that domain and class is relevant to it (and it to them)."""
    texts: list[str] = []
    paths: list[str] = []
    groups: list[int] = []
    for dataset_name, dataset in datasets.items():
        domain = dataset_name.rsplit("/", 1)[-1].replace("_", " ")
        labels = sorted({s.label for s in dataset.samples})
        offset = len(texts)
        texts += [template.format(domain=domain, classname=dataset.classnames[c]) for c in labels]
        position = {c: offset + i for i, c in enumerate(labels)}
        paths += [str(s.path) for s in dataset.samples]
        groups += [position[s.label] for s in dataset.samples]
    return RetrievalTask(
        dataset=name,
        texts=texts,
        image_paths=paths,
        relevant=np.arange(len(texts))[:, None] == np.asarray(groups)[None, :],
        protocol={
            "captions": template,
            "relevance": "every image of the caption's domain and class",
            "domains": list(datasets),
        },
        data_fingerprints={n: d.fingerprint() for n, d in datasets.items()},
    )


def run_retrieval(
    backend: Backend,
    task: RetrievalTask,
    *,
    cache: FeatureCache | None = None,
    skip_bad: bool = False,
    progress: bool = True,
    ks: tuple[int, ...] = RECALL_KS,
) -> dict[str, Any]:
    """Recall@k and mAP in both directions (``clipadapt.retrieval_metrics``) of ``backend``
    on ``task``: a CLIP_benchmark ``zeroshot_retrieval`` result plus clipadapt's fields.
    Unreadable images raise, or with ``skip_bad`` are left out and listed."""
    start = time.perf_counter()
    feats = extract_features(
        backend, task.image_paths, cache=cache, skip_bad=skip_bad, progress=progress
    )
    images = feats.features.numpy().astype(np.float64)
    texts = backend.encode_texts(task.texts).numpy().astype(np.float64)
    metrics = retrieval_metrics(texts @ images.T, task.relevant[:, feats.indices], ks)
    return base_result(
        task=RETRIEVAL_TASK,
        dataset=task.dataset,
        backend=backend,
        metrics=metrics,
        protocol={**task.protocol, "metric_conventions": CONVENTIONS},
        n_images=len(feats.indices),
        n_texts=len(task.texts),
        skipped=feats.skipped,
        data_fingerprints=task.data_fingerprints,
        features={"cached": feats.cached, "computed": feats.computed},
        wall_time_s=round(time.perf_counter() - start, 3),
    )
