"""Rejecting inputs of unknown classes, on top of every adaptation method.

Detectors (``DETECTORS``) score inputs, higher = more likely out-of-distribution (pytorch-ood's
convention): ``msp``, ``mcm``, ``max_logit`` and ``energy`` read the method's logits; ``knn``,
``mahalanobis``, ``neglabel`` and ``pseudo_open`` read image features; ``gl_mcm`` also reads
patch features of ViT towers. ``OpenSetClassifier`` pairs a method, a detector and a threshold
calibrated on the few-shot validation set, and predicts ``OOD_LABEL`` (-1) for "unknown".
``metrics`` computes AUROC, FPR95, AUPR_IN, AUPR_OUT, H-score and OSCR; the protocols that
use them live in ``clipadapt.bench.protocols``.
"""

from clipadapt.ood.base import Detector, ScoreInput, TextEncoder
from clipadapt.ood.feature_scores import KNN, Mahalanobis
from clipadapt.ood.glmcm import GLMCM
from clipadapt.ood.logit_scores import MCM, MSP, Energy, MaxLogit
from clipadapt.ood.metrics import OOD_LABEL, h_score, ood_metrics, oscr
from clipadapt.ood.neglabel import NegLabel, cached_text_encoder, english_nouns
from clipadapt.ood.openset import (
    UNKNOWN,
    OpenSetClassifier,
    calibrate_threshold,
    detector_scores,
    label_names,
)
from clipadapt.ood.pseudo_open import PseudoOpen
from clipadapt.ood.registry import DETECTORS, create_detector, load_detector

__all__ = [
    "DETECTORS",
    "GLMCM",
    "KNN",
    "MCM",
    "MSP",
    "OOD_LABEL",
    "UNKNOWN",
    "Detector",
    "Energy",
    "Mahalanobis",
    "MaxLogit",
    "NegLabel",
    "OpenSetClassifier",
    "PseudoOpen",
    "ScoreInput",
    "TextEncoder",
    "cached_text_encoder",
    "calibrate_threshold",
    "create_detector",
    "detector_scores",
    "english_nouns",
    "h_score",
    "label_names",
    "load_detector",
    "ood_metrics",
    "oscr",
]
