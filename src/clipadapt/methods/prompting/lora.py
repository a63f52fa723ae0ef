"""LoRA on the text tower's attention projections, through the PEFT library.

CLIP-LoRA (Zanella & Ben Ayed, CVPRW 2024, arXiv:2405.18541): low-rank updates
``W + (alpha / r) B A`` on the query, key and value projections of every layer, rank 2,
alpha 1, dropout 0.25, trained with cross-entropy against the frozen image features for the
hand-made prompt "a photo of a {}.". Here only the text tower is adapted, so training reads
cached image features. The backend is never modified: LoRA goes into a copy of it.

The fitted adapter saves inside the method's state; ``save_adapter`` also writes it on its
own in PEFT's layout, and ``merged_backend`` gives a backend with the update merged in.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Self

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from clipadapt.atomic import atomic_write
from clipadapt.methods.base import FitData
from clipadapt.methods.common import check_fit_data, cosine_logits, scale_tensor
from clipadapt.methods.prompting.base import TowerMethod
from clipadapt.methods.prompting.images import SupportFeatures, require_backend
from clipadapt.models.base import TEXT_CHUNK, Backend
from clipadapt.models.prompt_access import PromptableText, promptable_text

PREFIX = "lora."
TARGETS = {  # attention projections per text tower
    "LiteText": ["query", "key", "value"],
    "HFText": ["q_proj", "k_proj", "v_proj"],
    "OpenClipText": ["attn"],  # nn.MultiheadAttention: PEFT adapts its fused q/k/v projection
}


class TextLoRA(TowerMethod):
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
    ) -> None:
        super().__init__(epochs, batch_size, lr, weight_decay, image_path)
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.dropout = float(dropout)
        self.template = template

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "template": self.template,
            **super().hyperparameters(),
        }

    def lora_config(self, access: PromptableText):
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=TARGETS[type(access).__name__],
        )

    def _adapted(self, backend: Backend) -> tuple[PromptableText, torch.nn.Module]:
        """A LoRA-wrapped copy of ``backend``'s text tower (the backend is left untouched)."""
        from peft import inject_adapter_in_model

        adapted = copy.deepcopy(backend)
        adapted.__dict__.pop("_text_fp", None)  # its text weights will differ: hash them anew
        access = promptable_text(adapted)
        module = inject_adapter_in_model(self.lora_config(access), access.module)
        for name, param in module.named_parameters():
            param.requires_grad_("lora_" in name)
        return access, module

    def fit(self, data: FitData) -> Self:
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
        module.eval()
        lora = {PREFIX + n: p for n, p in module.named_parameters() if p.requires_grad}
        self.set_state(text=_encode(access, self.template, data.classnames), logit_scale=scale)
        self.set_state(**lora)
        self.selected["lora_targets"] = TARGETS[type(access).__name__]
        return self

    def predict_logits(self, features: torch.Tensor) -> torch.Tensor:
        return cosine_logits(features, self.state("text"), self.state("logit_scale"))

    def _loaded(self, backend: Backend) -> tuple[PromptableText, torch.nn.Module]:
        self._check_backend(backend)
        access, module = self._adapted(backend)
        weights = {
            k.removeprefix(PREFIX): v for k, v in self._state.items() if k.startswith(PREFIX)
        }
        missing = set(weights) - dict(module.named_parameters()).keys()
        if missing:
            raise ValueError(f"{self.name}: adapter tensors {sorted(missing)[:3]} do not fit")
        module.load_state_dict(weights, strict=False)
        return access, module.eval()

    def class_embeddings_for(self, backend: Backend, classnames: list[str]) -> torch.Tensor:
        access, _ = self._loaded(backend)
        return _encode(access, self.template, classnames)

    def merged_backend(self, backend: Backend) -> Backend:
        """A copy of ``backend`` whose text tower has the LoRA update merged into its weights."""
        access, module = self._loaded(backend)
        for layer in module.modules():
            if hasattr(layer, "lora_A") and not layer.merged:
                layer.merge()
        return access.backend

    def save_adapter(self, directory: str | Path) -> Path:
        """Write the adapter alone: PEFT's ``adapter_config.json`` and the LoRA tensors."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        from peft import LoraConfig

        config = LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.selected["lora_targets"],
        )
        config.save_pretrained(str(out))
        tensors = {
            k.removeprefix(PREFIX): v for k, v in self._state.items() if k.startswith(PREFIX)
        }
        atomic_write(out / "adapter_model.safetensors", lambda p: save_file(tensors, str(p)))
        return out

    @classmethod
    def from_adapter(
        cls, directory: str | Path, backend: Backend, classnames: list[str], **options: Any
    ) -> TextLoRA:
        """A fitted method from an adapter written by ``save_adapter`` (for ``backend``'s
        text tower), scoring ``classnames``; ``options`` are other hyperparameters."""
        import json

        from safetensors.torch import load_file

        directory = Path(directory)
        config = json.loads((directory / "adapter_config.json").read_text())
        method = cls(
            rank=config["r"],
            alpha=config["lora_alpha"],
            dropout=config["lora_dropout"],
            **options,
        )
        tensors = load_file(str(directory / "adapter_model.safetensors"))
        method.set_state(
            logit_scale=torch.tensor(float(backend.logit_scale)),
            **{PREFIX + k: v for k, v in tensors.items()},
        )
        method.selected["lora_targets"] = sorted(config["target_modules"])
        method.text_fingerprint = backend.text_fingerprint
        method.attach(backend)
        method.set_state(text=method.class_embeddings_for(backend, list(classnames)))
        method.classnames = list(classnames)
        return method


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
