"""The benchmark runner: methods x settings x shots x seeds, one JSON result per run.

The runner builds every method's ``FitData`` itself, from the support and validation
features of the few-shot splits and nothing else, so test images never reach ``fit`` (unless
a method is configured with ``unlabeled: test``: it then gets the test images, without
labels, as its unlabeled data, and its results say ``transductive``).
Results live at ``<out>/<protocol>/<collection>/<group>/<method>/K<shots>_s<seed>.json``;
a result whose recorded configuration hash matches is skipped on re-runs, one whose hash
differs is refused (unless ``overwrite``), and a directory holding results of another
result schema is refused outright.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from clipadapt.bench.config import OOD_PROTOCOLS, BenchConfig
from clipadapt.bench.featurebank import FeatureBank
from clipadapt.bench.fitting import (
    FewShotData,
    fit_data,
    gather,
    label_map,
    reads_unlabeled,
    score,
    timed_fit,
    unlabeled_indices,
    views_given,
)
from clipadapt.bench.ood import OodPlan, OodRun, execute_ood, plan_runs
from clipadapt.bench.protocols import (
    BASE,
    HELD_OUT,
    HM,
    IN_DOMAIN,
    NOVEL,
    OTHER_DOMAIN,
    OTHERS_MEAN,
    Setting,
    Splits,
    Target,
    as_domains,
    harmonic_mean,
    settings,
)
from clipadapt.bench.results import (
    RESULT_SCHEMA,
    base_result,
    find_results,
    read_result,
    write_result,
)
from clipadapt.data import ImageDataset, load_dataset
from clipadapt.feature_cache import FeatureCache
from clipadapt.methods import METHODS, DataKind, Method
from clipadapt.models.base import Backend
from clipadapt.prompts import class_embeddings, make_prompt_set

TASK = "fewshot_classification"


@dataclass(frozen=True)
class Run:
    setting: Setting
    method: str
    shots: int
    seed: int

    @property
    def relpath(self) -> Path:
        s = self.setting
        return Path(
            s.protocol, s.collection, s.group, self.method, f"K{self.shots}_s{self.seed}.json"
        )


Pending = list[tuple[Run, dict[str, Any]]]  # runs to do, with their configurations


@dataclass
class BenchSummary:
    """What a call to ``run_bench`` did."""

    out: Path
    planned: int = 0
    ran: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    wall_seconds: float = 0.0


def check_results_dir(out: Path) -> list[Path]:
    """The result files already in ``out``; refuses a directory holding incompatible ones."""
    paths = find_results(out)
    for path in paths:
        try:
            read_result(path)
        except ValueError as err:
            raise ValueError(f"refusing to add results to {out}: {err}") from None
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
    check_results_dir(config.out)
    methods, transductive = _methods(config, registry)
    if transductive and any(p in OOD_PROTOCOLS for p in config.protocols):
        raise ValueError(
            f"methods {sorted(transductive)} learn from the test images (unlabeled: test), "
            "which the OOD protocols do not offer; run them in a config without "
            f"{', '.join(OOD_PROTOCOLS)}"
        )
    loaded = load_dataset(config.data, classnames_file=config.classnames, skip_bad=config.skip_bad)
    collection, domains = as_domains(loaded)
    chosen = [p for p in config.protocols if p not in OOD_PROTOCOLS]
    plan = [s for p in chosen for s in settings(p, collection, domains, config.sources)]
    ood_plan = (
        OodPlan(config, collection, domains)
        if any(p in OOD_PROTOCOLS for p in config.protocols)
        else None
    )
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
    context = _Context(config, backend, domains, splits, prompts.templates, methods, transductive)
    summary = BenchSummary(config.out)
    pending = _pending(context, plan, summary, overwrite)
    ood_pending = _ood_pending(ood_plan, context, summary, overwrite) if ood_plan else []
    summary.planned = len(pending) + len(ood_pending) + len(summary.skipped)
    cache = FeatureCache(config.cache_dir)
    bank = FeatureBank(backend, cache, skip_bad=config.skip_bad, progress=progress)
    _prefetch(bank, context, pending)
    if not prepare_only and pending:
        text = class_embeddings(backend, context.classnames, prompts)
        _execute(context, bank, text, pending, summary, progress)
    if ood_pending:
        summary.ran += execute_ood(
            ood_plan,
            ood_pending,
            methods,
            backend,
            cache,
            prompts,
            list(prompts.templates),
            progress=progress,
            prepare_only=prepare_only,
        )
    summary.wall_seconds = time.perf_counter() - start
    return summary


def _pending(
    context: _Context, plan: list[Setting], summary: BenchSummary, overwrite: bool
) -> Pending:
    """Every planned run without a finished result (those with one go to ``summary.skipped``)."""
    config, pending = context.config, []
    for setting in plan:
        for name in context.methods:
            for shots in config.shots:
                for seed in config.seeds:
                    run = Run(setting, name, shots, seed)
                    run_config = context.run_config(run)
                    path = config.out / run.relpath
                    if path.is_file() and not overwrite and _finished(path, run_config):
                        summary.skipped.append(path)
                    else:
                        pending.append((run, run_config))
    summary.planned = len(pending) + len(summary.skipped)
    return pending


def _ood_pending(
    plan: OodPlan, context: _Context, summary: BenchSummary, overwrite: bool
) -> list[tuple[OodRun, dict[str, Any]]]:
    """The OOD protocol runs without a finished result (those with one are skipped)."""
    pending = []
    for run in plan_runs(plan, context.methods):
        run_config = plan.run_config(
            run, context.methods[run.method], context.backend, list(context.templates)
        )
        path = context.config.out / run.relpath
        if path.is_file() and not overwrite and _finished(path, run_config):
            summary.skipped.append(path)
        else:
            pending.append((run, run_config))
    return pending


def _execute(
    context: _Context,
    bank: FeatureBank,
    text: torch.Tensor,
    pending: Pending,
    summary: BenchSummary,
    progress: bool,
) -> None:
    """Run ``pending``, gathering each few-shot sample's features once for all its methods."""
    out = context.config.out
    by_sample: dict[tuple[Setting, int, int], Pending] = defaultdict(list)
    for run, run_config in pending:
        by_sample[(run.setting, run.shots, run.seed)].append((run, run_config))
    bar = tqdm(total=len(pending), desc="bench", unit="run", disable=not progress)
    for (setting, shots, seed), group in by_sample.items():
        data = gather(
            bank,
            [context.splits.few_shot(source, shots, seed) for source in setting.sources],
            views=max(run_config["views"] for _, run_config in group),
            unlabeled=any(reads_unlabeled(context.methods[run.method]) for run, _ in group),
            classes=setting.classes,
        )
        with_test = None
        for run, run_config in group:
            bar.set_postfix_str(f"{setting.group} {run.method} K={shots} s={seed}")
            checkpoints = out / "checkpoints" / run.relpath.with_suffix("")
            given = data
            if run.method in context.transductive:
                with_test = with_test or context.with_test_unlabeled(data, setting, bank)
                given = with_test
            result = context.execute(run, run_config, given, text, bank, checkpoints)
            summary.ran.append(write_result(result, out / run.relpath))
            shutil.rmtree(checkpoints, ignore_errors=True)  # only for resuming this fit
            bar.update()
    bar.close()


@dataclass
class _Context:
    """What every run of one ``run_bench`` call shares."""

    config: BenchConfig
    backend: Backend
    domains: dict[str, ImageDataset]
    splits: Splits
    templates: tuple[str, ...]
    methods: dict[str, Method]
    transductive: frozenset[str] = frozenset()  # labels fitted with the test images unlabeled
    _fingerprints: dict[str, str] = field(default_factory=dict)

    @property
    def classnames(self) -> list[str]:
        return next(iter(self.domains.values())).classnames

    def fingerprint(self, domain: str) -> str:
        if domain not in self._fingerprints:
            self._fingerprints[domain] = self.domains[domain].fingerprint()
        return self._fingerprints[domain]

    def run_config(self, run: Run) -> dict[str, Any]:
        """Everything that determines a run's result; its hash decides whether to re-run."""
        s, c, method = run.setting, self.config, self.methods[run.method]
        used = dict.fromkeys([*s.sources, *(t.domain for t in s.targets)])
        config = {
            "schema": RESULT_SCHEMA,
            "task": TASK,
            "protocol": s.protocol,
            "collection": s.collection,
            "group": s.group,
            "sources": list(s.sources),
            "targets": [dataclasses.asdict(t) for t in s.targets],
            "fit_classes": None if s.classes is None else list(s.classes),
            "method": run.method,
            **({"variant_of": method.name} if method.name != run.method else {}),
            **({"unlabeled": "test"} if run.method in self.transductive else {}),
            "hyperparameters": method.hyperparameters(),
            "shots": run.shots,
            "seed": run.seed,
            "val_per_class": min(run.shots, 4),
            "views": views_given(method, c.views),
            "split_seed": c.split_seed,
            "test_fraction": c.test_fraction,
            "on_too_few": c.on_too_few,
            "templates": list(self.templates),
            "image_fingerprint": self.backend.image_fingerprint,
            "text_fingerprint": self.backend.text_fingerprint,
            "data_fingerprints": {d: self.fingerprint(d) for d in used},
        }
        return json.loads(json.dumps(config))  # as it reads back from a result file

    def execute(
        self,
        run: Run,
        run_config: dict[str, Any],
        data: FewShotData,
        text: torch.Tensor,
        bank: FeatureBank,
        checkpoint_dir: Path,
    ) -> dict[str, Any]:
        setting, prototype = run.setting, self.methods[run.method]
        method = type(prototype)(**prototype.hyperparameters())
        classes = setting.classes
        names = self.classnames if classes is None else [self.classnames[c] for c in classes]
        fit_text = text if classes is None else text[list(classes)]
        inputs = fit_data(
            method,
            data,
            class_embeddings=fit_text,
            logit_scale=self.backend.logit_scale,
            classnames=names,
            seed=run.seed,
            backend=self.backend,
            checkpoint_dir=checkpoint_dir,
            unlabeled_includes_test=run.method in self.transductive,
        )
        fit_seconds = timed_fit(method, inputs)
        metrics: dict[str, Any] = {}
        predict_s = 0.0
        eval_backend = method.feature_backend(self.backend)
        if eval_backend is not self.backend:  # the method changed the image side
            bank = FeatureBank(eval_backend, bank.cache, skip_bad=bank.skip_bad, progress=False)
        for target in setting.targets:
            metrics[target.name], seconds = self._evaluate(method, setting, target, text, bank)
            predict_s += seconds
        few = [self.splits.few_shot(s, run.shots, run.seed) for s in setting.sources]
        split_files = {
            s: str(self.splits.save(s, run.shots, run.seed).relative_to(self.config.out))
            for s in setting.sources
        }
        return base_result(
            task=TASK,
            dataset=setting.collection,
            backend=self.backend,
            metrics=metrics,
            summary=summarize(setting.targets, metrics),
            protocol=setting.protocol,
            group=setting.group,
            sources=list(setting.sources),
            targets=[_describe_target(t, self.classnames, metrics) for t in setting.targets],
            method=run.method,
            hyperparameters=method.hyperparameters(),
            selected=method.selected,
            reads=sorted(kind.value for kind in method.reads),
            feature_fingerprint=eval_backend.image_fingerprint,
            training_free=method.training_free,
            transductive=inputs.unlabeled_includes_test,
            shots=run.shots,
            seed=run.seed,
            val_per_class=run_config["val_per_class"],
            views=run_config["views"],
            split_seed=self.config.split_seed,
            test_fraction=self.config.test_fraction,
            split_files=split_files,
            shortfalls={s: f.shortfalls for s, f in zip(setting.sources, few, strict=True)},
            n_support=len(data.support_labels),
            n_val=len(data.val_labels),
            classnames=names,
            templates=list(self.templates),
            data_fingerprint=run_config["data_fingerprints"],
            timing={
                "fit_seconds": round(fit_seconds, 6),
                "predict_seconds": round(predict_s, 6),
            },
            torch_threads_fit=1,
            config_hash=config_hash(run_config),
            config=run_config,
        )

    def _evaluate(
        self,
        method: Method,
        setting: Setting,
        target: Target,
        text: torch.Tensor,
        bank: FeatureBank,
    ) -> tuple[dict[str, Any] | None, float]:
        """Metrics of ``method`` on ``target`` (None when it cannot score those classes)."""
        transfer = target.classes != setting.classes
        if transfer and not method.supports_new_classes:
            return None, 0.0
        dataset = self.domains[target.domain]
        mapping = label_map(len(dataset.class_ids), target.classes)
        indices = bank.readable(dataset, self.target_indices(target))
        features, labels = bank.rows(dataset, indices), mapping[dataset.labels[indices]]
        if not transfer:
            return score(method.predict_logits, features, labels)
        names = [self.classnames[c] for c in target.classes]
        weights = text[list(target.classes)]
        return score(lambda f: method.transfer_logits(f, weights, names), features, labels)

    def with_test_unlabeled(
        self, data: FewShotData, setting: Setting, bank: FeatureBank
    ) -> FewShotData:
        """``data`` whose unlabeled images are every image ``setting`` tests on (transductive)."""
        rows, paths = [], []
        for target in setting.targets:
            dataset = self.domains[target.domain]
            indices = bank.readable(dataset, self.target_indices(target))
            rows.append(bank.rows(dataset, indices))
            paths += [str(dataset.samples[i].path) for i in indices]
        return dataclasses.replace(data, unlabeled=torch.cat(rows), unlabeled_paths=paths)

    def target_indices(self, target: Target) -> list[int]:
        """The dataset indices ``target`` scores: its part, restricted to its classes."""
        dataset = self.domains[target.domain]
        if target.part == "test":
            indices = self.splits.train_test(target.domain).test
        else:
            indices = list(range(len(dataset)))
        mapping = label_map(len(dataset.class_ids), target.classes)
        return [i for i in indices if mapping[dataset.labels[i]] >= 0]


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


def config_hash(run_config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(run_config, sort_keys=True).encode()).hexdigest()[:16]


def _finished(path: Path, run_config: dict[str, Any]) -> bool:
    """True when ``path`` holds this run's result; raises when it holds another configuration."""
    existing = read_result(path)
    if existing.get("config_hash") == config_hash(run_config):
        return True
    old = existing.get("config", {})
    changed = sorted(k for k in set(old) | set(run_config) if old.get(k) != run_config.get(k))
    raise ValueError(
        f"{path} holds a result of another configuration (differs in: {', '.join(changed)}); "
        "write to a fresh output directory, or pass --overwrite to replace such results"
    )


def _describe_target(target: Target, classnames: list[str], metrics: dict[str, Any]) -> dict:
    names = classnames if target.classes is None else [classnames[c] for c in target.classes]
    scored = metrics[target.name]
    return dataclasses.asdict(target) | {
        "classnames": names,
        "n": None if scored is None else scored["n"],
    }


def default_methods(registry: Mapping[str, type[Method]]) -> list[str]:
    """The methods run when none are named: all that work on cached features alone (those
    that run a tower while training are slow on a CPU and must be named)."""
    return [name for name, cls in registry.items() if DataKind.TOWER not in cls.reads]


UNLABELED_SOURCES = ("train_pool", "test")


def _methods(
    config: BenchConfig, registry: Mapping[str, type[Method]]
) -> tuple[dict[str, Method], frozenset[str]]:
    """One unfitted instance per method label (hyperparameters checked by construction), and
    the labels that learn from the test images as unlabeled data (transductive).

    A label is a registry name, or any name whose hyperparameters say ``method: <registry
    name>`` (variants of one method side by side, e.g. ``ivlp_src: {method: ivlp, ...}``).
    ``unlabeled: test`` gives a method that reads unlabeled images every image the run is
    tested on instead of the rest of the training pool; its results say transductive."""
    chosen = config.methods or {name: {} for name in default_methods(registry)}
    out: dict[str, Method] = {}
    transductive = set()
    for label, given in chosen.items():
        hyperparameters = dict(given)
        name = hyperparameters.pop("method", label)
        unlabeled = hyperparameters.pop("unlabeled", "train_pool")
        if name not in registry:
            raise ValueError(
                f"unknown method {name!r} (for {label!r}); known methods: {', '.join(registry)}"
            )
        try:
            out[label] = registry[name](**hyperparameters)
        except TypeError as err:
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


def _prefetch(bank: FeatureBank, context: _Context, pending: Pending) -> None:
    """Embed every image the pending runs read, in one pass per domain and view."""
    needed: dict[str, set[int]] = defaultdict(set)
    support: dict[str, set[int]] = defaultdict(set)
    for setting in dict.fromkeys(run.setting for run, _ in pending):
        for target in setting.targets:
            needed[target.domain].update(context.target_indices(target))
    for run, run_config in pending:
        for source in run.setting.sources:
            few = context.splits.few_shot(source, run.shots, run.seed)
            needed[source].update(few.support + few.val)
            if run_config["views"]:
                support[source].update(few.support)
            if reads_unlabeled(context.methods[run.method]):
                needed[source].update(unlabeled_indices(few))
    for domain, indices in sorted(needed.items()):
        bank.ensure(context.domains[domain], indices)
    for domain, indices in sorted(support.items()):
        bank.prefetch_views(context.domains[domain], sorted(indices), context.config.views)
