"""Model backends behind one interface, picked by a spec string.

``lite`` (built-in, offline), ``open_clip:<arch>/<tag|checkpoint>``, ``hf-hub:<org/repo>``,
``local-dir:<dir>``, ``hf:<repo or dir>``, or a local directory (one ``clipadapt finetune``
wrote, open_clip's ``open_clip_config.json`` or a Hugging Face ``config.json``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from clipadapt.models.base import Backend, ModelInfo
from clipadapt.saved import is_finetuned_dir

SPEC_FORMS: dict[str, str] = {
    "lite": "built-in offline model: EfficientNet-Lite0 (ImageNet) + all-MiniLM-L6-v2",
    "open_clip:<arch>/<tag or checkpoint>": "an open_clip model; <arch>/random for tests only",
    "hf-hub:<org/repo>": "an open_clip model from the Hugging Face hub (needs it cached offline)",
    "local-dir:<dir>": "an open_clip model directory (open_clip_config.json + weights)",
    "hf:<repo id or dir>": "a Hugging Face transformers CLIPModel",
    "<dir>": "a model directory written by clipadapt finetune",
}


def create_backend(spec: str, device: str | torch.device = "cpu") -> Backend:
    """Build the backend a spec string names (see ``SPEC_FORMS``)."""
    if spec == "lite":
        from clipadapt.models.lite import LiteBackend

        return LiteBackend(device)
    if spec.startswith(("open_clip:", "hf-hub:", "local-dir:")):
        from clipadapt.models.open_clip_backend import OpenClipBackend

        return OpenClipBackend(spec, device)
    if spec.startswith("hf:"):
        from clipadapt.models.hf_backend import HFClipBackend

        return HFClipBackend(spec, device)
    path = Path(spec)
    if path.is_dir() and is_finetuned_dir(path):
        from clipadapt.models.finetuned import load_finetuned

        return load_finetuned(path, device)
    if path.is_dir() and (path / "open_clip_config.json").is_file():
        return create_backend(f"local-dir:{path}", device)
    if path.is_dir() and (path / "config.json").is_file():
        return create_backend(f"hf:{path}", device)
    forms = "\n  ".join(f"{form}: {what}" for form, what in SPEC_FORMS.items())
    raise ValueError(f"unknown model spec {spec!r}; use one of:\n  {forms}")


def available_models() -> list[str]:
    """Concrete specs known without a network: ``lite`` and open_clip's pretrained table."""
    import open_clip

    return ["lite"] + [f"open_clip:{arch}/{tag}" for arch, tag in open_clip.list_pretrained()]


__all__ = ["SPEC_FORMS", "Backend", "ModelInfo", "available_models", "create_backend"]
