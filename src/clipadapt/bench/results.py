"""One JSON result per run, in CLIP_benchmark's shape plus the protocol that produced it."""

from __future__ import annotations

import datetime as dt
import json
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from clipadapt import __version__
from clipadapt.atomic import atomic_write_json
from clipadapt.models.base import Backend

RESULT_SCHEMA = "clipadapt.result/1"


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


@contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """``with stopwatch() as t: ...`` then ``t["seconds"]``."""
    timing: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield timing
    finally:
        timing["seconds"] = time.perf_counter() - start


def base_result(
    *, task: str, dataset: str, backend: Backend, metrics: dict[str, Any], **fields: Any
) -> dict[str, Any]:
    """The fields every result carries; ``fields`` adds the task-specific protocol."""
    return {
        "schema": RESULT_SCHEMA,
        "dataset": dataset,
        "model": backend.info.model,
        "pretrained": backend.info.pretrained,
        "model_spec": backend.info.spec,
        "task": task,
        "metrics": metrics,
        **fields,
        "model_fingerprint": backend.fingerprint,
        "image_fingerprint": backend.image_fingerprint,
        "package_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "peak_memory_mb": round(peak_memory_mb(), 1),
    }


def find_results(root: str | Path) -> list[Path]:
    """The bench result files under ``root``:
    ``<root>/<protocol>/<collection>/<group>/<method>/K<shots>_s<seed>.json``."""
    return sorted(Path(root).glob("*/*/*/*/K*_s*.json"))


def write_result(result: dict[str, Any], path: str | Path) -> Path:
    return atomic_write_json(path, result)


def read_result(path: str | Path) -> dict[str, Any]:
    """Load a result file, refusing ones written by an incompatible clipadapt."""
    path = Path(path)
    result = json.loads(path.read_text())
    if result.get("schema") != RESULT_SCHEMA:
        raise ValueError(
            f"{path}: result schema {result.get('schema')!r} is not {RESULT_SCHEMA!r}; it was "
            "written by an incompatible clipadapt version: re-run it into a fresh directory"
        )
    return result
