"""A persistent cache of image embeddings, shared by every run, method and seed.

Entries are keyed by (image fingerprint of the model, view, sha256 of the image bytes), so a
changed image, model, preprocessing or augmentation is never served stale. The store is one
SQLite database: each batch is written in a single transaction, so a run killed mid-write
leaves no entry that reads as valid.

Beside the features it keeps an index of file hashes, path -> (file stamp, sha256), so a
warm reload hashes no file whose stamp is unchanged (``clipadapt.data.images`` says what a
stamp covers and when one is trusted). Every SQLite or file-system failure is raised as a
``FeatureCacheError`` naming the database and what to do.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

import numpy as np

from clipadapt.paths import clipadapt_cache_dir, display_path

SCHEMA = """
CREATE TABLE IF NOT EXISTS features (
    model TEXT NOT NULL, view TEXT NOT NULL, content TEXT NOT NULL,
    dim INTEGER NOT NULL, vec BLOB NOT NULL,
    PRIMARY KEY (model, view, content)
);
CREATE TABLE IF NOT EXISTS models (
    model TEXT PRIMARY KEY, spec TEXT NOT NULL, last_used REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    path BLOB PRIMARY KEY, stamp TEXT NOT NULL, content TEXT NOT NULL
) WITHOUT ROWID;
"""
CHUNK = 500  # host parameters per query, well below SQLite's limit

P = ParamSpec("P")
R = TypeVar("R")


class FeatureCacheError(ValueError):
    """The feature cache cannot be opened, read or written; the message says what to do."""


def cache_error(path: Path, err: Exception) -> FeatureCacheError:
    """A one-line ``FeatureCacheError`` for ``err`` raised on the database at ``path``."""
    where, text = display_path(path), str(err)
    elsewhere = "or set $CLIPADAPT_CACHE_DIR (or --cache-dir) to another folder"
    if "not a database" in text or "malformed" in text:
        return FeatureCacheError(
            f"feature cache {where} is corrupt ({text}); delete that file (it only holds "
            f"features, which are recomputed) {elsewhere}"
        )
    if "full" in text:
        return FeatureCacheError(
            f"feature cache {where}: the disk is full; free space, empty the cache with "
            f"'clipadapt cache clear', {elsewhere} on another disk"
        )
    if isinstance(err, PermissionError) or "readonly" in text or "unable to open" in text:
        return FeatureCacheError(
            f"feature cache {where} is not writable ({text}); make its folder writable {elsewhere}"
        )
    if "locked" in text:
        return FeatureCacheError(
            f"feature cache {where} stayed locked by another process ({text}); wait for it to "
            f"finish {elsewhere}"
        )
    return FeatureCacheError(f"feature cache {where} failed ({text}); delete it {elsewhere}")


def _guarded(
    method: Callable[Concatenate[FeatureCache, P], R],
) -> Callable[Concatenate[FeatureCache, P], R]:
    """Raise SQLite and file-system failures inside ``method`` as ``FeatureCacheError``."""

    @functools.wraps(method)
    def wrapper(self: FeatureCache, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.Error, OSError) as err:
            raise cache_error(self.path, err) from err

    return wrapper


@dataclass(frozen=True)
class CacheSummary:
    model: str
    spec: str
    view: str
    entries: int
    bytes: int


class FeatureCache:
    """Embeddings stored as float32 blobs in ``<directory>/features.sqlite``."""

    @_guarded
    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory else clipadapt_cache_dir() / "features"
        self.path = self.directory / "features.sqlite"
        self.directory.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    @_guarded
    def get_many(self, model: str, view: str, contents: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors for those content hashes that are present."""
        found: dict[str, np.ndarray] = {}
        for chunk in _chunks(list(dict.fromkeys(contents))):
            rows = self._db.execute(
                f"SELECT content, dim, vec FROM features "
                f"WHERE model=? AND view=? AND content IN ({_marks(chunk)})",
                (model, view, *chunk),
            )
            for content, dim, blob in rows:
                vec = np.frombuffer(blob, dtype=np.float32)
                if vec.shape == (dim,):
                    found[content] = vec
        return found

    @_guarded
    def put_many(
        self, model: str, spec: str, view: str, items: Iterable[tuple[str, np.ndarray]]
    ) -> None:
        """Store vectors in one transaction: all of them become visible, or none."""
        rows = [
            (model, view, content, int(v.shape[0]), np.ascontiguousarray(v, np.float32).tobytes())
            for content, v in items
        ]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO features VALUES (?,?,?,?,?)", rows)
            self._db.execute(
                "INSERT OR REPLACE INTO models VALUES (?,?,?)", (model, spec, time.time())
            )

    @_guarded
    def file_hashes(self, stamps: dict[str, str]) -> dict[str, str]:
        """sha256 recorded for those ``path: stamp`` files whose stamp is still the same."""
        keys = {os.fsencode(path): path for path in stamps}
        found: dict[str, str] = {}
        for chunk in _chunks(list(keys)):
            rows = self._db.execute(
                f"SELECT path, stamp, content FROM files WHERE path IN ({_marks(chunk)})", chunk
            )
            for key, stamp, content in rows:
                path = keys[key]
                if stamps[path] == stamp:
                    found[path] = content
        return found

    @_guarded
    def record_file_hashes(self, entries: Iterable[tuple[str, str, str]]) -> None:
        """Record ``(path, stamp, sha256)`` for trusted stamps, in one transaction."""
        rows = [(os.fsencode(path), stamp, content) for path, stamp, content in entries]
        if rows:
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?)", rows)

    @_guarded
    def summary(self) -> list[CacheSummary]:
        rows = self._db.execute(
            "SELECT f.model, COALESCE(m.spec, '?'), f.view, COUNT(*), SUM(LENGTH(f.vec)) "
            "FROM features f LEFT JOIN models m ON m.model = f.model "
            "GROUP BY f.model, f.view ORDER BY f.model, f.view"
        )
        return [CacheSummary(*row) for row in rows]

    @_guarded
    def clear(self, model: str | None = None) -> int:
        """Delete all entries (and the file hashes), or one model fingerprint's (or spec's)."""
        with self._db:
            if model is None:
                count = self._db.execute("DELETE FROM features").rowcount
                self._db.execute("DELETE FROM models")
                self._db.execute("DELETE FROM files")
            else:
                fps = [model] + [
                    r[0]
                    for r in self._db.execute("SELECT model FROM models WHERE spec=?", (model,))
                ]
                count = self._db.execute(
                    f"DELETE FROM features WHERE model IN ({_marks(fps)})", fps
                ).rowcount
                self._db.execute(f"DELETE FROM models WHERE model IN ({_marks(fps)})", fps)
        self._db.execute("VACUUM")
        return count


def _chunks(items: list[R]) -> Iterator[list[R]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def _marks(items: Sequence[object]) -> str:
    return ",".join("?" * len(items))
