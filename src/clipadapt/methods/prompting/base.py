"""What the prompt-learning and tower-tuning methods share: the backend at fit time, the
checkpointed training loop, persistence of class names, and embedding new class names.

A fitted method keeps the class embeddings it learned as state, so ``predict_logits`` needs
only image features (CoCoOp, whose text depends on the image, is the exception: it needs
``attach(backend)`` after loading). ``for_classes(backend, classnames)`` gives a copy that
scores other classes with the learned prompts, and ``transfer_logits`` (the runner's
base-to-novel hook) does the same through the backend the method was fitted or attached with.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from torch import nn

from clipadapt.methods.base import DataKind, FitData, Method, read_config
from clipadapt.models.base import Backend
from clipadapt.train.loop import PRECISIONS, EpochHook, autocast_loss, run_key, train_epochs

CHECKPOINT_SUFFIX = ".ckpt"


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Turn off gradients for ``module``'s weights, restoring the previous flags afterwards."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


class TowerMethod(Method):
    """Base class of methods that run a tower while training (they read ``DataKind.TOWER``)."""

    reads: ClassVar[frozenset[DataKind]] = frozenset(
        {DataKind.SUPPORT, DataKind.SUPPORT_VIEWS, DataKind.TOWER}
    )
    training_free = False
    supports_new_classes: ClassVar[bool] = True
    kept_on_fit = ("on_epoch",)

    def __init__(
        self,
        epochs: int,
        batch_size: int,
        lr: float,
        weight_decay: float,
        image_path: str,
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(
                f"{self.name}: precision {precision!r}: use one of {tuple(PRECISIONS)}"
            )
        self.precision = precision
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.image_path = image_path
        if image_path == "reencode":  # the runner then passes the support images' files
            self.reads = type(self).reads | {DataKind.SUPPORT_IMAGES}
        self.classnames: list[str] = []
        self.text_fingerprint = ""
        self.on_epoch: EpochHook | None = None  # called after each epoch (progress, timing)
        self.epoch_seconds: list[float] = []
        self.step_losses: list[float] = []  # the global batch loss of each step trained here
        self._backend: Backend | None = None
        self._transfers: dict[tuple[str, ...], TowerMethod] = {}

    def _train(
        self,
        data: FitData,
        params: list[torch.Tensor],
        loss,
        examples: torch.Tensor | None = None,
        **loop_options: Any,
    ) -> None:
        """Train ``params`` on ``loss(epoch, rows)``, checkpointing; ``rows`` index
        ``examples`` (default: the support features); ``loop_options`` go to ``train_epochs``."""
        examples = data.support_features if examples is None else examples
        checkpoint = None
        if data.checkpoint_dir is not None:
            checkpoint = Path(data.checkpoint_dir) / f"{self.name}{CHECKPOINT_SUFFIX}"
        key = run_key(
            method=self.name,
            hyperparameters=self.get_params(),
            seed=data.seed,
            examples=examples,
            labels=data.support_labels,
            params=[p.detach() for p in params],
        )
        log = train_epochs(
            params,
            autocast_loss(loss, data.backend.device, self.precision),
            len(examples),
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            seed=data.seed,
            checkpoint=checkpoint,
            key=key,
            on_epoch=self.on_epoch,
            **loop_options,
        )
        self.epoch_seconds, self.step_losses = log.seconds, log.losses
        self.classnames = list(data.classnames)
        self.text_fingerprint = data.backend.text_fingerprint
        self._backend = data.backend
        self._transfers = {}

    # -- new class names -----------------------------------------------------------------
    def class_embeddings_for(self, backend: Backend, classnames: list[str]) -> torch.Tensor:
        """Normalised class embeddings (C, D) of ``classnames`` under the learned prompts."""
        raise NotImplementedError(f"{self.name}: cannot embed new class names")

    def for_classes(self, backend: Backend, classnames: list[str]) -> Self:
        """A copy of this fitted method that scores ``classnames`` instead."""
        self._check_backend(backend)
        other = copy.copy(self)
        other._state = dict(self._state)
        other.set_state(text=self.class_embeddings_for(backend, list(classnames)))
        other.classnames = list(classnames)
        return other

    def attach(self, backend: Backend) -> Self:
        """Give a loaded model the backend it was fitted with (checked by fingerprint), for
        ``transfer_logits`` and, in CoCoOp, for predicting."""
        self._check_backend(backend)
        self._backend = backend
        self._transfers = {}
        return self

    def transfer_logits(
        self, features: torch.Tensor, class_embeddings: torch.Tensor, classnames: list[str]
    ) -> torch.Tensor:
        """Scores for other classes, their names embedded with the learned prompts (the
        zero-shot ``class_embeddings`` are not used)."""
        if self._backend is None:
            raise RuntimeError(
                f"{self.name}: embedding new class names needs the text tower; "
                "call attach(backend) after loading"
            )
        key = tuple(classnames)
        if key not in self._transfers:
            self._transfers[key] = self.for_classes(self._backend, list(classnames))
        return self._transfers[key].predict_logits(features)

    def _check_backend(self, backend: Backend) -> None:
        self.state("logit_scale")  # raises NotFittedError before fit
        if backend.text_fingerprint != self.text_fingerprint:
            raise ValueError(
                f"{self.name}: fitted with text tower {self.text_fingerprint}, "
                f"but {backend.info.spec} has {backend.text_fingerprint}"
            )

    # -- persistence ---------------------------------------------------------------------
    def save(
        self, directory: str | os.PathLike[str], extra_config: dict[str, Any] | None = None
    ) -> Path:
        extra = {"classnames": self.classnames, "text_fingerprint": self.text_fingerprint}
        return super().save(directory, {**extra, **(extra_config or {})})

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Self:
        method = super().load(directory)
        config = read_config(Path(directory), "classnames", "text_fingerprint")
        method.classnames = list(config["classnames"])
        method.text_fingerprint = config["text_fingerprint"]
        return method
