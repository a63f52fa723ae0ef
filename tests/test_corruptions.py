"""Corruption views: seeded, versioned in the cache key, stronger with severity."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from clipadapt import corruptions
from clipadapt.bench.config import BenchConfig
from clipadapt.corruptions import CANVAS, COMMON, CORRUPTIONS, EXTRA, SEVERITIES, corrupt
from clipadapt.feature_cache import FeatureCache
from clipadapt.features import extract_features
from clipadapt.views import (
    CENTER,
    corrupt_view,
    corruption_view_name,
    parse_corruption_view,
    view_key,
    view_transform,
)


def _skip_unless_installed(name: str) -> None:
    """Skip, with the reason, when corruption ``name`` needs a part that is not installed."""
    if name in corruptions.NEEDS_OPENCV:
        pytest.importorskip("cv2", reason=f"{name} needs OpenCV: pip install '.[corruptions]'")
    if name == "frost":
        try:
            corruptions.frost_directory()
        except FileNotFoundError:
            pytest.skip("frost needs the frost images of the imagecorruptions package")


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A textured 240 x 180 test image: gradients, stripes and a disc."""
    yy, xx = np.mgrid[0:180, 0:240]
    red = (xx * 255 / 239).astype(np.uint8)
    green = ((np.sin(xx / 5) * np.cos(yy / 7) + 1) * 120).astype(np.uint8)
    blue = np.where((xx - 120) ** 2 + (yy - 90) ** 2 < 50**2, 230, 30).astype(np.uint8)
    return Image.fromarray(np.stack([red, green, blue], -1))


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def test_the_suite_is_imagenet_c_s_fifteen_plus_held_out_extras():
    assert len(COMMON) == 15 and set(COMMON).isdisjoint(EXTRA)
    assert tuple(CORRUPTIONS) == (*COMMON, *EXTRA)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_corruption_is_seeded_and_severity_changes_it(photo, name):
    _skip_unless_installed(name)
    views = [corruption_view_name(name, s) for s in (1, 5)]
    first = [corrupt_view(photo, "hash-a", v) for v in views]
    again = corrupt_view(photo, "hash-a", views[0])
    assert first[0].size == (CANVAS, CANVAS) and first[0].mode == "RGB"
    assert np.array_equal(np.asarray(first[0]), np.asarray(again))  # same image+view: same bytes
    assert not np.array_equal(np.asarray(first[0]), np.asarray(first[1]))


@pytest.mark.parametrize(
    "name", ["gaussian_noise", "shot_noise", "fog", "glass_blur", "frost", "spatter"]
)
def test_random_corruptions_draw_from_the_image_hash(photo, name):
    _skip_unless_installed(name)
    view = corruption_view_name(name, 3)
    a, b = (np.asarray(corrupt_view(photo, h, view)) for h in ("hash-a", "hash-b"))
    assert not np.array_equal(a, b)


def _distance(name: str, clean: np.ndarray, out: np.ndarray) -> float:
    """A distortion measure that should grow with severity."""
    if name in ("defocus_blur", "gaussian_blur", "motion_blur", "zoom_blur"):
        edges = lambda x: np.abs(np.diff(x, axis=1)).mean()  # noqa: E731
        return -edges(out)  # blur removes edges
    if name == "contrast":
        return -out.std()
    return float(((out - clean) ** 2).mean())


@pytest.mark.parametrize(
    "name",
    [
        "gaussian_noise",
        "shot_noise",
        "impulse_noise",
        "defocus_blur",
        "gaussian_blur",
        "contrast",
        "brightness",
        "pixelate",
        "jpeg_compression",
        "zoom_blur",
    ],
)
def test_distortion_grows_with_severity(photo, name):
    clean = np.asarray(photo.resize((CANVAS, CANVAS)))
    distances = [
        _distance(name, clean.astype(np.float64), _pixels(corrupt(clean, name, s, _rng())))
        for s in SEVERITIES
    ]
    assert distances == sorted(distances) and distances[0] < distances[-1]


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_view_keys_are_distinct_and_carry_the_definition_version():
    keys = {view_key(corruption_view_name(n, s)) for n in CORRUPTIONS for s in SEVERITIES}
    assert len(keys) == len(CORRUPTIONS) * len(SEVERITIES)
    assert all(corruptions.VERSION in k for k in keys)
    assert CENTER not in keys and view_key("aug0") not in keys


@pytest.mark.parametrize("view", ["fog@0", "fog@6", "fog@x", "fog@"])
def test_bad_severity_is_a_clear_error(view):
    with pytest.raises(ValueError, match="corruption view is 'fog@<severity 1-5>'"):
        view_key(view)


def test_unknown_views_name_the_corruption_form():
    assert parse_corruption_view("aug0@crop") is None
    with pytest.raises(ValueError, match="<corruption>@<severity>"):
        view_key("foggy@2")


def test_missing_frost_images_fail_before_any_image(monkeypatch):
    monkeypatch.setattr(corruptions.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps imagecorruptions"):
        view_transform(lambda image: image, "frost@1")


@pytest.mark.parametrize("name", ["spatter", "frost"])
def test_missing_opencv_fails_before_any_image_naming_the_extra(monkeypatch, tmp_path, name):
    if name == "frost":
        _skip_unless_installed("frost")  # else the missing images are reported first
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 raises ImportError
    message = rf"the {name} corruption needs OpenCV: pip install 'clipadapt\[corruptions\]'"
    with pytest.raises(ValueError, match=message):
        view_transform(lambda image: image, f"{name}@2")
    with pytest.raises(ValueError, match=f"corruptions: {message}"):
        BenchConfig(data="d", out=tmp_path, protocol="corruptions", corruptions=name)
    BenchConfig(data="d", out=tmp_path, protocol="corruptions", corruptions="fog")  # no OpenCV


def test_spatter_is_water_drops_then_mud(photo):
    pytest.importorskip("cv2", reason="spatter needs OpenCV: pip install '.[corruptions]'")
    clean = np.asarray(photo.resize((CANVAS, CANVAS)))
    water = [corrupt(clean, "spatter", s, _rng()).astype(int) - clean for s in (1, 2, 3)]
    mud = [corrupt(clean, "spatter", s, _rng()) for s in (4, 5)]
    for change in water:  # pale turquoise added: nothing darker (but for float rounding)
        assert change.min() >= -1 and (change > 8).any()
    assert [(c > 1).any(-1).mean() for c in water] == sorted((c > 1).any(-1).mean() for c in water)
    brown = lambda x: (np.abs(x.astype(int) - [63, 42, 20]).max(-1) <= 2).any()  # noqa: E731
    assert all(brown(out) for out in mud) and not brown(clean)  # covered pixels turn mud brown


def test_corruption_views_are_cached_under_their_own_key(fake_backend, image_folder, tmp_path):
    paths = sorted(image_folder.rglob("*.png"))[:4]
    cache = FeatureCache(tmp_path / "cache")
    clean = extract_features(fake_backend, paths, cache=cache, progress=False)
    fogged = extract_features(fake_backend, paths, view="fog@5", cache=cache, progress=False)
    forwards = fake_backend.forwards
    again = extract_features(fake_backend, paths, view="fog@5", cache=cache, progress=False)
    assert fake_backend.forwards == forwards and again.cached == len(paths)
    assert np.array_equal(again.features.numpy(), fogged.features.numpy())
    assert not np.allclose(clean.features.numpy(), fogged.features.numpy(), atol=1e-3)


@pytest.mark.parametrize("style", ["grayscale", "edges", "posterize"])
def test_style_views_are_deterministic_and_keyed_apart(photo, style):
    a = np.asarray(corrupt_view(photo, "hash-a", style))
    assert a.shape == (CANVAS, CANVAS, 3)
    assert np.array_equal(a, np.asarray(corrupt_view(photo, "hash-b", style)))  # no randomness
    assert not np.array_equal(a, np.asarray(photo.resize((CANVAS, CANVAS))))
    assert corruptions.STYLE_VERSION in view_key(style) and view_key(style) != view_key("center")


def test_crafted_shifts_are_valid_views_outside_the_test_suite():
    from clipadapt.views import CRAFTED_SHIFTS

    keys = {view_key(v) for v in CRAFTED_SHIFTS}  # every one parses
    assert len(keys) == len(CRAFTED_SHIFTS)
    assert {"grayscale", "edges", "posterize"} <= set(CRAFTED_SHIFTS)


def test_strong_augmentation_adds_a_seeded_crafted_shift(photo):
    from clipadapt.views import augment, augmented_view_name, parse_augment

    recipe = parse_augment("crop,flip,shift")
    strong = augmented_view_name(0, recipe)
    assert strong == "aug0@crop+flip+shift" and "crafted:" in view_key(strong)
    assert view_key(strong) != view_key("aug0")
    a = np.asarray(augment(photo, "hash-a", strong))
    assert np.array_equal(a, np.asarray(augment(photo, "hash-a", strong)))
    assert a.shape == (CANVAS, CANVAS, 3)  # the shift works on the tower's canvas
    plain = np.asarray(augment(photo, "hash-a", "aug0"))
    assert plain.shape != a.shape or not np.array_equal(plain, a)
