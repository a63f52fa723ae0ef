"""Classification metrics with the names users know (CLIP_benchmark's acc1, acc5, ...)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """``acc1``, ``acc5`` (top-min(5, C)), ``mean_per_class_recall``, ``macro_f1`` and the
    confusion matrix (rows = true class, columns = predicted), for logits (N, C)."""
    from sklearn.metrics import confusion_matrix, f1_score  # scikit-learn takes ~1 s to import

    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree")
    if logits.shape[0] == 0:
        raise ValueError("no samples to score")
    num_classes = logits.shape[1]
    y = labels.cpu().numpy()
    pred = logits.argmax(dim=1).cpu().numpy()
    top = logits.topk(min(5, num_classes), dim=1).indices.cpu().numpy()
    classes = np.arange(num_classes)
    present = np.unique(y)
    cm = confusion_matrix(y, pred, labels=classes)
    recalls = cm.diagonal()[present] / cm.sum(axis=1)[present]
    return {
        "acc1": float((pred == y).mean()),
        "acc5": float((top == y[:, None]).any(axis=1).mean()),
        "mean_per_class_recall": float(recalls.mean()),
        "macro_f1": float(f1_score(y, pred, labels=present, average="macro", zero_division=0)),
        "confusion_matrix": cm.tolist(),
    }
