"""The built-in model: real weights loaded strictly, data-free alignment, sane embeddings."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from clipadapt.models.base import hash_tensors
from clipadapt.models.efficientnet_lite import EfficientNetLite0, SameConv2d, pad_zeros
from clipadapt.models.lite import (
    LiteBackend,
    efficientnet_weights_path,
    load_image_tower,
    packaged_alignment_path,
    relu6_gaussian_moments,
)
from clipadapt.models.lite_alignment import LiteAlignment, kernel_map, select_hyperparameters
from clipadapt.models.minilm import MiniLMTextTower
from tests.conftest import shared_data


def test_efficientnet_state_dict_loads_strictly_with_every_key():
    state = torch.load(efficientnet_weights_path(), map_location="cpu", weights_only=True)
    net = EfficientNetLite0()
    missing, unexpected = net.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    assert set(net.state_dict()) == set(state)


def test_batchnorm_fusion_keeps_outputs():
    net = load_image_tower()
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        before = net.forward_features(x)
        after = net.fuse_batchnorm().forward_features(x)
    assert torch.allclose(before, after, atol=1e-4)


def tf_same_conv(conv: SameConv2d, x: torch.Tensor) -> torch.Tensor:
    """Reference: TensorFlow SAME padding as an explicit ``F.pad``, then an unpadded conv."""
    pads = []
    for size, k, s in zip(x.shape[-2:], conv.kernel_size, conv.stride, strict=True):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    x = F.pad(x, (left, right, top, bottom))
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)


def reference_forward_features(net: EfficientNetLite0, x: torch.Tensor) -> torch.Tensor:
    """The tower as written before issue 14: explicit padding, out-of-place ReLU6 and add."""
    x = F.relu6(net._bn0(tf_same_conv(net._conv_stem, x)))
    for block in net._blocks:
        h = x
        if block.has_expand:
            h = F.relu6(block._bn0(tf_same_conv(block._expand_conv, h)))
        h = F.relu6(block._bn1(tf_same_conv(block._depthwise_conv, h)))
        h = block._bn2(tf_same_conv(block._project_conv, h))
        x = h + x if block.residual else h
    x = F.relu6(net._bn1(tf_same_conv(net._conv_head, x)))
    return x.mean(dim=(-2, -1))


@pytest.mark.parametrize(("kernel", "stride"), [(1, 1), (3, 1), (5, 1), (3, 2), (5, 2)])
@pytest.mark.parametrize("size", [7, 8])
def test_same_conv_pads_like_tensorflow(kernel, stride, size):
    conv = SameConv2d(4, 4, kernel, stride, groups=4)
    x = torch.randn(2, 4, size, size + 1, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        out, expected = conv(x), tf_same_conv(conv, x)
    assert (
        out.shape
        == expected.shape
        == (2, 4, math.ceil(size / stride), math.ceil((size + 1) / stride))
    )
    assert torch.allclose(out, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("pads", [(0, 1, 0, 1), (1, 2, 1, 2), (2, 0, 1, 3)])
def test_pad_zeros_equals_f_pad_and_keeps_the_layout(layout, pads):
    x = torch.randn(2, 5, 6, 7).contiguous(memory_format=layout) + 1  # no zeros inside
    out = pad_zeros(x, *pads)
    assert torch.equal(out, F.pad(x, pads))
    assert out.is_contiguous(memory_format=layout)


@pytest.mark.parametrize("size", [224, 97])
def test_tower_forward_equals_the_explicit_padding_reference(size):
    net = load_image_tower().fuse_batchnorm().to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(size)
    x = (torch.rand(2, 3, size, size, generator=g) * 2 - 1).contiguous(
        memory_format=torch.channels_last
    )
    x_before = x.clone()
    with torch.inference_mode():
        out, expected = net.forward_features(x), reference_forward_features(net, x)
    assert torch.equal(x, x_before)  # the in-place steps never write the caller's tensor
    assert torch.allclose(out, expected, rtol=0, atol=1e-5)  # bit-identical where measured


def test_tower_gradients_equal_the_reference():
    """Pixel prompts backpropagate through the tower: in-place steps must keep autograd right."""
    net = load_image_tower()
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(1, 3, 64, 64, generator=g) * 2 - 1).requires_grad_()
    (grad,) = torch.autograd.grad(net.forward_features(x).square().sum(), x)
    (expected,) = torch.autograd.grad(reference_forward_features(net, x).square().sum(), x)
    assert torch.allclose(grad, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


def test_lite_image_side_needs_no_text_tower(lite_backend):
    """Given the alignment, a backend builds no MiniLM until texts are encoded."""
    given = lite_backend.alignment
    backend = LiteBackend(alignment=given)
    assert backend.logit_scale == given.logit_scale
    assert backend.image_fingerprint == lite_backend.image_fingerprint
    assert "text_tower" not in vars(backend)


def test_models_import_nothing_heavy_and_lite_images_never_import_transformers():
    script = """
import importlib, json, pkgutil, sys
import clipadapt.models
for module in pkgutil.iter_modules(clipadapt.models.__path__, "clipadapt.models."):
    importlib.import_module(module.name)
heavy = ("torchvision", "transformers", "open_clip")
on_import = [m for m in heavy if m in sys.modules]
import torch
from clipadapt.models import create_backend
backend = create_backend("lite")
backend.encode_images(torch.zeros(1, 3, 224, 224)), backend.image_fingerprint
print(json.dumps({"on_import": on_import, "images": "transformers" in sys.modules}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"on_import": [], "images": False}


def test_relu6_moments_match_monte_carlo():
    mean, std = torch.tensor([-1.0, 0.5, 3.0, 7.0]), torch.tensor([1.0, 2.0, 2.0, 0.5])
    z = mean + std * torch.randn(400_000, 4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(relu6_gaussian_moments(mean, std), z.clamp(0, 6).mean(0), atol=0.02)


def test_kernel_map_is_softmax_weighted_top_k_average():
    keys = torch.eye(3)
    values = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    query = torch.tensor([[1.0, 0.5, 0.0]])
    out = kernel_map(query, keys, values, tau=0.5, k=2)
    w = torch.softmax(torch.tensor([1.0, 0.5]) / 0.5, dim=0)
    assert torch.allclose(out, (w[0] * values[0] + w[1] * values[1])[None])


def test_alignment_selection_recovers_a_planted_neighbourhood_structure():
    # Head vectors are a smooth function of text: kernel regression must beat chance by far.
    g = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(200, 8, generator=g), dim=-1)
    head = text @ torch.randn(8, 32, generator=g)
    tau, k, scale, report = select_hyperparameters(text, head, n_folds=4)
    assert report["selected"]["heldout_acc1"] > 0.5
    assert report["grid_accuracy"][f"tau={tau},k={k}"] == max(report["grid_accuracy"].values())
    assert scale > 0


def test_packaged_alignment_matches_the_installed_weights():
    """Start-up must not refit: the shipped alignment is for exactly these weights."""
    alignment = LiteAlignment.load(packaged_alignment_path())
    head = load_image_tower()._fc.weight.detach()
    assert alignment.head_fingerprint == hash_tensors([head])
    assert alignment.text_fingerprint == hash_tensors(MiniLMTextTower().state_dict().values())
    assert alignment.imagenet_text.shape == (1000, 384)


def test_lite_embeddings_are_normalised_and_deterministic(lite_backend):
    texts = lite_backend.encode_texts(["a photo of a dog.", "a photo of a guitar."])
    assert texts.shape == (2, lite_backend.embed_dim)
    assert torch.allclose(texts.norm(dim=-1), torch.ones(2), atol=1e-5)
    pixels = torch.rand(2, 3, 224, 224) * 2 - 1
    a, b = lite_backend.encode_images(pixels), lite_backend.encode_images(pixels)
    assert torch.equal(a, b)
    assert torch.allclose(a.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_lite_zero_shot_recognises_a_few_pacs_photos(lite_backend):
    from clipadapt.data import decode_image, load_image_folder
    from clipadapt.prompts import class_embeddings, make_prompt_set

    dataset = load_image_folder(shared_data("pacs100", "photo"))
    by_class = {c: [i for i, y in enumerate(dataset.labels) if y == c][:3] for c in range(7)}
    picks = [i for idx in by_class.values() for i in idx]
    pixels = torch.stack(
        [lite_backend.preprocess(decode_image(dataset.samples[i].path)) for i in picks]
    )
    weights = class_embeddings(lite_backend, dataset.classnames, make_prompt_set("default"))
    pred = (lite_backend.encode_images(pixels) @ weights.T).argmax(1)
    accuracy = (pred == torch.from_numpy(dataset.labels[picks])).float().mean()
    assert accuracy >= 0.6  # 7-way chance is 0.14; the full-photo accuracy is about 0.82


def test_alignment_text_embeddings_are_reproducible():
    """``clipadapt lite-align`` recomputes the shipped ImageNet text embeddings exactly."""
    from clipadapt.models.lite_alignment import ensemble_text, imagenet_classnames

    alignment = LiteAlignment.load(packaged_alignment_path())
    rows = [0, 207, 386, 546, 999]
    names = [imagenet_classnames()[i] for i in rows]
    again = ensemble_text(MiniLMTextTower().encode, names, alignment.templates)
    assert torch.allclose(again, alignment.imagenet_text[rows], atol=1e-5)


def test_lazily_built_text_side_is_never_an_inference_tensor() -> None:
    """First used under inference mode (as adapt scores zero-shot), the text tower and the
    alignment must still take part in prompt learning's backward pass."""
    from clipadapt.models import create_backend

    backend = create_backend("lite")
    with torch.inference_mode():
        backend.encode_texts(["a photo of a dog"])
    assert not backend.alignment.imagenet_text.is_inference()
    assert not any(p.is_inference() for p in backend.text_tower.parameters())


def test_preprocessing_without_torchvision_is_torchvision_bit_for_bit(tmp_path) -> None:
    """Same pixels and same description (part of the image fingerprint) as the torchvision
    pipeline it replaces, over odd sizes, portrait and landscape, up- and down-scaling."""
    from PIL import Image
    from torchvision import transforms

    from clipadapt.models.base import describe_transform
    from clipadapt.models.lite import LitePreprocess

    reference = transforms.Compose(
        [
            transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
        ]
    )
    ours = LitePreprocess()
    assert describe_transform(ours) == describe_transform(reference)
    rng = torch.Generator().manual_seed(0)
    for width, height in [(227, 227), (224, 224), (16, 16), (28, 28), (640, 480), (301, 999)]:
        pixels = torch.randint(0, 256, (height, width, 3), generator=rng, dtype=torch.uint8)
        image = Image.fromarray(pixels.numpy())
        assert torch.equal(ours(image), reference(image)), (width, height)


def test_building_the_text_tower_prints_no_progress_bar(capfd) -> None:
    from transformers.utils import logging as hf_logging

    MiniLMTextTower()
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # restored for whoever else uses transformers
