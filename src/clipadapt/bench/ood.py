"""OOD and open-set protocols in the benchmark runner: every method x every detector.

The protocols themselves live in :mod:`clipadapt.ood.protocols`; this module runs them over
sources x shots x seeds like the classification protocols, one result per run:

* ``near_ood``: classes sorted by id, the first ``known_classes`` known; fit on the known
  classes of the source's train split; tested on the source's test split (known-class images
  are ID, the unknown classes' images OOD).
* ``open_set_dg``: the same hold-out and fit, tested on every image of every other domain.
* ``far_ood``: every class of the source known; each dataset of ``ood_data`` is one OOD target.

Per (protocol, source, shots, seed) the task's features are embedded (through the feature
cache) and every detector is fitted once on the support/validation data (never on tests);
then each method is fitted on the same data (``fit_data``: only what it reads, no augmented
views) and ``evaluate_open_set`` calibrates each detector's threshold on the few-shot
validation set and scores every target. The result JSON
(``<out>/<protocol>/<collection>/<source>/<method>/K<shots>_s<seed>.json``, task
``open_set``) carries per target the closed-set accuracy and per detector AUROC, FPR95,
AUPR_IN, AUPR_OUT, OSCR, the threshold and, at it, H-score; the raw scores are saved beside
it (``K<shots>_s<seed>.scores.npz``, keys ``<target>|<detector>|id`` / ``|ood``) so that
``clipadapt report`` can draw histograms and ROC curves.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from clipadapt.atomic import atomic_write
from clipadapt.bench.config import BenchConfig
from clipadapt.bench.fitting import FewShotData, fit_data, timed_fit, torch_threads
from clipadapt.bench.results import RESULT_SCHEMA, base_result, write_result
from clipadapt.data import ImageDataset, load_dataset
from clipadapt.data.errors import DatasetError, quoted
from clipadapt.feature_cache import FeatureCache
from clipadapt.features import extract_features
from clipadapt.methods import Method
from clipadapt.models.base import Backend
from clipadapt.ood import DETECTORS, ScoreInput, cached_text_encoder, create_detector
from clipadapt.ood.local import NoLocalFeaturesError
from clipadapt.ood.protocols import (
    FAR_OOD,
    NEAR_OOD,
    OPEN_SET_DG,
    FeatureSet,
    OpenSetTask,
    TaskFeatures,
    class_holdout_task,
    evaluate_open_set,
    extract_task_features,
    far_ood_task,
    hold_out_classes,
    task_fit_data,
)
from clipadapt.prompts import class_embeddings

OPEN_SET_TASK = "open_set"
SCORES_SUFFIX = ".scores.npz"


@dataclass(frozen=True)
class OodRun:
    protocol: str
    collection: str
    group: str  # the source domain
    method: str
    shots: int
    seed: int

    @property
    def relpath(self) -> Path:
        return Path(
            self.protocol,
            self.collection,
            self.group,
            self.method,
            f"K{self.shots}_s{self.seed}.json",
        )


def scores_path(result_path: Path) -> Path:
    """Where a result's raw per-detector scores live."""
    return result_path.with_name(result_path.stem + SCORES_SUFFIX)


def load_scores(result_path: Path) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """``{target: {detector: (id_scores, ood_scores)}}`` saved beside a result (or {})."""
    path = scores_path(Path(result_path))
    if not path.is_file():
        return {}
    out: dict[str, dict[str, list]] = defaultdict(dict)
    with np.load(path) as data:
        for key in data.files:
            target, detector, side = key.split("|")
            out[target].setdefault(detector, [None, None])[side == "ood"] = data[key]
    return {t: {d: (p[0], p[1]) for d, p in dets.items()} for t, dets in out.items()}


def _save_scores(path: Path, scores: Mapping[str, Mapping[str, tuple]]) -> Path:
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


class OodPlan:
    """What the OOD protocols of one config run: sources, their targets, the task builders."""

    def __init__(
        self, config: BenchConfig, collection: str, domains: dict[str, ImageDataset]
    ) -> None:
        self.config = config
        self.collection = collection
        self.domains = domains
        unknown = [s for s in config.sources if s not in domains]
        if unknown:
            raise DatasetError(
                f"domain(s) {quoted(unknown)} are not in {collection!r}; "
                f"its domains: {quoted(list(domains))}"
            )
        self.sources = list(config.sources) or list(domains)
        self._ood: dict[str, ImageDataset] | None = None
        self._fingerprints: dict[str, str] = {}
        first = next(iter(domains.values()))
        self.class_ids = list(first.class_ids)
        if any(p in (NEAR_OOD, OPEN_SET_DG) for p in config.protocols):
            hold_out_classes(self.class_ids, config.known_classes)  # checks the count
        if OPEN_SET_DG in config.protocols and len(domains) < 2:
            raise DatasetError(
                f"protocol open_set_dg needs a domain-folders root with at least two domains, "
                f"but {collection!r} is one dataset; use near_ood"
            )

    @property
    def ood_datasets(self) -> dict[str, ImageDataset]:
        if self._ood is None:
            self._ood = {}
            for name, path in self.config.ood_data.items():
                loaded = load_dataset(path, skip_bad=self.config.skip_bad)
                if isinstance(loaded, dict):
                    raise DatasetError(
                        f"ood_data {name}: {path} holds domains ({', '.join(loaded)}); "
                        "name one domain's folder"
                    )
                self._ood[name] = loaded
        return self._ood

    def fingerprint(self, name: str, dataset: ImageDataset) -> str:
        if name not in self._fingerprints:
            self._fingerprints[name] = dataset.fingerprint()
        return self._fingerprints[name]

    def targets(self, protocol: str, source: str) -> list[str]:
        if protocol == NEAR_OOD:
            return [source]
        if protocol == OPEN_SET_DG:
            return [d for d in self.domains if d != source]
        return sorted(self.config.ood_data)

    def known_unknown(self, protocol: str) -> tuple[list[str], list[str]]:
        if protocol == FAR_OOD:
            return self.class_ids, sorted(self.config.ood_data)
        return hold_out_classes(self.class_ids, self.config.known_classes)

    def task(self, protocol: str, source: str, shots: int, seed: int) -> OpenSetTask:
        c = self.config
        common = {
            "shots": shots,
            "seed": seed,
            "split_seed": c.split_seed,
            "test_fraction": c.test_fraction,
        }
        if protocol == FAR_OOD:
            task = far_ood_task(self.domains[source], self.ood_datasets, **common)
            task.dataset = self.collection
            return task
        return class_holdout_task(
            self.domains,
            sources=[source],
            targets=self.targets(protocol, source),
            num_known=c.known_classes,
            dataset_name=self.collection,
            **common,
        )

    def run_config(
        self, run: OodRun, method: Method, backend: Backend, templates: list[str]
    ) -> dict[str, Any]:
        c = self.config
        known, unknown = self.known_unknown(run.protocol)
        targets = self.targets(run.protocol, run.group)
        data = {
            d: self.fingerprint(d, self.domains[d])
            for d in {run.group, *targets} & set(self.domains)
        }
        if run.protocol == FAR_OOD:
            data |= {
                f"ood:{n}": self.fingerprint(f"ood:{n}", d) for n, d in self.ood_datasets.items()
            }
        config = {
            "schema": RESULT_SCHEMA,
            "task": OPEN_SET_TASK,
            "protocol": run.protocol,
            "collection": run.collection,
            "group": run.group,
            "sources": [run.group],
            "targets": targets,
            "known_classes": known,
            "unknown": unknown,
            "method": run.method,
            **({"variant_of": method.name} if method.name != run.method else {}),
            "hyperparameters": method.hyperparameters(),
            "shots": run.shots,
            "seed": run.seed,
            "val_per_class": min(run.shots, 4),
            "views": 0,
            "split_seed": c.split_seed,
            "test_fraction": c.test_fraction,
            "templates": templates,
            "detectors": list(detector_names(c)),
            "accept": c.accept,
            "image_fingerprint": backend.image_fingerprint,
            "text_fingerprint": backend.text_fingerprint,
            "data_fingerprints": dict(sorted(data.items())),
        }
        return json.loads(json.dumps(config))


def detector_names(config: BenchConfig) -> tuple[str, ...]:
    names = config.detectors or tuple(DETECTORS)
    unknown = [n for n in names if n not in DETECTORS]
    if unknown:
        raise ValueError(f"unknown detector(s) {unknown}; known: {', '.join(DETECTORS)}")
    return names


def plan_runs(plan: OodPlan, methods: Mapping[str, Method]) -> list[OodRun]:
    c = plan.config
    return [
        OodRun(protocol, plan.collection, source, name, shots, seed)
        for protocol in c.protocols
        if protocol in (NEAR_OOD, OPEN_SET_DG, FAR_OOD)
        for source in plan.sources
        for name in methods
        for shots in c.shots
        for seed in c.seeds
    ]


def execute_ood(
    plan: OodPlan,
    pending: list[tuple[OodRun, dict[str, Any]]],
    methods: Mapping[str, Method],
    backend: Backend,
    cache: FeatureCache,
    prompts: Any,
    templates: list[str],
    *,
    progress: bool = True,
    prepare_only: bool = False,
) -> list[Path]:
    """Run ``pending``: per (protocol, source, shots, seed) embed and fit detectors once."""
    out, written = plan.config.out, []
    grouped: dict[tuple, list] = defaultdict(list)
    for run, run_config in pending:
        grouped[(run.protocol, run.group, run.shots, run.seed)].append((run, run_config))
    names = detector_names(plan.config)
    bar = tqdm(total=len(pending), desc="bench ood", unit="run", disable=not progress)
    for (protocol, source, shots, seed), group in grouped.items():
        task = plan.task(protocol, source, shots, seed)
        features = _task_features(task, backend, cache, names, progress)
        if prepare_only:
            continue
        text = class_embeddings(backend, task.classnames, prompts)
        full = task_fit_data(task, features, text, backend.logit_scale)
        encode = cached_text_encoder(backend, cache)
        with torch_threads():
            detectors = {n: create_detector(n).fit(full, encode_texts=encode) for n in names}
        few = FewShotData(
            support=features.support.features,
            support_labels=features.support.labels,
            support_paths=[str(task.train.samples[i].path) for i in task.split.support],
            val=features.val.features,
            val_labels=features.val.labels,
        )
        for run, run_config in group:
            bar.set_postfix_str(f"{protocol} {source} {run.method} K={shots} s={seed}")
            checkpoints = out / "checkpoints" / run.relpath.with_suffix("")
            prototype = methods[run.method]
            method = type(prototype)(**prototype.hyperparameters())
            inputs = fit_data(
                method,
                few,
                class_embeddings=text,
                logit_scale=backend.logit_scale,
                classnames=list(task.classnames),
                seed=seed,
                backend=backend,
                checkpoint_dir=checkpoints,
            )
            fit_seconds = timed_fit(method, inputs)
            val, targets = _method_features(method, backend, cache, task, features, progress)
            with torch_threads(), torch.inference_mode():
                evaluation = evaluate_open_set(
                    method, detectors, val, targets, accept=plan.config.accept
                )
            path = out / run.relpath
            _save_scores(scores_path(path), evaluation.scores)
            result = base_result(
                task=OPEN_SET_TASK,
                dataset=plan.collection,
                backend=backend,
                metrics=evaluation.metrics,
                summary=summarize_open_set(evaluation.metrics),
                protocol=protocol,
                group=source,
                sources=[source],
                targets=[
                    {
                        "name": name,
                        "protocol": t.protocol,
                        "n_known": len(t.known.paths),
                        "n_unknown": len(t.unknown.paths),
                    }
                    for name, t in task.targets.items()
                ],
                open_set=task.describe(),
                method=run.method,
                hyperparameters=method.hyperparameters(),
                selected=method.selected,
                reads=sorted(kind.value for kind in method.reads),
                feature_fingerprint=method.feature_backend(backend).image_fingerprint,
                training_free=method.training_free,
                transductive=False,
                shots=shots,
                seed=seed,
                val_per_class=run_config["val_per_class"],
                views=0,
                split_seed=plan.config.split_seed,
                test_fraction=plan.config.test_fraction,
                n_support=len(few.support_labels),
                n_val=len(few.val_labels),
                classnames=list(task.classnames),
                templates=templates,
                detectors=list(names),
                detector_info={
                    n: {k: v for k, v in d.info.items() if k != "negative_labels"}
                    for n, d in detectors.items()
                },
                scores_file=scores_path(path).name,
                data_fingerprint=run_config["data_fingerprints"],
                timing={"fit_seconds": round(fit_seconds, 6)},
                torch_threads_fit=1,
                config_hash=_hash(run_config),
                config=run_config,
            )
            written.append(write_result(result, path))
            shutil.rmtree(checkpoints, ignore_errors=True)
            bar.update()
    bar.close()
    return written


def _hash(run_config: dict[str, Any]) -> str:
    from clipadapt.bench.runner import config_hash

    return config_hash(run_config)


def _task_features(
    task: OpenSetTask, backend: Backend, cache: FeatureCache, names, progress: bool
) -> TaskFeatures:
    """Embed the task; patch features only when a detector reads them and the tower has them."""
    local = any(ScoreInput.LOCAL_FEATURES in DETECTORS[n].uses for n in names)
    if local:
        try:
            return extract_task_features(task, backend, cache=cache, local=True, progress=progress)
        except NoLocalFeaturesError:  # a CNN tower: gl_mcm is reported as skipped
            pass
    return extract_task_features(task, backend, cache=cache, progress=progress)


def _method_features(
    method: Method,
    backend: Backend,
    cache: FeatureCache,
    task: OpenSetTask,
    features: TaskFeatures,
    progress: bool,
) -> tuple[FeatureSet, dict[str, tuple[FeatureSet, FeatureSet]]]:
    """The task's features, plus the method's own when it adapted the image side."""
    eval_backend = method.feature_backend(backend)
    if eval_backend is backend:
        return features.val, features.targets

    def with_method(feature_set: FeatureSet, paths: list[Path]) -> FeatureSet:
        own = extract_features(eval_backend, paths, cache=cache, progress=progress).features
        return dataclasses.replace(feature_set, method_features=own)

    val = with_method(features.val, [task.train.samples[i].path for i in task.split.val])
    targets = {
        name: (
            with_method(features.targets[name][0], task.targets[name].known.paths),
            with_method(features.targets[name][1], task.targets[name].unknown.paths),
        )
        for name in features.targets
    }
    return val, targets


def summarize_open_set(metrics: dict[str, Any]) -> dict[str, Any]:
    """Per detector, means over the run's targets of AUROC, FPR95 and H-score."""
    targets = list(metrics["targets"].values())
    out: dict[str, Any] = {"closed_set_acc": float(np.mean([t["closed_set_acc"] for t in targets]))}
    for detector in targets[0]["scores"]:
        rows = [t["scores"][detector] for t in targets]
        if any("AUROC" not in r for r in rows):
            continue
        out[detector] = {
            k: float(np.mean([r[k] for r in rows])) for k in ("AUROC", "FPR95", "H_score")
        }
    return out
