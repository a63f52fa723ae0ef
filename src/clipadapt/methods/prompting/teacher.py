"""The teacher of prompt distillation: its logits on the student's unlabeled images.

Three kinds of teacher:

* a registered method name: fitted here on the labeled part of the student's ``FitData``
  (same support, same K), never on the unlabeled images;
* a method saved on the student's backend (``Method.save`` or ``clipadapt adapt``): its
  ``predict_logits`` runs on the student's cached features, or, if it adapted the image side
  (visual prompts, image LoRA, MaPLe), on the unlabeled image files encoded through it;
* a model adapted with ``clipadapt adapt`` on another, typically larger, backend (the
  ``adapted`` block of its ``config.json`` names it): that backend is rebuilt from the
  recorded spec, checked against the recorded fingerprint, and encodes the unlabeled image
  files itself (through ``FitData.feature_cache`` when given).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from clipadapt.methods.base import DataKind, FitData, Method, read_config

if TYPE_CHECKING:
    from clipadapt.models.base import Backend


def teacher_logits(
    student: str, teacher: str, params: dict[str, Any], data: FitData, features: torch.Tensor
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The teacher's logits (U, C) on the unlabeled images (no gradient) and a record of it.

    ``features`` are the student backend's features of ``data.unlabeled_paths`` (same order).
    """
    from clipadapt.methods import METHODS

    if teacher in METHODS:
        method = _fit_teacher(student, teacher, params, data)
        with torch.no_grad():
            logits = method.predict_logits(features)
        return logits, {"method": teacher, "selected": method.selected}
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
    return _saved_teacher_logits(student, directory, data, features)


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


def _saved_teacher_logits(
    student: str, directory: Path, data: FitData, features: torch.Tensor
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Logits of a saved teacher: on the student's features when it reads the same image
    features, else on features its own backend (the recorded one, or the student's wrapped
    by the teacher's image-side adaptation) computes from the unlabeled image files."""
    from clipadapt.methods import load_method
    from clipadapt.models import create_backend

    record: dict[str, Any] = {"saved": str(directory)}
    adapted = read_config(directory).get("adapted", {})
    model = adapted.get("model")
    method, backend = load_method(directory), data.backend
    if model is not None and model["image_fingerprint"] != data.backend.image_fingerprint:
        classnames = adapted["classes"]["classnames"]
        if classnames != data.classnames:
            raise ValueError(
                f"{student}: teacher {directory} was adapted on classes {classnames}, "
                f"the student fits {data.classnames}"
            )
        backend = create_backend(model["spec"])
        if backend.image_fingerprint != model["image_fingerprint"]:
            raise ValueError(
                f"{student}: teacher {directory} was adapted on image features of "
                f"{model['spec']!r} with fingerprint {model['image_fingerprint']}, but that "
                f"backend now gives {backend.image_fingerprint}; adapt the teacher again"
            )
        record["model"] = model["spec"]
    method.attach(backend)
    if backend is data.backend and type(method).feature_backend is Method.feature_backend:
        with torch.no_grad():
            return method.predict_logits(features), record
    if data.unlabeled_paths is None:
        raise ValueError(
            f"{student}: teacher {directory} needs its own image features, computed from the "
            "unlabeled image files: FitData.unlabeled_paths is needed"
        )
    return _encoded_logits(method, backend, data.unlabeled_paths, data.feature_cache), record


def _encoded_logits(method: Method, backend: Backend, paths: list[str], cache: Any) -> torch.Tensor:
    """``method``'s logits on ``paths`` encoded by its feature backend (through ``cache``, a
    ``FeatureCache``, when not None)."""
    from clipadapt.features import extract_features

    encoded = extract_features(method.feature_backend(backend), paths, cache=cache, progress=False)
    with torch.no_grad():
        return method.predict_logits(encoded.features)
