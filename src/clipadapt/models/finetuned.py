"""A fine-tuned model as a directory every command takes as ``--model DIR``.

``config.json`` records the base model spec (``lite``, an open_clip spec, ...), which towers
were changed, the learned logit scale and how the model was trained; ``towers.safetensors``
holds the changed towers' weights (LoRA already merged). Loading builds the base model and
loads those weights over it, so the fingerprints, and with them the feature cache keys, are
those of the new weights. Fine-tuning a fine-tuned model keeps the original base and adds
the towers changed again.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from clipadapt import __version__
from clipadapt.atomic import atomic_write, atomic_write_json
from clipadapt.models.base import Backend, ModelInfo
from clipadapt.models.towers import TOWERS, load_tower_state, tower_state
from clipadapt.saved import (
    CONFIG_FILE,
    FINETUNED_FORMAT,
    FINETUNED_KEY,
    FORMAT_VERSION,
    read_config,
)

WEIGHTS_FILE = "towers.safetensors"
REFINETUNE = "re-run clipadapt finetune to rebuild it"


def set_logit_scale(backend: Backend, value: float) -> None:
    """Give ``backend`` the logit scale ``value`` (a fine-tuned temperature)."""
    if hasattr(type(backend), "alignment"):  # lite: the scale is part of its text alignment
        backend.alignment = dataclasses.replace(backend.alignment, logit_scale=float(value))
    else:
        backend.logit_scale = float(value)


def base_spec(backend: Backend) -> str:
    """The spec of the pretrained model under ``backend`` (itself, unless fine-tuned)."""
    record = getattr(backend, FINETUNED_KEY, None)
    return record["base"] if record else backend.info.spec


def save_finetuned(
    backend: Backend,
    directory: str | os.PathLike[str],
    towers: list[str],
    training: dict[str, Any],
) -> Path:
    """Write ``backend`` with its ``towers`` changed (plus those an earlier fine-tuning
    changed) into ``directory``, atomically file by file."""
    previous = getattr(backend, FINETUNED_KEY, None) or {"towers": []}
    changed = [t for t in TOWERS if t in towers or t in previous["towers"]]
    tensors: dict[str, torch.Tensor] = {}
    for name in changed:
        tensors.update(tower_state(backend, name))
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / WEIGHTS_FILE, lambda p: save_file(tensors, str(p)))
    record = {
        "format": FINETUNED_FORMAT,
        "package_version": __version__,
        "base": base_spec(backend),
        "towers": changed,
        "logit_scale": float(backend.logit_scale),
        "training": [*previous.get("training", []), training],
    }
    atomic_write_json(out / CONFIG_FILE, {"format_version": FORMAT_VERSION, FINETUNED_KEY: record})
    return out


def load_finetuned(
    directory: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> Backend:
    """The backend a ``save_finetuned`` directory holds."""
    from clipadapt.models import create_backend

    path = Path(directory)
    record = read_config(path, FINETUNED_KEY)[FINETUNED_KEY]
    missing = [k for k in ("format", "base", "towers", "logit_scale") if k not in record]
    if record.get("format") != FINETUNED_FORMAT or missing:
        raise ValueError(
            f"{path / CONFIG_FILE}: not a fine-tuned model of format {FINETUNED_FORMAT!r}; "
            + REFINETUNE
        )
    try:
        tensors = load_file(str(path / WEIGHTS_FILE))
    except (OSError, SafetensorError) as err:
        raise ValueError(f"{path / WEIGHTS_FILE}: cannot be read ({err}); {REFINETUNE}") from None
    backend = create_backend(record["base"], device)
    loaded = load_tower_state(backend, tensors)
    if sorted(loaded) != sorted(record["towers"]):
        raise ValueError(
            f"{path / WEIGHTS_FILE}: holds towers {loaded}, the config lists "
            f"{record['towers']}; {REFINETUNE}"
        )
    set_logit_scale(backend, record["logit_scale"])
    base = backend.info
    backend.info = ModelInfo(
        spec=str(path.resolve()), model=base.model, pretrained=f"{base.pretrained}+{path.name}"
    )
    setattr(backend, FINETUNED_KEY, record)
    return backend
