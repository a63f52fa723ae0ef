"""``load_dataset``: one entry point that picks the loader from the spec."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from clipadapt.data.builtin import BUILTIN_DATASETS, load_builtin
from clipadapt.data.csvfile import load_csv
from clipadapt.data.dataset import CLASS_DROPPED, ImageDataset
from clipadapt.data.errors import DatasetError, quoted
from clipadapt.data.folders import (
    DOMAIN_LAYOUT,
    IMAGE_FOLDER_LAYOUT,
    has_images,
    load_domain_folders,
    load_image_folder,
    subdirectories,
)
from clipadapt.paths import display_path

BUILTIN_PREFIX = "builtin:"


def load_dataset(
    spec: str | os.PathLike[str],
    *,
    classnames_file: str | os.PathLike[str] | None = None,
    skip_bad: bool = False,
    min_classes: int = 2,
    **csv_options: Any,
) -> ImageDataset | dict[str, ImageDataset]:
    """Load ``builtin:<name>``, a ``.csv`` file, an image folder or a domain-folders root.

    A directory whose sub-folders hold images directly is an image folder
    (``root/<class>/<image>``); one whose sub-folders hold only sub-folders is a domain-folders
    root (``root/<domain>/<class>/<image>``) and gives a ``{domain: ImageDataset}`` dict.
    ``csv_options`` (``path_column``, ``label_column``, ``caption_column``, ``sep``) apply to
    CSV files only; ``classnames_file`` does not apply to builtin datasets.

    A labelled dataset with fewer than ``min_classes`` classes is an error: with one class
    every prediction is right. Pass ``min_classes=1`` where classes do not matter (a set of
    out-of-distribution images). Caption-only CSVs have no classes and are not checked.
    """
    loaded = _load(spec, classnames_file, skip_bad, csv_options)
    for dataset in loaded.values() if isinstance(loaded, dict) else [loaded]:
        _require_classes(dataset, min_classes)
    return loaded


def _load(
    spec: str | os.PathLike[str],
    classnames_file: str | os.PathLike[str] | None,
    skip_bad: bool,
    csv_options: dict[str, Any],
) -> ImageDataset | dict[str, ImageDataset]:
    if isinstance(spec, str) and spec.startswith(BUILTIN_PREFIX):
        if classnames_file is not None or csv_options:
            raise DatasetError(
                f"builtin datasets take no classnames file or CSV options (got them for {spec})"
            )
        return load_builtin(spec.removeprefix(BUILTIN_PREFIX), skip_bad=skip_bad)
    path = Path(spec)
    if path.is_file() and path.suffix.lower() == ".csv":
        return load_csv(path, classnames_file=classnames_file, skip_bad=skip_bad, **csv_options)
    expected = (
        f"expected a .csv file, a folder with {IMAGE_FOLDER_LAYOUT}, a folder with "
        f"{DOMAIN_LAYOUT}, or {BUILTIN_PREFIX}<name> "
        f"(builtins: {quoted(sorted(BUILTIN_DATASETS))})"
    )
    if not path.is_dir():
        what = "is not a .csv file" if path.exists() else "does not exist"
        raise DatasetError(f"dataset {os.path.abspath(path)} {what}; {expected}")
    if csv_options:
        raise DatasetError(f"{quoted(sorted(csv_options))} only apply to CSV files, not to {path}")
    folders = subdirectories(path)
    if not any(has_images(d) for d in folders) and any(subdirectories(d) for d in folders):
        return load_domain_folders(path, classnames_file=classnames_file, skip_bad=skip_bad)
    return load_image_folder(path, classnames_file=classnames_file, skip_bad=skip_bad)


def _require_classes(dataset: ImageDataset, min_classes: int) -> None:
    if not dataset.is_labeled or len(dataset.class_ids) >= min_classes:
        return
    dropped = [s["path"] for s in dataset.skipped if s["reason"].startswith(CLASS_DROPPED)]
    because = f"; --skip-bad dropped {quoted(dropped)} as unusable" if dropped else ""
    raise DatasetError(
        f"dataset {dataset.name!r} at {display_path(dataset.root)} has only "
        f"{len(dataset.class_ids)} class(es) ({quoted(dataset.classnames)}){because}; telling "
        f"classes apart needs at least {min_classes}, and with one every prediction is "
        "right: add a folder (or label) per class"
    )
