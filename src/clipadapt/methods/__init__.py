"""Few-shot adaptation methods behind one interface, and the registry that names them.

``METHODS`` is a plain mapping built from ``clipadapt.catalog.METHOD_CLASSES``; adding a
method means adding its entry there (and its import here, to export it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from clipadapt.catalog import METHOD_CLASSES, check_method, load_classes
from clipadapt.methods.auto import Auto
from clipadapt.methods.base import DataKind, FitData, Method, NotFittedError, read_config
from clipadapt.methods.clip_adapter import ClipAdapter
from clipadapt.methods.finetuning import FLYP, LPFT, FineTune, WiSEFT
from clipadapt.methods.gda import GDA
from clipadapt.methods.linear import LinearProbe, ZeroShotLinearProbe
from clipadapt.methods.ncm import NearestClassMean
from clipadapt.methods.prompting import (
    IVLP,
    CoCoOp,
    CoOp,
    ImageLoRA,
    KgCoOp,
    MaPLe,
    PromptDistill,
    TextLoRA,
    TowerMethod,
    UnsupervisedCoOp,
    VisualPrompt,
)
from clipadapt.methods.tip_adapter import TipAdapter, TipAdapterF
from clipadapt.methods.zeroshot import ZeroShot

METHODS: dict[str, type[Method]] = load_classes(METHOD_CLASSES)


def _method_class(name: str) -> type[Method]:
    if name not in METHODS:
        check_method(name)  # raises, naming the known ones
    return METHODS[name]


def create_method(name: str, **hyperparameters: Any) -> Method:
    """A new, unfitted method by registry name, e.g. ``create_method("tip_adapter", beta=3.0)``."""
    return _method_class(name)(**hyperparameters)


def load_method(directory: str | os.PathLike[str]) -> Method:
    """Load a method saved with ``Method.save``, whichever class it is."""
    config = read_config(Path(directory), "method")
    return _method_class(config["method"]).load(directory)


__all__ = [
    "FLYP",
    "GDA",
    "IVLP",
    "LPFT",
    "METHODS",
    "Auto",
    "ClipAdapter",
    "CoCoOp",
    "CoOp",
    "DataKind",
    "FineTune",
    "FitData",
    "ImageLoRA",
    "KgCoOp",
    "LinearProbe",
    "MaPLe",
    "Method",
    "NearestClassMean",
    "NotFittedError",
    "PromptDistill",
    "TextLoRA",
    "TipAdapter",
    "TipAdapterF",
    "TowerMethod",
    "UnsupervisedCoOp",
    "VisualPrompt",
    "WiSEFT",
    "ZeroShot",
    "ZeroShotLinearProbe",
    "create_method",
    "load_method",
]
