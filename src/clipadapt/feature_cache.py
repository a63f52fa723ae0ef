"""A persistent cache of image embeddings, shared by every run, method and seed.

Entries are keyed by (image fingerprint of the model, view, sha256 of the image bytes), so a
changed image, model, preprocessing or augmentation is never served stale. The store is one
SQLite database: each batch is written in a single transaction, so a run killed mid-write
leaves no entry that reads as valid.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipadapt.paths import clipadapt_cache_dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS features (
    model TEXT NOT NULL, view TEXT NOT NULL, content TEXT NOT NULL,
    dim INTEGER NOT NULL, vec BLOB NOT NULL,
    PRIMARY KEY (model, view, content)
);
CREATE TABLE IF NOT EXISTS models (
    model TEXT PRIMARY KEY, spec TEXT NOT NULL, last_used REAL NOT NULL
);
"""


@dataclass(frozen=True)
class CacheSummary:
    model: str
    spec: str
    view: str
    entries: int
    bytes: int


class FeatureCache:
    """Embeddings stored as float32 blobs in ``<directory>/features.sqlite``."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory else clipadapt_cache_dir() / "features"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "features.sqlite"
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def get_many(self, model: str, view: str, contents: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors for those content hashes that are present."""
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(contents))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT content, dim, vec FROM features "
                f"WHERE model=? AND view=? AND content IN ({marks})",
                (model, view, *chunk),
            )
            for content, dim, blob in rows:
                vec = np.frombuffer(blob, dtype=np.float32)
                if vec.shape == (dim,):
                    found[content] = vec
        return found

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

    def summary(self) -> list[CacheSummary]:
        rows = self._db.execute(
            "SELECT f.model, COALESCE(m.spec, '?'), f.view, COUNT(*), SUM(LENGTH(f.vec)) "
            "FROM features f LEFT JOIN models m ON m.model = f.model "
            "GROUP BY f.model, f.view ORDER BY f.model, f.view"
        )
        return [CacheSummary(*row) for row in rows]

    def clear(self, model: str | None = None) -> int:
        """Delete all entries, or those of one model fingerprint (or spec); return how many."""
        with self._db:
            if model is None:
                count = self._db.execute("DELETE FROM features").rowcount
                self._db.execute("DELETE FROM models")
            else:
                fps = [model] + [
                    r[0]
                    for r in self._db.execute("SELECT model FROM models WHERE spec=?", (model,))
                ]
                marks = ",".join("?" * len(fps))
                count = self._db.execute(
                    f"DELETE FROM features WHERE model IN ({marks})", fps
                ).rowcount
                self._db.execute(f"DELETE FROM models WHERE model IN ({marks})", fps)
        self._db.execute("VACUUM")
        return count
