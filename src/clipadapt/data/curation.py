"""Curating a pool of image-text pairs before training: MetaCLIP balancing and dedup.

Balancing (Xu et al., "Demystifying CLIP Data", 2023, Algorithm 1): a pair *matches* an
entry (a class name, a vocabulary word) when the entry's words appear consecutively, as
whole words, in its caption, ignoring case and punctuation ("Art-Painting" matches "art
painting", "dog" does not match "hotdog"); with ``plurals`` the entry's last word may also
be in its plural form (LemmInflect's, so "mouse" matches "mice" but "person" matches
"persons", not "people"). Pairs matching no entry are dropped. An entry matched by
``count`` pairs keeps each with probability ``min(1, cap / count)``: every (pair, matched
entry) draws its own uniform number and the pair is kept if any draw falls under its
entry's probability, so entries rarer than ``cap`` keep all their pairs and frequent ones
keep about ``cap``.

Dedup across train and test: ``drop_exact_duplicates`` drops train images whose bytes (sha256)
equal a test image's; ``drop_near_duplicates`` drops train images whose feature has cosine
similarity >= ``threshold`` with any test image's, comparing blocks so that memory stays
``block x block`` floats whatever the sizes. Both drop every caption of a dropped image.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipadapt.data.errors import DatasetError
from clipadapt.data.images import content_hash
from clipadapt.data.pairs import PairDataset

_WORD = re.compile(r"[^\W_]+")
BLOCK = 2048
COSINE = "cosine similarity of L2-normalised features, >= threshold counts as duplicate"


@dataclass(frozen=True)
class CurationReport:
    """Pairs per entry before and after balancing (a pair counts once for each entry it
    matches, so entry counts can sum to more than ``total``)."""

    cap: int
    seed: int
    total: int
    unmatched: int
    kept: int
    entries: dict[str, tuple[int, int]]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "entries": {e: list(c) for e, c in self.entries.items()}}


@dataclass(frozen=True)
class DedupReport:
    """What a dedup step dropped from the train set because of the test set."""

    method: str
    train_images: int
    test_images: int
    dropped_images: int
    dropped_pairs: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_entries(path: str | os.PathLike[str]) -> list[str]:
    """Entries from a UTF-8 text file, one a line; blank lines and ``#`` comments skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read entries file {path} ({exc}); give UTF-8 text") from exc
    entries = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not entries:
        raise DatasetError(f"entries file {path} lists no entries (one per line)")
    return entries


def match_entries(
    captions: Sequence[str], entries: Sequence[str], *, plurals: bool = False
) -> list[list[int]]:
    """For each caption, the sorted indices of the entries it matches (see module doc)."""
    _check_entries(entries)
    forms: dict[tuple[str, ...], set[int]] = {}
    for index, entry in enumerate(entries):
        for form in _forms(entry, plurals):
            forms.setdefault(form, set()).add(index)
    lengths = sorted({len(f) for f in forms})
    matched = []
    for caption in captions:
        words = _WORD.findall(caption.casefold())
        hits: set[int] = set()
        for n in lengths:
            for i in range(len(words) - n + 1):
                hits |= forms.get(tuple(words[i : i + n]), set())
        matched.append(sorted(hits))
    return matched


def balance(
    dataset: PairDataset,
    entries: Sequence[str],
    *,
    cap: int,
    seed: int = 1,
    plurals: bool = False,
) -> tuple[PairDataset, CurationReport]:
    """MetaCLIP balancing of ``dataset`` over ``entries`` with per-entry ``cap`` (``t``).

    The draws come from ``numpy.random.default_rng(seed)`` in pair order, so the same pool,
    entries and seed always keep the same pairs.
    """
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
        raise ValueError(f"cap must be a positive integer, got {cap!r}")
    matched = match_entries(dataset.captions, entries, plurals=plurals)
    pair_of = np.repeat(np.arange(len(matched)), [len(m) for m in matched])
    entry_of = np.fromiter((e for m in matched for e in m), dtype=np.int64, count=len(pair_of))
    before = np.bincount(entry_of, minlength=len(entries))
    probability = cap / np.maximum(before, cap)
    draws = np.random.default_rng(seed).random(len(entry_of))
    hit = draws < probability[entry_of]
    keep = np.zeros(len(dataset), dtype=bool)
    keep[pair_of[hit]] = True
    after = np.bincount(entry_of[keep[pair_of]], minlength=len(entries))
    report = CurationReport(
        cap=cap,
        seed=seed,
        total=len(dataset),
        unmatched=sum(not m for m in matched),
        kept=int(keep.sum()),
        entries={e: (int(b), int(a)) for e, b, a in zip(entries, before, after, strict=True)},
    )
    return dataset.subset(np.flatnonzero(keep).tolist()), report


def drop_exact_duplicates(train: PairDataset, test: PairDataset) -> tuple[PairDataset, DedupReport]:
    """Drop train images whose bytes have the same sha256 as a test image's."""
    test_hashes = {content_hash(p) for p in test.images}
    duplicate = np.array([content_hash(p) in test_hashes for p in train.images], dtype=bool)
    return _drop(train, duplicate, "sha256 of the image bytes", len(test.images))


def drop_near_duplicates(
    train: PairDataset,
    train_features: np.ndarray,
    test_features: np.ndarray,
    *,
    threshold: float,
) -> tuple[PairDataset, DedupReport]:
    """Drop train images whose feature (row ``g`` for ``train.images[g]``) has cosine
    similarity >= ``threshold`` with any row of ``test_features``."""
    if len(train_features) != len(train.images):
        raise ValueError(
            f"train_features has {len(train_features)} rows but pair dataset "
            f"{train.name!r} has {len(train.images)} images; give one row per image"
        )
    duplicate = near_duplicate_mask(train_features, test_features, threshold=threshold)
    method = f"{COSINE} {threshold}"
    return _drop(train, duplicate, method, len(test_features))


def near_duplicate_mask(
    features: np.ndarray, others: np.ndarray, *, threshold: float, block: int = BLOCK
) -> np.ndarray:
    """Boolean mask over ``features`` rows: max cosine similarity to ``others`` >= threshold.

    Compared ``block`` rows against ``block`` rows at a time (float32).
    """
    if not -1 <= threshold <= 1:
        raise ValueError(f"a cosine threshold must lie in [-1, 1], got {threshold}")
    a, b = _unit_rows(features, "features"), _unit_rows(others, "other features")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature widths differ: {a.shape[1]} vs {b.shape[1]}")
    best = np.full(len(a), -np.inf, dtype=np.float32)
    for i in range(0, len(a), block):
        for j in range(0, len(b), block):
            scores = a[i : i + block] @ b[j : j + block].T
            best[i : i + block] = np.maximum(best[i : i + block], scores.max(axis=1))
    return best >= threshold


def _drop(
    train: PairDataset, duplicate: np.ndarray, method: str, test_images: int
) -> tuple[PairDataset, DedupReport]:
    keep = [i for i, p in enumerate(train.pairs) if not duplicate[p.group]]
    report = DedupReport(
        method=method,
        train_images=len(duplicate),
        test_images=test_images,
        dropped_images=int(duplicate.sum()),
        dropped_pairs=len(train) - len(keep),
    )
    return train.subset(keep), report


def _unit_rows(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (one row per image), got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if len(x) and not np.all(norms > 0):
        raise ValueError(f"{what} has all-zero rows, which have no direction to compare")
    return x / norms


def _forms(entry: str, plurals: bool) -> list[tuple[str, ...]]:
    words = tuple(_WORD.findall(entry.casefold()))
    if not plurals:
        return [words]
    from lemminflect import getInflection

    return [words] + [(*words[:-1], p) for p in getInflection(words[-1], tag="NNS")]


def _check_entries(entries: Sequence[str]) -> None:
    if not entries:
        raise ValueError("give at least one entry (class name or vocabulary word) to balance on")
    seen: dict[tuple[str, ...], str] = {}
    for entry in entries:
        words = tuple(_WORD.findall(entry.casefold()))
        if not words:
            raise ValueError(f"entry {entry!r} has no words to match")
        if words in seen:
            raise ValueError(f"entries {seen[words]!r} and {entry!r} match the same words")
        seen[words] = entry
