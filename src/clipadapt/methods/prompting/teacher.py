"""The teacher of prompt distillation: its logits on the student's unlabeled images.

Three kinds of teacher:

* a registered method name: fitted here on the labeled part of the student's ``FitData``
  (same support, same K), never on the unlabeled images;
* a method saved on the student's backend (``Method.save`` or ``clipadapt adapt``): its
  ``predict_logits`` runs on the student's cached features;
* a model adapted with ``clipadapt adapt`` on another, typically larger, backend: that
  backend is rebuilt from the recorded spec, checked against the recorded fingerprint, and
  encodes the unlabeled image files itself (through the default feature cache).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from clipadapt.methods.base import DataKind, FitData, Method, read_config


def teacher_logits(
    student: str, teacher: str, params: dict[str, Any], data: FitData, features: torch.Tensor
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The teacher's logits (U, C) on the unlabeled images and a record of the teacher.

    ``features`` are the student backend's features of ``data.unlabeled_paths`` (same order).
    """
    from clipadapt.methods import METHODS, load_method

    if teacher in METHODS:
        method = _fit_teacher(student, teacher, params, data)
        return method.predict_logits(features), {"method": teacher, "selected": method.selected}
    if params:
        raise ValueError(
            f"{student}: teacher_params apply to a teacher fitted here, but teacher "
            f"{teacher!r} is a saved model directory"
        )
    directory = Path(teacher)
    if not directory.is_dir():
        raise ValueError(
            f"{student}: teacher {teacher!r} is neither a registered method nor a directory; "
            "pass a method name or the directory of a saved fitted method"
        )
    model = read_config(directory).get("adapted", {}).get("model")
    record: dict[str, Any] = {"saved": str(directory)}
    if model is None or model["image_fingerprint"] == data.backend.image_fingerprint:
        return load_method(directory).attach(data.backend).predict_logits(features), record
    return _other_model_logits(student, directory, model, data), record | {"model": model["spec"]}


def _fit_teacher(student: str, name: str, params: dict[str, Any], data: FitData) -> Method:
    from clipadapt.methods import create_method

    method = create_method(name, **params)
    if DataKind.UNLABELED in method.reads:
        raise ValueError(
            f"{student}: teacher {name!r} learns from unlabeled images itself; choose a "
            "teacher that learns from the labeled support"
        )
    if type(method).feature_backend is not Method.feature_backend:
        raise ValueError(
            f"{student}: teacher {name!r} adapts the image tower, so it cannot score the "
            "cached features of the unlabeled images; choose a teacher that works on cached "
            "features (e.g. tip_adapter_f, gda, coop)"
        )
    checkpoints = data.checkpoint_dir
    given = dataclasses.replace(
        data, checkpoint_dir=None if checkpoints is None else checkpoints / "teacher"
    )
    return method.fit(given.only(method.reads))


def _other_model_logits(
    student: str, directory: Path, model: dict[str, Any], data: FitData
) -> torch.Tensor:
    """Logits of a teacher adapted on another backend, which encodes the image files."""
    from clipadapt.adapted import check_backend, load_adapted
    from clipadapt.feature_cache import FeatureCache
    from clipadapt.features import extract_features
    from clipadapt.models import create_backend

    adapted = load_adapted(directory)
    if adapted.info["classes"]["classnames"] != data.classnames:
        raise ValueError(
            f"{student}: teacher {directory} was adapted on classes "
            f"{adapted.info['classes']['classnames']}, the student fits {data.classnames}"
        )
    if data.unlabeled_paths is None:
        raise ValueError(
            f"{student}: teacher {directory} runs on another model ({model['spec']!r}), which "
            "must encode the unlabeled images itself: FitData.unlabeled_paths is needed"
        )
    backend = create_backend(model["spec"])
    check_backend(adapted, backend, directory)
    method = adapted.method.attach(backend)
    cache = FeatureCache()
    try:
        encoded = extract_features(
            method.feature_backend(backend), data.unlabeled_paths, cache=cache, progress=False
        )
    finally:
        cache.close()
    with torch.inference_mode():
        return method.predict_logits(encoded.features).clone()
