"""open_clip models: ``open_clip:<arch>/<tag|checkpoint>``, ``hf-hub:<repo>``, ``local-dir:<dir>``.

Weights come from local files when offline (a checkpoint path, a local directory with
``open_clip_config.json`` and weights, or open_clip's download cache). Random weights only
when the pretrained part is literally ``random``; they are drawn from a fixed seed (without
touching the global random state), so every process builds the same random model and its
features are cached and compared across runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from clipadapt.models.base import Backend, ModelInfo, describe_transform

RANDOM = "random"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


RANDOM_SEED = 0


@contextmanager
def _seeded(active: bool) -> Iterator[None]:
    """Draw random weights from ``RANDOM_SEED``, leaving the global generators (CPU and every
    CUDA device, which ``manual_seed`` also seeds) as they were."""
    if not active:
        yield
        return
    with torch.random.fork_rng():
        torch.manual_seed(RANDOM_SEED)
        yield


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights that cannot be found locally or downloaded."""


class OpenClipBackend(Backend):
    """Any open_clip CLIP model."""

    def __init__(self, spec: str, device: str | torch.device = "cpu") -> None:
        import open_clip

        self.device = torch.device(device)
        model_name, pretrained = parse_open_clip_spec(spec)
        load_weights = pretrained != RANDOM
        if model_name.startswith("local-dir:"):
            _check_local_dir(Path(model_name.removeprefix("local-dir:")))
        try:
            with hub_offline(), _seeded(pretrained == RANDOM):
                model, _, preprocess = open_clip.create_model_and_transforms(
                    model_name,
                    pretrained=None if pretrained in (None, RANDOM) else pretrained,
                    load_weights=load_weights,
                    device=self.device,
                )
        except RuntimeError as err:
            raise MissingWeightsError(
                f"{spec}: cannot load open_clip weights ({err}). Offline, pass a checkpoint file "
                f"(open_clip:<arch>/<path.pt>) or a directory (local-dir:<dir>), or download the "
                f"weights into open_clip's cache on a connected machine; "
                f"use open_clip:<arch>/random only for tests."
            ) from err
        self.model = model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.preprocess = preprocess
        self.preprocess_description = describe_transform(preprocess)
        self.embed_dim = (
            int(self.model.text_projection.shape[-1])
            if hasattr(self.model, "text_projection") and self.model.text_projection is not None
            else _probe_dim(self.model, preprocess)
        )
        self.logit_scale = float(self.model.logit_scale.exp().item())
        self.info = ModelInfo(spec=spec, model=model_name, pretrained=pretrained or "")

    def encode_image_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def encode_text_batch(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts).to(self.device))

    def weight_tensors(self, tower: str) -> Iterable[torch.Tensor]:
        prefix = "visual." if tower == "image" else None
        state = self.model.state_dict()
        if prefix:
            return [v for k, v in state.items() if k.startswith(prefix)]
        return [v for k, v in state.items() if not k.startswith("visual.")]


@contextmanager
def hub_offline() -> Iterator[None]:
    """Make the Hugging Face hub client use only its local cache, unless HF_HUB_OFFLINE=0."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = os.environ.get("HF_HUB_OFFLINE", "1") != "0"
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def parse_open_clip_spec(spec: str) -> tuple[str, str | None]:
    """``open_clip:ViT-B-32/laion2b_s34b_b79k`` -> (``ViT-B-32``, ``laion2b_s34b_b79k``)."""
    body = spec.removeprefix("open_clip:")
    if body.startswith(("hf-hub:", "local-dir:")):
        return body, None
    arch, _, pretrained = body.partition("/")
    if not arch or not pretrained:
        raise ValueError(
            f"model spec {spec!r}: expected open_clip:<arch>/<pretrained tag or checkpoint path>, "
            "e.g. open_clip:ViT-B-32/laion2b_s34b_b79k, or open_clip:ViT-B-32/random for tests"
        )
    return arch, pretrained


def _check_local_dir(path: Path) -> None:
    if not (path / "open_clip_config.json").is_file():
        raise FileNotFoundError(f"local-dir:{path}: no open_clip_config.json in that directory")
    if not any(p.suffix in WEIGHT_SUFFIXES for p in path.iterdir()):
        raise MissingWeightsError(
            f"local-dir:{path}: no weights file (*.safetensors, *.bin, *.pth) beside "
            "open_clip_config.json; copy the checkpoint there"
        )


def _probe_dim(model: torch.nn.Module, preprocess) -> int:
    size = preprocess.transforms[0].size
    side = size if isinstance(size, int) else size[0]
    with torch.inference_mode():
        return int(model.encode_image(torch.zeros(1, 3, side, side)).shape[-1])
