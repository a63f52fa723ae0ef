"""Parquet feature shards: how a bulk embedding job splits its inputs, writes, and imports.

A job's inputs are cut, in order, into shards of ``shard_size`` images. A shard's file name
says which shard it is and hashes what produced it: the model's image fingerprint, the view
key and each path with its file stamp (size, times, inode). A job run again over the same,
unchanged files with the same model therefore finds every finished shard under its name and
skips it; a changed file or another model names a new shard. Shards are written to a
temporary file and renamed, so a file under a shard's name is always complete.

Each shard holds one row per decodable image: ``content`` (sha256 of the bytes decoded, the
feature cache's key), ``path`` (the file name as bytes, exactly as the file system spells it)
and ``feature`` (L2-normalised float32, a fixed-size list). The file-level metadata carries
the cache key (``model_key`` = image fingerprint, ``view_key``), the model spec, the view,
and the files left out as unreadable, with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipadapt.atomic import atomic_write
from clipadapt.data.images import file_stamp
from clipadapt.feature_cache import FeatureCache
from clipadapt.paths import display_path

SHARD_FORMAT = "clipadapt-features/1"
META_PREFIX = "clipadapt."
DEFAULT_SHARD_SIZE = 1024
T = TypeVar("T")


@dataclass(frozen=True)
class ShardPlan:
    """One shard: its position in the job, its input files and its file name."""

    index: int
    paths: list[str]
    name: str


@dataclass(frozen=True)
class ShardKey:
    """What produced a shard's features: the feature cache's key plus readable names."""

    model_key: str  # the backend's image fingerprint
    view_key: str
    spec: str
    view: str


@dataclass(frozen=True)
class ShardImport:
    """What ``import_shards`` put into the feature cache."""

    shards: int
    rows: int
    skipped: list[dict[str, str]]


def plan_shards(
    paths: Sequence[str], key: ShardKey, shard_size: int = DEFAULT_SHARD_SIZE
) -> list[ShardPlan]:
    """Cut ``paths`` (in order) into shards of ``shard_size`` and name each by its contents."""
    if shard_size < 1:
        raise ValueError(f"shard size must be at least 1, got {shard_size}")
    plans = []
    for index, start in enumerate(range(0, len(paths), shard_size)):
        chunk = [os.fspath(p) for p in paths[start : start + shard_size]]
        digest = hashlib.sha256(f"{key.model_key}|{key.view_key}".encode())
        for path in chunk:
            digest.update(os.fsencode(path) + b"\0" + _stamp(path).encode() + b"\0")
        plans.append(ShardPlan(index, chunk, f"part-{index:05d}-{digest.hexdigest()[:16]}.parquet"))
    return plans


def _stamp(path: str) -> str:
    try:
        return file_stamp(os.stat(path))
    except OSError as err:  # unreadable now; the shard lists it as skipped
        return type(err).__name__


def write_shard(
    target: Path,
    key: ShardKey,
    contents: list[str],
    paths: list[str],
    features: np.ndarray,
    skipped: list[dict[str, str]],
) -> Path:
    """Write one shard atomically (see the module docstring for its columns and metadata)."""
    dim = int(features.shape[1]) if features.ndim == 2 else 0
    flat = pa.array(np.ascontiguousarray(features, np.float32).reshape(-1), pa.float32())
    table = pa.table(
        {
            "content": pa.array(contents, pa.string()),
            "path": pa.array([os.fsencode(p) for p in paths], pa.binary()),
            "feature": pa.FixedSizeListArray.from_arrays(flat, dim),
        }
    )
    meta = {
        "format": SHARD_FORMAT,
        "model_key": key.model_key,
        "view_key": key.view_key,
        "spec": key.spec,
        "view": key.view,
        "skipped": json.dumps(skipped),
    }
    table = table.replace_schema_metadata({META_PREFIX + k: v for k, v in meta.items()})
    return atomic_write(target, lambda tmp: pq.write_table(table, tmp))


@dataclass(frozen=True)
class Shard:
    """A shard read back: its key, rows and the files it left out."""

    key: ShardKey
    contents: list[str]
    paths: list[str]
    features: np.ndarray  # (rows, dim) float32
    skipped: list[dict[str, str]]


def read_shard(path: Path) -> Shard:
    """Read a shard written by ``write_shard``; anything else is a one-line ``ValueError``."""
    table = _read(path, pq.read_table)
    meta = _metadata(path, table.schema)
    column = table.column("feature").combine_chunks()
    dim = column.type.list_size
    features = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return Shard(
        key=ShardKey(meta["model_key"], meta["view_key"], meta["spec"], meta["view"]),
        contents=table.column("content").to_pylist(),
        paths=[os.fsdecode(p) for p in table.column("path").to_pylist()],
        features=features.reshape(-1, dim),
        skipped=json.loads(meta["skipped"]),
    )


def shard_skipped(path: Path) -> list[dict[str, str]]:
    """The files a finished shard left out, from its metadata alone."""
    return json.loads(_metadata(path, _read(path, pq.read_schema))["skipped"])


def _read(path: Path, reader: Callable[[Path], T]) -> T:
    try:
        return reader(path)
    except (OSError, pa.ArrowException) as err:
        raise ValueError(
            f"{display_path(path)} is not a readable Parquet shard ({err}); remove it and run "
            "the embedding job again to rewrite it"
        ) from err


def _metadata(path: Path, schema: pa.Schema) -> dict[str, str]:
    meta = {
        k.decode()[len(META_PREFIX) :]: v.decode()
        for k, v in (schema.metadata or {}).items()
        if k.decode().startswith(META_PREFIX)
    }
    if meta.get("format") != SHARD_FORMAT or not {"content", "path", "feature"} <= set(
        schema.names
    ):
        raise ValueError(
            f"{display_path(path)} is not a clipadapt feature shard (format "
            f"{meta.get('format')!r}, columns {schema.names}); give a folder written by "
            "'clipadapt embed --engine ray'"
        )
    return meta


def shard_files(directory: Path) -> list[Path]:
    """The finished shards in ``directory`` (temporary files of unfinished writes are hidden)."""
    if not directory.is_dir():
        raise ValueError(f"{display_path(directory)} is not a folder of feature shards")
    return sorted(p for p in directory.glob("part-*.parquet") if p.is_file())


def import_shards(directory: Path, cache: FeatureCache) -> ShardImport:
    """Put every shard's rows into ``cache`` under its key, one transaction per shard."""
    files = shard_files(directory)
    if not files:
        raise ValueError(
            f"{display_path(directory)} holds no part-*.parquet shards; write them with "
            "'clipadapt embed --engine ray --shards DIR'"
        )
    rows, skipped = 0, []
    for path in files:
        shard = read_shard(path)
        key = shard.key
        cache.put_many(
            key.model_key, key.spec, key.view_key, zip(shard.contents, shard.features, strict=True)
        )
        rows += len(shard.contents)
        skipped += shard.skipped
    return ShardImport(shards=len(files), rows=rows, skipped=skipped)
