"""Hugging Face ``CLIPModel``: ``hf:<repo id or local directory>``.

Loads with ``local_files_only`` unless ``HF_HUB_OFFLINE`` is explicitly 0, so a missing
model is an immediate, clear error rather than a hanging download.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch

from clipadapt.models.base import Backend, ModelInfo
from clipadapt.models.open_clip_backend import MissingWeightsError


class HFClipBackend(Backend):
    """transformers' CLIPModel with its tokenizer and image processor."""

    def __init__(self, spec: str, device: str | torch.device = "cpu") -> None:
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        self.device = torch.device(device)
        source = spec.removeprefix("hf:")
        local_only = os.environ.get("HF_HUB_OFFLINE", "1") != "0"
        try:
            self.model = CLIPModel.from_pretrained(source, local_files_only=local_only).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
            self.processor = CLIPImageProcessor.from_pretrained(source, local_files_only=local_only)
        except OSError as err:
            raise MissingWeightsError(
                f"{spec}: cannot load a Hugging Face CLIP model from {source!r} ({err}). Pass a "
                "local directory holding config.json, the weights, the tokenizer and "
                "preprocessor_config.json (save_pretrained writes them), or set HF_HUB_OFFLINE=0 "
                "on a connected machine to download."
            ) from err
        self.model.to(self.device)
        self.preprocess = lambda image: self.processor(images=image, return_tensors="pt")[
            "pixel_values"
        ][0]
        self.preprocess_description = self.processor.to_json_string()
        self.embed_dim = int(self.model.config.projection_dim)
        self.logit_scale = float(self.model.logit_scale.exp().item())
        self.max_length = int(self.model.config.text_config.max_position_embeddings)
        self.info = ModelInfo(spec=spec, model=source, pretrained="hf")

    def encode_image_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        return _as_tensor(self.model.get_image_features(pixel_values=pixels))

    def encode_text_batch(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        return _as_tensor(
            self.model.get_text_features(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            )
        )

    def weight_tensors(self, tower: str) -> Iterable[torch.Tensor]:
        prefixes = ("vision_model.", "visual_projection.") if tower == "image" else None
        state = self.model.state_dict()
        if prefixes:
            return [v for k, v in state.items() if k.startswith(prefixes)]
        return [
            v for k, v in state.items() if not k.startswith(("vision_model.", "visual_projection."))
        ]


def _as_tensor(output) -> torch.Tensor:
    """transformers 5 may wrap projected features in a model output; unwrap to the tensor."""
    if isinstance(output, torch.Tensor):
        return output
    return output.pooler_output
