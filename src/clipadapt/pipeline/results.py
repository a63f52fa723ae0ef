"""Typed results: one JSON file per run, in CLIP_benchmark's shape plus the protocol.

Every result carries CLIP_benchmark's ``dataset, model, pretrained, task, metrics`` and the
fields of :class:`RunResult`; each task adds its own (:class:`ClassificationResult`,
:class:`OpenSetResult`). The runner writes them and the report reads them back through the
same classes, so a field is named in one place.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import resource
import sys
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from clipadapt import __version__
from clipadapt.atomic import atomic_write, atomic_write_json
from clipadapt.models.base import Backend
from clipadapt.runtime import runtime_settings

RESULT_SCHEMA = "clipadapt.result/2"
CLASSIFICATION_TASK = "fewshot_classification"
OPEN_SET_TASK = "open_set"
SCORES_SUFFIX = ".scores.npz"


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def model_fields(backend: Backend) -> dict[str, Any]:
    """The model fields of every result: CLIP_benchmark's ``model``/``pretrained``, the spec
    and the fingerprints."""
    return {
        "model": backend.info.model,
        "pretrained": backend.info.pretrained,
        "model_spec": backend.info.spec,
        "model_fingerprint": backend.fingerprint,
        "image_fingerprint": backend.image_fingerprint,
    }


def base_result(
    *, task: str, dataset: str, backend: Backend, metrics: dict[str, Any], **fields: Any
) -> dict[str, Any]:
    """A one-off result outside the bench store (``clipadapt zeroshot``, the demo): the same
    CLIP_benchmark fields, and whatever describes its protocol."""
    return {
        "schema": RESULT_SCHEMA,
        "dataset": dataset,
        "task": task,
        "metrics": metrics,
        **fields,
        **model_fields(backend),
        "package_version": __version__,
        "created": now(),
        "peak_memory_mb": round(peak_memory_mb(), 1),
    }


def config_hash(run_config: dict[str, Any]) -> str:
    """The hash of everything that determines a run's result (decides re-runs)."""
    return hashlib.sha256(json.dumps(run_config, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(kw_only=True)
class RunResult:
    """What every run records: the model, the data, the protocol, the method and its fit."""

    task: ClassVar[str]
    dataset: str
    model: str
    pretrained: str | None
    model_spec: str
    metrics: dict[str, Any]
    protocol: str
    group: str
    sources: list[str]
    targets: list[dict[str, Any]]
    method: str
    hyperparameters: dict[str, Any]
    selected: dict[str, Any]
    selection: str
    reads: list[str]
    feature_fingerprint: str
    training_free: bool
    transductive: bool
    shots: int
    seed: int
    val_per_class: int
    views: int
    augment: list[str]  # transforms of the augmented views ([] without views)
    split_seed: int
    test_fraction: float
    split_files: dict[str, str]
    shortfalls: dict[str, Any]
    skipped: list[dict[str, str]]
    n_support: int
    n_val: int
    classnames: list[str]
    templates: list[str]
    data_fingerprint: dict[str, str]
    timing: dict[str, float]
    torch_threads_fit: int
    config_hash: str
    config: dict[str, Any]
    summary: dict[str, Any]
    model_fingerprint: str
    image_fingerprint: str
    runtime: dict[str, Any] = field(default_factory=runtime_settings)  # threads, allocator
    schema: str = RESULT_SCHEMA
    package_version: str = __version__
    created: str = field(default_factory=now)
    peak_memory_mb: float = field(default_factory=lambda: round(peak_memory_mb(), 1))

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, **dataclasses.asdict(self)}


@dataclass(kw_only=True)
class ClassificationResult(RunResult):
    """Closed-set accuracy per target (``metrics[target]`` is None where not applicable);
    ``metrics[target]["calibration"]`` holds the calibration metrics (clipadapt.calibration)
    of the raw logits and, with temperature scaling, of the scaled ones; ``calibration`` says
    how the temperature was fitted (None in results written before calibration existed)."""

    task: ClassVar[str] = CLASSIFICATION_TASK
    calibration: dict[str, Any] | None = None


@dataclass(kw_only=True)
class OpenSetResult(RunResult):
    """Per target the closed-set accuracy and, per detector, the OOD metrics and H-score."""

    task: ClassVar[str] = OPEN_SET_TASK
    open_set: dict[str, Any]
    detectors: list[str]
    detector_info: dict[str, Any]
    scores_file: str


RESULT_TYPES: dict[str, type[RunResult]] = {
    cls.task: cls for cls in (ClassificationResult, OpenSetResult)
}


def find_results(root: str | Path) -> list[Path]:
    """The bench result files under ``root``:
    ``<root>/<protocol>/<collection>/<group>/<method>/K<shots>_s<seed>.json``."""
    return sorted(Path(root).glob("*/*/*/*/K*_s*.json"))


def write_result(result: RunResult, path: str | Path) -> Path:
    return atomic_write_json(path, result.to_json())


def read_result(path: str | Path) -> RunResult:
    """Load a result file, refusing unreadable ones and those of another result schema."""
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"{path}: not a readable result file ({exc}); delete it to re-run that run"
        ) from None
    if not isinstance(values, dict) or values.get("schema") != RESULT_SCHEMA:
        found = values.get("schema") if isinstance(values, dict) else None
        raise ValueError(
            f"{path}: result schema {found!r} is not {RESULT_SCHEMA!r}; it was written by an "
            "incompatible clipadapt version: re-run it into a fresh directory"
        )
    cls = RESULT_TYPES.get(values.pop("task", None))
    fields = dataclasses.fields(cls) if cls else ()
    required = {f.name for f in fields if f.default is f.default_factory is dataclasses.MISSING}
    if cls is None or not required <= set(values) <= {f.name for f in fields}:
        raise ValueError(
            f"{path}: not a complete clipadapt result (fields differ from "
            f"{RESULT_SCHEMA!r}); delete it to re-run that run"
        )
    return cls(**values)


def scores_path(result_path: Path) -> Path:
    """Where an open-set result's raw per-detector scores live."""
    return result_path.with_name(result_path.stem + SCORES_SUFFIX)


def save_scores(path: Path, scores: Mapping[str, Mapping[str, tuple]]) -> Path:
    """``{target: {detector: (id_scores, ood_scores)}}`` as one compressed ``.npz``."""
    arrays = {
        f"{target}|{det}|{side}": np.asarray(pair[i], dtype=np.float32)
        for target, dets in scores.items()
        for det, pair in dets.items()
        for i, side in enumerate(("id", "ood"))
    }

    def write(p: Path) -> None:
        with open(p, "wb") as handle:
            np.savez_compressed(handle, **arrays)

    return atomic_write(path, write)


def load_scores(result_path: Path) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The scores ``save_scores`` wrote beside a result (or {})."""
    path = scores_path(Path(result_path))
    if not path.is_file():
        return {}
    out: dict[str, dict[str, list]] = defaultdict(dict)
    with np.load(path) as data:
        for key in data.files:
            target, detector, side = key.split("|")
            out[target].setdefault(detector, [None, None])[side == "ood"] = data[key]
    return {t: {d: (p[0], p[1]) for d, p in dets.items()} for t, dets in out.items()}
