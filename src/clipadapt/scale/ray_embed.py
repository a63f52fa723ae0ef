"""Bulk image embedding as a Ray Data pipeline that writes Parquet feature shards.

The pipeline: the paths of the shards not yet written -> decode and preprocess (a stateless
task, ``clipadapt.features.load_pixels`` with the backend's view transform) -> the image
tower as a callable class in ``map_batches`` over a pool of ``workers`` actors, each loading
the model once -> rows streamed back to the driver, which writes each shard (see
``clipadapt.scale.shards``) as soon as all its rows have arrived.

Batches: the input is built as blocks of exactly the backend's ``preferred_batch_size``
images, in input order, and each stage takes whole blocks (``batch_size=None``), so every
forward sees the same images as the local path's batch (``extract_features`` with a cold
cache), as long as no file in the block is unreadable (the local path refills a batch past
an unreadable file; here the block is encoded without it). Shard sizes are rounded up to a
multiple of the batch size so that shards never split a batch.

Unreadable files never stop the job: they are listed in their shard's metadata and in the
result. Ray is started on this machine by ``start_ray`` unless ``RAY_ADDRESS`` (or an
already initialised Ray) points at a cluster; the job itself is the same either way.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from clipadapt.data.errors import ImageDecodeError
from clipadapt.features import load_pixels
from clipadapt.models.base import Backend
from clipadapt.paths import display_path
from clipadapt.scale.shards import (
    DEFAULT_SHARD_SIZE,
    ShardKey,
    ShardPlan,
    plan_shards,
    shard_skipped,
    write_shard,
)
from clipadapt.views import CENTER, view_key, view_transform

Batch = dict[str, np.ndarray]


@dataclass
class RayEmbedding:
    """What a job did: shards written now or found finished, images encoded now, and every
    file left out as unreadable (``{"path", "reason"}``, in input order)."""

    directory: Path
    shards: int
    reused: int
    computed: int
    skipped: list[dict[str, str]] = field(default_factory=list)


def start_ray(**init_options: Any) -> None:
    """Connect to ``RAY_ADDRESS`` or start Ray on this machine, unless it is running already.

    ``init_options`` (``num_cpus``, ``object_store_memory``, ...) apply to a local start.
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        init_options = {}
    ray.init(include_dashboard=False, log_to_driver=False, **init_options)


def embed_with_ray(
    backend: Backend,
    paths: Sequence[str | os.PathLike[str]],
    directory: str | os.PathLike[str],
    *,
    view: str = CENTER,
    workers: int = 1,
    worker_cpus: float = 1.0,
    shard_size: int = DEFAULT_SHARD_SIZE,
    batch_size: int | None = None,
    progress: bool = True,
) -> RayEmbedding:
    """Embed ``paths`` under ``view`` into Parquet shards in ``directory``, skipping the shards
    already there; Ray must be started (``start_ray``). ``backend`` is loaded here only for
    its key and preprocessing: each actor loads its own from ``backend.info.spec``. Each
    actor runs ``ceil(worker_cpus)`` torch threads; features are bit-identical to the local
    path's only with as many threads as it used (they decide how a convolution splits).
    ``batch_size`` defaults to the backend's ``preferred_batch_size``, as in the local path."""
    import ray

    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    cpus = ray.cluster_resources().get("CPU", 0)
    if worker_cpus > cpus:
        raise ValueError(
            f"each Ray worker asks for {worker_cpus} CPUs but the Ray cluster has {cpus}; "
            "lower --worker-cpus"
        )
    directory, gpu = Path(directory), backend.device.type == "cuda"
    batch = batch_size or backend.preferred_batch_size
    key = ShardKey(backend.image_fingerprint, view_key(view), backend.info.spec, view)
    plans = plan_shards([os.fspath(p) for p in paths], key, -(-shard_size // batch) * batch)
    pending = [plan for plan in plans if not (directory / plan.name).is_file()]
    skipped = {
        plan.index: [] if plan in pending else shard_skipped(directory / plan.name)
        for plan in plans
    }
    computed = 0
    if pending:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        blocks = [
            _block(plan, start, batch)
            for plan in pending
            for start in range(0, len(plan.paths), batch)
        ]
        rows = (
            ray.data.from_arrow(blocks)
            .map_batches(
                decode_batch,
                batch_size=None,
                batch_format="numpy",
                num_cpus=worker_cpus,  # as the actors: Ray fuses the two stages into them
                fn_kwargs={"transform": view_transform(backend.preprocess, view)},
            )
            .map_batches(
                ImageEncoder,
                batch_size=None,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=worker_cpus,
                num_gpus=1 if gpu else 0,  # Ray makes the actor's GPU the only one it sees
                fn_constructor_kwargs={
                    "spec": backend.info.spec,
                    "device": "cuda" if gpu else "cpu",
                    "model_key": key.model_key,
                    "threads": max(1, math.ceil(worker_cpus)),
                },
            )
        )
        writer = _ShardWriter(directory, key, pending)
        total = sum(len(plan.paths) for plan in pending)
        with tqdm(total=total, desc="embed (ray)", unit="img", disable=not progress) as bar:
            for part in rows.iter_batches(batch_size=None, batch_format="numpy"):
                for index, listed in writer.add(part).items():
                    skipped[index] = listed
                bar.update(len(part["row"]))
        if writer.parts:
            raise RuntimeError(
                f"the Ray job ended without the rows of shards {sorted(writer.parts)}"
            )
        computed = total - sum(
            len(listed) for index, listed in skipped.items() if index in writer.plans
        )
    return RayEmbedding(
        directory=directory,
        shards=len(plans),
        reused=len(plans) - len(pending),
        computed=computed,
        skipped=[item for index in sorted(skipped) for item in skipped[index]],
    )


def _block(plan: ShardPlan, start: int, batch: int) -> pa.Table:
    chunk = plan.paths[start : start + batch]
    return pa.table(
        {
            "shard": pa.array([plan.index] * len(chunk), pa.int64()),
            "row": pa.array(range(start, start + len(chunk)), pa.int64()),
            "path": pa.array([os.fsencode(p) for p in chunk], pa.binary()),
        }
    )


def decode_batch(batch: Batch, transform: Callable[[Any, str], torch.Tensor]) -> Batch:
    """Read, hash, decode and preprocess a block of files; unreadable ones get their reason
    in ``error`` and no pixels (pixels travel as raw float32 bytes with their shape)."""
    contents, errors, pixels = [], [], []
    shape: tuple[int, ...] = ()
    for raw in batch["path"]:
        try:
            digest, tensor = load_pixels(os.fsdecode(raw), transform)
        except ImageDecodeError as err:
            contents.append("")
            errors.append(err.reason)
            pixels.append(b"")
            continue
        contents.append(digest)
        errors.append("")
        pixels.append(tensor.numpy().astype(np.float32, copy=False).tobytes())
        shape = tuple(tensor.shape)
    return {
        "shard": batch["shard"],
        "row": batch["row"],
        "path": batch["path"],
        "content": np.array(contents, dtype=object),
        "error": np.array(errors, dtype=object),
        "pixels": np.array(pixels, dtype=object),
        "shape": np.array([list(shape)] * len(contents), dtype=np.int64).reshape(len(contents), -1),
    }


class ImageEncoder:
    """The image tower as a Ray actor: loads the backend once, encodes decoded blocks."""

    def __init__(self, spec: str, device: str, model_key: str, threads: int) -> None:
        from clipadapt.models import create_backend

        torch.set_num_threads(threads)
        self.backend = create_backend(spec, device)
        if self.backend.image_fingerprint != model_key:
            raise RuntimeError(
                f"{spec} on this Ray worker has image fingerprint "
                f"{self.backend.image_fingerprint}, the driver's has {model_key}: install the "
                "same model weights and clipadapt version on every node"
            )

    def __call__(self, batch: Batch) -> Batch:
        good = [i for i, error in enumerate(batch["error"]) if not error]
        features = np.zeros((len(batch["error"]), self.backend.embed_dim), np.float32)
        if good:
            shape = tuple(int(s) for s in batch["shape"][good[0]])
            pixels = np.stack(
                [np.frombuffer(batch["pixels"][i], np.float32).reshape(shape) for i in good]
            )
            features[good] = self.backend.encode_images(torch.from_numpy(pixels)).numpy()
        return {name: batch[name] for name in ("shard", "row", "path", "content", "error")} | {
            "feature": features
        }


class _ShardWriter:
    """Gathers the encoded rows of each shard and writes the shard once it is complete."""

    def __init__(self, directory: Path, key: ShardKey, plans: list[ShardPlan]) -> None:
        self.directory, self.key = directory, key
        self.plans = {plan.index: plan for plan in plans}
        self.parts: dict[int, list[Batch]] = {plan.index: [] for plan in plans}
        self.counts = dict.fromkeys(self.plans, 0)

    def add(self, part: Batch) -> dict[int, list[dict[str, str]]]:
        """Take a block of rows; returns the skipped files of each shard it completed."""
        done = {}
        for index in np.unique(part["shard"]).tolist():
            mask = part["shard"] == index
            self.parts[index].append({name: values[mask] for name, values in part.items()})
            self.counts[index] += int(mask.sum())
            if self.counts[index] == len(self.plans[index].paths):
                done[index] = self._write(index)
        return done

    def _write(self, index: int) -> list[dict[str, str]]:
        parts = self.parts.pop(index)
        rows = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        order = np.argsort(rows["row"], kind="stable")
        rows = {name: values[order] for name, values in rows.items()}
        ok = np.array([not error for error in rows["error"]], dtype=bool)
        paths = [os.fsdecode(raw) for raw in rows["path"]]
        skipped = [
            {"path": display_path(path), "reason": str(error)}
            for path, error, good in zip(paths, rows["error"], ok, strict=True)
            if not good
        ]
        write_shard(
            self.directory / self.plans[index].name,
            self.key,
            [str(c) for c in rows["content"][ok]],
            [p for p, good in zip(paths, ok, strict=True) if good],
            np.asarray(rows["feature"][ok], np.float32),
            skipped,
        )
        return skipped
