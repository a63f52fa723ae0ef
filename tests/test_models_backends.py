"""open_clip and Hugging Face backends through their real loading paths, on tiny local models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tiny_models import TINY_OPEN_CLIP_CFG

from clipadapt.models import create_backend
from clipadapt.models.open_clip_backend import MissingWeightsError, parse_open_clip_spec


def _image() -> Image.Image:
    return Image.new("RGB", (48, 40), (200, 30, 60))


def test_open_clip_local_dir_loads_the_saved_weights(tiny_open_clip_dir: Path):
    backend = create_backend(f"local-dir:{tiny_open_clip_dir}")
    reference = open_clip.model.CLIP(**TINY_OPEN_CLIP_CFG)
    reference.load_state_dict(load_file(str(tiny_open_clip_dir / "open_clip_model.safetensors")))
    reference.eval()
    tokens = open_clip.get_tokenizer("ViT-B-32")(["a photo of a cat."])
    expected = torch.nn.functional.normalize(reference.encode_text(tokens), dim=-1)
    assert torch.allclose(backend.encode_texts(["a photo of a cat."]), expected, atol=1e-5)
    pixels = backend.preprocess(_image())[None]
    expected_img = torch.nn.functional.normalize(reference.encode_image(pixels), dim=-1)
    assert torch.allclose(backend.encode_images(pixels), expected_img, atol=1e-5)
    assert backend.embed_dim == 16


def test_a_plain_directory_spec_is_recognised(tiny_open_clip_dir: Path, tiny_hf_dir: Path):
    assert type(create_backend(str(tiny_open_clip_dir))).__name__ == "OpenClipBackend"
    assert type(create_backend(str(tiny_hf_dir))).__name__ == "HFClipBackend"


def test_open_clip_checkpoint_path_form(tiny_open_clip_dir: Path, tmp_path: Path):
    config = tmp_path / "tiny-test-vit.json"
    config.write_text(json.dumps(TINY_OPEN_CLIP_CFG))
    open_clip.add_model_config(config)
    ckpt = tiny_open_clip_dir / "open_clip_model.safetensors"
    a = create_backend(f"open_clip:tiny-test-vit/{ckpt}")
    b = create_backend(f"local-dir:{tiny_open_clip_dir}")
    assert torch.equal(a.encode_texts(["a dog"]), b.encode_texts(["a dog"]))
    # Same weights, but local-dir's config normalises with mean 0.5: the preprocessing is part
    # of the image fingerprint, so cached features of one are never served to the other.
    assert a.text_fingerprint == b.text_fingerprint
    assert a.image_fingerprint != b.image_fingerprint


def test_local_dir_without_weights_is_an_error_not_random_weights(
    tiny_open_clip_dir: Path, tmp_path: Path
):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tiny_open_clip_dir / "open_clip_config.json", bare)
    with pytest.raises(MissingWeightsError, match="no weights file"):
        create_backend(f"local-dir:{bare}")


def test_unknown_pretrained_tag_says_what_to_do():
    with pytest.raises(MissingWeightsError, match="checkpoint file"):
        create_backend("open_clip:ViT-B-32/no-such-tag")


def test_random_weights_only_when_asked():
    assert parse_open_clip_spec("open_clip:ViT-B-32/random") == ("ViT-B-32", "random")
    with pytest.raises(ValueError, match="expected open_clip:<arch>/"):
        parse_open_clip_spec("open_clip:ViT-B-32")


def test_random_weights_are_the_same_in_every_process_and_leave_the_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    first = create_backend("open_clip:ViT-S-32/random")
    assert torch.equal(torch.rand(3), expected)
    torch.manual_seed(6)  # another global state changes nothing
    assert create_backend("open_clip:ViT-S-32/random").fingerprint == first.fingerprint


def test_unknown_spec_lists_the_forms():
    with pytest.raises(ValueError, match="lite"):
        create_backend("no-such-model")


def test_hf_clip_loads_from_a_local_directory(tiny_hf_dir: Path):
    from transformers import CLIPModel

    backend = create_backend(f"hf:{tiny_hf_dir}")
    reference = CLIPModel.from_pretrained(tiny_hf_dir).eval()
    pixels = backend.preprocess(_image())[None]
    out = reference.get_image_features(pixel_values=pixels)
    out = out if isinstance(out, torch.Tensor) else out.pooler_output
    assert torch.allclose(
        backend.encode_images(pixels), torch.nn.functional.normalize(out, dim=-1), atol=1e-5
    )
    texts = backend.encode_texts(["a photo of the cat.", "a dog"])
    assert texts.shape == (2, 16)
    assert backend.text_fingerprint != backend.image_fingerprint


def test_hf_missing_directory_is_a_clear_error(tmp_path: Path):
    with pytest.raises(MissingWeightsError, match="local directory"):
        create_backend(f"hf:{tmp_path / 'nothing-here'}")


def test_fingerprint_changes_with_weights(tiny_open_clip_dir: Path, tmp_path: Path):
    from safetensors.torch import save_file

    changed = tmp_path / "changed"
    shutil.copytree(tiny_open_clip_dir, changed)
    state = load_file(str(changed / "open_clip_model.safetensors"))
    state["visual.proj"] = state["visual.proj"] + 1e-3
    save_file(state, str(changed / "open_clip_model.safetensors"))
    a = create_backend(f"local-dir:{tiny_open_clip_dir}")
    b = create_backend(f"local-dir:{changed}")
    assert a.image_fingerprint != b.image_fingerprint
    assert a.text_fingerprint == b.text_fingerprint
