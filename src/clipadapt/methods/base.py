"""The method interface: every adaptation method is a small estimator over features.

Hyperparameters go to the constructor (see :class:`clipadapt.estimator.Estimator`), ``fit``
resets and learns the state and returns the fitted object, and the whole method saves to a
directory (``config.json`` + ``state.safetensors``) that loads back to identical predictions.

The runner, not the method, builds the :class:`FitData` a method receives, from the data
kinds the method declares in ``reads``; test features are never part of it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from clipadapt.atomic import atomic_write, atomic_write_json
from clipadapt.defaults import SELECTION_MODES
from clipadapt.estimator import Estimator, NotFittedError
from clipadapt.saved import CONFIG_FILE, FORMAT_VERSION, REBUILD, read_config
from clipadapt.views import DEFAULT_AUGMENT

if TYPE_CHECKING:
    from clipadapt.models.base import Backend

E = TypeVar("E", bound=Estimator)


class DataKind(StrEnum):
    """Kinds of data a method may ask the runner for."""

    SUPPORT = "support"  # labeled few-shot support set
    SUPPORT_VIEWS = "support_views"  # augmented views of the support set
    VALIDATION = "validation"  # labeled few-shot validation set (model selection)
    UNLABELED = "unlabeled"  # unlabeled images; transductive if they include test images
    TOWER = "tower"  # the backend itself at fit time (FitData.backend), e.g. for prompt learning
    SUPPORT_IMAGES = "support_images"  # the support images' files (FitData.support_paths)
    VALIDATION_IMAGES = "validation_images"  # the validation images' files (FitData.val_paths)


@dataclass
class FitData:
    """Everything a method may learn from. Features are L2-normalised, float32, on CPU.

    ``class_embeddings`` are the zero-shot classifier (one normalised text embedding per
    class, prompt-ensembled); ``logit_scale`` is the backend's temperature (CLIP: 100).
    ``selection`` says how searched hyperparameters are chosen: ``"validation"`` (accuracy
    on the validation set), ``"cv"`` (stratified k-fold cross-validation over support and
    validation images pooled) or ``"crafted_shift"`` (accuracy on the validation set, which
    the runner fills with the validation images under crafted shifts); see
    :mod:`clipadapt.methods.selection`.
    """

    class_embeddings: torch.Tensor  # (C, D)
    logit_scale: float
    classnames: list[str]
    support_features: torch.Tensor | None = None  # (N, D)
    support_labels: torch.Tensor | None = None  # (N,) int64
    support_views: torch.Tensor | None = None  # (V, N, D) augmented views, same labels
    val_features: torch.Tensor | None = None  # (M, D)
    val_labels: torch.Tensor | None = None  # (M,)
    unlabeled_features: torch.Tensor | None = None  # (U, D)
    unlabeled_includes_test: bool = False
    seed: int = 1
    backend: Backend | None = None  # given to methods that read DataKind.TOWER
    support_paths: list[str] | None = None  # (N,) image files of the support set, same order
    val_paths: list[str] | None = None  # (M,) image files of the validation set, same order
    unlabeled_paths: list[str] | None = None  # (U,) image files of the unlabeled set
    checkpoint_dir: Path | None = None  # where training methods checkpoint each epoch
    selection: str = "validation"  # one of SELECTION_MODES
    augment: tuple[str, ...] = DEFAULT_AUGMENT  # transforms of the augmented views
    feature_cache: Any = None  # the configured FeatureCache for features a method computes
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.selection not in SELECTION_MODES:
            raise ValueError(
                f"FitData.selection {self.selection!r}: use one of {', '.join(SELECTION_MODES)}"
            )

    @property
    def num_classes(self) -> int:
        return int(self.class_embeddings.shape[0])

    def only(self, reads: frozenset[DataKind]) -> FitData:
        """A copy holding only the kinds in ``reads`` (augmented views also need the support
        set); the rest are None."""
        hidden = {
            name
            for kind, names in _FIELDS_OF_KIND.items()
            if kind not in reads
            or (kind is DataKind.SUPPORT_VIEWS and DataKind.SUPPORT not in reads)
            for name in names
        }
        return dataclasses.replace(self, **dict.fromkeys(hidden))


_FIELDS_OF_KIND = {
    DataKind.SUPPORT: ("support_features", "support_labels"),
    DataKind.SUPPORT_VIEWS: ("support_views",),
    DataKind.VALIDATION: ("val_features", "val_labels"),
    DataKind.UNLABELED: ("unlabeled_features", "unlabeled_paths"),
    DataKind.TOWER: ("backend",),
    DataKind.SUPPORT_IMAGES: ("support_paths",),
    DataKind.VALIDATION_IMAGES: ("val_paths",),
}


class Method(Estimator):
    """Base class. Subclasses set ``name`` and ``reads`` and implement ``_fit(data)`` and
    ``predict_logits``; ``selected`` records hyperparameters chosen during ``fit`` and how."""

    name: ClassVar[str]
    reads: ClassVar[frozenset[DataKind]] = frozenset({DataKind.SUPPORT})
    training_free: ClassVar[bool] = True
    supports_new_classes: ClassVar[bool] = False
    """Whether ``transfer_logits`` scores classes the method was not fitted on."""

    def params_in_use(self) -> dict[str, Any]:
        """The hyperparameters the fitted method uses: ``get_params()``, except that a
        searched one is at its chosen value (see ``SearchedMethod``)."""
        return self.get_params()

    def predict_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Class scores (N, C) for L2-normalised features (N, D)."""
        raise NotImplementedError

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.predict_logits(features).argmax(dim=-1)

    def transfer_logits(
        self, features: torch.Tensor, class_embeddings: torch.Tensor, classnames: list[str]
    ) -> torch.Tensor:
        """Scores (N, C') for other classes, given their text embeddings (C', D) and names
        (base-to-novel); only methods with ``supports_new_classes`` implement it."""
        raise NotImplementedError(f"{self.name} cannot score classes it was not fitted on")

    def attach(self, backend: Backend) -> Self:
        """Give a loaded method the backend it runs towers with when predicting (prompt
        learners); a no-op for methods that read cached features only."""
        return self

    def feature_backend(self, backend: Backend) -> Backend:
        """The backend whose image features ``predict_logits`` expects: ``backend`` itself,
        unless the method adapted the image side (then a wrapper with its own fingerprint)."""
        return backend

    # -- persistence --------------------------------------------------------------------
    def save(
        self, directory: str | os.PathLike[str], extra_config: dict[str, Any] | None = None
    ) -> Path:
        """Write ``config.json`` (the values in use, the search record, the constructor's
        ``params``) and ``state.safetensors`` atomically into ``directory``."""
        if not self.is_fitted:
            raise NotFittedError(f"{self.name}: nothing to save, call fit() first")
        config = {
            "method": self.name,
            "hyperparameters": self.params_in_use(),
            "selected": self.selected,
            "params": self.get_params(),
            **(extra_config or {}),
        }
        return write_saved(directory, config, self._state)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Self:
        path = Path(directory)
        config = read_config(path, "method", "params", "selected")
        if config["method"] != cls.name:
            raise ValueError(
                f"{path / CONFIG_FILE}: holds method {config['method']!r}, not {cls.name!r}"
            )
        method = build_saved(cls, path / CONFIG_FILE, config["params"])
        method.selected = config["selected"]
        method._state = read_state(path, config)
        method._fitted = True
        return method


STATE_FILE = "state.safetensors"


def write_saved(
    directory: str | os.PathLike[str], config: dict[str, Any], state: dict[str, torch.Tensor]
) -> Path:
    """Write ``config.json`` (with ``format_version`` and the ``tensors`` names) and
    ``state.safetensors`` atomically."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / STATE_FILE, lambda p: save_file(state, str(p)))
    saved = {"format_version": FORMAT_VERSION, **config, "tensors": sorted(state)}
    atomic_write_json(out / CONFIG_FILE, saved)
    return out


def read_state(directory: Path, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors ``write_saved`` stored in ``directory``, all those ``config`` lists."""
    path = directory / STATE_FILE
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as err:
        raise ValueError(f"{path}: cannot be read ({err}); {REBUILD}") from None
    missing = sorted(set(config.get("tensors", ())) - set(state))
    if missing:
        raise ValueError(f"{path}: lacks the tensor(s) {', '.join(missing)}; {REBUILD}")
    return state


def build_saved(cls: type[E], config_path: Path, params: Any) -> E:
    """``cls(**params)`` for the hyperparameters a saved ``config.json`` holds."""
    try:
        return cls(**params)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{config_path}: its hyperparameters do not make a {cls.name} ({err}); {REBUILD}"
        ) from None
