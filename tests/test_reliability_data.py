"""Input that used to be lost or misread: high-bit-depth and rotated images, file names that
are not UTF-8, whole classes dropped by --skip-bad, datasets with a single class."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from bench_fakes import ColorBackend, make_folder
from PIL import Image

from clipadapt.atomic import atomic_write_text
from clipadapt.data import (
    DatasetError,
    decode_image,
    few_shot,
    load_csv,
    load_dataset,
    load_image_folder,
    load_split,
    train_test_split,
)
from clipadapt.data import images as images_module
from clipadapt.feature_cache import FeatureCache
from clipadapt.features import extract_features
from clipadapt.models.base import IMAGE_DECODING, hash_tensors
from clipadapt.paths import display_path
from tests.conftest import FakeBackend

GRADIENT = (np.arange(4 * 1024, dtype=np.uint32).reshape(4, 1024) * 16).astype(np.uint16)


def _saved(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path


@pytest.mark.parametrize("suffix", [".png", ".tif", ".pgm"])  # opened as I;16, I;16, I
def test_16_bit_images_are_scaled_not_saturated(tmp_path: Path, suffix: str) -> None:
    path = _saved(Image.fromarray(GRADIENT), tmp_path / f"gradient{suffix}")
    pixels = np.asarray(decode_image(path))
    assert pixels.shape == (4, 1024, 3)
    assert np.array_equal(pixels[..., 0], GRADIENT >> 8)  # the top 8 of 16 bits
    assert np.array_equal(pixels[..., 0], pixels[..., 2])
    assert (pixels == 255).mean() < 0.01  # convert("RGB") alone made 99.6% of them 255


def test_float_images_are_scaled_by_their_range(tmp_path: Path) -> None:
    unit = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    path = _saved(Image.fromarray(unit, "F"), tmp_path / "unit.tif")
    assert np.array_equal(np.asarray(decode_image(path))[..., 0], np.rint(unit * 255))
    wide = unit * 4000 - 1000  # no conventional range: stretched from its min to its max
    path = _saved(Image.fromarray(wide, "F"), tmp_path / "wide.tif")
    channel = np.asarray(decode_image(path))[..., 0]
    assert channel.min() == 0 and channel.max() == 255
    assert np.array_equal(channel, np.rint(unit * 255))


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored.save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    image = decode_image(tmp_path / "phone.jpg")
    assert image.size == (20, 40)  # portrait, as the camera meant
    top, bottom = np.asarray(image)[5, 10], np.asarray(image)[35, 10]
    assert top[2] > 200 > top[0] and bottom[0] > 200 > bottom[2]  # the left half is now on top


def test_image_fingerprint_covers_the_decoding() -> None:
    """Entries cached before EXIF and bit-depth handling were keyed without it: never served."""
    backend = FakeBackend()
    before = hash_tensors(
        backend.weight_tensors("image"),
        extra=f"{type(backend).__name__}|{backend.preprocess_description}",
    )
    assert backend.image_fingerprint != before
    assert IMAGE_DECODING.startswith("decode2")


def _non_utf8_folder(root: Path) -> Path:
    """Colour folders where a class and several file names are Latin-1 bytes, not UTF-8."""
    make_folder(root, dict.fromkeys(["blue", "green", "red"], 12))
    try:
        os.rename(root / "blue", os.fsdecode(os.fsencode(root) + b"/blu\xe9"))
        for name in os.listdir(root / "red"):
            os.rename(
                root / "red" / name, os.fsdecode(os.fsencode(root) + b"/red/\xff" + name.encode())
            )
    except OSError as err:  # e.g. file systems that only store UTF-8 names
        pytest.skip(f"cannot create a non-UTF-8 file name here: {err}")
    return root


def test_non_utf8_names_load_split_save_and_embed(tmp_path: Path, monkeypatch) -> None:
    dataset = load_image_folder(_non_utf8_folder(tmp_path / "colors"))
    assert dataset.class_ids[0] == "blu\udce9" and dataset.classnames[0] == "blu\\xe9"
    assert all(path.is_file() for path in dataset.paths)
    few = few_shot(train_test_split(dataset, seed=3), shots=2, seed=1)
    few.save(tmp_path / "split.json")
    assert (
        load_split(tmp_path / "split.json", load_image_folder(dataset.root)).support == few.support
    )
    monkeypatch.setattr(images_module, "RACY_NS", 0)  # so that the hash index stores the paths
    cache = FeatureCache(tmp_path / "cache")
    for _ in range(2):
        images_module.forget_hashes()
        out = extract_features(FakeBackend(), dataset.paths, cache=cache, progress=False)
    assert out.cached == len(dataset) and len(out.features) == len(dataset)
    bad = dataset.paths[-1]
    assert display_path(bad).encode("utf-8").endswith(b"/red/\\xff011.png")
    atomic_write_text(tmp_path / "list.txt", f"{bad}\n")
    assert (tmp_path / "list.txt").read_bytes() == os.fsencode(bad) + b"\n"  # exact bytes


def test_adapt_and_predict_with_non_utf8_names(tmp_path: Path, monkeypatch) -> None:
    from clipadapt.cli import main

    fake = ColorBackend()
    monkeypatch.setattr("clipadapt.models.create_backend", lambda spec, device="cpu": fake)
    monkeypatch.setenv("CLIPADAPT_CACHE_DIR", str(tmp_path / "default-cache"))
    folder = _non_utf8_folder(tmp_path / "colors")
    model, out = tmp_path / "model", tmp_path / "p.csv"
    args = ["--model", "fake", "--shots", "4", "--method", "ncm", "--no-ood"]
    assert main(["-q", "adapt", "--data", str(folder), "--out", str(model), *args]) == 0
    assert json.loads((model / "config.json").read_text())["adapted"]["classes"]["class_ids"][
        0
    ] == ("blu\udce9")
    assert main(["-q", "predict", str(model), str(folder / "red"), "--output", str(out)]) == 0
    with out.open(encoding="utf-8", errors="surrogateescape", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12 and all(Path(row["path"]).is_file() for row in rows)


def test_classes_left_without_images_are_listed_as_dropped(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "colors", dict.fromkeys(["blue", "green", "red"], 3))
    for path in (root / "green").iterdir():
        path.write_bytes(b"")
    dataset = load_image_folder(root, skip_bad=True)
    assert dataset.class_ids == ["blue", "red"]
    assert [s["reason"] for s in dataset.skipped] == ["empty file (0 bytes)"] * 3 + [
        "class dropped: all 3 of its images are empty files"
    ]
    assert dataset.skipped[-1]["path"] == str(root / "green")

    rows = [["filepath", "label"], ["blue/000.png", "blue"], ["red/000.png", "red"]]
    rows += [["gone1.png", "gold"], ["gone2.png", "gold"]]
    with (tmp_path / "list.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    (tmp_path / "blue").symlink_to(root / "blue")
    (tmp_path / "red").symlink_to(root / "red")
    dataset = load_csv(tmp_path / "list.csv", skip_bad=True)
    assert dataset.class_ids == ["blue", "red"]
    assert dataset.skipped[-1] == {
        "path": str(tmp_path / "list.csv"),
        "reason": "class dropped: no usable row of 2 for 'gold'",
    }


def test_a_single_class_is_refused_unless_allowed(tmp_path: Path) -> None:
    one = make_folder(tmp_path / "one", {"red": 4})
    with pytest.raises(DatasetError, match=r"has only 1 class\(es\) \('red'\).*at least 2"):
        load_dataset(one)
    assert load_dataset(one, min_classes=1).class_ids == ["red"]  # e.g. a set of OOD images
    two = make_folder(tmp_path / "two", {"red": 4, "blue": 2})
    for path in (two / "blue").iterdir():
        path.write_bytes(b"")
    with pytest.raises(DatasetError, match=r"--skip-bad dropped '.*/two/blue' as unusable"):
        load_dataset(two, skip_bad=True)
    captions = tmp_path / "captions.csv"
    captions.write_text("filepath,title\none/red/000.png,a red square\n")
    assert not load_dataset(captions).is_labeled  # captions only: no classes to count
