"""Deterministic train/test splits and few-shot samples, saved as JSON files.

Indices refer to ``dataset.samples``. Every class is sampled on its own: its images are
sorted by path relative to the dataset root and shuffled by a generator seeded from
``(seed, class id)``, so a class's sample depends neither on file-system order nor on the
other classes. Split files record each image's relative path, label and sha256 of its bytes,
and ``load_split`` refuses a dataset whose files no longer match, naming them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from clipadapt.atomic import atomic_write_text
from clipadapt.data.dataset import ImageDataset
from clipadapt.data.errors import DatasetError, quoted
from clipadapt.data.images import content_hash

SPLIT_FORMAT = "clipadapt-split"
SPLIT_VERSION = 2
_TRAIN_TEST, _FEW_SHOT = 0, 1  # stream ids, so both samplers never share random numbers
_ENTRY_KEYS = {"path", "label", "sha256"}


@dataclass(repr=False)
class Split:
    """A stratified train/test partition of ``dataset``."""

    dataset: ImageDataset = field(repr=False, compare=False)
    train: list[int]
    test: list[int]
    seed: int
    test_fraction: float
    dataset_name: str
    fingerprint: str

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write this split as JSON (atomically); reload it with ``load_split``."""
        return _save(self, path)

    def __repr__(self) -> str:
        return _repr(self, ("train", "test"))


@dataclass(repr=False)
class FewShotSplit:
    """``shots`` support and up to ``val_per_class`` validation images per class.

    ``test`` is carried over untouched from the train/test ``Split`` it was drawn from (empty
    when drawn from a whole dataset). ``shortfalls`` maps each class that got fewer images
    than asked (``on_too_few="use_all"``) to ``{"available", "support", "val"}`` counts.
    """

    dataset: ImageDataset = field(repr=False, compare=False)
    support: list[int]
    val: list[int]
    test: list[int]
    shots: int
    seed: int
    val_per_class: int
    shortfalls: dict[str, dict[str, int]]
    dataset_name: str
    fingerprint: str
    split_seed: int | None = None
    test_fraction: float | None = None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write this few-shot split as JSON (atomically); reload it with ``load_split``."""
        return _save(self, path)

    def __repr__(self) -> str:
        return _repr(self, ("support", "val", "test"))


_KINDS: dict[str, tuple[type[Split] | type[FewShotSplit], tuple[str, ...]]] = {
    "train_test": (Split, ("train", "test")),
    "few_shot": (FewShotSplit, ("support", "val", "test")),
}


def train_test_split(dataset: ImageDataset, *, test_fraction: float = 0.3, seed: int = 1) -> Split:
    """Split every class into train and test, ``round(n * test_fraction)`` test images each.

    Every class keeps at least one train and one test image; a class with fewer than two
    images is an error. The same seed on the same files always gives the same split.
    """
    _check_seed(seed)
    if not 0 < test_fraction < 1:
        raise DatasetError(f"test_fraction must be strictly between 0 and 1, got {test_fraction}")
    groups = _indices_by_class(dataset, range(len(dataset)))
    small = [
        f"{_describe(dataset, label)} has {len(g)}" for label, g in enumerate(groups) if len(g) < 2
    ]
    if small:
        raise DatasetError(
            f"cannot split dataset {dataset.name!r} into train and test: every class needs at "
            f"least 2 images (1 train, 1 test), but class {', class '.join(small)}; add images "
            "or remove the class"
        )
    train: list[int] = []
    test: list[int] = []
    for label, group in enumerate(groups):
        order = _shuffled(group, seed, dataset.class_ids[label], _TRAIN_TEST)
        n_test = min(max(math.floor(len(group) * test_fraction + 0.5), 1), len(group) - 1)
        test += order[:n_test]
        train += order[n_test:]
    return Split(
        dataset,
        sorted(train),
        sorted(test),
        seed,
        test_fraction,
        dataset.name,
        dataset.fingerprint(),
    )


def few_shot(
    source: ImageDataset | Split,
    *,
    shots: int,
    seed: int,
    val_per_class: int | None = None,
    on_too_few: Literal["error", "use_all"] = "error",
) -> FewShotSplit:
    """Draw ``shots`` support and ``val_per_class`` validation images per class.

    Both come from the training pool: ``source.train`` for a ``Split`` (whose test images
    are never looked at), or every image of an ``ImageDataset``. ``val_per_class`` defaults
    to ``min(shots, 4)``; support and validation are disjoint.

    Samples are nested. For a given seed each class's pool is put in one shuffled order that
    does not depend on ``shots``: support is the first ``shots`` images of that order and
    validation the last ``val_per_class``. So the 1-shot support is a subset of the 2-shot
    support, which is a subset of the 4-shot one, and so on; validation sets are nested too
    (and identical for every K >= 4 by default) and, while a class has enough images, never
    overlap the support of any shot count. More shots only add images, which keeps shot
    curves free of resampling noise.

    A class with fewer than ``shots + val_per_class`` pool images raises an error naming it
    (``on_too_few="error"``), or (``"use_all"``) gives all its images, keeping at least one
    for validation when it has two or more, and is recorded in ``shortfalls``.
    """
    _check_seed(seed)
    if not isinstance(shots, int) or shots < 1:
        raise DatasetError(f"shots must be a positive integer, got {shots!r}")
    n_val = min(shots, 4) if val_per_class is None else val_per_class
    if not isinstance(n_val, int) or n_val < 0:
        raise DatasetError(f"val_per_class must be a non-negative integer, got {n_val!r}")
    if on_too_few not in ("error", "use_all"):
        raise DatasetError(f"on_too_few must be 'error' or 'use_all', got {on_too_few!r}")
    if isinstance(source, Split):
        dataset, pool, test = source.dataset, source.train, list(source.test)
        fingerprint, split_seed = source.fingerprint, source.seed
        test_fraction: float | None = source.test_fraction
    else:
        dataset, pool, test = source, range(len(source)), []
        fingerprint, split_seed, test_fraction = source.fingerprint(), None, None
    groups = _indices_by_class(dataset, pool)
    need = shots + n_val
    short = [
        f"{_describe(dataset, label)} has {len(g)}"
        for label, g in enumerate(groups)
        if len(g) < need
    ]
    if short and on_too_few == "error":
        raise DatasetError(
            f"{shots}-shot sampling with {n_val} validation image(s) per class needs {need} "
            f"training images per class in dataset {dataset.name!r}, but class "
            f"{', class '.join(short)}; add images, use fewer shots, or pass "
            "on_too_few='use_all' to use what there is"
        )
    support: list[int] = []
    val: list[int] = []
    shortfalls: dict[str, dict[str, int]] = {}
    for label, group in enumerate(groups):
        class_id, n = dataset.class_ids[label], len(group)
        order = _shuffled(group, seed, class_id, _FEW_SHOT)
        if n >= need:
            got_val = n_val
        elif n >= 2:  # short: keep one for validation (more if support is still full)
            got_val = min(n_val, max(n - shots, 1))
        else:
            got_val = 0
        got_support = min(shots, n - got_val)
        support += order[:got_support]
        val += order[n - got_val :]
        if got_support < shots or got_val < n_val:
            shortfalls[class_id] = {"available": n, "support": got_support, "val": got_val}
    return FewShotSplit(
        dataset,
        sorted(support),
        sorted(val),
        test,
        shots,
        seed,
        n_val,
        shortfalls,
        dataset.name,
        fingerprint,
        split_seed,
        test_fraction,
    )


def load_split(path: str | os.PathLike[str], dataset: ImageDataset) -> Split | FewShotSplit:
    """Read a split saved by ``save`` and bind it to ``dataset``.

    Raises ``DatasetError`` naming the files when the dataset no longer matches the one the
    split was made from (files gone, relabelled, modified, added, or other class names).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DatasetError(f"cannot read split file {path}: {exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"split file {path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != SPLIT_FORMAT:
        raise DatasetError(f"{path} is not a clipadapt split file (format {SPLIT_FORMAT!r})")
    if data.get("version") != SPLIT_VERSION or data.get("kind") not in _KINDS:
        raise DatasetError(
            f"split file {path} has version {data.get('version')!r} and kind "
            f"{data.get('kind')!r}; this clipadapt reads version {SPLIT_VERSION} kinds "
            f"{quoted(sorted(_KINDS))}: upgrade clipadapt or make the split again"
        )
    cls, list_names = _KINDS[data["kind"]]
    meta_names = [
        f.name for f in dataclasses.fields(cls) if f.name != "dataset" and f.name not in list_names
    ]
    missing = [
        key
        for key in (*meta_names, *list_names, "class_ids", "classnames", "num_samples")
        if key not in data
    ]
    entries = {name: data.get(name) for name in list_names}
    if missing or not all(_valid_entries(group) for group in entries.values()):
        problem = f"missing {quoted(missing)}" if missing else "malformed image entries"
        raise DatasetError(f"split file {path} is damaged ({problem}); make the split again")
    meta = {name: data[name] for name in meta_names}
    classes = (data["class_ids"], data["classnames"])
    if classes != (dataset.class_ids, dataset.classnames):
        raise DatasetError(
            f"split file {path} was made for classes {quoted(classes[1])} but dataset "
            f"{dataset.name!r} at {dataset.root} has {quoted(dataset.classnames)}; load the "
            "dataset it was made for, or make a new split"
        )
    where = {rel: i for i, rel in enumerate(dataset.relpaths())}
    indices = {name: [where.get(e["path"]) for e in group] for name, group in entries.items()}
    if meta["fingerprint"] != dataset.fingerprint() or any(
        None in group for group in indices.values()
    ):
        changes = _describe_changes(dataset, data, entries, where)
        raise DatasetError(
            f"split file {path} no longer matches dataset {dataset.name!r} at {dataset.root}: "
            f"{changes}. Restore the original files, or make and save a new split (the same "
            "seed on different files gives a different split)"
        )
    return cls(dataset=dataset, **meta, **indices)


def _repr(split: Split | FewShotSplit, list_names: tuple[str, ...]) -> str:
    """Sizes instead of the (long) index lists."""
    parts = [
        f"{f.name}={getattr(split, f.name)!r}"
        for f in dataclasses.fields(split)
        if f.name not in ("dataset", "fingerprint", *list_names)
    ]
    sizes = [f"{name}=<{len(getattr(split, name))} indices>" for name in list_names]
    return f"{type(split).__name__}({', '.join(sizes + parts)})"


def _save(split: Split | FewShotSplit, path: str | os.PathLike[str]) -> Path:
    kind = "train_test" if isinstance(split, Split) else "few_shot"
    list_names = _KINDS[kind][1]
    dataset = split.dataset
    if dataset.fingerprint() != split.fingerprint:
        raise DatasetError(
            f"dataset {dataset.name!r} at {dataset.root} changed after this split was made; "
            "load the dataset again and make a new split"
        )
    header: dict[str, Any] = {"format": SPLIT_FORMAT, "version": SPLIT_VERSION, "kind": kind}
    header |= {
        f.name: getattr(split, f.name)
        for f in dataclasses.fields(split)
        if f.name != "dataset" and f.name not in list_names
    }
    header |= {
        "class_ids": dataset.class_ids,
        "classnames": dataset.classnames,
        "num_samples": len(dataset),
    }
    rels = dataset.relpaths()
    lists = {name: [_entry(dataset, rels, i) for i in getattr(split, name)] for name in list_names}
    return atomic_write_text(path, _dumps(header, lists))


def _valid_entries(group: Any) -> bool:
    return isinstance(group, list) and all(
        isinstance(entry, dict) and entry.keys() >= _ENTRY_KEYS for entry in group
    )


def _entry(dataset: ImageDataset, rels: list[str], index: int) -> dict[str, Any]:
    sample = dataset.samples[index]
    return {"path": rels[index], "label": sample.label, "sha256": content_hash(sample.path)}


def _dumps(header: dict[str, Any], lists: dict[str, list[dict[str, Any]]]) -> str:
    """JSON with one line per header key and per image, so split files stay readable."""
    parts = [f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in header.items()]
    for name, entries in lists.items():
        body = ",\n".join(f"    {json.dumps(entry)}" for entry in entries)
        parts.append(f"  {json.dumps(name)}: " + (f"[\n{body}\n  ]" if entries else "[]"))
    return "{\n" + ",\n".join(parts) + "\n}\n"


def _describe_changes(
    dataset: ImageDataset,
    data: dict[str, Any],
    entries: dict[str, list[dict[str, Any]]],
    where: dict[str, int],
) -> str:
    gone, relabelled, modified = [], [], []
    for entry in (e for group in entries.values() for e in group):
        index = where.get(entry["path"])
        if index is None:
            gone.append(entry["path"])
            continue
        sample = dataset.samples[index]
        if sample.label != entry["label"]:
            relabelled.append(entry["path"])
        elif content_hash(sample.path) != entry["sha256"]:
            modified.append(entry["path"])
    listed = {e["path"] for group in entries.values() for e in group}
    added = sorted(set(where) - listed) if data["kind"] == "train_test" else []
    changes = [
        f"{len(paths)} file(s) {what} ({quoted(paths, 5)})"
        for paths, what in (
            (gone, "gone"),
            (relabelled, "relabelled"),
            (modified, "modified"),
            (added, "added"),
        )
        if paths
    ]
    if changes:
        return "; ".join(changes)
    return (
        f"its own files are unchanged, but other files of the dataset changed (it had "
        f"{data['num_samples']} images, it now has {len(dataset)})"
    )


def _indices_by_class(dataset: ImageDataset, pool: Iterable[int]) -> list[list[int]]:
    """Pool indices grouped by label, each group sorted by relative path."""
    if not dataset.is_labeled:
        raise DatasetError(
            f"dataset {dataset.name!r} has no class labels (captions only); train/test splits "
            "and few-shot sampling need a label for every image"
        )
    rels = dataset.relpaths()
    groups: list[list[int]] = [[] for _ in dataset.class_ids]
    for index in pool:
        groups[dataset.samples[index].label].append(index)
    return [sorted(group, key=rels.__getitem__) for group in groups]


def _shuffled(group: Sequence[int], seed: int, class_id: str, stream: int) -> list[int]:
    name = class_id.encode("utf-8", "surrogateescape")  # folder names need not be UTF-8
    rng = np.random.default_rng([seed, zlib.crc32(name), stream])
    return [group[j] for j in rng.permutation(len(group))]


def _describe(dataset: ImageDataset, label: int) -> str:
    class_id, name = dataset.class_ids[label], dataset.classnames[label]
    return repr(class_id) if class_id == name else f"{class_id!r} ({name})"


def _check_seed(seed: int) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise DatasetError(f"seed must be a non-negative integer, got {seed!r}")
