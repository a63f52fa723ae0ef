"""Image-text pairs for contrastive fine-tuning, from a CSV, webdataset shards or class folders.

A ``PairDataset`` holds one ``Pair`` per caption. Several captions of one image share its
``group`` (the index of its path in ``PairDataset.images``), so ``split_pairs`` keeps them
on one side of a train/test split. Loaders check what is cheap to check without decoding:
the image exists and is not empty, the caption is not empty and fits the text tower's
context (``count_tokens(caption) <= max_tokens``, with the tower's own tokenizer plugged in
by the caller). A bad pair is a ``DatasetError`` naming the file and row, or with
``skip_bad`` is left out and listed in ``dataset.skipped`` as ``{"path", "reason"}``.
"""

from __future__ import annotations

import csv
import io
import os
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipadapt.atomic import atomic_write_text
from clipadapt.data.csvfile import DEFAULT_CAPTION_COLUMN, DEFAULT_LABEL_COLUMN, load_csv
from clipadapt.data.dataset import UNLABELED, ImageDataset
from clipadapt.data.errors import DatasetError

CountTokens = Callable[[str], int]
EMPTY_CAPTION = "empty caption"


@dataclass(frozen=True)
class Pair:
    """One caption of one image: absolute path, caption, image group, class (or UNLABELED)."""

    path: Path
    caption: str
    group: int
    label: int = UNLABELED


@dataclass(repr=False)
class PairDataset:
    """Image-text pairs; ``images[pair.group]`` is ``pair.path``.

    ``classnames`` is empty unless the pairs came with class labels (``Pair.label`` indexes
    it). ``skipped`` lists ``{"path", "reason"}`` for input left out because of ``skip_bad``.
    """

    name: str
    root: Path
    pairs: list[Pair]
    classnames: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs)

    def __repr__(self) -> str:
        return (
            f"PairDataset(name={self.name!r}, {len(self)} pairs of {len(self.images)} images, "
            f"{len(self.classnames)} classes, {len(self.skipped)} skipped)"
        )

    @property
    def captions(self) -> list[str]:
        return [p.caption for p in self.pairs]

    @property
    def images(self) -> list[Path]:
        """Distinct image paths, indexed by group id."""
        paths: dict[int, Path] = {}
        for pair in self.pairs:
            paths.setdefault(pair.group, pair.path)
        return [paths[g] for g in range(len(paths))]

    def subset(self, indices: Iterable[int]) -> PairDataset:
        """The pairs at ``indices`` (in that order), groups renumbered by first appearance."""
        return make_pair_dataset(
            self.name,
            self.root,
            ((p.path, p.caption, p.label) for p in (self.pairs[i] for i in indices)),
            self.classnames,
            self.skipped,
        )


def make_pair_dataset(
    name: str,
    root: Path,
    rows: Iterable[tuple[Path, str, int]],
    classnames: Sequence[str] = (),
    skipped: Sequence[dict] = (),
) -> PairDataset:
    """A ``PairDataset`` of ``(path, caption, label)`` rows; one group per distinct path."""
    groups: dict[Path, int] = {}
    pairs = [
        Pair(path, caption, groups.setdefault(path, len(groups)), label)
        for path, caption, label in rows
    ]
    return PairDataset(name, root, pairs, list(classnames), list(skipped))


def caption_checker(
    count_tokens: CountTokens | None = None, max_tokens: int | None = None
) -> Callable[[str], str | None]:
    """``check(caption)``: why a caption is unusable (empty, over ``max_tokens``), or None.

    ``count_tokens`` should count what the text tower counts, special tokens included
    (open_clip's context length 77 holds 75 words' tokens plus start and end).
    """
    if (count_tokens is None) != (max_tokens is None):
        raise ValueError("give count_tokens and max_tokens together, or neither")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive integer, got {max_tokens}")

    def check(caption: str) -> str | None:
        if not caption.strip():
            return EMPTY_CAPTION
        if count_tokens is not None and max_tokens is not None:
            n = count_tokens(caption)
            if n > max_tokens:
                return (
                    f"caption of {n} tokens is longer than the text tower's context of "
                    f"{max_tokens} ({caption[:40]!r}...); shorten it"
                )
        return None

    return check


def load_pairs_csv(
    csv_path: str | os.PathLike[str],
    *,
    path_column: str = "filepath",
    caption_column: str = DEFAULT_CAPTION_COLUMN,
    label_column: str = DEFAULT_LABEL_COLUMN,
    sep: str = ",",
    classnames_file: str | os.PathLike[str] | None = None,
    skip_bad: bool = False,
    count_tokens: CountTokens | None = None,
    max_tokens: int | None = None,
) -> PairDataset:
    """Pairs from open_clip's CSV (``filepath``, ``title``): one pair per row.

    Read by ``clipadapt.data.load_csv`` with its options and errors; rows repeating a
    ``filepath`` are further captions of that image (a label column, if present, must give
    it the same label each time).
    """
    check = caption_checker(count_tokens, max_tokens)
    dataset = load_csv(
        csv_path,
        path_column=path_column,
        label_column=label_column,
        caption_column=caption_column,
        sep=sep,
        classnames_file=classnames_file,
        skip_bad=skip_bad,
        several_captions=True,
        check_caption=check,
    )
    rows = ((s.path, s.caption or "", s.label) for s in dataset.samples)
    return make_pair_dataset(dataset.name, dataset.root, rows, dataset.classnames, dataset.skipped)


def pairs_from_classes(
    dataset: ImageDataset,
    templates: Sequence[str],
    *,
    one_per_image: bool = False,
    seed: int = 1,
) -> PairDataset:
    """Turn a labelled dataset into pairs by captioning each image with class templates.

    Templates name the class as ``{}``, ``{classname}`` or ``{class}`` and may use
    ``{domain}`` (the sample's domain folder with ``_`` as spaces: "art painting"). As in
    FLYP's CSVs, every image gets one caption per template; with ``one_per_image`` it gets
    one template drawn by ``numpy.random.default_rng(seed)``, the same for the same seed.
    """
    if not dataset.is_labeled:
        raise DatasetError(
            f"dataset {dataset.name!r} has no class labels, so its images cannot be captioned "
            "from class names; give a labelled dataset, or load its captions as pairs"
        )
    if not templates:
        raise ValueError("give at least one caption template, e.g. 'a photo of a {}.'")
    uses_domain = [_check_template(t) for t in templates]
    if any(uses_domain) and any(s.domain is None for s in dataset.samples):
        raise DatasetError(
            f"a template uses {{domain}} but dataset {dataset.name!r} has images without a "
            "domain; load domain folders (root/<domain>/<class>/<image>) or drop {domain}"
        )
    rng = np.random.default_rng(seed)
    chosen = (
        rng.integers(len(templates), size=len(dataset))[:, None]
        if one_per_image
        else np.broadcast_to(np.arange(len(templates)), (len(dataset), len(templates)))
    )
    rows = []
    for sample, picks in zip(dataset.samples, chosen, strict=True):
        name = dataset.classnames[sample.label]
        domain = (sample.domain or "").replace("_", " ")
        for t in picks:
            text = templates[t].format(name, classname=name, domain=domain, **{"class": name})
            rows.append((sample.path, text, sample.label))
    return make_pair_dataset(dataset.name, dataset.root, rows, dataset.classnames, dataset.skipped)


def merge_pairs(datasets: Sequence[PairDataset], name: str | None = None) -> PairDataset:
    """One ``PairDataset`` of all pairs in order (e.g. the domains of a domain dataset).

    Labelled datasets must share their class names; the root is their common folder.
    """
    if not datasets:
        raise ValueError("give at least one pair dataset to merge")
    labelled = [d for d in datasets if d.classnames]
    for d in labelled:
        if d.classnames != labelled[0].classnames:
            raise DatasetError(
                f"pair datasets {labelled[0].name!r} and {d.name!r} have different classes; "
                "merge only datasets labelled with the same class names"
            )
    if labelled and len(labelled) != len(datasets):
        raise DatasetError("cannot merge labelled with unlabelled pair datasets")
    root = Path(os.path.commonpath([d.root for d in datasets]))
    rows = [(p.path, p.caption, p.label) for d in datasets for p in d.pairs]
    return make_pair_dataset(
        name or "+".join(d.name for d in datasets),
        root,
        rows,
        labelled[0].classnames if labelled else (),
        [s for d in datasets for s in d.skipped],
    )


def write_pairs_csv(
    dataset: PairDataset, path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write ``dataset`` as open_clip's CSV (``filepath``, ``title``, plus ``label`` holding
    the class name when labelled), atomically; ``load_pairs_csv`` reads it back.

    Images under the CSV's folder are written relative to it, others absolute. An existing
    file is an error unless ``overwrite``.
    """
    path = Path(os.path.abspath(path))
    if path.exists() and not overwrite:
        raise DatasetError(f"{path} already exists; choose another output file or remove it")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    labelled = bool(dataset.classnames)
    writer.writerow(["filepath", "title", *(["label"] if labelled else [])])
    for pair in dataset.pairs:
        inside = pair.path.is_relative_to(path.parent)
        relative = pair.path.relative_to(path.parent).as_posix() if inside else str(pair.path)
        label = [dataset.classnames[pair.label]] if labelled else []
        writer.writerow([relative, pair.caption, *label])
    return atomic_write_text(path, buffer.getvalue())


def split_pairs(
    dataset: PairDataset, *, test_fraction: float = 0.3, seed: int = 1
) -> tuple[PairDataset, PairDataset]:
    """Train and test pairs, splitting images (groups), never the captions of one image.

    ``round(n_images * test_fraction)`` images (at least one, at most all but one) go to
    test, drawn by ``numpy.random.default_rng(seed)``; pairs keep their order.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be strictly between 0 and 1, got {test_fraction}")
    n_images = len(dataset.images)
    if n_images < 2:
        raise DatasetError(
            f"cannot split pair dataset {dataset.name!r}: it has {n_images} image(s), and "
            "train and test need one each"
        )
    n_test = min(max(int(n_images * test_fraction + 0.5), 1), n_images - 1)
    test_groups = set(np.random.default_rng(seed).permutation(n_images)[:n_test].tolist())
    in_test = [p.group in test_groups for p in dataset.pairs]
    train = dataset.subset(i for i, t in enumerate(in_test) if not t)
    test = dataset.subset(i for i, t in enumerate(in_test) if t)
    return train, test


def _check_template(template: str) -> bool:
    """Whether ``template`` uses ``{domain}``; a ``ValueError`` for a field it cannot fill."""
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise ValueError(f"caption template {template!r} is malformed ({exc})") from exc
    unknown = fields - {"", "classname", "class", "domain"}
    if unknown or not fields & {"", "classname", "class"}:
        raise ValueError(
            f"caption template {template!r} must name the class as {{}}, {{classname}} or "
            f"{{class}} and may use {{domain}}"
            + (f"; it has unknown field(s) {sorted(unknown)}" if unknown else "")
        )
    return "domain" in fields
