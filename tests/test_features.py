"""Feature extraction and cache: never stale, never half-written, no forward when warm."""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from PIL import Image

from clipadapt import features as features_module
from clipadapt.data import images as images_module
from clipadapt.data import load_image_folder
from clipadapt.data.errors import ImageDecodeError
from clipadapt.data.images import file_stamp
from clipadapt.feature_cache import FeatureCache, FeatureCacheError
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


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_file_replaced_after_hashing_never_poisons_the_cache(
    fake_backend, image_folder, tmp_path, monkeypatch
):
    """The feature stored under a hash is the feature of the bytes with that hash."""
    paths = load_image_folder(image_folder).paths
    target, other = paths[0], paths[-1]  # a cat and a fish
    original, replacement = target.read_bytes(), other.read_bytes()
    hash_file = features_module.hash_file

    def hash_then_replace(name):
        result = hash_file(name)
        if name == str(target):
            target.write_bytes(replacement)  # replaced between hashing and decoding
        return result

    monkeypatch.setattr(features_module, "hash_file", hash_then_replace)
    cache = FeatureCache(tmp_path / "cache")
    out = _extract(fake_backend, paths, cache)
    stored = cache.get_many(
        fake_backend.image_fingerprint, "center", [_sha(original), _sha(replacement)]
    )
    assert _sha(original) not in stored  # the old bytes were never decoded
    fish = _extract(fake_backend, [other], None).features[0]
    cat = _extract(fake_backend, [paths[1]], None).features[0]
    assert torch.allclose(torch.tensor(stored[_sha(replacement)]), fish, atol=1e-5)
    assert torch.allclose(out.features[0], fish, atol=1e-5)
    assert not torch.allclose(fish, cat, atol=0.1)  # the two versions are told apart


@pytest.mark.parametrize("cached", [True, False])
def test_every_skipped_file_is_listed_with_its_reason(fake_backend, image_folder, tmp_path, cached):
    paths = load_image_folder(image_folder).paths
    paths[1].write_bytes(b"")
    paths[3].write_bytes(b"not an image")
    paths = [*paths, tmp_path / "gone.png"]
    cache = FeatureCache(tmp_path / "cache") if cached else None
    with pytest.raises(ImageDecodeError, match=r"1\.png: empty file \(0 bytes\)"):
        _extract(fake_backend, paths, cache)
    result = _extract(fake_backend, paths, cache, skip_bad=True)
    assert [s["path"] for s in result.skipped] == [str(paths[i]) for i in (1, 3, len(paths) - 1)]
    reasons = [s["reason"] for s in result.skipped]
    assert reasons[0] == "empty file (0 bytes)"
    assert reasons[1].startswith("UnidentifiedImageError") and "FileNotFound" in reasons[2]
    assert result.indices == [i for i in range(len(paths) - 1) if i not in (1, 3)]


def test_warm_reload_in_a_new_process_reads_no_image(
    fake_backend, image_folder, tmp_path, monkeypatch
):
    monkeypatch.setattr(images_module, "RACY_NS", 0)  # these files are seconds old, not minutes
    paths = load_image_folder(image_folder).paths
    cache = FeatureCache(tmp_path / "cache")
    cold = _extract(fake_backend, paths, cache)
    images_module.forget_hashes()  # as a new process would start

    def no_reading(name):
        raise AssertionError(f"read {name}")

    with monkeypatch.context() as patched:
        patched.setattr(features_module, "hash_file", no_reading)
        patched.setattr(features_module, "load_image", no_reading)
        warm = _extract(fake_backend, paths, cache)
    assert (warm.cached, warm.computed) == (len(paths), 0)
    assert torch.equal(warm.features, cold.features)


def test_hash_index_never_serves_a_stale_hash(fake_backend, tmp_path, monkeypatch):
    paths = [tmp_path / f"{i}.bmp" for i in range(3)]  # BMP: same size for any colours
    for i, path in enumerate(paths):
        Image.new("RGB", (16, 16), (80 * i, 40, 200 - 80 * i)).save(path)
    cache = FeatureCache(tmp_path / "cache")
    first = _extract(fake_backend, paths, cache)
    stamps = {str(p): file_stamp(p.stat()) for p in paths}
    assert cache.file_hashes(stamps) == {}  # too fresh: a rewrite could keep their stamps
    monkeypatch.setattr(images_module, "RACY_NS", 0)
    images_module.forget_hashes()
    _extract(fake_backend, paths, cache)
    assert len(cache.file_hashes(stamps)) == len(paths)
    # Rewrite a file with the same size and modification time: its change time still moves.
    before = paths[0].stat()
    time.sleep(0.05)
    Image.new("RGB", (16, 16), (250, 250, 0)).save(paths[0])
    os.utime(paths[0], ns=(before.st_atime_ns, before.st_mtime_ns))
    after = paths[0].stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    if after.st_ctime_ns == before.st_ctime_ns:
        pytest.skip("this file system's change times are too coarse to see the rewrite")
    images_module.forget_hashes()
    again = _extract(fake_backend, paths, cache)
    assert (again.cached, again.computed) == (2, 1)
    assert not torch.allclose(again.features[0], first.features[0], atol=0.1)
    assert torch.equal(again.features[1:], first.features[1:])


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("database or disk is full", "the disk is full; free space"),
        ("attempt to write a readonly database", "is not writable"),
    ],
)
def test_cache_write_failures_are_one_line_errors(
    fake_backend, image_folder, tmp_path, message, expected
):
    cache = FeatureCache(tmp_path / "cache")

    class Failing:
        """The connection, but every write fails as SQLite reports it."""

        def __init__(self, db):
            self.db = db

        def __getattr__(self, name):
            return getattr(self.db, name)

        def __enter__(self):
            return self.db.__enter__()

        def __exit__(self, *exc):
            return self.db.__exit__(*exc)

        def executemany(self, *args):
            raise sqlite3.OperationalError(message)

    cache._db = Failing(cache._db)
    paths = load_image_folder(image_folder).paths
    with pytest.raises(FeatureCacheError) as info:
        _extract(fake_backend, paths, cache)
    text = str(info.value)
    assert isinstance(info.value, ValueError) and "\n" not in text
    assert str(cache.path) in text and expected in text and "CLIPADAPT_CACHE_DIR" in text


def test_read_only_cache_folder_is_a_one_line_error(tmp_path):
    folder = tmp_path / "cache"
    FeatureCache(folder).close()
    folder.chmod(0o555)
    (folder / "features.sqlite").chmod(0o444)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("this user may write into read-only folders (root)")
        with pytest.raises(FeatureCacheError, match=r"features\.sqlite is not writable"):
            FeatureCache(folder).put_many("m", "s", "center", [("c", np.ones(2))])
    finally:
        folder.chmod(0o755)


def test_corrupt_cache_file_says_to_delete_it(tmp_path, capsys):
    from clipadapt.cli import main

    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "features.sqlite").write_bytes(os.urandom(4096))
    with pytest.raises(FeatureCacheError, match=r"is corrupt .*; delete that file"):
        FeatureCache(tmp_path / "cache")
    assert main(["cache", "show", "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "features.sqlite is corrupt" in err


def test_hashing_shows_a_bar_only_while_files_are_read(
    fake_backend, image_folder, tmp_path, capsys, monkeypatch
):
    paths = load_image_folder(image_folder).paths
    cache = FeatureCache(tmp_path / "cache")
    extract_features(fake_backend, paths, cache=cache, batch_size=4)
    cold = capsys.readouterr().err
    hashing = cold[cold.index("hash images") : cold.index("embed fake0")]
    assert f"0/{len(paths)}" in hashing and hashing.rsplit("\r", 1)[-1].strip() == ""  # cleared
    monkeypatch.setattr(images_module, "RACY_NS", 0)
    extract_features(fake_backend, paths, cache=cache, progress=False)  # hashes now remembered
    extract_features(fake_backend, paths, cache=cache)
    assert capsys.readouterr().err == ""  # nothing read, nothing embedded: no bar at all
