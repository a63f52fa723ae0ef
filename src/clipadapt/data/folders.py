"""Image folders (``root/<class>/<image>``), domain folders (``root/<domain>/<class>/<image>``)."""

from __future__ import annotations

import os
from pathlib import Path

from clipadapt.data.classnames import read_classnames_file, resolve_classnames
from clipadapt.data.dataset import CLASS_DROPPED, ImageDataset, Sample
from clipadapt.data.errors import DatasetError, quoted
from clipadapt.data.images import EMPTY_FILE, IMAGE_EXTENSIONS, is_image_file
from clipadapt.paths import display_path

CLASSNAMES_FILE = "classnames.json"
IMAGE_FOLDER_LAYOUT = "one sub-folder per class holding its images, e.g. <root>/dog/001.jpg"
DOMAIN_LAYOUT = (
    "one sub-folder per domain, each with the same class sub-folders, e.g. <root>/photo/dog/001.jpg"
)


def load_image_folder(
    root: str | os.PathLike[str],
    *,
    classnames_file: str | os.PathLike[str] | None = None,
    skip_bad: bool = False,
) -> ImageDataset:
    """Load ``root/<class>/<image>``; classes are the sub-folders, sorted by name.

    Images are files with an extension in ``IMAGE_EXTENSIONS`` (any case); hidden files and
    other files are ignored. Class names come from ``classnames_file`` (default
    ``root/classnames.json`` when present), a JSON object mapping every folder name to a
    human name; without one, the folder names are used, except that single-digit folders
    ``0``..``9`` become "zero".."nine". An empty class folder or an empty (0-byte) image is an
    error; with ``skip_bad`` it is dropped and recorded in ``dataset.skipped`` (a class left
    without images as ``class dropped: ...``). Folder and file names need not be UTF-8:
    paths keep their bytes, while dataset, domain and default class names show them as
    ``\\xff`` (``display_path``).
    """
    root = Path(os.path.abspath(root))
    return _load_folder(
        root, display_path(root.name), _optional(classnames_file), skip_bad, domain=None
    )


def load_domain_folders(
    root: str | os.PathLike[str],
    *,
    classnames_file: str | os.PathLike[str] | None = None,
    skip_bad: bool = False,
) -> dict[str, ImageDataset]:
    """Load ``root/<domain>/<class>/<image>`` as one ``ImageDataset`` per domain (sorted).

    Every domain must have the same class folders, so that labels mean the same in all of
    them. Datasets are named ``<root name>/<domain>`` and samples carry ``domain``. Class
    names come from ``classnames_file``, else ``root/classnames.json``, else each domain's
    own ``classnames.json``, else the folder names (as in ``load_image_folder``).
    """
    root = Path(os.path.abspath(root))
    _require_directory(root, DOMAIN_LAYOUT)
    domains = subdirectories(root)
    if not domains:
        raise DatasetError(f"{root} has no domain folders; expected {DOMAIN_LAYOUT}")
    classes = {d.name: {c.name for c in subdirectories(d)} for d in domains}
    empty = [name for name, found in classes.items() if not found]
    if empty:
        raise DatasetError(
            f"domain folder(s) {quoted(empty)} in {root} have no class sub-folders; "
            f"expected {DOMAIN_LAYOUT}"
        )
    every = set().union(*classes.values())
    lacking = [
        f"{name!r} lacks {quoted(sorted(every - found))}"
        for name, found in classes.items()
        if found != every
    ]
    if lacking:
        raise DatasetError(
            f"the domains in {root} must have the same class folders, but domain "
            f"{'; domain '.join(lacking)}; add the missing class folders or remove the extra ones"
        )
    names_file = _optional(classnames_file)
    if names_file is None and (root / CLASSNAMES_FILE).is_file():
        names_file = root / CLASSNAMES_FILE
    datasets: dict[str, ImageDataset] = {}
    for folder in domains:
        domain = display_path(folder.name)
        name = f"{display_path(root.name)}/{domain}"
        datasets[domain] = _load_folder(folder, name, names_file, skip_bad, domain=domain)
    first = next(iter(datasets.values()))
    for dataset in datasets.values():
        if (dataset.class_ids, dataset.classnames) != (first.class_ids, first.classnames):
            raise DatasetError(
                f"domains {first.name!r} and {dataset.name!r} ended up with different classes "
                f"({quoted(first.classnames)} vs {quoted(dataset.classnames)}), because of "
                "classes dropped as empty or different classnames.json files; give every "
                "domain images of every class and one set of class names"
            )
    return datasets


def subdirectories(folder: Path) -> list[Path]:
    """Visible sub-folders of ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def has_images(folder: Path) -> bool:
    return any(is_image_file(p) for p in folder.iterdir())


def _optional(path: str | os.PathLike[str] | None) -> Path | None:
    return None if path is None else Path(os.path.abspath(path))


def _require_directory(root: Path, layout: str) -> None:
    if not root.exists():
        raise DatasetError(f"dataset folder {root} does not exist; expected {layout}")
    if not root.is_dir():
        raise DatasetError(f"{root} is not a directory; expected {layout}")


def _load_folder(
    root: Path, name: str, classnames_file: Path | None, skip_bad: bool, domain: str | None
) -> ImageDataset:
    _require_directory(root, IMAGE_FOLDER_LAYOUT)
    class_dirs = subdirectories(root)
    if not class_dirs:
        hint = " (its images sit directly in it)" if has_images(root) else ""
        raise DatasetError(f"{root} has no class folders{hint}; expected {IMAGE_FOLDER_LAYOUT}")
    class_ids = [d.name for d in class_dirs]
    if classnames_file is None and (root / CLASSNAMES_FILE).is_file():
        classnames_file = root / CLASSNAMES_FILE
    mapping = None if classnames_file is None else read_classnames_file(classnames_file)
    names = resolve_classnames(
        class_ids, mapping, f"classnames file {classnames_file}", f"class folders in {root}"
    )
    kept_ids: list[str] = []
    kept_names: list[str] = []
    samples: list[Sample] = []
    skipped: list[dict] = []
    for class_dir, class_id, class_name in zip(class_dirs, class_ids, names, strict=True):
        empty_before = len(skipped)
        images = _list_images(class_dir, skip_bad, skipped)
        if not images:
            if not skip_bad:
                raise DatasetError(_empty_class_message(root, class_dir))
            empty = len(skipped) - empty_before
            why = f"all {empty} of its images are empty files" if empty else "no images"
            skipped.append({"path": display_path(class_dir), "reason": f"{CLASS_DROPPED}: {why}"})
            continue
        label = len(kept_ids)
        kept_ids.append(class_id)
        kept_names.append(class_name)
        samples.extend(Sample(path, label, domain=domain) for path in images)
    if not samples:
        raise DatasetError(f"{root} holds no images; expected {IMAGE_FOLDER_LAYOUT}")
    return ImageDataset(name, root, kept_ids, kept_names, samples, skipped)


def _list_images(class_dir: Path, skip_bad: bool, skipped: list[dict]) -> list[Path]:
    images = []
    for path in sorted(p for p in class_dir.iterdir() if is_image_file(p)):
        if path.stat().st_size > 0:
            images.append(path)
        elif skip_bad:
            skipped.append({"path": display_path(path), "reason": EMPTY_FILE})
        else:
            raise DatasetError(
                f"image file {display_path(path)} is empty (0 bytes); remove or replace the file, "
                "or pass --skip-bad to skip it"
            )
    return images


def _empty_class_message(root: Path, class_dir: Path) -> str:
    message = (
        f"class folder {display_path(class_dir)} has no images "
        f"(extensions {', '.join(sorted(IMAGE_EXTENSIONS))}); add images, remove the folder, "
        "or pass --skip-bad to drop the class"
    )
    if subdirectories(class_dir):
        message += (
            f". It has sub-folders, so {root} may hold domains (<domain>/<class>/<image>): "
            "load it as domain folders"
        )
    return message
