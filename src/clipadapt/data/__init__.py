"""Datasets as plain objects, deterministic splits and few-shot samples saved as files.

Loaders: ``load_image_folder`` (``root/<class>/<image>``), ``load_domain_folders``
(``root/<domain>/<class>/<image>``), ``load_csv`` (image paths with labels and/or captions),
``load_builtin`` (datasets shipped in packages) and ``load_dataset``, which picks one from a
spec. ``decode_image`` reads one image as RGB or raises ``ImageDecodeError``.

Image-text pairs (``PairDataset``): ``load_pairs_csv``, ``pairs_from_classes``,
``clipadapt.data.shards.load_pairs_webdataset``; curation (MetaCLIP balancing, train/test
dedup) in ``clipadapt.data.curation``.
"""

from clipadapt.data.builtin import BUILTIN_DATASETS, load_builtin
from clipadapt.data.classnames import DIGIT_WORDS
from clipadapt.data.csvfile import load_csv
from clipadapt.data.dataset import UNLABELED, ImageDataset, Sample
from clipadapt.data.errors import DatasetError, ImageDecodeError
from clipadapt.data.folders import load_domain_folders, load_image_folder
from clipadapt.data.images import IMAGE_EXTENSIONS, decode_image, image_paths, is_image_file
from clipadapt.data.load import load_dataset
from clipadapt.data.pairs import (
    Pair,
    PairDataset,
    load_pairs_csv,
    merge_pairs,
    pairs_from_classes,
    split_pairs,
    write_pairs_csv,
)
from clipadapt.data.splits import FewShotSplit, Split, few_shot, load_split, train_test_split

__all__ = [
    "BUILTIN_DATASETS",
    "DIGIT_WORDS",
    "IMAGE_EXTENSIONS",
    "UNLABELED",
    "DatasetError",
    "FewShotSplit",
    "ImageDataset",
    "ImageDecodeError",
    "Pair",
    "PairDataset",
    "Sample",
    "Split",
    "decode_image",
    "few_shot",
    "image_paths",
    "is_image_file",
    "load_builtin",
    "load_csv",
    "load_dataset",
    "load_domain_folders",
    "load_image_folder",
    "load_pairs_csv",
    "load_split",
    "merge_pairs",
    "pairs_from_classes",
    "split_pairs",
    "train_test_split",
    "write_pairs_csv",
]
