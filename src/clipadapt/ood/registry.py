"""The detector registry: a plain mapping from names to classes, built from
``clipadapt.catalog.DETECTOR_CLASSES``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from clipadapt.catalog import DETECTOR_CLASSES, check_detector, load_classes
from clipadapt.methods.base import read_config
from clipadapt.ood.base import Detector

DETECTORS: dict[str, type[Detector]] = load_classes(DETECTOR_CLASSES)


def _detector_class(name: str) -> type[Detector]:
    if name not in DETECTORS:
        check_detector(name)  # raises, naming the known ones
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
