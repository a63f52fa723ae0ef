"""Shared fixtures: tiny image folders and tiny randomly initialised CLIP models saved to disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny_models import save_tiny_hf_clip, save_tiny_open_clip

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, skipping the test with a reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (benchmark data lives in ../shared/data beside the repo)")
    return path


def make_image_folder(root: Path, classes: dict[str, int], size: int = 40) -> Path:
    """``root/<class>/<i>.png`` with distinct solid-colour-and-stripe images per class."""
    for c, (name, count) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img = Image.new("RGB", (size, size), (40 * c % 256, 255 - 30 * c % 256, 17 * i % 256))
            for x in range(0, size, 4 + c):
                for y in range(size):
                    img.putpixel((x, y), (255, 255, 255))
            img.save(folder / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images", {"cat": 6, "dog": 6, "fish": 6})


@pytest.fixture(scope="session")
def tiny_open_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny open_clip ViT saved as a ``local-dir:`` model."""
    return save_tiny_open_clip(tmp_path_factory.mktemp("tiny_open_clip"))


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny Hugging Face CLIPModel with tokenizer and image processor."""
    return save_tiny_hf_clip(tmp_path_factory.mktemp("tiny_hf"))


@pytest.fixture(scope="session")
def lite_backend():
    from clipadapt.models import create_backend

    return create_backend("lite")


class FakeBackend:
    """A fast deterministic stand-in for a CLIP model: fixed random projections.

    Images: 8x8 average-pooled pixels projected to 16 dims. Texts: a bag of hashed words.
    Counts forward passes so tests can prove a warm cache does none.
    """

    def __new__(cls, *args, **kwargs):
        from torchvision import transforms

        from clipadapt.models.base import Backend, ModelInfo

        class _Fake(Backend):
            def __init__(self, seed: int = 0) -> None:
                g = torch.Generator().manual_seed(seed)
                self.device = torch.device("cpu")
                self.info = ModelInfo(spec=f"fake{seed}", model="fake", pretrained=str(seed))
                self.preprocess = transforms.Compose(
                    [transforms.Resize(16), transforms.CenterCrop(16), transforms.ToTensor()]
                )
                self.preprocess_description = "fake resize16 crop16"
                self.embed_dim = 16
                self.logit_scale = 10.0
                self.image_proj = torch.randn(3 * 8 * 8, 16, generator=g)
                self.word_proj = torch.randn(997, 16, generator=g)
                self.forwards = 0

            def encode_image_batch(self, pixels: torch.Tensor) -> torch.Tensor:
                self.forwards += 1
                pooled = torch.nn.functional.adaptive_avg_pool2d(pixels, 8).flatten(1)
                return pooled @ self.image_proj

            def encode_text_batch(self, texts: list[str]) -> torch.Tensor:
                rows = [
                    sum(self.word_proj[sum(map(ord, w)) % 997] for w in t.split()) for t in texts
                ]
                return torch.stack(rows)

            def weight_tensors(self, tower: str):
                return [self.image_proj] if tower == "image" else [self.word_proj]

        return _Fake(*args, **kwargs)


@pytest.fixture
def fake_backend():
    return FakeBackend()
