"""A FAISS index over image features: build it, save it as a directory, load it, search it.

Features are L2-normalised, so inner product is cosine similarity. Small collections get an
exact index (``IndexFlatIP``); large ones an IVF-PQ index whose recall against exact search
is measured at build time and recorded. ``faiss`` is imported only inside functions (the
``index`` extra).
"""

from clipadapt.index.store import (
    INDEX_FORMAT,
    ImageIndex,
    build_index,
    check_index_dir,
    is_index_dir,
    load_index,
)

__all__ = [
    "INDEX_FORMAT",
    "ImageIndex",
    "build_index",
    "check_index_dir",
    "is_index_dir",
    "load_index",
]
