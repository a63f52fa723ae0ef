"""The detector interface: OOD scores as small estimators, in pytorch-ood's spirit.

A detector is fitted on the same :class:`~clipadapt.methods.FitData` a method sees (never on
test data) and scores inputs with ``score(features, logits)``: one number per input, higher
meaning more likely out-of-distribution. ``uses`` says which inputs it reads: the method's
logits (so the score sits on top of whichever method classified), the image features, or
local patch features (ViT towers only). Like methods, detectors are estimators
(:class:`clipadapt.estimator.Estimator`: hyperparameters from the constructor, ``fit`` resets
the learned state) and save to a directory (``config.json`` + ``state.safetensors``) that
loads back to identical scores.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Self

import torch

from clipadapt.estimator import Estimator, NotFittedError
from clipadapt.methods.base import (
    CONFIG_FILE,
    REBUILD,
    DataKind,
    FitData,
    build_saved,
    read_config,
    read_state,
    write_saved,
)

TextEncoder = Callable[[list[str]], torch.Tensor]
"""Texts -> L2-normalised embeddings (N, D), e.g. ``backend.encode_texts``."""


class ScoreInput(StrEnum):
    """What a detector reads at scoring time."""

    LOGITS = "logits"  # the method's predict_logits output (N, C)
    FEATURES = "features"  # L2-normalised global image features (N, D)
    LOCAL_FEATURES = "local_features"  # L2-normalised patch features (N, P, D), ViT only


class Detector(Estimator):
    """Base class. Subclasses set ``name``, ``uses``, ``reads`` and implement ``_score``, and
    ``_fit`` when the score learns from the fit data (the default learns nothing).

    ``reads`` lists the kinds of fit data the detector needs (as for methods); ``fit`` may
    also get ``encode_texts`` for detectors that embed extra texts (NegLabel). Facts learned
    in ``fit`` (JSON-serialisable) go to ``info``.
    """

    name: ClassVar[str]
    uses: ClassVar[frozenset[ScoreInput]] = frozenset({ScoreInput.LOGITS})
    reads: ClassVar[frozenset[DataKind]] = frozenset()
    score_version: ClassVar[int] = 1
    """Bumped when the score's values change; a saved detector (and the threshold calibrated
    on its scores) of another version is refused."""

    def __init__(self) -> None:
        super().__init__()
        self.info: dict[str, Any] = {}

    def fit(self, data: FitData, *, encode_texts: TextEncoder | None = None) -> Self:
        """Reset the learned state, learn what the score needs from ``data``, return ``self``."""
        return super().fit(data, encode_texts=encode_texts)

    def _fit(self, data: FitData, *, encode_texts: TextEncoder | None = None) -> None:
        """Learn from ``data``; the default learns nothing."""

    def score(
        self,
        features: torch.Tensor | None,
        logits: torch.Tensor | None = None,
        *,
        local_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """OOD scores (N,), higher = more likely out-of-distribution."""
        if not self._fitted:
            raise NotFittedError(f"{self.name}: call fit() before score()")
        given = {
            ScoreInput.FEATURES: features,
            ScoreInput.LOGITS: logits,
            ScoreInput.LOCAL_FEATURES: local_features,
        }
        missing = sorted(k.value for k in self.uses if given[k] is None)
        if missing:
            hint = (
                " (local patch features come from clipadapt.ood.local.extract_local_features, "
                "for ViT towers)"
                if ScoreInput.LOCAL_FEATURES.value in missing
                else ""
            )
            raise ValueError(f"{self.name}: score() needs {', '.join(missing)}{hint}")
        sizes = {k.value: len(v) for k, v in given.items() if k in self.uses}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"{self.name}: inputs disagree on the number of samples: {sizes}")
        with torch.no_grad():
            return self._score(features, logits, local_features).float()

    def _score(
        self,
        features: torch.Tensor | None,
        logits: torch.Tensor | None,
        local_features: torch.Tensor | None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def held_out_scores(
        self, data: FitData, *, encode_texts: TextEncoder | None = None, folds: int = 4
    ) -> torch.Tensor | None:
        """Out-of-sample scores (N,) of the ``data`` support images, to calibrate a threshold
        on more known images than the few-shot validation set holds.

        A score that learns from the support is refitted ``folds`` times, each time without
        one fold (every ``folds``-th image of each class, with its views), and scores the images
        left out; one that learns nothing from images scores them as they are. None when the
        score reads the method's logits (the method was fitted on these images) or patch
        features, or when a class has a single support image.
        """
        if self.uses != {ScoreInput.FEATURES} or data.support_features is None:
            return None
        x, y = data.support_features, data.support_labels
        if DataKind.SUPPORT not in self.reads:
            return self.score(x)
        rank = torch.empty_like(y)
        for label in y.unique():
            members = (y == label).nonzero().flatten()
            if len(members) < 2:
                return None
            rank[members] = torch.arange(len(members))
        scores = torch.empty(len(x))
        for fold in range(folds):
            out = rank % folds == fold
            if not bool(out.any()):
                continue
            part = dataclasses.replace(
                data,
                support_features=x[~out],
                support_labels=y[~out],
                support_views=None if data.support_views is None else data.support_views[:, ~out],
            )
            scores[out] = self.clone().fit(part, encode_texts=encode_texts).score(x[out])
        return scores

    # -- persistence --------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` and ``state.safetensors`` atomically into ``directory``."""
        if not self._fitted:
            raise NotFittedError(f"{self.name}: nothing to save, call fit() first")
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self._save_extra(out)
        config = {
            "detector": self.name,
            "score_version": self.score_version,
            "hyperparameters": self.get_params(),
            "info": self.info,
        }
        return write_saved(out, config, self._state)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Self:
        path = Path(directory)
        config = read_config(path, "detector", "hyperparameters")
        if config["detector"] != cls.name:
            raise ValueError(
                f"{path / CONFIG_FILE}: holds detector {config['detector']!r}, not {cls.name!r}"
            )
        version = config.get("score_version", 1)
        if version != cls.score_version:
            raise ValueError(
                f"{path / CONFIG_FILE}: saved with version {version} of the {cls.name!r} score, "
                f"this clipadapt computes version {cls.score_version} (a saved threshold no "
                f"longer applies); {REBUILD}"
            )
        detector = build_saved(cls, path / CONFIG_FILE, config["hyperparameters"])
        detector.info = config.get("info", {})
        detector._state = read_state(path, config)
        detector._load_extra(path)
        detector._fitted = True
        return detector

    def _save_extra(self, directory: Path) -> None:
        """Hook for detectors whose state includes a whole saved object (a method)."""

    def _load_extra(self, directory: Path) -> None:
        """Counterpart of ``_save_extra``."""
