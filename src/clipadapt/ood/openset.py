"""Open-set prediction: a fitted method, a fitted detector and a deployment threshold.

The threshold is calibrated on known-class images only, never test images: the smallest
score that accepts ``accept`` (default 95%) of the few-shot *validation* images, pooled with
out-of-sample scores of the support images where the detector can give them
(``Detector.held_out_scores``).
``predict`` returns the method's class, or ``OOD_LABEL`` (-1) where the score exceeds the
threshold. Saved, the classifier is the method's directory (so ``load_method`` still reads
it) with the threshold in its ``config.json`` under ``"open_set"`` and the detector in the
``ood/`` sub-directory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipadapt.methods import Method, load_method
from clipadapt.methods.base import CONFIG_FILE, REBUILD, read_config
from clipadapt.ood.base import Detector, ScoreInput
from clipadapt.ood.metrics import OOD_LABEL, accept_threshold, reject
from clipadapt.ood.registry import load_detector

DETECTOR_DIR = "ood"
CONFIG_KEY = "open_set"
UNKNOWN = "unknown"
VALIDATION, HELD_OUT = "few-shot validation set", "held-out support scores"


def detector_scores(
    method: Method,
    detector: Detector,
    features: torch.Tensor,
    *,
    method_features: torch.Tensor | None = None,
    local_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """The detector's OOD scores on top of ``method`` (logits computed only when read).

    ``features`` are the backend's image features; ``method_features`` those the method's
    ``predict_logits`` expects when it adapted the image side (``Method.feature_backend``),
    by default the same.
    """
    logits = None
    if ScoreInput.LOGITS in detector.uses:
        logits = method.predict_logits(features if method_features is None else method_features)
    return detector.score(features, logits, local_features=local_features)


def calibrate_threshold(
    val_scores: torch.Tensor, accept: float = 0.95, held_out: torch.Tensor | None = None
) -> float:
    """The threshold accepting ``accept`` of the validation scores (known-class images only),
    pooled with ``held_out`` scores of the support images when given
    (``Detector.held_out_scores``).

    Below ``1 / (1 - accept)`` scores (20 at 95%) the rule can only accept them all: the
    threshold is the single highest validation score, so one atypical image sets it.
    """
    scores = val_scores if held_out is None else torch.cat([val_scores, held_out])
    return accept_threshold(scores, accept)


def label_names(predictions: torch.Tensor, classnames: Sequence[str]) -> list[str]:
    """Class names for open-set predictions, ``"unknown"`` for ``OOD_LABEL``."""
    return [UNKNOWN if int(p) == OOD_LABEL else classnames[int(p)] for p in predictions]


@dataclass
class OpenSetClassifier:
    """A method that says "unknown" when ``detector``'s score exceeds ``threshold``."""

    method: Method
    detector: Detector
    threshold: float
    accept: float | None = None  # the validation acceptance rate the threshold was set for
    calibrated_on: str = VALIDATION

    @classmethod
    def calibrate(
        cls,
        method: Method,
        detector: Detector,
        val_features: torch.Tensor,
        *,
        accept: float = 0.95,
        val_method_features: torch.Tensor | None = None,
        val_local_features: torch.Tensor | None = None,
        held_out: torch.Tensor | None = None,
    ) -> OpenSetClassifier:
        """Set the threshold on the few-shot validation features (known classes only) and the
        ``held_out`` scores of the support images, if given (see ``calibrate_threshold``).

        The other optional inputs are as in ``detector_scores``.
        """
        if len(val_features) == 0:
            raise ValueError(
                "calibrating the unknown threshold needs a few-shot validation set; "
                "sample one with clipadapt.data.few_shot (val_per_class >= 1)"
            )
        scores = detector_scores(
            method,
            detector,
            val_features,
            method_features=val_method_features,
            local_features=val_local_features,
        )
        threshold = calibrate_threshold(scores, accept, held_out)
        where = VALIDATION if held_out is None else f"{VALIDATION} + {len(held_out)} {HELD_OUT}"
        return cls(method, detector, threshold, accept, where)

    @property
    def needs_local_features(self) -> bool:
        return ScoreInput.LOCAL_FEATURES in self.detector.uses

    def scores(
        self,
        features: torch.Tensor,
        *,
        method_features: torch.Tensor | None = None,
        local_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """OOD scores (N,); the inputs are as in ``detector_scores``."""
        return detector_scores(
            self.method,
            self.detector,
            features,
            method_features=method_features,
            local_features=local_features,
        )

    def predict(
        self,
        features: torch.Tensor,
        *,
        method_features: torch.Tensor | None = None,
        local_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Class indices (N,), ``OOD_LABEL`` (-1) for inputs judged unknown."""
        scores = self.scores(
            features, method_features=method_features, local_features=local_features
        )
        classes = self.method.predict(features if method_features is None else method_features)
        return reject(classes, scores, self.threshold)

    def save(
        self, directory: str | os.PathLike[str], extra_config: dict[str, Any] | None = None
    ) -> Path:
        """The method's directory plus the threshold (in ``config.json``) and ``ood/``."""
        out = Path(directory)
        self.detector.save(out / DETECTOR_DIR)
        open_set = {
            "detector": self.detector.name,
            "threshold": self.threshold,
            "accept": self.accept,
            "calibrated_on": self.calibrated_on,
        }
        return self.method.save(out, extra_config={**(extra_config or {}), CONFIG_KEY: open_set})

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> OpenSetClassifier:
        path = Path(directory)
        config = read_config(path)
        if CONFIG_KEY not in config:
            raise ValueError(
                f"{path}: a saved method without an unknown threshold; save it with "
                "OpenSetClassifier.calibrate(...).save(...) to predict 'unknown'"
            )
        open_set = config[CONFIG_KEY]
        try:
            threshold = float(open_set["threshold"])
        except (TypeError, KeyError, ValueError):
            raise ValueError(
                f"{path / CONFIG_FILE}: {CONFIG_KEY!r} holds no numeric threshold; {REBUILD}"
            ) from None
        return cls(
            load_method(path),
            load_detector(path / DETECTOR_DIR),
            threshold,
            open_set.get("accept"),
            open_set.get("calibrated_on", VALIDATION),
        )
