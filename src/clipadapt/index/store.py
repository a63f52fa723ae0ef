"""The index directory: ``index.json`` (what built it, how), ``paths.json`` (row i is the
image ``paths[i]``) and ``index.faiss`` (the FAISS index). Written whole, atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipadapt import __version__
from clipadapt.atomic import atomic_write_json, replace_directory
from clipadapt.index.kinds import (
    KINDS,
    RECALL_TARGET,
    FaissIndex,
    check_recall_target,
    faiss_module,
    make_faiss_index,
    set_nprobe,
)

INDEX_FORMAT = "clipadapt-index/1"
META_FILE = "index.json"
PATHS_FILE = "paths.json"
FAISS_FILE = "index.faiss"
SCORE_CONVENTION = "cosine similarity (exact inner product of L2-normalised vectors)"


class ImageIndex:
    """A loaded (or just built) index: ``search`` maps query features to image rows."""

    def __init__(self, faiss_index: FaissIndex, paths: list[str], meta: dict[str, Any]):
        if faiss_index.ntotal != len(paths):
            raise ValueError(
                f"index holds {faiss_index.ntotal} vectors but {len(paths)} paths; rebuild it"
            )
        self._index = faiss_index
        self.paths = paths
        self.meta = meta
        self.model_spec: str = meta["model_spec"]
        self.image_fingerprint: str = meta["image_fingerprint"]
        self.kind: str = meta["kind"]
        self.dim: int = int(meta["dim"])

    def __len__(self) -> int:
        return len(self.paths)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows for each of the ``(n, dim)`` L2-normalised float32 ``queries``.

        Returns ``scores`` (n, k) float32 (see ``SCORE_CONVENTION``; ``-inf`` where no row)
        and ``ids`` (n, k) int64 (``-1`` where fewer than ``k`` rows were found), best first.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        queries = np.asarray(queries)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(
                f"queries must have shape (n, {self.dim}) for this index, got {queries.shape}"
            )
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        found = min(k, len(self.paths))
        if len(queries) == 0 or found == 0:
            scores = np.empty((len(queries), 0), np.float32)
            ids = np.empty((len(queries), 0), np.int64)
        else:
            scores, ids = self._index.search(queries, found)
        pad = k - ids.shape[1]
        ids = np.pad(ids.astype(np.int64), ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores.astype(np.float32), ((0, 0), (0, pad)))
        scores[ids < 0] = -np.inf
        return scores, ids


def build_index(
    features: np.ndarray,
    paths: Sequence[str],
    out: str | os.PathLike[str],
    *,
    model_spec: str,
    image_fingerprint: str,
    kind: str = "auto",
    seed: int = 0,
    recall_target: float = RECALL_TARGET,
    extra: dict[str, Any] | None = None,
) -> ImageIndex:
    """Index ``features`` (row i is image ``paths[i]``) and write the directory ``out``.

    ``kind``: ``flat`` (exact), ``ivfpq`` (approximate: nprobe is the smallest power of two
    whose recall@10 against exact search reaches ``recall_target``; the recall is recorded) or
    ``auto`` (see ``kinds.choose_kind``). ``extra`` is stored in ``index.json`` as given.
    An existing ``out`` must be an index this program wrote (``check_index_dir``).
    """
    target = check_index_dir(out)
    check_recall_target(recall_target)
    features = _check_features(features, paths)
    faiss_index, build = make_faiss_index(features, kind, seed=seed, recall_target=recall_target)
    meta = {
        "format": INDEX_FORMAT,
        "clipadapt_version": __version__,
        "model_spec": model_spec,
        "image_fingerprint": image_fingerprint,
        "kind": build.pop("kind"),
        "dim": int(features.shape[1]),
        "count": len(paths),
        "score": SCORE_CONVENTION,
        "build": build,
        **({"extra": extra} if extra else {}),
    }
    paths = [str(p) for p in paths]

    def write(directory: Path) -> None:
        faiss_module().write_index(faiss_index, str(directory / FAISS_FILE))
        atomic_write_json(directory / PATHS_FILE, paths)
        atomic_write_json(directory / META_FILE, meta)  # last: marks the directory complete

    replace_directory(target, write)
    return ImageIndex(faiss_index, paths, meta)


def load_index(directory: str | os.PathLike[str]) -> ImageIndex:
    """Load an index directory written by ``build_index``."""
    directory = Path(directory)
    meta = _read_meta(directory)
    try:
        paths = json.loads((directory / PATHS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{directory / PATHS_FILE}: unreadable ({err}); rebuild the index"
        ) from None
    faiss_file = directory / FAISS_FILE
    if not faiss_file.is_file():
        raise ValueError(f"{faiss_file} is missing; rebuild the index")
    faiss_index = faiss_module().read_index(str(faiss_file))
    if meta["kind"] == "ivfpq":
        set_nprobe(faiss_index, int(meta["build"]["nprobe"]))
    return ImageIndex(faiss_index, paths, meta)


def is_index_dir(directory: str | os.PathLike[str]) -> bool:
    """True when ``directory`` holds an index written by ``build_index``."""
    try:
        _read_meta(Path(directory))
    except ValueError:
        return False
    return True


def check_index_dir(out: str | os.PathLike[str]) -> Path:
    """Where an index may be written: a new path, an empty directory, or an index directory
    (replaced whole). Anything else is refused before any work: user files are never deleted."""
    target = Path(out)
    if target.resolve() == Path.cwd().resolve() or target.name in ("", ".", ".."):
        raise ValueError(f"--out {out}: name a directory for the index, not '{out}' itself")
    if target.exists() and not target.is_dir():
        raise ValueError(f"--out {out} is a file; name a new or empty directory for the index")
    if target.is_dir() and any(target.iterdir()) and not is_index_dir(target):
        raise ValueError(
            f"--out {out} holds files that are not a clipadapt index; choose a new or empty "
            "directory (nothing was changed)"
        )
    return target


def _read_meta(directory: Path) -> dict[str, Any]:
    meta_file = directory / META_FILE
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory; build an index with `clipadapt index`")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(
            f"{directory} is not a clipadapt index (no {META_FILE}); build one with "
            "`clipadapt index`"
        ) from None
    except (OSError, ValueError) as err:
        raise ValueError(f"{meta_file}: unreadable ({err}); rebuild the index") from None
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(
            f"{meta_file}: format {found!r} is not {INDEX_FORMAT!r}; rebuild the index"
        )
    if meta.get("kind") not in KINDS:
        raise ValueError(f"{meta_file}: unknown kind {meta.get('kind')!r}; rebuild the index")
    return meta


def _check_features(features: np.ndarray, paths: Sequence[str]) -> np.ndarray:
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] != len(paths):
        raise ValueError(
            f"features must have shape ({len(paths)}, dim), one row per path; got {features.shape}"
        )
    if len(paths) == 0:
        raise ValueError("nothing to index: no images")
    features = np.ascontiguousarray(features, dtype=np.float32)
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or infinite values")
    norms = np.linalg.norm(features, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        raise ValueError(
            "features must be L2-normalised (cosine search); "
            f"row norms range {norms.min():.4g}..{norms.max():.4g}"
        )
    return features
