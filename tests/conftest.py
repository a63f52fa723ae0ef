"""Shared fixtures: tiny image folders and tiny randomly initialised CLIP models saved to disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY_OPEN_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


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
    import open_clip
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("tiny_open_clip")
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**TINY_OPEN_CLIP_CFG)
    config = {
        "model_cfg": TINY_OPEN_CLIP_CFG,
        "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3},
    }
    (path / "open_clip_config.json").write_text(json.dumps(config))
    save_file(model.state_dict(), str(path / "open_clip_model.safetensors"))
    return path


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny Hugging Face CLIPModel with tokenizer and image processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    path = tmp_path_factory.mktemp("tiny_hf")
    torch.manual_seed(0)
    layer = {"intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={"hidden_size": 32, "max_position_embeddings": 77, "vocab_size": 64, **layer},
        vision_config={"hidden_size": 32, "image_size": 32, "patch_size": 8, **layer},
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(path)
    words = ["a", "photo", "of", "the", "cat", "dog", "fish", "."]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1} | {
        f"{w}</w>": i + 2 for i, w in enumerate(words)
    }
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt")).save_pretrained(path)
    crop = {"height": 32, "width": 32}
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=crop).save_pretrained(path)
    return path


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
