"""The served model: an adapted-model directory, its backend, and its card."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from clipadapt.adapted import Adapted, check_backend, load_adapted, predict_pixels
from clipadapt.models.base import Backend

FEWSHOT_FIELDS = ("shots", "seed", "val_per_class", "views", "selection", "n_support", "n_val")


@dataclass
class ServedModel:
    """What ``/predict`` and ``/model`` answer from."""

    directory: Path
    adapted: Adapted
    backend: Backend

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        *,
        backend: Backend | None = None,
        device: str = "cpu",
    ) -> ServedModel:
        """Load the adapted model in ``directory`` and its backend (built from the spec it
        records unless given), refusing a backend with other image features."""
        adapted = load_adapted(directory)
        if backend is None:
            from clipadapt.models import create_backend

            backend = create_backend(adapted.info["model"]["spec"], device)
        check_backend(adapted, backend, directory)
        adapted.method.attach(backend)  # methods that run the text tower when predicting
        return cls(Path(directory), adapted, backend)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.backend.preprocess(image)

    def predict(self, pixels: torch.Tensor) -> list[dict[str, Any]]:
        """Rows for a preprocessed batch; called in the model thread."""
        return predict_pixels(self.adapted, self.backend, pixels)

    def card(self) -> dict[str, Any]:
        """The model card ``/model`` answers: what was fitted on what, and how well it did."""
        info, open_set = self.adapted.info, self.adapted.open_set
        fewshot = info["fewshot"]
        return {
            "method": self.adapted.method.name,
            "selected": self.adapted.method.selected,
            "model": info["model"],
            "classes": self.adapted.classnames,
            "data": {"name": info["data"]["name"], "fingerprint": info["data"]["fingerprint"]},
            "fewshot": {key: fewshot[key] for key in FEWSHOT_FIELDS},
            "evaluation": info["evaluation"],
            "unknown": None
            if open_set is None
            else {
                "detector": open_set.detector.name,
                "threshold": open_set.threshold,
                "accept": open_set.accept,
                "calibrated_on": open_set.calibrated_on,
                "false_unknown_rate": info["open_set"]["false_unknown_rate"],
                "rule": "label is 'unknown' when ood_score > threshold (higher = more unlike "
                "the known classes)",
            },
            "package_version": info["package_version"],
        }
