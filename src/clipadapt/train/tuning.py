"""What fine-tuning trains: whole towers, the last N blocks, or LoRA adapters (through PEFT).

``plan_training(backend, train, towers)`` freezes everything in ``backend`` and makes
trainable what ``train`` names, in the ``towers`` given:

* ``all``: every weight of those towers;
* ``last:N``: the last N blocks of each tower and the layers after them (final norm,
  projection; ``lite``'s head convolution);
* ``lora``: rank-``r`` LoRA, put in by PEFT, on the attention projections of transformer
  towers (query, key, value; open_clip fuses those into one ``nn.MultiheadAttention``
  weight, so there: the attention output and the MLP projections) and on the 1x1
  convolutions of ``lite``'s CNN (expand, project, head). ``TrainingPlan.finish()``
  merges the update into the weights and removes the adapter layers, so the tuned model
  is a plain model again (saved like any other).

A tower left out is locked: with the image tower locked, image features come from the
feature cache (LiT); with the text tower locked, each caption is embedded once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from clipadapt.models.base import Backend
from clipadapt.models.towers import TOWERS, tower
from clipadapt.train.options import TrainMode

LORA_TARGETS = {  # per backend and tower: a regular expression over module names
    ("LiteBackend", "image"): r".*(_expand_conv|_project_conv|_conv_head)$",
    ("LiteBackend", "text"): r".*\.(query|key|value)$",
    ("HFClipBackend", "image"): r".*\.(q_proj|k_proj|v_proj)$",
    ("HFClipBackend", "text"): r".*\.(q_proj|k_proj|v_proj)$",
    ("OpenClipBackend", "image"): r".*\.(out_proj|c_fc|c_proj)$",
    ("OpenClipBackend", "text"): r".*\.(out_proj|c_fc|c_proj)$",
}


@dataclass
class TrainingPlan:
    """The parameters to train and the towers they belong to."""

    params: list[nn.Parameter]
    towers: tuple[str, ...]
    lora_modules: list[nn.Module] = field(default_factory=list)

    def finish(self) -> None:
        """Merge LoRA updates into the weights and take the adapter layers out; freeze."""
        for module in self.lora_modules:
            _merge_and_unwrap(module)
        self.lora_modules = []
        for param in self.params:
            param.requires_grad_(False)


def plan_training(
    backend: Backend,
    train: str,
    towers: tuple[str, ...] = TOWERS,
    *,
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    seed: int = 1,
) -> TrainingPlan:
    """Freeze ``backend`` and make trainable what ``train`` names in ``towers``."""
    mode = TrainMode.parse(train)
    unknown = [t for t in towers if t not in TOWERS]
    if unknown or not towers:
        raise ValueError(f"towers {list(towers)}: name one or both of {TOWERS}")
    for name in TOWERS:
        tower(backend, name).module.requires_grad_(False)
    params: list[nn.Parameter] = []
    lora_modules: list[nn.Module] = []
    for name in towers:
        part = tower(backend, name)
        if mode.kind == "all":
            chosen = list(part.module.parameters())
        elif mode.kind == "last":
            chosen = part.parameters_of_last(mode.blocks)
        else:
            chosen = _inject_lora(backend, name, lora_rank, lora_alpha, seed)
            lora_modules.append(part.module)
        for param in chosen:
            param.requires_grad_(True)
        params += chosen
    return TrainingPlan(params, tuple(towers), lora_modules)


def _inject_lora(
    backend: Backend, name: str, rank: int, alpha: float, seed: int
) -> list[nn.Parameter]:
    from peft import LoraConfig

    key = (type(backend).__name__, name)
    if key not in LORA_TARGETS:
        raise ValueError(f"{backend.info.spec}: no LoRA targets known for its {name} tower")
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=LORA_TARGETS[key]
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # PEFT draws the A matrices from the global generator
        module = inject_lora(config, tower(backend, name).module)
    return [p for n, p in module.named_parameters() if "lora_" in n]


def inject_lora(config, module: nn.Module) -> nn.Module:
    """``module`` with PEFT's LoRA layers (``config``) put in; only their weights train."""
    from peft import inject_adapter_in_model

    module = inject_adapter_in_model(config, module)
    for name, param in module.named_parameters():
        param.requires_grad_("lora_" in name)
    return module


def merge_lora(module: nn.Module) -> None:
    """Merge every LoRA update under ``module`` into its base weights (outer layers first:
    open_clip's attention merges its inner output projection too)."""
    for layer in module.modules():
        if hasattr(layer, "lora_A") and not layer.merged:
            layer.merge()


def _merge_and_unwrap(module: nn.Module) -> None:
    """Merge every LoRA layer under ``module``, then replace it by its base layer, the
    deepest first, so every parent path still resolves."""
    merge_lora(module)
    layers = [
        name
        for name, child in module.named_modules()
        if hasattr(child, "base_layer") and hasattr(child, "lora_A")
    ]
    for name in sorted(layers, key=lambda n: -n.count(".")):
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, getattr(parent, attr).get_base_layer())
