"""LoRA on a tower's attention projections, through the PEFT library.

CLIP-LoRA (Zanella & Ben Ayed, CVPRW 2024, arXiv:2405.18541): low-rank updates
``W + (alpha / r) B A`` on the query, key and value projections of every layer, rank 2,
alpha 1, dropout 0.25, trained with cross-entropy. ``lora_text`` adapts the text tower
against the frozen (cached) image features for the hand-made prompt "a photo of a {}.";
``lora_image`` adapts the image tower of a ViT (open_clip or Hugging Face CLIP), re-encoding
the support images each step (augmented views, as ``visual_prompt``) against the frozen
zero-shot class embeddings. The backend is never modified: LoRA goes into a copy of it.

Targets: Hugging Face and the lite text tower have separate q/k/v ``Linear`` layers. open_clip
uses ``nn.MultiheadAttention`` with one fused ``in_proj_weight``; PEFT's LoRA for it adapts
the fused q/k/v projection (one rank-r update of the stacked 3d x d matrix, not three) and,
unavoidably, ``out_proj`` too.

The fitted adapter saves inside the method's state; ``save_adapter`` also writes it on its
own in PEFT's layout, and ``merged_backend`` gives a backend with the update merged in.
``lora_image``'s test features come from ``feature_backend(backend)``, a backend that runs
the adapted image tower and has its own image fingerprint (the plain cache is not reused).
"""

from __future__ import annotations

import copy
from itertools import chain
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from clipadapt.atomic import atomic_write
from clipadapt.methods.base import DataKind, FitData
from clipadapt.methods.common import (
    FixedTextScores,
    check_fit_data,
    cosine_logits,
    scale_tensor,
)
from clipadapt.methods.prompting.base import TowerMethod
from clipadapt.methods.prompting.images import (
    SupportFeatures,
    SupportPixels,
    require_backend,
    require_paths,
)
from clipadapt.models.base import TEXT_CHUNK, Backend, ImageAdaptedBackend
from clipadapt.models.prompt_access import PromptableText, promptable_text, vit_image_tower
from clipadapt.train.tuning import inject_lora, merge_lora

PREFIX = "lora."
TARGETS = {  # attention projections per text tower
    "LiteText": ["query", "key", "value"],
    "HFText": ["q_proj", "k_proj", "v_proj"],
    "OpenClipText": ["attn"],  # nn.MultiheadAttention: PEFT adapts its fused q/k/v projection
}
IMAGE_TARGETS = {  # attention projections per image tower
    "HFClipBackend": ["q_proj", "k_proj", "v_proj"],
    "OpenClipBackend": ["attn"],  # as OpenClipText: fused q/k/v (and out_proj), see above
}


class LoRAMethod(TowerMethod):
    """What both towers' LoRA share: the recipe's hyperparameters, injecting the adapters
    into a copy of the backend, loading them back, and the adapter on its own on disk."""

    def __init__(
        self,
        rank: int,
        alpha: float,
        dropout: float,
        epochs: int,
        batch_size: int,
        lr: float,
        weight_decay: float,
        image_path: str,
        precision: str,
    ) -> None:
        super().__init__(epochs, batch_size, lr, weight_decay, image_path, precision)
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.dropout = float(dropout)

    def lora_config(self, targets: list[str]):
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(targets),
        )

    def _lora_state(self) -> dict[str, torch.Tensor]:
        return {k.removeprefix(PREFIX): v for k, v in self._state.items() if k.startswith(PREFIX)}

    def _load_lora(self, module: torch.nn.Module) -> torch.nn.Module:
        weights = self._lora_state()
        missing = set(weights) - dict(module.named_parameters()).keys()
        if missing:
            raise ValueError(f"{self.name}: adapter tensors {sorted(missing)[:3]} do not fit")
        module.load_state_dict(weights, strict=False)
        return module.eval()

    def _keep_lora(self, module: torch.nn.Module, targets: list[str]) -> None:
        module.eval()
        lora = {PREFIX + n: p for n, p in module.named_parameters() if p.requires_grad}
        self.set_state(**lora)
        self.selected["lora_targets"] = list(targets)

    def save_adapter(self, directory: str | Path) -> Path:
        """Write the adapter alone: PEFT's ``adapter_config.json`` and the LoRA tensors."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.lora_config(self.selected["lora_targets"]).save_pretrained(str(out))
        tensors = self._lora_state()
        atomic_write(out / "adapter_model.safetensors", lambda p: save_file(tensors, str(p)))
        return out

    @staticmethod
    def _read_adapter(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        import json

        from safetensors.torch import load_file

        directory = Path(directory)
        config = json.loads((directory / "adapter_config.json").read_text())
        tensors = load_file(str(directory / "adapter_model.safetensors"))
        return config, {PREFIX + k: v for k, v in tensors.items()}


class TextLoRA(LoRAMethod):
    """CLIP-LoRA's recipe on the text tower (see the module docstring)."""

    name = "lora_text"

    def __init__(
        self,
        rank: int = 2,
        alpha: float = 1.0,
        dropout: float = 0.25,
        template: str = "a photo of a {}.",
        epochs: int = 20,
        batch_size: int = 32,
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        image_path: str = "cached",
        precision: str = "fp32",
    ) -> None:
        super().__init__(
            rank, alpha, dropout, epochs, batch_size, lr, weight_decay, image_path, precision
        )
        self.template = template

    def _adapted(self, backend: Backend) -> tuple[PromptableText, torch.nn.Module]:
        """A LoRA-wrapped copy of ``backend``'s text tower (the backend is left untouched)."""
        adapted = copy.deepcopy(backend)
        adapted.__dict__.pop("_text_fp", None)  # its text weights will differ: hash them anew
        access = promptable_text(adapted)
        config = self.lora_config(TARGETS[type(access).__name__])
        return access, inject_lora(config, access.module)

    def _fit(self, data: FitData) -> None:
        check_fit_data(self, data)
        backend = require_backend(data, self.name)
        features = SupportFeatures(data, self.image_path, self.name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(data.seed)  # PEFT draws LoRA's A matrices from the global generator
            access, module = self._adapted(backend)
        params = [p for p in module.parameters() if p.requires_grad]
        tokens = access.tokenize([self.template.format(c) for c in data.classnames])
        scale, labels = scale_tensor(data), data.support_labels.long()
        dropouts = [m for n, m in module.named_modules() if n.endswith("lora_dropout")]

        def loss(epoch: int, rows: torch.Tensor) -> torch.Tensor:
            for layer in dropouts:
                layer.train()
            text = F.normalize(access.encode_embedded(access.token_embedding(tokens.ids), tokens))
            return F.cross_entropy(cosine_logits(features(epoch, rows), text, scale), labels[rows])

        self._train(data, params, loss)
        self._keep_lora(module, TARGETS[type(access).__name__])
        self.set_state(text=_encode(access, self.template, data.classnames), logit_scale=scale)

    def predict_logits(self, features: torch.Tensor) -> torch.Tensor:
        return cosine_logits(features, self.state("text"), self.state("logit_scale"))

    def _loaded(self, backend: Backend) -> tuple[PromptableText, torch.nn.Module]:
        self._check_backend(backend)
        access, module = self._adapted(backend)
        return access, self._load_lora(module)

    def class_embeddings_for(self, backend: Backend, classnames: list[str]) -> torch.Tensor:
        access, _ = self._loaded(backend)
        return _encode(access, self.template, classnames)

    def merged_backend(self, backend: Backend) -> Backend:
        """A copy of ``backend`` whose text tower has the LoRA update merged into its weights."""
        access, module = self._loaded(backend)
        merge_lora(module)
        return access.backend

    @classmethod
    def from_adapter(
        cls, directory: str | Path, backend: Backend, classnames: list[str], **options: Any
    ) -> TextLoRA:
        """A fitted method from an adapter written by ``save_adapter`` (for ``backend``'s
        text tower), scoring ``classnames``; ``options`` are other hyperparameters."""
        config, tensors = cls._read_adapter(directory)
        method = cls(
            rank=config["r"],
            alpha=config["lora_alpha"],
            dropout=config["lora_dropout"],
            **options,
        )
        method.set_state(logit_scale=torch.tensor(float(backend.logit_scale)), **tensors)
        method.selected["lora_targets"] = sorted(config["target_modules"])
        method.text_fingerprint = backend.text_fingerprint
        method._fitted = True
        method.attach(backend)
        method.set_state(text=method.class_embeddings_for(backend, list(classnames)))
        method.classnames = list(classnames)
        return method


class LoRAImageBackend(ImageAdaptedBackend):
    """``base`` whose images go through ``adapted`` (a copy with a LoRA image tower); its
    image fingerprint covers ``base``'s image weights and the adapter's tensors."""

    def __init__(self, base: Backend, adapted: Backend, lora: dict[str, torch.Tensor]) -> None:
        self.adapted = adapted
        super().__init__(base, [lora[k] for k in sorted(lora)])

    def encode_image_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.adapted.encode_image_batch(pixels)


def lora_image_tower(backend: Backend, method: str) -> tuple[torch.nn.Module, list[str]]:
    """The ViT image tower of ``backend`` and its attention targets, or an error naming
    ``method`` and the tower (a CNN has no attention projections to adapt)."""
    from clipadapt.models.hf_backend import HFClipBackend

    if isinstance(backend, HFClipBackend):
        return backend.model.vision_model, IMAGE_TARGETS["HFClipBackend"]
    tower = vit_image_tower(
        backend,
        method,
        purpose="puts LoRA into the attention projections of",
        alternative="an open_clip ViT or Hugging Face CLIP model",
    )
    return tower, IMAGE_TARGETS["OpenClipBackend"]


class ImageLoRA(FixedTextScores, LoRAMethod):
    """CLIP-LoRA's recipe on a ViT image tower (see the module docstring); the support
    images are re-encoded each step, cycling through the centre and ``views`` augmented
    views; the class embeddings stay the zero-shot ones."""

    name = "lora_image"
    reads: ClassVar[frozenset[DataKind]] = frozenset(
        {DataKind.SUPPORT, DataKind.TOWER, DataKind.SUPPORT_IMAGES}
    )

    def __init__(
        self,
        rank: int = 2,
        alpha: float = 1.0,
        dropout: float = 0.25,
        views: int = 2,
        epochs: int = 20,
        batch_size: int = 32,
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        precision: str = "fp32",
    ) -> None:
        super().__init__(
            rank, alpha, dropout, epochs, batch_size, lr, weight_decay, "reencode", precision
        )
        self.views = int(views)

    def _adapted(self, backend: Backend) -> tuple[Backend, torch.nn.Module, list[str]]:
        """A copy of ``backend`` with LoRA in its image tower (the backend is left untouched;
        the copy shares every tensor outside the image tower with it)."""
        tower, targets = lora_image_tower(backend, self.name)
        model = getattr(backend, "model", None)
        own = {id(t) for t in chain(tower.parameters(), tower.buffers())}
        shared = [] if model is None else chain(model.parameters(), model.buffers())
        memo = {id(t): t for t in shared if id(t) not in own}
        adapted = copy.deepcopy(backend, memo)
        adapted.__dict__.pop("_image_fp", None)
        module, _ = lora_image_tower(adapted, self.name)
        return adapted, inject_lora(self.lora_config(targets), module), targets

    def _fit(self, data: FitData) -> None:
        check_fit_data(self, data)
        backend = require_backend(data, self.name)
        lora_image_tower(backend, self.name)  # a clear error on a CNN before decoding images
        pixels = SupportPixels(backend, require_paths(data, self.name), self.views, data.augment)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(data.seed)  # PEFT draws LoRA's A matrices from the global generator
            adapted, module, targets = self._adapted(backend)
        params = [p for p in module.parameters() if p.requires_grad]
        text, scale = data.class_embeddings, scale_tensor(data)
        labels = data.support_labels.long()
        dropouts = [m for n, m in module.named_modules() if n.endswith("lora_dropout")]

        def loss(epoch: int, rows: torch.Tensor) -> torch.Tensor:
            for layer in dropouts:
                layer.train()
            image = adapted.encode_image_batch(pixels.pixels(epoch, rows))
            image = F.normalize(image.float(), dim=-1).cpu()
            return F.cross_entropy(cosine_logits(image, text, scale), labels[rows])

        self._train(data, params, loss)
        self._keep_lora(module, targets)
        self.set_state(text=text, logit_scale=scale)

    def merged_backend(self, backend: Backend) -> Backend:
        """A copy of ``backend`` whose image tower has the LoRA update merged into its weights
        (sharing the text tower with ``backend``)."""
        self._check_backend(backend)
        adapted, module, _ = self._adapted(backend)
        merge_lora(self._load_lora(module))
        return adapted

    def feature_backend(self, backend: Backend) -> Backend:
        return LoRAImageBackend(backend, self.merged_backend(backend), self._lora_state())

    @classmethod
    def from_adapter(
        cls,
        directory: str | Path,
        backend: Backend,
        classnames: list[str],
        class_embeddings: torch.Tensor,
        **options: Any,
    ) -> ImageLoRA:
        """A fitted method from an adapter written by ``save_adapter`` (for ``backend``'s
        image tower), scoring ``classnames`` with their zero-shot ``class_embeddings``."""
        config, tensors = cls._read_adapter(directory)
        method = cls(
            rank=config["r"],
            alpha=config["lora_alpha"],
            dropout=config["lora_dropout"],
            **options,
        )
        method.set_state(
            logit_scale=torch.tensor(float(backend.logit_scale)),
            text=F.normalize(class_embeddings.float(), dim=-1),
            **tensors,
        )
        method.selected["lora_targets"] = sorted(config["target_modules"])
        method.text_fingerprint = backend.text_fingerprint
        method._fitted = True
        method.classnames = list(classnames)
        return method.attach(backend)


@torch.no_grad()
def _encode(access: PromptableText, template: str, classnames: list[str]) -> torch.Tensor:
    """Normalised embeddings of ``template`` for each class, ``TEXT_CHUNK`` at a time."""
    parts = []
    for start in range(0, len(classnames), TEXT_CHUNK):
        tokens = access.tokenize(
            [template.format(c) for c in classnames[start : start + TEXT_CHUNK]]
        )
        parts.append(
            F.normalize(access.encode_embedded(access.token_embedding(tokens.ids), tokens))
        )
    return torch.cat(parts).float().cpu()
