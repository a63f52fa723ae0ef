"""What exists, by name, without importing it: the method, detector and training-loss
registries as ``name -> "module:Class"``.

The CLI checks a name here in milliseconds, before torch loads; ``clipadapt.methods.METHODS``,
``clipadapt.ood.DETECTORS`` and ``clipadapt.train.LOSSES`` are built from these tables, so a
name is listed once.
"""

from __future__ import annotations

import importlib
from typing import Any

METHOD_CLASSES = {
    "zeroshot": "clipadapt.methods.zeroshot:ZeroShot",
    "ncm": "clipadapt.methods.ncm:NearestClassMean",
    "linear_probe": "clipadapt.methods.linear:LinearProbe",
    "lp_zs": "clipadapt.methods.linear:ZeroShotLinearProbe",
    "clip_adapter": "clipadapt.methods.clip_adapter:ClipAdapter",
    "tip_adapter": "clipadapt.methods.tip_adapter:TipAdapter",
    "tip_adapter_f": "clipadapt.methods.tip_adapter:TipAdapterF",
    "gda": "clipadapt.methods.gda:GDA",
    "coop": "clipadapt.methods.prompting.coop:CoOp",
    "kgcoop": "clipadapt.methods.prompting.coop:KgCoOp",
    "cocoop": "clipadapt.methods.prompting.coop:CoCoOp",
    "lora_text": "clipadapt.methods.prompting.lora:TextLoRA",
    "lora_image": "clipadapt.methods.prompting.lora:ImageLoRA",
    "visual_prompt": "clipadapt.methods.prompting.visual:VisualPrompt",
    "prompt_distill": "clipadapt.methods.prompting.unlabeled:PromptDistill",
    "coop_unsupervised": "clipadapt.methods.prompting.unlabeled:UnsupervisedCoOp",
    "maple": "clipadapt.methods.prompting.deep:MaPLe",
    "ivlp": "clipadapt.methods.prompting.deep:IVLP",
    "ft": "clipadapt.methods.finetuning:FineTune",
    "lp_ft": "clipadapt.methods.finetuning:LPFT",
    "flyp": "clipadapt.methods.finetuning:FLYP",
    "wise_ft": "clipadapt.methods.finetuning:WiSEFT",
    "auto": "clipadapt.methods.auto:Auto",
}

DETECTOR_CLASSES = {
    "msp": "clipadapt.ood.logit_scores:MSP",
    "mcm": "clipadapt.ood.logit_scores:MCM",
    "max_logit": "clipadapt.ood.logit_scores:MaxLogit",
    "energy": "clipadapt.ood.logit_scores:Energy",
    "knn": "clipadapt.ood.feature_scores:KNN",
    "mahalanobis": "clipadapt.ood.feature_scores:Mahalanobis",
    "neglabel": "clipadapt.ood.neglabel:NegLabel",
    "gl_mcm": "clipadapt.ood.glmcm:GLMCM",
    "pseudo_open": "clipadapt.ood.pseudo_open:PseudoOpen",
}

LOSS_CLASSES = {
    "clip": "clipadapt.train.losses:ClipLoss",
    "siglip": "clipadapt.train.losses:SigLipLoss",
    "infoloob": "clipadapt.train.losses:InfoLOOBLoss",
    "cwcl": "clipadapt.train.losses:CWCLLoss",
    "supervised": "clipadapt.train.losses:SupervisedContrastiveLoss",
    "distill": "clipadapt.train.losses:DistillLoss",
}


TOWERS = ("image", "text")
"""The towers of every model, in the order fine-tuned weights are saved."""


def check_method(name: str) -> str:
    """``name`` if it is a registered method, else a ValueError listing the known ones."""
    if name not in METHOD_CLASSES:
        known = ", ".join(sorted(METHOD_CLASSES))
        raise ValueError(f"unknown method {name!r}; known methods: {known}")
    return name


def check_detector(name: str) -> str:
    """``name`` if it is a registered OOD score, else a ValueError listing the known ones."""
    if name not in DETECTOR_CLASSES:
        known = ", ".join(sorted(DETECTOR_CLASSES))
        raise ValueError(f"unknown OOD score {name!r}; known scores: {known}")
    return name


def check_loss(name: str) -> str:
    """``name`` if it is a registered training loss, else a ValueError listing the known ones."""
    if name not in LOSS_CLASSES:
        known = ", ".join(sorted(LOSS_CLASSES))
        raise ValueError(f"unknown loss {name!r}; known losses: {known}")
    return name


def load_classes(table: dict[str, str]) -> dict[str, Any]:
    """``{name: class}`` for a table of ``"module:Class"`` paths, in the table's order."""
    classes = {}
    for name, path in table.items():
        module, _, attribute = path.partition(":")
        classes[name] = getattr(importlib.import_module(module), attribute)
    return classes
