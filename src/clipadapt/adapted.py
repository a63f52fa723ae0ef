"""The user's path: adapt one method on a labeled folder, save it, predict new images with it.

An adapted-model directory holds the fitted method (``config.json`` + ``state.safetensors``,
loadable with ``clipadapt.methods.load_method``) and ``split.json``, the few-shot split it
was fitted on. ``config.json`` adds an ``adapted`` block: the backend (spec and image
fingerprint), the classes, the prompt templates, the few-shot protocol and the held-out
test accuracy of the method and of zero-shot CLIP on the same images.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipadapt import __version__
from clipadapt.atomic import atomic_write_text
from clipadapt.bench.config import DEFAULT_VIEWS
from clipadapt.bench.featurebank import FeatureBank
from clipadapt.bench.fitting import (
    fit_data,
    gather,
    reads_unlabeled,
    score,
    timed_fit,
    torch_threads,
    views_given,
)
from clipadapt.data import ImageDataset, few_shot, is_image_file, train_test_split
from clipadapt.data.errors import DatasetError
from clipadapt.feature_cache import FeatureCache
from clipadapt.features import extract_features
from clipadapt.methods import Method, create_method, load_method
from clipadapt.methods.base import FitData, read_config
from clipadapt.models.base import Backend
from clipadapt.ood import (
    UNKNOWN,
    OpenSetClassifier,
    ScoreInput,
    cached_text_encoder,
    create_detector,
)
from clipadapt.ood.local import extract_local_features
from clipadapt.ood.openset import CONFIG_KEY as OPEN_SET_KEY
from clipadapt.prompts import class_embeddings, make_prompt_set

ADAPTED_FORMAT = "clipadapt.adapted/1"
DEFAULT_OOD_SCORE = "knn"
"""The detector ``adapt`` calibrates by default: k-nearest-neighbour distance to the support
features. It reads image features only, so it works on top of every method (including those
without logits-based confidence worth trusting) and did well on PACS near OOD with ``lite``."""
SPLIT_FILE = "split.json"
TOP_K = 5


@dataclass
class Adapted:
    """A fitted method and the ``adapted`` block of its directory's config."""

    method: Method
    info: dict[str, Any]
    open_set: OpenSetClassifier | None = None  # with a calibrated "unknown" threshold

    @property
    def class_ids(self) -> list[str]:
        return self.info["classes"]["class_ids"]


def adapt(
    backend: Backend,
    dataset: ImageDataset,
    out: str | os.PathLike[str],
    *,
    method: str,
    shots: int,
    seed: int = 1,
    hyperparameters: dict[str, Any] | None = None,
    views: int = DEFAULT_VIEWS,
    templates: str = "default",
    split_seed: int = 1,
    test_fraction: float = 0.3,
    on_too_few: str = "error",
    cache: FeatureCache | None = None,
    skip_bad: bool = False,
    progress: bool = True,
    ood_score: str | None = DEFAULT_OOD_SCORE,
    accept: float = 0.95,
) -> Adapted:
    """Fit ``method`` on ``shots`` images per class of ``dataset`` and save it to ``out``.

    With ``test_fraction`` > 0 a seeded test split is held out first (never seen by the fit)
    and both the method and zero-shot CLIP are scored on it; with 0 every image may be drawn.

    With ``ood_score`` (a detector name, default ``knn``; None to skip) a detector is fitted
    on the same support data and its "unknown" threshold calibrated on the few-shot
    validation set only (accepting ``accept`` of it); both are saved with the model
    (``OpenSetClassifier.save``) so that ``predict`` says ``unknown`` for rejected images.
    """
    fitted = create_method(method, **(hyperparameters or {}))
    if test_fraction > 0:
        pool = train_test_split(dataset, test_fraction=test_fraction, seed=split_seed)
    else:
        pool = dataset
    split = few_shot(pool, shots=shots, seed=seed, on_too_few=on_too_few)
    bank = FeatureBank(backend, cache, skip_bad=skip_bad, progress=progress)
    bank.ensure(dataset, split.support + split.val + split.test)
    given_views = views_given(fitted, views)
    data = gather(bank, [split], views=given_views, unlabeled=reads_unlabeled(fitted))
    prompts = make_prompt_set(templates, classnames=dataset.classnames)
    text = class_embeddings(backend, dataset.classnames, prompts)
    inputs = fit_data(
        fitted,
        data,
        class_embeddings=text,
        logit_scale=backend.logit_scale,
        classnames=dataset.classnames,
        seed=seed,
        backend=backend,
    )
    fit_seconds = timed_fit(fitted, inputs)
    adapted_bank = bank
    if fitted.feature_backend(backend) is not backend:  # the method changed the image side
        adapted_bank = FeatureBank(fitted.feature_backend(backend), cache, progress=progress)
    open_set = None
    if ood_score is not None:
        val = bank.readable(dataset, split.val)
        open_set = _calibrate_open_set(
            ood_score,
            fitted,
            backend,
            data,
            text,
            dataset,
            val,
            adapted_bank.rows(dataset, val) if adapted_bank is not bank else None,
            seed=seed,
            accept=accept,
            cache=cache,
        )
    evaluation: dict[str, Any] | None = None
    if split.test:
        test = bank.readable(dataset, split.test)
        plain, labels = bank.rows(dataset, test), dataset.labels[test]
        features = plain
        if adapted_bank is not bank:
            features = adapted_bank.rows(dataset, test)
        zeroshot = create_method("zeroshot").fit(inputs)
        evaluation = {
            "split": "test",
            "n": len(test),
            "zeroshot": score(zeroshot.predict_logits, plain, labels)[0],
            method: score(fitted.predict_logits, features, labels)[0],
        }
        if open_set is not None and not open_set.needs_local_features:
            with torch_threads(), torch.inference_mode():
                scores = open_set.scores(plain, method_features=features)
            evaluation["known_accepted"] = float((scores <= open_set.threshold).float().mean())
    info = {
        "format": ADAPTED_FORMAT,
        "package_version": __version__,
        "model": {
            "spec": backend.info.spec,
            "model": backend.info.model,
            "pretrained": backend.info.pretrained,
            "image_fingerprint": backend.image_fingerprint,
            "text_fingerprint": backend.text_fingerprint,
        },
        "classes": {"class_ids": dataset.class_ids, "classnames": dataset.classnames},
        "prompts": {"templates": list(prompts.templates), "source": prompts.source},
        "data": {"name": dataset.name, "root": str(dataset.root), "fingerprint": split.fingerprint},
        "fewshot": {
            "shots": shots,
            "seed": seed,
            "val_per_class": split.val_per_class,
            "views": given_views,
            "split_seed": split_seed if test_fraction > 0 else None,
            "test_fraction": test_fraction,
            "on_too_few": on_too_few,
            "shortfalls": split.shortfalls,
            "n_support": len(data.support_labels),
            "n_val": len(data.val_labels),
            "split_file": SPLIT_FILE,
        },
        "fit_seconds": round(fit_seconds, 6),
        "skipped": bank.skipped,
        "evaluation": evaluation,
    }

    def write(directory: Path) -> None:
        if open_set is None:
            fitted.save(directory, {"adapted": info})
        else:
            open_set.save(directory, {"adapted": info})
        split.save(directory / SPLIT_FILE)

    _replace_directory(Path(out), write)
    return Adapted(fitted, info, open_set)


def _calibrate_open_set(
    name: str,
    method: Method,
    backend: Backend,
    data,
    text: torch.Tensor,
    dataset: ImageDataset,
    val: list[int],
    val_method_features: torch.Tensor | None,
    *,
    seed: int,
    accept: float,
    cache: FeatureCache | None,
) -> OpenSetClassifier:
    """Fit detector ``name`` on the support data; threshold on the validation set only."""
    detector = create_detector(name)
    full = FitData(
        class_embeddings=text,
        logit_scale=backend.logit_scale,
        classnames=list(dataset.classnames),
        support_features=data.support,
        support_labels=data.support_labels,
        support_views=data.views,
        val_features=data.val,
        val_labels=data.val_labels,
        seed=seed,
    )
    with torch_threads():
        detector.fit(full, encode_texts=cached_text_encoder(backend, cache))
    local = None
    if ScoreInput.LOCAL_FEATURES in detector.uses:
        local = extract_local_features(backend, [dataset.samples[i].path for i in val])
    with torch_threads(), torch.inference_mode():
        return OpenSetClassifier.calibrate(
            method,
            detector,
            data.val,
            accept=accept,
            val_method_features=val_method_features,
            val_local_features=local,
        )


def load_adapted(directory: str | os.PathLike[str]) -> Adapted:
    """Load a directory written by ``adapt``."""
    directory = Path(directory)
    info = read_config(directory).get("adapted")
    if not isinstance(info, dict) or info.get("format") != ADAPTED_FORMAT:
        found = None if not isinstance(info, dict) else info.get("format")
        raise ValueError(
            f"{directory / 'config.json'} is not a clipadapt adapted model of format "
            f"{ADAPTED_FORMAT!r} (found {found!r}); make it with clipadapt adapt"
        )
    if OPEN_SET_KEY in read_config(directory):
        open_set = OpenSetClassifier.load(directory)
        return Adapted(open_set.method, info, open_set)
    return Adapted(load_method(directory), info)


def check_backend(adapted: Adapted, backend: Backend, directory: str | os.PathLike[str]) -> None:
    """Refuse a backend whose image features differ from those the model was adapted on."""
    expected = adapted.info["model"]["image_fingerprint"]
    if backend.image_fingerprint != expected:
        raise ValueError(
            f"{directory} was adapted on image features of {adapted.info['model']['spec']!r} "
            f"with fingerprint {expected}, but that backend now gives "
            f"{backend.image_fingerprint} (its weights or preprocessing changed); its "
            "predictions would be meaningless: adapt the model again with this backend"
        )


def image_paths(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files as given, folders expanded to their image files (recursively, sorted)."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if is_image_file(p))
        elif item.is_file():
            paths.append(item)
        else:
            raise DatasetError(f"{item} does not exist; give image files or folders of images")
    if not paths:
        raise DatasetError(f"no images found in {', '.join(map(str, inputs))}")
    return paths


def predict(
    adapted: Adapted,
    backend: Backend,
    paths: Sequence[Path],
    *,
    cache: FeatureCache | None = None,
    skip_bad: bool = False,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """One row per readable image: path, label, score (softmax of the top class), top-5;
    and the list of skipped images. A model saved with an "unknown" threshold labels the
    images whose OOD score exceeds it ``unknown`` (top-5 keeps the closed-set guesses) and
    adds the ``ood_score`` column."""
    method = adapted.method
    method.attach(backend)  # methods that run the text tower when predicting
    eval_backend = method.feature_backend(backend)
    feats = extract_features(eval_backend, paths, cache=cache, skip_bad=skip_bad, progress=progress)
    open_set, ood = adapted.open_set, None
    if open_set is not None:
        plain = feats.features
        if eval_backend is not backend:
            read = [paths[i] for i in feats.indices]
            plain = extract_features(backend, read, cache=cache, progress=progress).features
        local = None
        if open_set.needs_local_features:
            local = extract_local_features(backend, [paths[i] for i in feats.indices])
        with torch_threads(), torch.inference_mode():
            ood = open_set.scores(plain, method_features=feats.features, local_features=local)
    with torch_threads(), torch.inference_mode():
        probs = method.predict_logits(feats.features).softmax(dim=-1)
    top = probs.topk(min(TOP_K, probs.shape[1]), dim=-1)
    names = adapted.class_ids
    rows = []
    for row, index in enumerate(feats.indices):
        values, classes = top.values[row].tolist(), top.indices[row].tolist()
        entry = {
            "path": str(paths[index]),
            "label": names[classes[0]],
            "score": f"{values[0]:.4f}",
            "top5": ";".join(f"{names[c]}:{v:.4f}" for c, v in zip(classes, values, strict=True)),
        }
        if ood is not None:
            value = float(ood[row])
            entry["ood_score"] = f"{value:.6g}"
            if value > open_set.threshold:
                entry["label"] = UNKNOWN
        rows.append(entry)
    return rows, feats.skipped


def predictions_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    columns = ["path", "label", "score", "top5"]
    if rows and "ood_score" in rows[0]:
        columns.append("ood_score")
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_predictions(rows: list[dict[str, Any]], output: str | os.PathLike[str]) -> Path:
    return atomic_write_text(output, predictions_csv(rows))


def _replace_directory(target: Path, write: Callable[[Path], None]) -> None:
    """Write a directory beside ``target`` with ``write(dir)``, then swap it into place.

    Refuses to replace a non-empty directory that is not an adapted model.
    """
    if target.exists() and any(target.iterdir()) and not (target / "config.json").is_file():
        raise ValueError(
            f"{target} exists and is not a clipadapt model directory; choose an empty or new --out"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        write(staging)
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old."))
            os.replace(target, old / "model")
            os.replace(staging, target)
            shutil.rmtree(old)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
