"""Local patch features of ViT image towers, projected into the joint embedding space.

GL-MCM (Miyai et al., 2023) scores every patch token against the class texts. The patch
tokens of the last block go through the same final layer norm and projection as the pooled
token, and are L2-normalised: ``(N, P, D)`` with P patches. Supported: open_clip
``VisionTransformer`` towers (class-token or average pooling) and Hugging Face ``CLIPModel``.
CNN towers (the built-in ``lite``) have no patch tokens in the joint space: a clear error.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from clipadapt.data.images import decode_image
from clipadapt.models.base import Backend
from clipadapt.models.hf_backend import HFClipBackend
from clipadapt.models.open_clip_backend import OpenClipBackend


class NoLocalFeaturesError(ValueError):
    """The backend's image tower has no patch tokens in the joint space (not a ViT)."""


def _no_vit(backend: Backend, why: str) -> NoLocalFeaturesError:
    return NoLocalFeaturesError(
        f"local patch features (GL-MCM) need a ViT image tower, but {backend.info.spec!r} {why}; "
        "use an open_clip ViT (open_clip:ViT-B-16/<tag>, local-dir:<dir>) or a Hugging Face "
        "CLIP ViT (hf:<repo or dir>), or choose a score that reads global features only"
    )


@torch.inference_mode()
def encode_local_features(backend: Backend, pixels: torch.Tensor) -> torch.Tensor:
    """Normalised patch embeddings (B, P, D) of a preprocessed batch (B, 3, H, W)."""
    pixels = pixels.to(backend.device)
    if isinstance(backend, OpenClipBackend):
        tokens = _open_clip_tokens(backend, pixels)
    elif isinstance(backend, HFClipBackend):
        vision = backend.model.vision_model
        hidden = vision(pixel_values=pixels).last_hidden_state[:, 1:]
        tokens = backend.model.visual_projection(vision.post_layernorm(hidden))
    else:
        tower = "a CNN" if backend.info.spec == "lite" else f"a {type(backend).__name__}"
        raise _no_vit(backend, f"has {tower} image tower")
    return torch.nn.functional.normalize(tokens.float(), dim=-1).cpu()


def _open_clip_tokens(backend: OpenClipBackend, pixels: torch.Tensor) -> torch.Tensor:
    from open_clip.transformer import VisionTransformer

    visual = backend.model.visual
    if not isinstance(visual, VisionTransformer):
        raise _no_vit(backend, f"has a {type(visual).__name__} image tower")
    if visual.attn_pool is not None or visual.pool_type not in ("tok", "avg"):
        raise _no_vit(backend, "pools its ViT tokens with attention (CoCa-style)")
    previous = visual.output_tokens
    visual.output_tokens = True
    try:
        _, tokens = visual(pixels)
    finally:
        visual.output_tokens = previous
    if visual.final_ln_after_pool:  # otherwise the tokens are already normalised
        tokens = visual.ln_post(tokens)
    return tokens if visual.proj is None else tokens @ visual.proj


def extract_local_features(
    backend: Backend,
    paths: Sequence[str | os.PathLike[str]],
    *,
    batch_size: int = 32,
    progress: bool = True,
) -> torch.Tensor:
    """Patch features (N, P, D) of the images at ``paths`` (not cached: P times larger)."""
    parts = []
    for start in tqdm(
        range(0, len(paths), batch_size), desc="local features", disable=not progress
    ):
        batch = [backend.preprocess(decode_image(p)) for p in paths[start : start + batch_size]]
        parts.append(encode_local_features(backend, torch.stack(batch)))
    if not parts:
        raise ValueError("extract_local_features: got no image paths")
    return torch.cat(parts)
