"""Deterministic train/test splits and few-shot sampling, and their files."""

from __future__ import annotations

import itertools
import json
import os
import random
from pathlib import Path

import pytest
from PIL import Image

from clipadapt.data import (
    DatasetError,
    FewShotSplit,
    ImageDataset,
    Split,
    few_shot,
    load_csv,
    load_image_folder,
    load_split,
    train_test_split,
)


def make_dataset(root: Path, counts: dict[str, int]) -> ImageDataset:
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("L", (2, 2), i).save(root / name / f"{i:03d}.png")
    return load_image_folder(root)


@pytest.fixture
def dataset(tmp_path: Path) -> ImageDataset:
    return make_dataset(tmp_path / "d", {"ant": 30, "bee": 24, "cat": 20})


def labels_of(dataset: ImageDataset, indices: list[int]) -> list[int]:
    return [dataset.samples[i].label for i in indices]


def test_train_test_split_is_stratified_and_deterministic(dataset: ImageDataset) -> None:
    split = train_test_split(dataset, test_fraction=0.3, seed=1)
    assert sorted(split.train + split.test) == list(range(len(dataset)))
    assert [labels_of(dataset, split.test).count(c) for c in range(3)] == [9, 7, 6]
    assert split == train_test_split(dataset, test_fraction=0.3, seed=1)
    assert split.test != train_test_split(dataset, test_fraction=0.3, seed=2).test
    assert split.dataset_name == "d" and split.fingerprint == dataset.fingerprint()
    assert "train=<52 indices>" in repr(split)


def test_split_ignores_sample_order(dataset: ImageDataset) -> None:
    shuffled = dataset.subset(random.Random(0).sample(range(len(dataset)), len(dataset)))
    for seed in (1, 2):
        paths = {dataset.paths[i] for i in train_test_split(dataset, seed=seed).test}
        assert paths == {shuffled.paths[i] for i in train_test_split(shuffled, seed=seed).test}
        support = few_shot(dataset, shots=2, seed=seed).support
        again = few_shot(shuffled, shots=2, seed=seed).support
        assert {dataset.paths[i] for i in support} == {shuffled.paths[i] for i in again}


def test_every_class_keeps_train_and_test(tmp_path: Path) -> None:
    tiny = make_dataset(tmp_path / "t", {"a": 2, "b": 1})
    with pytest.raises(DatasetError, match="class 'b' has 1"):
        train_test_split(tiny)
    with pytest.raises(DatasetError, match="class 'b' has 0"):
        train_test_split(tiny.subset([0, 1]))
    split = train_test_split(make_dataset(tmp_path / "u", {"a": 2, "b": 3}), test_fraction=0.9)
    assert len(split.train) == 2 and len(split.test) == 3


@pytest.mark.parametrize("shots", [1, 2, 4, 8])
def test_few_shot_sizes_and_disjointness(dataset: ImageDataset, shots: int) -> None:
    split = train_test_split(dataset, seed=1)
    sample = few_shot(split, shots=shots, seed=1)
    support, val, test = set(sample.support), set(sample.val), set(sample.test)
    assert not (support & val or support & test or val & test)
    assert support | val <= set(split.train) and test == set(split.test)
    assert [labels_of(dataset, sample.support).count(c) for c in range(3)] == [shots] * 3
    assert [labels_of(dataset, sample.val).count(c) for c in range(3)] == [min(shots, 4)] * 3
    assert sample == few_shot(split, shots=shots, seed=1)
    assert (sample.split_seed, sample.test_fraction, sample.shortfalls) == (1, 0.3, {})


def test_few_shot_samples_are_nested_across_shots(dataset: ImageDataset) -> None:
    samples = [few_shot(dataset, shots=k, seed=3) for k in (1, 2, 4, 5)]
    for small, large in itertools.pairwise(samples):
        assert set(small.support) <= set(large.support) and set(small.val) <= set(large.val)
    assert set(samples[2].val) == set(samples[3].val)
    assert few_shot(dataset, shots=2, seed=4).support != samples[1].support
    assert len(few_shot(dataset, shots=2, seed=3, val_per_class=0).val) == 0


def test_few_shot_too_few_names_the_class(dataset: ImageDataset) -> None:
    with pytest.raises(DatasetError) as info:
        few_shot(dataset, shots=20, seed=1)
    message = str(info.value)
    assert "needs 24 training images per class" in message and "class 'cat' has 20" in message
    assert "'ant'" not in message and "use_all" in message


def test_few_shot_use_all_records_shortfalls(dataset: ImageDataset) -> None:
    sample = few_shot(dataset, shots=20, seed=1, on_too_few="use_all")
    assert sample.shortfalls == {"cat": {"available": 20, "support": 19, "val": 1}}
    short = few_shot(dataset.subset(range(31)), shots=16, seed=1, on_too_few="use_all")
    assert short.shortfalls == {
        "bee": {"available": 1, "support": 1, "val": 0},
        "cat": {"available": 0, "support": 0, "val": 0},
    }
    assert len(short.support) == 17 and len(short.val) == 4
    small = few_shot(dataset.subset(range(30, 33)), shots=16, seed=1, on_too_few="use_all")
    assert small.shortfalls["bee"] == {"available": 3, "support": 2, "val": 1}


def test_split_files_round_trip(dataset: ImageDataset, tmp_path: Path) -> None:
    split = train_test_split(dataset, seed=2)
    sample = few_shot(split, shots=2, seed=5)
    split.save(tmp_path / "split.json")
    sample.save(tmp_path / "few.json")
    stored = json.loads((tmp_path / "few.json").read_text())
    assert stored["kind"] == "few_shot" and stored["support"][0]["path"].startswith("ant/")
    reloaded = load_image_folder(dataset.root)
    assert isinstance(back := load_split(tmp_path / "split.json", reloaded), Split)
    assert back == split
    assert isinstance(few := load_split(tmp_path / "few.json", reloaded), FewShotSplit)
    assert few == sample and few.dataset is reloaded
    assert not list(tmp_path.glob(".*.tmp"))


def test_load_split_names_changed_files(dataset: ImageDataset, tmp_path: Path) -> None:
    path = train_test_split(dataset, seed=1).save(tmp_path / "split.json")
    edited = dataset.root / "bee" / "003.png"
    os.utime(edited, ns=(0, 0))  # touching alone (or copying the data) changes nothing
    assert load_split(path, load_image_folder(dataset.root)).dataset.root == dataset.root
    Image.new("L", (3, 3), 7).save(edited)
    with pytest.raises(DatasetError, match=r"modified \('bee/003\.png'\)") as info:
        load_split(path, load_image_folder(dataset.root))
    assert str(path) in str(info.value)
    (dataset.root / "ant" / "000.png").unlink()
    Image.new("L", (2, 2)).save(dataset.root / "cat" / "new.png")
    with pytest.raises(DatasetError) as info:
        load_split(path, load_image_folder(dataset.root))
    message = str(info.value)
    assert "gone ('ant/000.png')" in message and "added ('cat/new.png')" in message


def test_load_split_rejects_other_files(dataset: ImageDataset, tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"hello": 1}')
    with pytest.raises(DatasetError, match="is not a clipadapt split file"):
        load_split(tmp_path / "x.json", dataset)
    path = few_shot(dataset, shots=1, seed=1).save(tmp_path / "few.json")
    other = make_dataset(tmp_path / "other", {"x": 5})
    with pytest.raises(DatasetError, match="was made for classes 'ant', 'bee', 'cat'"):
        load_split(path, other)


def test_splits_need_labels(tmp_path: Path) -> None:
    Image.new("L", (2, 2)).save(tmp_path / "a.png")
    (tmp_path / "c.csv").write_text("filepath,title\na.png,a thing\n")
    with pytest.raises(DatasetError, match="no class labels"):
        few_shot(load_csv(tmp_path / "c.csv"), shots=1, seed=1)
