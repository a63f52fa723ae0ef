"""OOD and open-set protocols: who is known, what is adapted on, what is tested.

- **near OOD by held-out classes** (``class_holdout_task`` with the source as target): the
  classes, sorted by class id (folder name), are split into the first ``num_known`` (known)
  and the rest (unknown). For PACS's 7 classes the default 4 gives known = dog, elephant,
  giraffe, guitar and unknown = horse, house, person.
- **open-set domain generalisation** (``class_holdout_task`` with other domains as targets):
  the same class split, adapted on the source domain(s), tested on held-out domains.
- **far OOD** (``far_ood_task``): every class of the ID dataset is known; the OOD inputs are
  another dataset (e.g. PACS photo against MNIST digits).

Only known-class images of the source are ever sampled for adaptation: a train/test split
(``train_test_split``, seeded by ``split_seed``) of the known-class source data, then
``few_shot`` support and validation (seeded by ``seed``) from its training part. Test inputs
of a source domain are the held-out test split of every class (known and unknown, the same
``split_seed``, so the unknown classes' training part is simply never used); a held-out
domain or an OOD dataset is tested on all its images.

``evaluate_open_set`` then calibrates each detector's threshold on the validation features,
and reports per target: closed-set accuracy on known inputs, and per detector ``AUROC``,
``FPR95``, ``AUPR_IN``, ``AUPR_OUT``, ``OSCR``, and at the calibrated threshold the accepted
fraction of known inputs, ``acc_known``, ``acc_unknown`` and ``H_score``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipadapt.data import FewShotSplit, ImageDataset, few_shot, train_test_split
from clipadapt.feature_cache import FeatureCache
from clipadapt.features import extract_features
from clipadapt.methods import FitData, Method
from clipadapt.models.base import Backend
from clipadapt.ood.base import Detector, ScoreInput
from clipadapt.ood.local import extract_local_features
from clipadapt.ood.metrics import (
    OOD_LABEL,
    closed_set_accuracy,
    h_score,
    ood_metrics,
    oscr,
    reject,
)
from clipadapt.ood.openset import calibrate_threshold, detector_scores

NEAR_OOD, OPEN_SET_DG, FAR_OOD = "near_ood", "open_set_dg", "far_ood"


@dataclass
class ImageSet:
    """Images to score, with known-class labels (``OOD_LABEL`` for unknown images)."""

    paths: list[Path]
    labels: np.ndarray

    @classmethod
    def of(
        cls, dataset: ImageDataset, indices: Sequence[int] | None = None, unknown: bool = False
    ) -> ImageSet:
        chosen = range(len(dataset)) if indices is None else indices
        labels = [OOD_LABEL if unknown else dataset.samples[i].label for i in chosen]
        return cls([dataset.samples[i].path for i in chosen], np.asarray(labels, np.int64))


@dataclass
class Target:
    """One test setting: known-class and unknown inputs of one domain or dataset."""

    protocol: str
    known: ImageSet
    unknown: ImageSet


@dataclass
class OpenSetTask:
    """A protocol instance: the known classes, the few-shot sample, the test targets."""

    dataset: str
    sources: list[str]
    known_classes: list[str]  # class ids, in label order
    classnames: list[str]  # their human names, for prompts
    unknown: list[str]  # unknown class ids, or OOD dataset names for far OOD
    train: ImageDataset  # known-class source data the few-shot split indexes
    split: FewShotSplit
    targets: dict[str, Target] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """The protocol fields a result records."""
        return {
            "dataset": self.dataset,
            "sources": self.sources,
            "known_classes": self.known_classes,
            "unknown": self.unknown,
            "shots": self.split.shots,
            "seed": self.split.seed,
            "split_seed": self.split.split_seed,
            "val_per_class": self.split.val_per_class,
            "test_fraction": self.split.test_fraction,
            "targets": {
                name: {
                    "protocol": t.protocol,
                    "n_known": len(t.known.paths),
                    "n_unknown": len(t.unknown.paths),
                }
                for name, t in self.targets.items()
            },
        }


def hold_out_classes(class_ids: Sequence[str], num_known: int = 4) -> tuple[list[str], list[str]]:
    """Sorted class ids split into the first ``num_known`` (known) and the rest (unknown)."""
    ordered = sorted(class_ids)
    if not 1 <= num_known < len(ordered):
        raise ValueError(
            f"num_known must be between 1 and {len(ordered) - 1} for {len(ordered)} classes, "
            f"got {num_known}"
        )
    return ordered[:num_known], ordered[num_known:]


def restrict_classes(dataset: ImageDataset, class_ids: Sequence[str]) -> ImageDataset:
    """The samples of ``class_ids`` only, relabelled 0..len(class_ids)-1 in that order."""
    missing = sorted(set(class_ids) - set(dataset.class_ids))
    if missing:
        raise ValueError(f"dataset {dataset.name!r} has no classes {missing}")
    old = [dataset.class_ids.index(c) for c in class_ids]
    new_label = {o: n for n, o in enumerate(old)}
    return dataclasses.replace(
        dataset,
        class_ids=list(class_ids),
        classnames=[dataset.classnames[o] for o in old],
        samples=[
            dataclasses.replace(s, label=new_label[s.label])
            for s in dataset.samples
            if s.label in new_label
        ],
        skipped=list(dataset.skipped),
    )


def merge_domains(domains: Mapping[str, ImageDataset], names: Sequence[str]) -> ImageDataset:
    """One dataset with the samples of several same-class domains (multi-source training)."""
    chosen = [domains[n] for n in names]
    if len(chosen) == 1:
        return chosen[0]
    first = chosen[0]
    if any(d.class_ids != first.class_ids for d in chosen):
        raise ValueError(f"domains {list(names)} do not share the same classes")
    root = Path(os.path.commonpath([str(d.root) for d in chosen]))
    return dataclasses.replace(
        first,
        name="+".join(d.name for d in chosen),
        root=root,
        samples=[s for d in chosen for s in d.samples],
        skipped=[s for d in chosen for s in d.skipped],
    )


def _few_shot(
    train: ImageDataset, shots: int, seed: int, split_seed: int, test_fraction: float
) -> tuple[FewShotSplit, list[int]]:
    """Few-shot support/validation from the training part of a seeded train/test split."""
    split = train_test_split(train, test_fraction=test_fraction, seed=split_seed)
    return few_shot(split, shots=shots, seed=seed), split.test


def class_holdout_task(
    domains: Mapping[str, ImageDataset],
    *,
    sources: Sequence[str],
    targets: Sequence[str] | None = None,
    num_known: int = 4,
    shots: int = 16,
    seed: int = 1,
    split_seed: int = 1,
    test_fraction: float = 0.3,
    dataset_name: str | None = None,
) -> OpenSetTask:
    """Near OOD (targets among ``sources``) and open-set DG (other targets) by held-out classes.

    ``domains`` maps domain names to same-class datasets (``load_domain_folders``; a single
    image folder is ``{"all": dataset}``). ``targets`` defaults to every domain.
    """
    unknown_sources = sorted(set(sources) - set(domains))
    if not sources or unknown_sources:
        raise ValueError(f"sources must name domains among {sorted(domains)}, got {sources}")
    pooled = merge_domains(domains, sources)
    known, unknown = hold_out_classes(pooled.class_ids, num_known)
    train = restrict_classes(pooled, known)
    split, known_test = _few_shot(train, shots, seed, split_seed, test_fraction)
    unknown_pool = restrict_classes(pooled, unknown)
    unknown_test = train_test_split(unknown_pool, test_fraction=test_fraction, seed=split_seed).test
    task = OpenSetTask(
        dataset=dataset_name or domains[sources[0]].name.split("/")[0],
        sources=list(sources),
        known_classes=known,
        classnames=train.classnames,
        unknown=unknown,
        train=train,
        split=split,
    )

    def of_domain(dataset: ImageDataset, indices: list[int], name: str) -> list[int]:
        if len(sources) == 1:
            return indices
        return [i for i in indices if dataset.samples[i].domain == name]

    for name in targets or sorted(domains):
        if name in sources:  # the held-out test split of every class
            task.targets[name] = Target(
                NEAR_OOD,
                ImageSet.of(train, of_domain(train, known_test, name)),
                ImageSet.of(unknown_pool, of_domain(unknown_pool, unknown_test, name), True),
            )
        else:
            task.targets[name] = Target(
                OPEN_SET_DG,
                ImageSet.of(restrict_classes(domains[name], known)),
                ImageSet.of(restrict_classes(domains[name], unknown), unknown=True),
            )
    return task


def far_ood_task(
    id_dataset: ImageDataset,
    ood_datasets: Mapping[str, ImageDataset],
    *,
    shots: int = 16,
    seed: int = 1,
    split_seed: int = 1,
    test_fraction: float = 0.3,
) -> OpenSetTask:
    """Every class of ``id_dataset`` known; each OOD dataset is one target, all its images."""
    split, test = _few_shot(id_dataset, shots, seed, split_seed, test_fraction)
    known_test = ImageSet.of(id_dataset, test)
    return OpenSetTask(
        dataset=id_dataset.name,
        sources=[id_dataset.name],
        known_classes=list(id_dataset.class_ids),
        classnames=list(id_dataset.classnames),
        unknown=sorted(ood_datasets),
        train=id_dataset,
        split=split,
        targets={
            name: Target(FAR_OOD, known_test, ImageSet.of(data, unknown=True))
            for name, data in sorted(ood_datasets.items())
        },
    )


# -- features ---------------------------------------------------------------------------------
@dataclass
class FeatureSet:
    """Features of an image set: global (N, D), labels (N,), optional patches (N, P, D), and
    the features the method reads when it adapted the image side (else ``features``)."""

    features: torch.Tensor
    labels: torch.Tensor
    local_features: torch.Tensor | None = None
    method_features: torch.Tensor | None = None

    def scores(self, method: Method, detector: Detector) -> torch.Tensor:
        return detector_scores(
            method,
            detector,
            self.features,
            method_features=self.method_features,
            local_features=self.local_features,
        )

    def predictions(self, method: Method) -> torch.Tensor:
        return method.predict(
            self.features if self.method_features is None else self.method_features
        )


@dataclass
class TaskFeatures:
    support: FeatureSet
    val: FeatureSet
    targets: dict[str, tuple[FeatureSet, FeatureSet]]  # name -> (known, unknown)


def embed_images(
    backend: Backend,
    images: ImageSet,
    *,
    cache: FeatureCache | None = None,
    local: bool = False,
    progress: bool = True,
) -> FeatureSet:
    """Global features through the cache, and patch features when ``local`` (ViT only)."""
    feats = extract_features(backend, images.paths, cache=cache, progress=progress)
    patches = extract_local_features(backend, images.paths, progress=progress) if local else None
    return FeatureSet(feats.features, torch.from_numpy(images.labels), patches)


def extract_task_features(
    task: OpenSetTask,
    backend: Backend,
    *,
    cache: FeatureCache | None = None,
    local: bool = False,
    progress: bool = True,
) -> TaskFeatures:
    """Embed the support, validation and every target of ``task``.

    With ``local`` the validation and test images also get patch features (for GL-MCM).
    """
    embedded: dict[tuple[str, ...], FeatureSet] = {}

    def embed(images: ImageSet, with_local: bool) -> FeatureSet:
        key = tuple(map(str, images.paths))
        if key not in embedded:  # far-OOD targets share one ID test set
            embedded[key] = embed_images(
                backend, images, cache=cache, local=with_local, progress=progress
            )
        return embedded[key]

    split = task.split
    return TaskFeatures(
        support=embed(ImageSet.of(task.train, split.support), False),
        val=embed(ImageSet.of(task.train, split.val), local),
        targets={
            name: (embed(t.known, local), embed(t.unknown, local))
            for name, t in task.targets.items()
        },
    )


def task_fit_data(
    task: OpenSetTask,
    features: TaskFeatures,
    class_embeddings: torch.Tensor,
    logit_scale: float,
) -> FitData:
    """The labeled support and few-shot validation set (no views, nothing from the tests)."""
    return FitData(
        class_embeddings=class_embeddings,
        logit_scale=logit_scale,
        classnames=list(task.classnames),
        support_features=features.support.features,
        support_labels=features.support.labels,
        val_features=features.val.features,
        val_labels=features.val.labels,
        seed=task.split.seed,
    )


# -- evaluation -------------------------------------------------------------------------------
@dataclass
class OpenSetEvaluation:
    """JSON-ready ``metrics`` and, for plots, the raw (known, unknown) scores."""

    metrics: dict[str, Any]
    scores: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]  # target -> detector -> pair


def evaluate_open_set(
    method: Method,
    detectors: Mapping[str, Detector],
    val: FeatureSet,
    targets: Mapping[str, tuple[FeatureSet, FeatureSet]],
    *,
    accept: float = 0.95,
) -> OpenSetEvaluation:
    """Metrics of every fitted detector on top of the fitted ``method``, per target.

    Each threshold is calibrated on ``val`` only (the few-shot validation set), accepting
    ``accept`` of it. Detectors that need patch features are reported as skipped when the
    features have none (CNN towers).
    """
    thresholds: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for name, detector in detectors.items():
        if ScoreInput.LOCAL_FEATURES in detector.uses and val.local_features is None:
            skipped[name] = "needs local patch features (a ViT image tower)"
            continue
        thresholds[name] = calibrate_threshold(val.scores(method, detector), accept)
    metrics: dict[str, Any] = {"accept": accept, "targets": {}}
    raw: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for target, (known, unknown) in targets.items():
        predictions = known.predictions(method)
        unknown_predictions = unknown.predictions(method)
        per_detector: dict[str, Any] = {name: {"skipped": why} for name, why in skipped.items()}
        raw[target] = {}
        for name, threshold in thresholds.items():
            detector = detectors[name]
            id_scores, ood_scores = known.scores(method, detector), unknown.scores(method, detector)
            open_known = reject(predictions, id_scores, threshold)
            open_unknown = reject(unknown_predictions, ood_scores, threshold)
            per_detector[name] = {
                **ood_metrics(id_scores, ood_scores),
                "OSCR": oscr(id_scores, (predictions == known.labels).numpy(), ood_scores),
                "threshold": threshold,
                "known_accepted": float((id_scores <= threshold).float().mean()),
                **h_score(open_known, known.labels, open_unknown),
            }
            raw[target][name] = (id_scores.numpy(), ood_scores.numpy())
        metrics["targets"][target] = {
            "n_known": len(known.labels),
            "n_unknown": len(unknown.labels),
            "closed_set_acc": closed_set_accuracy(predictions, known.labels),
            "scores": {name: per_detector[name] for name in detectors},
        }
    return OpenSetEvaluation(metrics, raw)
