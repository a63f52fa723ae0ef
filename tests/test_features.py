"""Feature extraction and cache: never stale, never half-written, no forward when warm."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image

from clipadapt.data import load_image_folder
from clipadapt.data.errors import ImageDecodeError
from clipadapt.feature_cache import FeatureCache
from clipadapt.features import extract_features
from tests.conftest import FakeBackend


def _extract(backend, paths, cache, **kw):
    return extract_features(backend, paths, cache=cache, progress=False, batch_size=4, **kw)


def test_warm_cache_does_no_forward_and_returns_identical_features(
    fake_backend, image_folder, tmp_path
):
    paths = load_image_folder(image_folder).paths
    cache = FeatureCache(tmp_path / "cache")
    cold = _extract(fake_backend, paths, cache)
    forwards = fake_backend.forwards
    warm = _extract(fake_backend, paths, cache)
    assert fake_backend.forwards == forwards
    assert (cold.computed, warm.cached, warm.computed) == (len(paths), len(paths), 0)
    assert torch.equal(cold.features, warm.features)
    uncached = _extract(fake_backend, paths, None)
    assert torch.allclose(uncached.features, cold.features)


def test_changed_image_content_is_recomputed_not_served_stale(fake_backend, image_folder, tmp_path):
    paths = load_image_folder(image_folder).paths
    cache = FeatureCache(tmp_path / "cache")
    before = _extract(fake_backend, paths, cache)
    Image.new("RGB", (40, 40), (0, 0, 255)).save(paths[0])  # same path, new content
    after = _extract(fake_backend, paths, cache)
    assert (after.cached, after.computed) == (len(paths) - 1, 1)
    assert not torch.allclose(before.features[0], after.features[0])
    assert torch.equal(before.features[1:], after.features[1:])


def test_another_model_or_view_never_reads_these_entries(image_folder, tmp_path):
    paths = load_image_folder(image_folder).paths
    cache = FeatureCache(tmp_path / "cache")
    _extract(FakeBackend(0), paths, cache)
    other = _extract(FakeBackend(1), paths, cache)
    assert other.cached == 0
    aug = _extract(FakeBackend(0), paths, cache, view="aug0")
    assert aug.cached == 0
    again = _extract(FakeBackend(0), paths, cache, view="aug0")
    assert again.cached == len(paths) and torch.equal(aug.features, again.features)


def test_augmented_views_are_seeded_per_image_and_differ_between_views(fake_backend, image_folder):
    paths = load_image_folder(image_folder).paths
    a0 = _extract(fake_backend, paths, None, view="aug0").features
    a0_again = _extract(fake_backend, paths, None, view="aug0", workers=1).features
    a1 = _extract(fake_backend, paths, None, view="aug1").features
    assert torch.equal(a0, a0_again)
    assert not torch.allclose(a0, a1)
    with pytest.raises(ValueError, match="unknown view"):
        _extract(fake_backend, paths, None, view="flipped")


def test_interrupted_write_is_never_read(tmp_path):
    """A process killed inside a cache transaction leaves nothing that reads as valid."""
    cache_dir = tmp_path / "cache"
    script = textwrap.dedent(
        f"""
        import os, numpy as np
        from clipadapt.feature_cache import FeatureCache
        cache = FeatureCache({str(cache_dir)!r})
        cache._db.execute("BEGIN")
        cache._db.execute(
            "INSERT INTO features VALUES (?,?,?,?,?)",
            ("m", "center", "abc", 4, np.ones(4, np.float32).tobytes()),
        )
        os._exit(9)  # killed before COMMIT
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == 9, proc.stderr.decode()
    assert FeatureCache(cache_dir).get_many("m", "center", ["abc"]) == {}


def test_cache_show_and_clear(fake_backend, image_folder, tmp_path):
    paths = load_image_folder(image_folder).paths
    cache = FeatureCache(tmp_path / "cache")
    _extract(fake_backend, paths, cache)
    (row,) = cache.summary()
    assert (row.spec, row.view, row.entries) == ("fake0", "center", len(paths))
    assert cache.clear("fake0") == len(paths)
    assert cache.summary() == []


def test_corrupt_image_is_named_or_skipped_when_asked(fake_backend, image_folder, tmp_path):
    paths = load_image_folder(image_folder).paths
    paths[2].write_bytes(b"not a png at all")
    with pytest.raises(ImageDecodeError, match=re.escape(paths[2].name)):
        _extract(fake_backend, paths, None)
    result = _extract(fake_backend, paths, FeatureCache(tmp_path / "c"), skip_bad=True)
    assert [s["path"] for s in result.skipped] == [str(paths[2])]
    assert result.indices == [i for i in range(len(paths)) if i != 2]
    assert result.features.shape == (len(paths) - 1, 16)


def test_missing_file_is_named(fake_backend, tmp_path):
    with pytest.raises(ImageDecodeError, match=r"gone\.png"):
        _extract(fake_backend, [tmp_path / "gone.png"], None)
