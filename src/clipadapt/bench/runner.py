"""The benchmark runner: methods x settings x shots x seeds, one typed JSON result per run.

Every protocol (``clipadapt.bench.protocols``) gives settings; every run goes through the
same :class:`~clipadapt.pipeline.experiment.Experiment`, which builds each method's
``FitData`` from the few-shot splits only, so test images never reach ``fit`` (unless a
method is configured with ``unlabeled: test``: it then gets the test images, without labels,
as its unlabeled data, and its results say ``transductive``). Open-set settings also fit
every detector once per sample and score it on top of each method.

Closed-set results also record calibration metrics per target (``clipadapt.calibration``)
and, with ``calibrate: temperature``, the temperature fitted on the few-shot validation set
(``Experiment.fit_temperature``) and every target scored again at it.

Results live at ``<out>/<protocol>/<collection>/<group>/<label>/K<shots>_s<seed>.json``
(open-set runs keep their raw scores beside, ``.scores.npz``); a result whose recorded
configuration hash matches is skipped on re-runs, one whose hash differs is refused (unless
``overwrite``), and a directory holding results of another result schema is refused
outright.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from clipadapt.bench.config import OOD_PROTOCOLS, BenchConfig
from clipadapt.bench.protocols import (
    BASE,
    HELD_OUT,
    HM,
    IN_DOMAIN,
    NOVEL,
    OOD_PREFIX,
    OTHER_DOMAIN,
    OTHERS_MEAN,
    as_domains,
    harmonic_mean,
    settings,
)
from clipadapt.data import ImageDataset, load_dataset
from clipadapt.data.errors import DatasetError
from clipadapt.feature_cache import FeatureCache
from clipadapt.methods import METHODS, DataKind, Method
from clipadapt.models.base import Backend
from clipadapt.ood import DETECTORS
from clipadapt.pipeline.experiment import Experiment, Fitted
from clipadapt.pipeline.fitting import reads_unlabeled, unlabeled_indices, views_given
from clipadapt.pipeline.openset import summarize_open_set
from clipadapt.pipeline.results import (
    RESULT_SCHEMA,
    ClassificationResult,
    OpenSetResult,
    config_hash,
    find_results,
    model_fields,
    read_result,
    save_scores,
    scores_path,
    write_result,
)
from clipadapt.pipeline.task import Setting, Splits, Target
from clipadapt.prompts import make_prompt_set

LABEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
UNLABELED_SOURCES = ("train_pool", "test")


@dataclass(frozen=True)
class Run:
    setting: Setting
    method: str  # the method's label in the config
    shots: int
    seed: int

    @property
    def relpath(self) -> Path:
        s = self.setting
        return Path(
            s.protocol, s.collection, s.group, self.method, f"K{self.shots}_s{self.seed}.json"
        )


@dataclass
class BenchSummary:
    """What a call to ``run_bench`` did."""

    out: Path
    planned: int = 0
    ran: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    wall_seconds: float = 0.0


def check_results_dir(out: Path, overwrite: bool = False) -> list[Path]:
    """The result files already in ``out``; refuses a directory holding unreadable or
    incompatible ones, naming the file (with ``overwrite`` the planned ones are replaced)."""
    paths = find_results(out)
    for path in paths:
        try:
            read_result(path)
        except ValueError as err:
            if not overwrite:
                raise ValueError(
                    f"refusing to add results to {out}: {err} (or pass --overwrite)"
                ) from None
    return paths


def run_bench(
    config: BenchConfig,
    *,
    backend: Backend | None = None,
    registry: Mapping[str, type[Method]] = METHODS,
    overwrite: bool = False,
    prepare_only: bool = False,
    progress: bool = True,
) -> BenchSummary:
    """Run every (method, setting, shots, seed) of ``config`` that has no result yet.

    ``prepare_only`` checks the plan and computes (caches) the features it needs, then stops.
    """
    start = time.perf_counter()
    methods, transductive = configured_methods(config, registry)
    open_set = [p for p in config.protocols if p in OOD_PROTOCOLS]
    if transductive and open_set:
        raise ValueError(
            f"methods {sorted(transductive)} learn from the test images (unlabeled: test), "
            f"which the OOD protocols do not offer; run them in a config without {open_set}"
        )
    detectors = detector_names(config)
    check_results_dir(config.out, overwrite)
    _remove_stale_temporaries(config.out)
    loaded = load_dataset(config.data, classnames_file=config.classnames, skip_bad=config.skip_bad)
    collection, domains = as_domains(loaded)
    for name, path in config.ood_data.items():
        domains[OOD_PREFIX + name] = _ood_dataset(name, path, config.skip_bad)
    plan = [
        s
        for p in config.protocols
        for s in settings(
            p,
            collection,
            domains,
            config.sources,
            known_classes=config.known_classes,
            ood_data=list(config.ood_data),
        )
    ]
    splits = Splits(
        domains,
        config.out / "splits" / collection,
        split_seed=config.split_seed,
        test_fraction=config.test_fraction,
        on_too_few=config.on_too_few,
    )
    for setting in plan:  # sample everything first: too few images fails before any run
        for source in setting.sources:
            for shots in config.shots:
                for seed in config.seeds:
                    splits.few_shot(source, shots, seed)
    backend = backend or _create_backend(config)
    prompts = make_prompt_set(config.templates, classnames=next(iter(domains.values())).classnames)
    experiment = Experiment(
        backend,
        domains,
        splits,
        prompts,
        cache=FeatureCache(config.cache_dir),
        views=config.views,
        augment=config.augment,
        selection=config.selection,
        skip_bad=config.skip_bad,
        progress=progress,
    )
    runner = _Runner(config, experiment, methods, transductive, detectors)
    summary = BenchSummary(config.out)
    pending = runner.pending(plan, summary, overwrite)
    summary.planned = len(pending) + len(summary.skipped)
    runner.prefetch(pending)
    if not prepare_only and pending:
        runner.execute(pending, summary, progress)
    summary.wall_seconds = time.perf_counter() - start
    return summary


def _ood_dataset(name: str, path: str, skip_bad: bool) -> ImageDataset:
    loaded = load_dataset(path, skip_bad=skip_bad, min_classes=1)
    if isinstance(loaded, dict):
        raise DatasetError(
            f"ood_data {name}: {path} holds domains ({', '.join(loaded)}); name one domain's folder"
        )
    return loaded


Pending = list[tuple[Run, dict[str, Any]]]  # runs to do, with their configurations


@dataclass
class _Runner:
    """What every run of one ``run_bench`` call shares."""

    config: BenchConfig
    experiment: Experiment
    methods: dict[str, Method]
    transductive: frozenset[str]
    detectors: tuple[str, ...]
    _fingerprints: dict[str, str] = field(default_factory=dict)

    def fingerprint(self, domain: str) -> str:
        if domain not in self._fingerprints:
            self._fingerprints[domain] = self.experiment.domains[domain].fingerprint()
        return self._fingerprints[domain]

    def pending(self, plan: list[Setting], summary: BenchSummary, overwrite: bool) -> Pending:
        """Every planned run without a finished result (those with one go to ``summary``)."""
        out = []
        for setting in plan:
            for label in self.methods:
                for shots in self.config.shots:
                    for seed in self.config.seeds:
                        run = Run(setting, label, shots, seed)
                        run_config = self.run_config(run)
                        path = self.config.out / run.relpath
                        if path.is_file() and not overwrite and _finished(path, run_config):
                            summary.skipped.append(path)
                        else:
                            out.append((run, run_config))
        return out

    def run_config(self, run: Run) -> dict[str, Any]:
        """Everything that determines a run's result; its hash decides whether to re-run."""
        s, c, method = run.setting, self.config, self.methods[run.method]
        used = [
            d
            for t in s.targets
            for images in (t.known, t.unknown)
            if images is not None
            for d in [images.domain]
        ]
        few = self.experiment.splits.few_shot(s.sources[0], run.shots, run.seed)
        config = {
            "schema": RESULT_SCHEMA,
            "task": OpenSetResult.task if s.open_set else ClassificationResult.task,
            "protocol": s.protocol,
            "collection": s.collection,
            "group": s.group,
            "sources": list(s.sources),
            "targets": [t.describe() for t in s.targets],
            "fit_classes": None if s.classes is None else list(s.classes),
            "method": run.method,
            **({"variant_of": method.name} if method.name != run.method else {}),
            **({"unlabeled": "test"} if run.method in self.transductive else {}),
            "hyperparameters": method.get_params(),
            "selection": c.selection,
            **({"calibrate": c.calibrate} if c.calibrate != "none" and not s.open_set else {}),
            "shots": run.shots,
            "seed": run.seed,
            "val_per_class": few.val_per_class,
            "views": views_given(method, c.views),
            "augment": list(c.augment) if views_given(method, c.views) else [],
            "split_seed": c.split_seed,
            "test_fraction": c.test_fraction,
            "on_too_few": c.on_too_few,
            "templates": list(self.experiment.prompts.templates),
            **({"detectors": list(self.detectors), "accept": c.accept} if s.open_set else {}),
            "image_fingerprint": self.experiment.backend.image_fingerprint,
            "text_fingerprint": self.experiment.backend.text_fingerprint,
            "data_fingerprints": {
                d: self.fingerprint(d) for d in sorted(dict.fromkeys([*s.sources, *used]))
            },
        }
        return json.loads(json.dumps(config))  # as it reads back from a result file

    def prefetch(self, pending: Pending) -> None:
        """Embed every image the pending runs read, in one pass per domain and view."""
        experiment = self.experiment
        needed: dict[str, set[int]] = defaultdict(set)
        support: dict[str, set[int]] = defaultdict(set)
        for setting in dict.fromkeys(run.setting for run, _ in pending):
            for target in setting.targets:
                for images in (target.known, target.unknown):
                    if images is not None:
                        needed[images.domain].update(experiment.splits.indices(images))
        for run, run_config in pending:
            for source in run.setting.sources:
                few = experiment.splits.few_shot(source, run.shots, run.seed)
                needed[source].update(few.support + few.val)
                if run_config["views"]:
                    support[source].update(few.support)
                if reads_unlabeled(self.methods[run.method]):
                    needed[source].update(unlabeled_indices(few))
        bank = experiment.bank
        for domain, indices in sorted(needed.items()):
            bank.ensure(experiment.domains[domain], indices)
        for domain, indices in sorted(support.items()):
            bank.prefetch_views(experiment.domains[domain], sorted(indices), self.config.views)

    def execute(self, pending: Pending, summary: BenchSummary, progress: bool) -> None:
        """Run ``pending``, gathering each sample's features (and fitting the detectors of
        open-set settings) once for all its methods."""
        by_sample: dict[tuple[Setting, int, int], Pending] = defaultdict(list)
        for run, run_config in pending:
            by_sample[(run.setting, run.shots, run.seed)].append((run, run_config))
        bar = tqdm(total=len(pending), desc="bench", unit="run", disable=not progress)
        for (setting, shots, seed), group in by_sample.items():
            data = self.experiment.gather(
                setting,
                shots,
                seed,
                views=max(run_config["views"] for _, run_config in group),
                unlabeled=any(reads_unlabeled(self.methods[run.method]) for run, _ in group),
            )
            detectors = held = None
            if setting.open_set:
                detectors, held = self.experiment.fit_detectors(setting, data, self.detectors, seed)
            with_test = None
            for run, run_config in group:
                bar.set_postfix_str(f"{setting.group} {run.method} K={shots} s={seed}")
                given = data
                if run.method in self.transductive:
                    with_test = with_test or self.experiment.with_test_unlabeled(data, setting)
                    given = with_test
                path = self.config.out / run.relpath
                checkpoints = self.config.out / "checkpoints" / run.relpath.with_suffix("")
                fitted = self.experiment.fit(
                    self.methods[run.method].clone(),
                    setting,
                    given,
                    seed=seed,
                    transductive=run.method in self.transductive,
                    checkpoint_dir=checkpoints,
                )
                if detectors is None:
                    result = self._classification(run, run_config, fitted)
                else:
                    result = self._open_set(run, run_config, fitted, detectors, held, path)
                summary.ran.append(write_result(result, path))
                shutil.rmtree(checkpoints, ignore_errors=True)  # made by this run, to resume it
                bar.update()
        bar.close()
        _remove_empty_dirs(self.config.out / "checkpoints")

    def _classification(
        self, run: Run, run_config: dict[str, Any], fitted: Fitted
    ) -> ClassificationResult:
        calibration: dict[str, Any] = {"mode": "none"}
        if self.config.calibrate == "temperature":
            calibration = self.experiment.fit_temperature(fitted, run.setting, run.shots, run.seed)
        metrics, predict_seconds = self.experiment.evaluate(
            fitted, run.setting, calibration.get("temperature")
        )
        targets = [
            t.describe()
            | {"classnames": self.experiment.names(t.known.classes)}
            | {"n": None if metrics[t.name] is None else metrics[t.name]["n"]}
            for t in run.setting.targets
        ]
        return ClassificationResult(
            **self._common(run, run_config, fitted, predict_seconds),
            metrics=metrics,
            targets=targets,
            summary=summarize(run.setting.targets, metrics),
            calibration=calibration,
        )

    def _open_set(
        self,
        run: Run,
        run_config: dict[str, Any],
        fitted: Fitted,
        detectors: dict[str, Any],
        held: dict[str, Any],
        path: Path,
    ) -> OpenSetResult:
        experiment, setting = self.experiment, run.setting
        start = time.perf_counter()
        evaluation = experiment.evaluate_open_set(
            fitted, setting, detectors, held, run.shots, run.seed, self.config.accept
        )
        predict_seconds = time.perf_counter() - start
        save_scores(scores_path(path), evaluation.scores)
        counts = evaluation.metrics["targets"]
        targets = [
            t.describe()
            | {"n_known": counts[t.name]["n_known"]}
            | {"n_unknown": counts[t.name]["n_unknown"]}
            for t in setting.targets
        ]
        class_ids = experiment.domains[setting.sources[0]].class_ids
        known = [class_ids[c] for c in setting.classes or range(len(class_ids))]
        unknown = sorted(
            {class_ids[c] for t in setting.targets for c in (t.unknown.classes or ())}
        ) or [t.unknown.domain.removeprefix(OOD_PREFIX) for t in setting.targets]
        return OpenSetResult(
            **self._common(run, run_config, fitted, predict_seconds),
            metrics=evaluation.metrics,
            targets=targets,
            summary=summarize_open_set(evaluation.metrics),
            open_set={"known_classes": known, "unknown": unknown, "accept": self.config.accept},
            detectors=list(detectors),
            detector_info={
                n: {k: v for k, v in d.info.items() if k != "negative_labels"}
                for n, d in detectors.items()
            },
            scores_file=scores_path(path).name,
        )

    def _common(
        self, run: Run, run_config: dict[str, Any], fitted: Fitted, predict_seconds: float
    ) -> dict[str, Any]:
        """The fields every result shares."""
        experiment, setting, method = self.experiment, run.setting, fitted.method
        splits = experiment.splits
        few = [splits.few_shot(s, run.shots, run.seed) for s in setting.sources]
        out = self.config.out
        return model_fields(experiment.backend) | {
            "dataset": setting.collection,
            "protocol": setting.protocol,
            "group": setting.group,
            "sources": list(setting.sources),
            "method": run.method,
            "hyperparameters": method.get_params(),
            "selected": method.selected,
            "selection": self.config.selection,
            "reads": sorted(kind.value for kind in method.reads),
            "feature_fingerprint": method.feature_backend(experiment.backend).image_fingerprint,
            "training_free": method.training_free,
            "transductive": fitted.inputs.unlabeled_includes_test,
            "shots": run.shots,
            "seed": run.seed,
            "val_per_class": run_config["val_per_class"],
            "views": run_config["views"],
            "augment": run_config["augment"],
            "split_seed": self.config.split_seed,
            "test_fraction": self.config.test_fraction,
            "split_files": {
                s: str(splits.save(s, run.shots, run.seed).relative_to(out))
                for s in setting.sources
            },
            "shortfalls": {s: f.shortfalls for s, f in zip(setting.sources, few, strict=True)},
            "skipped": self._skipped(run_config),
            "n_support": len(fitted.data.support_labels),
            "n_val": len(fitted.data.val_labels),
            "classnames": experiment.names(setting.classes),
            "templates": list(experiment.prompts.templates),
            "data_fingerprint": run_config["data_fingerprints"],
            "timing": {
                "fit_seconds": round(fitted.fit_seconds, 6),
                "predict_seconds": round(predict_seconds, 6),
            },
            "torch_threads_fit": 1,
            "config_hash": config_hash(run_config),
            "config": run_config,
        }

    def _skipped(self, run_config: dict[str, Any]) -> list[dict[str, str]]:
        """Every file left out of the domains this run reads (``skip_bad``): dropped when the
        dataset was loaded, or unreadable when it was embedded."""
        domains = [self.experiment.domains[d] for d in run_config["data_fingerprints"]]
        dropped = [entry for d in domains for entry in d.skipped]
        unreadable = self.experiment.bank.skipped
        if not unreadable:  # the usual case: no set of every path to build for each run
            return dropped
        paths = {str(s.path) for d in domains for s in d.samples}
        return dropped + [entry for entry in unreadable if entry["path"] in paths]


def _remove_stale_temporaries(out: Path) -> None:
    """Delete the temporary files a killed run left where it writes results (``atomic_write``
    names them ``.<result file>.<random>.tmp``); the results themselves are always whole."""
    for pattern in ("*/*/*/*/.K*_s*.json.*.tmp", "*/*/*/*/.K*_s*.scores.npz.*.tmp"):
        for stale in out.glob(pattern):
            stale.unlink(missing_ok=True)


def _remove_empty_dirs(root: Path) -> None:
    """Remove the empty folders under (and including) ``root``, deepest first."""
    if not root.is_dir():
        return
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    if not any(root.iterdir()):
        root.rmdir()


def summarize(targets: tuple[Target, ...], metrics: dict[str, Any]) -> dict[str, float | None]:
    """Headline acc1 per role: in_domain, other_domains_mean, held_out, base, novel, hm."""
    acc = {t.name: (metrics[t.name] or {}).get("acc1") for t in targets}
    summary: dict[str, float | None] = {}
    for role in (IN_DOMAIN, HELD_OUT, BASE, NOVEL):
        for t in targets:
            if t.role == role:
                summary[role] = acc[t.name]
    others = [acc[t.name] for t in targets if t.role == OTHER_DOMAIN]
    if others:
        summary[OTHERS_MEAN] = sum(others) / len(others)
    if BASE in summary:
        base, novel = summary[BASE], summary.get(NOVEL)
        summary[HM] = None if base is None or novel is None else harmonic_mean(base, novel)
    return summary


def _finished(path: Path, run_config: dict[str, Any]) -> bool:
    """True when ``path`` holds this run's result; raises when it holds another configuration."""
    existing = read_result(path)
    if existing.config_hash == config_hash(run_config):
        return True
    old = existing.config
    changed = sorted(k for k in set(old) | set(run_config) if old.get(k) != run_config.get(k))
    raise ValueError(
        f"{path} holds a result of another configuration (differs in: {', '.join(changed)}); "
        "write to a fresh output directory, or pass --overwrite to replace such results"
    )


def default_methods(registry: Mapping[str, type[Method]]) -> list[str]:
    """The methods run when none are named: all that work on cached features alone (those
    that run a tower while training are slow on a CPU and must be named), except ``auto``,
    which repeats one of them."""
    return [
        name for name, cls in registry.items() if DataKind.TOWER not in cls.reads and name != "auto"
    ]


def detector_names(config: BenchConfig) -> tuple[str, ...]:
    names = config.detectors or tuple(DETECTORS)
    unknown = [n for n in names if n not in DETECTORS]
    if unknown:
        raise ValueError(f"unknown detector(s) {unknown}; known: {', '.join(DETECTORS)}")
    return names


def configured_methods(
    config: BenchConfig, registry: Mapping[str, type[Method]]
) -> tuple[dict[str, Method], frozenset[str]]:
    """One unfitted instance per method label (hyperparameters checked by construction), and
    the labels that learn from the test images as unlabeled data (transductive).

    A label is a registry name, or a name (letters, digits, ``.-_``; it becomes a folder
    under ``out``) whose hyperparameters say ``method: <registry name>`` (variants of one
    method side by side, e.g. ``ivlp_src: {method: ivlp, ...}``). ``unlabeled: test`` gives a
    method that reads unlabeled images every image the run is tested on instead of the rest
    of the training pool; its results say transductive."""
    chosen = config.methods or {name: {} for name in default_methods(registry)}
    out: dict[str, Method] = {}
    transductive = set()
    for label, given in chosen.items():
        if not LABEL_PATTERN.fullmatch(label):
            raise ValueError(
                f"method label {label!r}: use 1-64 letters, digits, '.', '-' or '_' starting "
                "with a letter or digit (it names a results folder)"
            )
        hyperparameters = {k: v for k, v in given.items() if k != "method"}
        name = config.method_names.get(label, label)
        unlabeled = hyperparameters.pop("unlabeled", "train_pool")
        if name not in registry:
            raise ValueError(
                f"unknown method {name!r} (for {label!r}); known methods: {', '.join(registry)}"
            )
        try:
            out[label] = registry[name](**hyperparameters)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"method {label!r}: bad hyperparameters {hyperparameters}: {err}"
            ) from None
        if unlabeled not in UNLABELED_SOURCES:
            raise ValueError(
                f"method {label!r}: unlabeled must be one of {UNLABELED_SOURCES}, got {unlabeled!r}"
            )
        if unlabeled == "test":
            if not reads_unlabeled(out[label]):
                raise ValueError(
                    f"method {label!r}: unlabeled: test applies to methods that read unlabeled "
                    f"images, and {name!r} does not"
                )
            transductive.add(label)
    return out, frozenset(transductive)


def _create_backend(config: BenchConfig) -> Backend:
    from clipadapt.models import create_backend

    return create_backend(config.model, config.device)


__all__ = ["BenchSummary", "Run", "check_results_dir", "configured_methods", "run_bench"]
