"""``load_dataset``: one entry point that picks the loader from the spec."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from clipadapt.data.builtin import BUILTIN_DATASETS, load_builtin
from clipadapt.data.csvfile import load_csv
from clipadapt.data.dataset import ImageDataset
from clipadapt.data.errors import DatasetError, quoted
from clipadapt.data.folders import (
    DOMAIN_LAYOUT,
    IMAGE_FOLDER_LAYOUT,
    has_images,
    load_domain_folders,
    load_image_folder,
    subdirectories,
)

BUILTIN_PREFIX = "builtin:"


def load_dataset(
    spec: str | os.PathLike[str],
    *,
    classnames_file: str | os.PathLike[str] | None = None,
    skip_bad: bool = False,
    **csv_options: Any,
) -> ImageDataset | dict[str, ImageDataset]:
    """Load ``builtin:<name>``, a ``.csv`` file, an image folder or a domain-folders root.

    A directory whose sub-folders hold images directly is an image folder
    (``root/<class>/<image>``); one whose sub-folders hold only sub-folders is a domain-folders
    root (``root/<domain>/<class>/<image>``) and gives a ``{domain: ImageDataset}`` dict.
    ``csv_options`` (``path_column``, ``label_column``, ``caption_column``, ``sep``) apply to
    CSV files only; ``classnames_file`` does not apply to builtin datasets.
    """
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
