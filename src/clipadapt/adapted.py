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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipadapt import __version__
from clipadapt.atomic import atomic_write_text, replace_directory
from clipadapt.data import ImageDataset
from clipadapt.defaults import DEFAULT_VIEWS
from clipadapt.feature_cache import FeatureCache
from clipadapt.features import extract_features
from clipadapt.methods import Method, create_method, load_method
from clipadapt.models.base import Backend
from clipadapt.ood import UNKNOWN, OpenSetClassifier, ScoreInput
from clipadapt.ood.local import encode_local_features, extract_local_features
from clipadapt.ood.openset import CONFIG_KEY as OPEN_SET_KEY
from clipadapt.pipeline.experiment import Experiment, Fitted
from clipadapt.pipeline.fitting import reads_unlabeled, torch_threads, views_given
from clipadapt.pipeline.openset import false_unknown_rate
from clipadapt.pipeline.task import TEST, Images, Setting, Splits, Target
from clipadapt.prompts import make_prompt_set
from clipadapt.saved import ADAPTED_FORMAT, check_model_dir, read_config
from clipadapt.train.loop import world
from clipadapt.views import DEFAULT_AUGMENT

DEFAULT_OOD_SCORE = "knn"
DEFAULT_OOD_REASON = (
    "the default: k-nearest-neighbour distance to the support features reads image features "
    "only, so it works on top of every method, and did well on PACS near OOD with lite"
)
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

    @property
    def classnames(self) -> list[str]:
        return self.info["classes"]["classnames"]

    @property
    def temperature(self) -> float:
        """The temperature ``predict`` divides logits by (1 for models saved without one)."""
        return float((self.info.get("calibration") or {}).get("temperature", 1.0))


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
    augment: tuple[str, ...] = DEFAULT_AUGMENT,
    templates: str = "default",
    split_seed: int = 1,
    test_fraction: float = 0.3,
    on_too_few: str = "error",
    selection: str = "validation",
    cache: FeatureCache | None = None,
    skip_bad: bool = False,
    progress: bool = True,
    ood_score: str | None = DEFAULT_OOD_SCORE,
    accept: float = 0.95,
    calibrate: str = "none",
) -> Adapted:
    """Fit ``method`` on ``shots`` images per class of ``dataset`` and save it to ``out``.

    The few-shot protocol of ``clipadapt bench`` on one dataset, through the same pipeline:
    with ``test_fraction`` > 0 a seeded test split is held out first (never seen by the fit)
    and both the method and zero-shot CLIP are scored on it; with 0 every image may be drawn.

    With ``ood_score`` (a detector name, default ``knn``; None to skip) a detector is fitted
    on the same support data and its "unknown" threshold calibrated on the few-shot
    validation set only (accepting ``accept`` of it); both are saved with the model
    (``OpenSetClassifier.save``) so that ``predict`` says ``unknown`` for rejected images.

    With ``calibrate="temperature"`` a temperature is fitted on the few-shot validation set
    (``Experiment.fit_temperature``) and saved; ``predict``'s probabilities use it.
    """
    target = check_model_dir(out)
    fitted_method = create_method(method, **(hyperparameters or {}))
    domain = dataset.name.replace("/", "_")
    splits = Splits(
        {domain: dataset},
        target,
        split_seed=split_seed,
        test_fraction=test_fraction,
        on_too_few=on_too_few,
    )
    experiment = Experiment(
        backend,
        {domain: dataset},
        splits,
        make_prompt_set(templates, classnames=dataset.classnames),
        cache=cache,
        views=views,
        augment=augment,
        selection=selection,
        skip_bad=skip_bad,
        progress=progress,
    )
    tests = (Target(domain, "in_domain", Images(domain, TEST)),) if test_fraction > 0 else ()
    setting = Setting("fewshot", dataset.name, domain, (domain,), tests)
    split = splits.few_shot(domain, shots, seed)
    experiment.bank.ensure(dataset, split.support + split.val + split.test)
    given_views = views_given(fitted_method, views)
    data = experiment.gather(
        setting, shots, seed, views=given_views, unlabeled=reads_unlabeled(fitted_method)
    )
    checkpoints = target.parent / f".{target.name}.checkpoints"  # resumes a killed fit
    fitted = experiment.fit(fitted_method, setting, data, seed=seed, checkpoint_dir=checkpoints)
    calibration: dict[str, Any] = {"mode": "none"}
    if calibrate == "temperature":
        calibration = experiment.fit_temperature(fitted, setting, shots, seed)
    open_set, n_calibration = None, 0
    if ood_score is not None:
        open_set, n_calibration = _calibrate_open_set(
            experiment, fitted, setting, ood_score, shots, seed, accept
        )
    evaluation: dict[str, Any] | None = None
    if tests:
        zeroshot = experiment.fit(create_method("zeroshot"), setting, data, seed=seed)
        scored = experiment.evaluate(fitted, setting, calibration.get("temperature"))[0][domain]
        evaluation = {
            "split": "test",
            "n": scored["n"],
            "zeroshot": experiment.evaluate(zeroshot, setting)[0][domain],
            method: scored,
        }
        if open_set is not None and not open_set.needs_local_features:
            test = tests[0].known
            plain = experiment.rows(test)
            features = experiment.rows(test, fitted.bank)
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
        "prompts": {
            "templates": list(experiment.prompts.templates),
            "source": experiment.prompts.source,
        },
        "data": {"name": dataset.name, "root": str(dataset.root), "fingerprint": split.fingerprint},
        "fewshot": {
            "shots": shots,
            "seed": seed,
            "val_per_class": split.val_per_class,
            "views": given_views,
            "augment": list(augment) if given_views else [],
            "selection": selection,
            "split_seed": split_seed if test_fraction > 0 else None,
            "test_fraction": test_fraction,
            "on_too_few": on_too_few,
            "shortfalls": split.shortfalls,
            "n_support": len(data.support_labels),
            "n_val": len(data.val_labels),
            "split_file": SPLIT_FILE,
        },
        "fit_seconds": round(fitted.fit_seconds, 6),
        "calibration": calibration,
        "open_set": None
        if open_set is None
        else {
            "detector": ood_score,
            "why": DEFAULT_OOD_REASON if ood_score == DEFAULT_OOD_SCORE else "chosen by the user",
            "calibrated_on": open_set.calibrated_on,
            "false_unknown_rate": false_unknown_rate(n_calibration, accept),
        },
        "skipped": dataset.skipped + experiment.bank.skipped,
        "evaluation": evaluation,
    }

    def write(directory: Path) -> None:
        saved = fitted_method if open_set is None else open_set
        saved.save(directory, {"adapted": info})
        split.save(directory / SPLIT_FILE)

    if world()[0] == 0:  # under torchrun every rank fitted the same model; one writes it
        _replace_directory(target, write)
        shutil.rmtree(checkpoints, ignore_errors=True)  # ours, only needed to resume this fit
    return Adapted(fitted_method, info, open_set)


def _calibrate_open_set(
    experiment: Experiment,
    fitted: Fitted,
    setting: Setting,
    name: str,
    shots: int,
    seed: int,
    accept: float,
) -> tuple[OpenSetClassifier, int]:
    """Fit detector ``name`` on the support data; set its threshold on the validation set,
    pooled with the detector's cross-fitted scores of the support images where it has them
    (never a test image). Returns the classifier and how many scores set the threshold."""
    detectors, held = experiment.fit_detectors(setting, fitted.data, (name,), seed)
    detector = detectors[name]
    local = ScoreInput.LOCAL_FEATURES in detector.uses
    val = experiment.val_features(fitted, setting, shots, seed, local=local)
    pooled = held[name]
    with torch_threads(), torch.inference_mode():
        classifier = OpenSetClassifier.calibrate(
            fitted.method,
            detector,
            val.features,
            accept=accept,
            val_method_features=val.method_features,
            val_local_features=val.local_features,
            held_out=pooled,
        )
    return classifier, len(val.labels) + (0 if pooled is None else len(pooled))


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


def predict(
    adapted: Adapted,
    backend: Backend,
    paths: Sequence[Path],
    *,
    cache: FeatureCache | None = None,
    skip_bad: bool = False,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """One CSV row per readable image (its path, then ``csv_fields`` of its
    ``prediction_rows`` entry) and the list of skipped images."""
    method = adapted.method
    method.attach(backend)  # methods that run the text tower when predicting
    eval_backend = method.feature_backend(backend)
    feats = extract_features(eval_backend, paths, cache=cache, skip_bad=skip_bad, progress=progress)
    read = [paths[i] for i in feats.indices]
    plain = local = None
    if adapted.open_set is not None:
        if eval_backend is not backend:
            plain = extract_features(backend, read, cache=cache, progress=progress).features
        if adapted.open_set.needs_local_features:
            local = extract_local_features(backend, read)
    rows = prediction_rows(adapted, feats.features, plain=plain, local=local)
    # undecodable bytes in a path are kept (surrogate escapes)
    paths_rows = zip(read, rows, strict=True)
    return [{"path": str(path)} | csv_fields(row) for path, row in paths_rows], feats.skipped


def predict_pixels(
    adapted: Adapted, backend: Backend, pixels: torch.Tensor
) -> list[dict[str, Any]]:
    """``prediction_rows`` of a batch already through ``backend.preprocess`` (B, 3, H, W):
    images held in memory, never read from a file (the server's path). ``adapted.method``
    must have been given the backend (``method.attach(backend)``)."""
    eval_backend = adapted.method.feature_backend(backend)
    features = eval_backend.encode_images(pixels)
    plain = local = None
    if adapted.open_set is not None:
        if eval_backend is not backend:
            plain = backend.encode_images(pixels)
        if adapted.open_set.needs_local_features:
            local = encode_local_features(backend, pixels)
    return prediction_rows(adapted, features, plain=plain, local=local)


def prediction_rows(
    adapted: Adapted,
    features: torch.Tensor,
    *,
    plain: torch.Tensor | None = None,
    local: torch.Tensor | None = None,
) -> list[dict[str, Any]]:
    """One entry per row of ``features`` (the image features the method reads): label (the
    class name the model stores), class_id (its folder name), score (probability of the top
    class: softmax of the logits divided by the model's saved temperature, 1 without one),
    margin (top-1 minus top-2 raw logit, never temperature-scaled: the log-odds between the
    two best classes, informative where the probability rounds to 1), top5 (``(name, probability)``
    pairs, best first). A model saved with an "unknown" threshold labels the rows whose OOD
    score exceeds it ``unknown`` (top5 keeps the closed-set guesses) and adds ``ood_score``
    (higher = more out-of-distribution) and ``unknown`` (whether it exceeds the threshold).
    The detector reads ``plain`` (the backend's own features, when the method adapted the
    image side; default ``features``) and ``local`` (patch features, if it uses them).
    """
    open_set, ood = adapted.open_set, None
    if open_set is not None:
        with torch_threads(), torch.inference_mode():
            ood = open_set.scores(
                features if plain is None else plain,
                method_features=features,
                local_features=local,
            )
    with torch_threads(), torch.inference_mode():
        logits = adapted.method.predict_logits(features).double()
    probs = (logits / adapted.temperature).softmax(dim=-1)  # float64: GDA's logits saturate
    top = probs.topk(min(TOP_K, probs.shape[1]), dim=-1)
    best = logits.topk(min(2, logits.shape[1]), dim=-1).values
    margins = best[:, 0] - best[:, -1]
    names = adapted.classnames
    rows = []
    for row in range(len(features)):
        values, classes = top.values[row].tolist(), top.indices[row].tolist()
        entry: dict[str, Any] = {
            "label": names[classes[0]],
            "class_id": adapted.class_ids[classes[0]],
            "score": values[0],
            "margin": float(margins[row]),
            "top5": [(names[c], v) for c, v in zip(classes, values, strict=True)],
        }
        if ood is not None:
            entry["ood_score"] = float(ood[row])
            entry["unknown"] = entry["ood_score"] > open_set.threshold
            if entry["unknown"]:
                entry["label"] = UNKNOWN
        rows.append(entry)
    return rows


def csv_fields(row: dict[str, Any]) -> dict[str, str]:
    """A ``prediction_rows`` entry as the CSV columns ``predict`` writes."""
    fields = {
        "label": row["label"],
        "class_id": row["class_id"],
        "score": f"{row['score']:.6f}",
        "margin": f"{row['margin']:.4g}",
        "top5": ";".join(f"{name}:{value:.6f}" for name, value in row["top5"]),
    }
    if "ood_score" in row:
        fields["ood_score"] = f"{row['ood_score']:.6g}"
    return fields


def predictions_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    columns = ["path", "label", "class_id", "score", "margin", "top5"]
    if rows and "ood_score" in rows[0]:
        columns.append("ood_score")
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_predictions(rows: list[dict[str, Any]], output: str | os.PathLike[str]) -> Path:
    return atomic_write_text(output, predictions_csv(rows))


def _replace_directory(target: Path, write: Callable[[Path], None]) -> None:
    """Write the model directory with ``write(dir)`` and swap it into place; an existing
    ``target`` must be an adapted model (``check_model_dir``)."""
    check_model_dir(target)
    replace_directory(target, write)
