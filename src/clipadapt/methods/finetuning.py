"""Robust fine-tuning baselines for classification: the image tower itself is trained.

* ``ft``: standard fine-tuning, as the WiSE-FT paper sets it up (Wortsman et al. 2022): a
  linear head initialised from the zero-shot classifier (the class text embeddings times
  the logit scale) and the image tower, trained together with cross-entropy.
* ``lp_ft``: LP-FT (Kumar et al. 2022): first a linear probe on the frozen features
  (the same head, fitted alone by L-BFGS from the zero-shot initialisation), then
  fine-tuning from that head, so the early gradients do not distort the features.
* ``flyp``: FLYP (Goyal et al. 2023, "Finetune like you pretrain"): both towers trained
  with CLIP's contrastive loss on (image, "a photo of a {class}.") pairs, through
  :func:`clipadapt.train.contrastive.finetune_pairs`; classes are scored by the tuned text
  tower's embeddings of the same captions.
* ``wise_ft``: WiSE-FT: standard fine-tuning, then the image tower and head are
  interpolated between the zero-shot and the fine-tuned weights,
  ``theta(alpha) = (1 - alpha) theta_0 + alpha theta_ft``; ``alpha`` is chosen by accuracy on
  the source validation images (ties: the smaller alpha), never on a target domain; 0.5
  without validation images.

Every method trains with the support images re-encoded each step (centre view, then the
augmented views cycling with the epochs), ``train`` says what (``all``, ``last:N``,
``lora``; see :mod:`clipadapt.train.tuning`), ``retention`` weights the forgetting
regulariser of :mod:`clipadapt.train.retention`. Test features come from
``feature_backend(backend)``: a copy of the backend with the tuned tower(s), whose
fingerprint keys its own features in the cache. The state holds the tuned towers' weights,
so a saved method predicts identically after loading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from clipadapt.data.pairs import make_pair_dataset
from clipadapt.features import load_pixels
from clipadapt.methods.base import DataKind, FitData
from clipadapt.methods.common import check_fit_data, support_sets
from clipadapt.methods.prompting.base import TowerMethod
from clipadapt.methods.prompting.images import SupportPixels, require_backend, require_paths
from clipadapt.methods.training import minimize_lbfgs
from clipadapt.models.base import Backend
from clipadapt.models.towers import load_tower_state, tower_state, tuned_copy
from clipadapt.train.contrastive import finetune_pairs
from clipadapt.train.options import FinetuneOptions, TrainMode
from clipadapt.train.retention import reference_vocabulary, retention_kl
from clipadapt.train.tuning import plan_training
from clipadapt.views import CENTER, view_transform

TOWER_PREFIX = "tower."
LP_ITERATIONS = 100
ALPHA_GRID = tuple(i / 10 for i in range(11))
PREFERRED_ALPHA = 0.5  # WiSE-FT's usual mixing weight, used without validation images
NO_VALIDATION = "preferred (no validation set)"


class TowerFineTuning(TowerMethod):
    """What the fine-tuning methods share: hyperparameters, the tuned backend for test
    features, and the tuned towers in the state."""

    reads: ClassVar[frozenset[DataKind]] = frozenset(
        {DataKind.SUPPORT, DataKind.SUPPORT_VIEWS, DataKind.TOWER, DataKind.SUPPORT_IMAGES}
    )
    towers: ClassVar[tuple[str, ...]] = ("image",)

    def __init__(
        self,
        train: str = "all",
        epochs: int = 10,
        batch_size: int = 32,
        lr: float = 1e-5,
        weight_decay: float = 0.1,
        views: int = 2,
        retention: float = 0.0,
        precision: str = "fp32",
    ) -> None:
        super().__init__(epochs, batch_size, lr, weight_decay, "reencode", precision)
        TrainMode.parse(train)
        if retention < 0 or views < 0:
            raise ValueError(f"{self.name}: retention and views must be >= 0")
        self.train = train
        self.views = int(views)
        self.retention = float(retention)
        self._tuned: dict[str, Backend] = {}

    # -- the tuned backend ------------------------------------------------------------------
    def _keep_towers(self, tuned: Backend) -> None:
        for name in self.towers:
            self.set_state(**{TOWER_PREFIX + k: v for k, v in tower_state(tuned, name).items()})

    def tuned_backend(self, backend: Backend) -> Backend:
        """``backend`` with the fitted tower weights (a copy; ``backend`` is unchanged)."""
        self._check_backend(backend)
        key = backend.fingerprint
        if key not in self._tuned:
            tuned = tuned_copy(backend, self.towers)
            tensors = {
                k.removeprefix(TOWER_PREFIX): v
                for k, v in self._state.items()
                if k.startswith(TOWER_PREFIX)
            }
            load_tower_state(tuned, tensors)
            self._tuned = {key: tuned}
        return self._tuned[key]

    def feature_backend(self, backend: Backend) -> Backend:
        return self.tuned_backend(backend)

    def _fitted_with(self, data: FitData) -> None:
        self._tuned = {}
        self.classnames = list(data.classnames)
        self._backend = data.backend


class FineTune(TowerFineTuning):
    """Standard fine-tuning (see the module docstring)."""

    name = "ft"

    def _fit(self, data: FitData) -> None:
        self._train_image_tower(data, self._zero_shot_head(data))

    @staticmethod
    def _zero_shot_head(data: FitData) -> torch.Tensor:
        return data.logit_scale * F.normalize(data.class_embeddings.float(), dim=-1)

    def _train_image_tower(self, data: FitData, head_init: torch.Tensor) -> None:
        check_fit_data(self, data)
        backend = require_backend(data, self.name)
        pixels = SupportPixels(backend, require_paths(data, self.name), self.views, data.augment)
        tuned = tuned_copy(backend, ("image",))
        plan = plan_training(tuned, self.train, ("image",), seed=data.seed)
        head = nn.Parameter(head_init.clone())
        labels = data.support_labels.long()
        originals = support_sets(data)  # the frozen features of each view, for retention
        vocabulary = reference_vocabulary(backend) if self.retention > 0 else None
        scale = float(data.logit_scale)

        def loss(epoch: int, rows: torch.Tensor) -> torch.Tensor:
            image = tuned.encode_image_batch(pixels.pixels(epoch, rows))
            image = F.normalize(image.float(), dim=-1).cpu()
            value = F.cross_entropy(image @ head.T, labels[rows])
            if vocabulary is not None:
                original = originals[epoch % len(originals)][rows]
                value = value + self.retention * retention_kl(original, image, vocabulary, scale)
            return value

        self._train(data, [*plan.params, head], loss)
        plan.finish()
        self._keep_towers(tuned)
        self.set_state(head=head.detach().clone(), logit_scale=torch.tensor(scale))
        self._fitted_with(data)

    def predict_logits(self, features: torch.Tensor) -> torch.Tensor:
        return features.float() @ self.state("head").T

    def transfer_logits(
        self, features: torch.Tensor, class_embeddings: torch.Tensor, classnames: list[str]
    ) -> torch.Tensor:
        """New classes: the tuned image features against their zero-shot text embeddings."""
        text = F.normalize(class_embeddings.float(), dim=-1)
        return self.state("logit_scale") * features.float() @ text.T


class LPFT(FineTune):
    """LP-FT (see the module docstring)."""

    name = "lp_ft"

    def _fit(self, data: FitData) -> None:
        check_fit_data(self, data)
        head = nn.Parameter(self._zero_shot_head(data))
        features, labels = data.support_features.float(), data.support_labels.long()
        minimize_lbfgs([head], lambda: F.cross_entropy(features @ head.T, labels), LP_ITERATIONS)
        self._train_image_tower(data, head.detach())


class WiSEFT(FineTune):
    """WiSE-FT over standard fine-tuning (see the module docstring)."""

    name = "wise_ft"
    reads: ClassVar[frozenset[DataKind]] = FineTune.reads | {
        DataKind.VALIDATION,
        DataKind.VALIDATION_IMAGES,
    }

    def _fit(self, data: FitData) -> None:
        check_fit_data(self, data)
        zero_shot = self._zero_shot_head(data)
        super()._fit(data)
        backend = data.backend
        start = {k.removeprefix(TOWER_PREFIX): v for k, v in tower_state(backend, "image").items()}
        end = {k: v.clone() for k, v in self._state.items() if k.startswith(TOWER_PREFIX)}
        fine_head = self.state("head").clone()
        if not data.val_paths:
            self._mix(start, end, zero_shot, fine_head, PREFERRED_ALPHA)
            self.selected["alpha"] = {"value": PREFERRED_ALPHA, "how": NO_VALIDATION}
            return
        transform = view_transform(backend.preprocess, CENTER)
        pixels = torch.stack([load_pixels(p, transform)[1] for p in data.val_paths])
        labels = data.val_labels.long()
        scores = []
        for alpha in ALPHA_GRID:
            self._mix(start, end, zero_shot, fine_head, alpha)
            features = self.tuned_backend(backend).encode_images(pixels)
            scores.append(
                float((self.predict_logits(features).argmax(-1) == labels).float().mean())
            )
        best = max(range(len(ALPHA_GRID)), key=lambda i: (scores[i], -i))
        self._mix(start, end, zero_shot, fine_head, ALPHA_GRID[best])
        self.selected["alpha"] = {
            "value": ALPHA_GRID[best],
            "how": "validation acc1 on the source validation images (ties: smaller alpha)",
            "grid": list(ALPHA_GRID),
            "val_acc1": scores,
        }

    def _mix(
        self,
        start: dict[str, torch.Tensor],
        end: dict[str, torch.Tensor],
        zero_shot: torch.Tensor,
        fine_head: torch.Tensor,
        alpha: float,
    ) -> None:
        mixed = {}
        for key, tuned in end.items():
            original = start[key.removeprefix(TOWER_PREFIX)]
            mixed[key] = torch.lerp(original.float(), tuned.float(), alpha).to(tuned.dtype)
        self.set_state(head=torch.lerp(zero_shot, fine_head, alpha), **mixed)
        self._tuned = {}

    def params_in_use(self) -> dict[str, Any]:
        return {**self.get_params(), "alpha": self.selected.get("alpha", {}).get("value")}


class FLYP(TowerFineTuning):
    """FLYP (see the module docstring)."""

    name = "flyp"
    towers: ClassVar[tuple[str, ...]] = ("image", "text")

    def __init__(
        self,
        template: str = "a photo of a {}.",
        train: str = "all",
        epochs: int = 10,
        batch_size: int = 32,
        lr: float = 1e-5,
        weight_decay: float = 0.1,
        views: int = 2,
        retention: float = 0.0,
        precision: str = "fp32",
    ) -> None:
        super().__init__(train, epochs, batch_size, lr, weight_decay, views, retention, precision)
        self.template = template

    def _fit(self, data: FitData) -> None:
        check_fit_data(self, data)
        backend = require_backend(data, self.name)
        paths = require_paths(data, self.name)
        labels = data.support_labels.tolist()
        rows = [
            (path, self.template.format(data.classnames[y]), y)
            for path, y in zip(paths, labels, strict=True)
        ]
        pairs = make_pair_dataset(
            "support", Path(paths[0]).parent, [(Path(p), c, y) for p, c, y in rows], data.classnames
        )
        options = FinetuneOptions(
            loss="clip",
            train=self.train,
            towers=self.towers,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            seed=data.seed,
            precision=self.precision,
            retention=self.retention,
            views=self.views,
            augment=data.augment,
        )
        checkpoint = None
        if data.checkpoint_dir is not None:
            checkpoint = data.checkpoint_dir / f"{self.name}.ckpt"
        result = finetune_pairs(
            backend, pairs, options, cache=data.feature_cache, checkpoint=checkpoint, progress=False
        )
        self.epoch_seconds, self.step_losses = result.log.seconds, result.log.losses
        self.text_fingerprint = backend.text_fingerprint
        self._keep_towers(result.backend)
        scale = float(result.backend.logit_scale)
        self.set_state(logit_scale=torch.tensor(scale))
        self._fitted_with(data)
        self._tuned = {backend.fingerprint: result.backend}
        self.set_state(text=self.class_embeddings_for(backend, list(data.classnames)))

    def class_embeddings_for(self, backend: Backend, classnames: list[str]) -> torch.Tensor:
        tuned = self.tuned_backend(backend)
        return tuned.encode_texts([self.template.format(c) for c in classnames])

    def predict_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.state("logit_scale") * features.float() @ self.state("text").T
