"""The detector registry: a plain mapping from names to classes, filled by explicit imports."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from clipadapt.methods.base import read_config
from clipadapt.ood.base import Detector
from clipadapt.ood.feature_scores import KNN, Mahalanobis
from clipadapt.ood.glmcm import GLMCM
from clipadapt.ood.logit_scores import MCM, MSP, Energy, MaxLogit
from clipadapt.ood.neglabel import NegLabel
from clipadapt.ood.pseudo_open import PseudoOpen

DETECTORS: dict[str, type[Detector]] = {
    cls.name: cls
    for cls in (MSP, MCM, MaxLogit, Energy, KNN, Mahalanobis, NegLabel, GLMCM, PseudoOpen)
}


def _detector_class(name: str) -> type[Detector]:
    if name not in DETECTORS:
        raise ValueError(
            f"unknown OOD score {name!r}; known scores: {', '.join(sorted(DETECTORS))}"
        )
    return DETECTORS[name]


def create_detector(name: str, **hyperparameters: Any) -> Detector:
    """A new, unfitted detector by registry name, e.g. ``create_detector("mcm", temperature=1)``."""
    return _detector_class(name)(**hyperparameters)


def load_detector(directory: str | os.PathLike[str]) -> Detector:
    """Load a detector saved with ``Detector.save``, whichever class it is."""
    config = read_config(Path(directory))
    if "detector" not in config:
        raise ValueError(f"{directory}: config.json describes no OOD detector")
    return _detector_class(config["detector"]).load(directory)
