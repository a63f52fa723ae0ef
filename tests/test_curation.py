"""MetaCLIP balancing and train/test dedup of image-text pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipadapt.data.curation import (
    balance,
    drop_exact_duplicates,
    drop_near_duplicates,
    match_entries,
    near_duplicate_mask,
)
from clipadapt.data.dataset import UNLABELED
from clipadapt.data.pairs import PairDataset, make_pair_dataset


def pool(captions: list[str]) -> PairDataset:
    """Pairs with one (never read) image each, for tests that only look at captions."""
    rows = [(Path(f"/pool/{i}.png"), c, UNLABELED) for i, c in enumerate(captions)]
    return make_pair_dataset("pool", Path("/pool"), rows)


def test_matching_is_whole_word_case_insensitive_and_multi_word() -> None:
    entries = ["dog", "art painting", "hot dog"]
    matched = match_entries(
        [
            "A DOG.",
            "hotdog stand",
            "an Art-Painting of a hot dog",
            "art, painting",
            "dogs",
            "painting art",
        ],
        entries,
    )
    assert matched == [[0], [], [0, 1, 2], [1], [], []]


def test_plurals_come_from_lemminflect() -> None:
    captions = ["three dogs", "two mice", "art paintings", "persons", "people"]
    entries = ["dog", "mouse", "art painting", "person"]
    assert match_entries(captions, entries, plurals=True) == [[0], [1], [2], [3], []]
    assert match_entries(captions, entries) == [[], [], [], [], []]


def test_bad_entries_are_refused() -> None:
    with pytest.raises(ValueError, match="no words"):
        match_entries(["x"], ["dog", " - "])
    with pytest.raises(ValueError, match="'Dog' and 'dog!' match the same words"):
        match_entries(["x"], ["Dog", "dog!"])
    with pytest.raises(ValueError, match="cap must be a positive integer"):
        balance(pool(["dog"]), ["dog"], cap=0)


def test_balance_caps_frequent_entries_and_keeps_rare_ones() -> None:
    captions = ["a dog"] * 1000 + ["a cat"] * 30 + ["a dog and an axolotl"] * 5 + ["a tree"] * 7
    kept, report = balance(pool(captions), ["dog", "cat", "axolotl"], cap=100, seed=1)
    dog_before, dog_after = report.entries["dog"]
    assert dog_before == 1005
    assert 70 <= dog_after <= 135  # ~ 100 + up to 5 via the axolotl; binomial sd ~ 9.5
    assert report.entries["cat"] == (30, 30)
    assert report.entries["axolotl"] == (5, 5)  # a rare entry keeps every pair it matches
    assert report.unmatched == 7
    assert report.total == len(captions)
    assert report.kept == len(kept) == dog_after + 30
    assert "a tree" not in kept.captions


def test_balance_is_deterministic_per_seed() -> None:
    captions = [f"photo {i} of a {'dog' if i % 3 else 'cat'}" for i in range(600)]
    first, report = balance(pool(captions), ["dog", "cat"], cap=50, seed=7)
    again, _ = balance(pool(captions), ["dog", "cat"], cap=50, seed=7)
    other, _ = balance(pool(captions), ["dog", "cat"], cap=50, seed=8)
    assert first.captions == again.captions
    assert first.captions != other.captions
    assert report.to_dict()["entries"]["dog"][0] == 400


def test_balance_probability_matches_metaclip_rule() -> None:
    # Each pair matches two entries of count 400 with cap 100: kept with 1 - (3/4)^2 = 7/16.
    captions = ["red and blue"] * 400
    kept_fraction = np.mean(
        [len(balance(pool(captions), ["red", "blue"], cap=100, seed=s)[0]) / 400 for s in range(20)]
    )
    assert abs(kept_fraction - 7 / 16) < 0.02  # sd of the mean ~ 0.0055


def test_balance_keeps_groups_consistent() -> None:
    rows = [(Path("/p/a.png"), "a dog", -1), (Path("/p/b.png"), "a cat", -1)]
    rows.append((Path("/p/a.png"), "another dog", -1))
    pairs = make_pair_dataset("p", Path("/p"), rows)
    kept, _ = balance(pairs, ["dog"], cap=5)
    assert kept.captions == ["a dog", "another dog"]
    assert [p.group for p in kept.pairs] == [0, 0]
    assert kept.images == [Path("/p/a.png")]


def save_png(path: Path, value: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (value, 0, 0)).save(path)
    return path


def test_exact_duplicates_across_train_and_test_are_dropped(tmp_path: Path) -> None:
    train_rows = [
        (save_png(tmp_path / "train" / "a.png", 1), "a", -1),
        (save_png(tmp_path / "train" / "b.png", 2), "b", -1),
        (tmp_path / "train" / "a.png", "a again", -1),
        (save_png(tmp_path / "train" / "c.png", 3), "c", -1),
    ]
    test_rows = [
        (save_png(tmp_path / "test" / "copy_of_a.png", 1), "t1", -1),
        (save_png(tmp_path / "test" / "other.png", 9), "t2", -1),
    ]
    train = make_pair_dataset("train", tmp_path, train_rows)
    test = make_pair_dataset("test", tmp_path, test_rows)
    kept, report = drop_exact_duplicates(train, test)
    assert kept.captions == ["b", "c"]
    assert (report.train_images, report.test_images) == (3, 2)
    assert (report.dropped_images, report.dropped_pairs) == (1, 2)


def test_near_duplicate_mask_blocks_agree_with_the_full_product() -> None:
    rng = np.random.default_rng(0)
    test = rng.normal(size=(50, 8))
    train = rng.normal(size=(40, 8))
    train[:5] = test[[3, 10, 20, 30, 49]] * 2.5 + rng.normal(scale=0.01, size=(5, 8))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    full = (unit(train) @ unit(test).T).max(axis=1) >= 0.95
    assert full[:5].all() and full.sum() == 5
    assert np.array_equal(near_duplicate_mask(train, test, threshold=0.95, block=7), full)


def test_near_duplicates_drop_every_caption_of_the_image() -> None:
    rows = [(Path("/p/a.png"), "a", -1), (Path("/p/b.png"), "b", -1), (Path("/p/a.png"), "a2", -1)]
    train = make_pair_dataset("p", Path("/p"), rows)
    features = np.array([[1.0, 0.0], [0.0, 1.0]])
    kept, report = drop_near_duplicates(train, features, np.array([[0.9, 0.1]]), threshold=0.9)
    assert kept.captions == ["b"]
    assert (report.dropped_images, report.dropped_pairs) == (1, 2)
    assert "cosine" in report.method
    with pytest.raises(ValueError, match="one row per image"):
        drop_near_duplicates(train, features[:1], features, threshold=0.9)
    with pytest.raises(ValueError, match="all-zero rows"):
        near_duplicate_mask(np.zeros((1, 2)), features, threshold=0.9)
