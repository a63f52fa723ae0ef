"""Fit a method on a setting's few-shot data and score it on the setting's targets.

An :class:`Experiment` holds what every run over one collection of domains shares: the
backend, the domains, their splits, the prompts, the feature bank. ``clipadapt bench``
(every protocol) and ``clipadapt adapt`` both go through it:

1. ``gather``: the support, validation (and, for methods that read them, augmented views
   and unlabeled training-pool images) of the setting's sources, only its classes;
2. ``fit``: the method gets exactly the kinds of data it declares (``FitData.only``), never
   a test image unless it was configured transductive;
3. ``evaluate`` (closed-set accuracy per target) or ``evaluate_open_set`` (detectors fitted on
   the same support and validation data, thresholds calibrated on validation only).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clipadapt.calibration import choose_temperature
from clipadapt.data import ImageDataset
from clipadapt.feature_cache import FeatureCache
from clipadapt.methods import FitData, Method
from clipadapt.models.base import Backend
from clipadapt.ood import cached_text_encoder, create_detector
from clipadapt.ood.base import Detector, ScoreInput
from clipadapt.ood.local import NoLocalFeaturesError, extract_local_features
from clipadapt.ood.metrics import OOD_LABEL
from clipadapt.pipeline.featurebank import FeatureBank
from clipadapt.pipeline.fitting import (
    FewShotData,
    fit_data,
    gather,
    label_map,
    score,
    timed_fit,
    torch_threads,
)
from clipadapt.pipeline.openset import FeatureSet, OpenSetEvaluation, evaluate_open_set
from clipadapt.pipeline.task import Images, Setting, Splits, Target
from clipadapt.prompts import PromptSet, class_embeddings
from clipadapt.views import DEFAULT_AUGMENT


@dataclass
class Fitted:
    """A fitted method, what it was given, and the features it is scored on."""

    method: Method
    inputs: FitData
    data: FewShotData
    fit_seconds: float
    bank: FeatureBank  # the backend's, or the method's own when it adapted the image side


@dataclass
class Experiment:
    """Everything the runs over one collection of same-class domains share."""

    backend: Backend
    domains: dict[str, ImageDataset]
    splits: Splits
    prompts: PromptSet
    cache: FeatureCache | None = None
    views: int = 0
    augment: tuple[str, ...] = DEFAULT_AUGMENT
    selection: str = "validation"
    skip_bad: bool = False
    progress: bool = True
    _bank: FeatureBank | None = field(default=None, repr=False)
    _text: torch.Tensor | None = field(default=None, repr=False)

    @property
    def classnames(self) -> list[str]:
        return next(iter(self.domains.values())).classnames

    @property
    def bank(self) -> FeatureBank:
        if self._bank is None:
            self._bank = FeatureBank(
                self.backend,
                self.cache,
                skip_bad=self.skip_bad,
                progress=self.progress,
                augment=self.augment,
            )
        return self._bank

    @property
    def text(self) -> torch.Tensor:
        """The zero-shot classifier over every class (C, D), prompt-ensembled."""
        if self._text is None:
            self._text = class_embeddings(self.backend, self.classnames, self.prompts)
        return self._text

    def names(self, classes: tuple[int, ...] | None) -> list[str]:
        return self.classnames if classes is None else [self.classnames[c] for c in classes]

    def class_text(self, classes: tuple[int, ...] | None) -> torch.Tensor:
        return self.text if classes is None else self.text[list(classes)]

    # -- data ---------------------------------------------------------------------------
    def readable(self, images: Images) -> list[int]:
        """The dataset indices ``images`` names, without unreadable files (``skip_bad``)."""
        return self.bank.readable(self.domains[images.domain], self.splits.indices(images))

    def rows(self, images: Images, bank: FeatureBank | None = None) -> torch.Tensor:
        return (bank or self.bank).rows(self.domains[images.domain], self.readable(images))

    def labels(self, images: Images, classes: tuple[int, ...] | None) -> torch.Tensor:
        """Labels of ``images`` relative to ``classes`` (``OOD_LABEL`` outside them)."""
        dataset = self.domains[images.domain]
        mapping = label_map(len(dataset.class_ids), classes)
        return torch.from_numpy(mapping[dataset.labels[self.readable(images)]])

    def gather(
        self, setting: Setting, shots: int, seed: int, *, views: int, unlabeled: bool
    ) -> FewShotData:
        return gather(
            self.bank,
            [self.splits.few_shot(source, shots, seed) for source in setting.sources],
            views=views,
            unlabeled=unlabeled,
            classes=setting.classes,
        )

    def with_test_unlabeled(self, data: FewShotData, setting: Setting) -> FewShotData:
        """``data`` whose unlabeled images are every image ``setting`` tests (transductive)."""
        rows, paths = [], []
        for target in setting.targets:
            dataset = self.domains[target.known.domain]
            indices = self.readable(target.known)
            rows.append(self.bank.rows(dataset, indices))
            paths += [str(dataset.samples[i].path) for i in indices]
        return dataclasses.replace(data, unlabeled=torch.cat(rows), unlabeled_paths=paths)

    # -- fitting --------------------------------------------------------------------------
    def fit(
        self,
        method: Method,
        setting: Setting,
        data: FewShotData,
        *,
        seed: int,
        transductive: bool = False,
        checkpoint_dir: Path | None = None,
    ) -> Fitted:
        inputs = fit_data(
            method,
            data,
            class_embeddings=self.class_text(setting.classes),
            logit_scale=self.backend.logit_scale,
            classnames=self.names(setting.classes),
            seed=seed,
            backend=self.backend,
            checkpoint_dir=checkpoint_dir,
            unlabeled_includes_test=transductive,
            selection=self.selection,
            feature_cache=self.cache,
            augment=self.augment,
        )
        fit_seconds = timed_fit(method, inputs)
        bank = self.bank
        eval_backend = method.feature_backend(self.backend)
        if eval_backend is not self.backend:  # the method changed the image side
            bank = FeatureBank(
                eval_backend,
                self.cache,
                skip_bad=self.skip_bad,
                progress=False,
                augment=self.augment,
            )
        return Fitted(method, inputs, data, fit_seconds, bank)

    # -- closed-set evaluation ------------------------------------------------------------
    def evaluate(
        self, fitted: Fitted, setting: Setting, temperature: float | None = None
    ) -> tuple[dict[str, dict[str, Any] | None], float]:
        """Metrics per target (None where the method cannot score those classes) and the
        total predict time; calibration metrics also at ``temperature`` when given."""
        metrics: dict[str, dict[str, Any] | None] = {}
        seconds = 0.0
        for target in setting.targets:
            metrics[target.name], spent = self._score_target(fitted, setting, target, temperature)
            seconds += spent
        return metrics, seconds

    def _score_target(
        self, fitted: Fitted, setting: Setting, target: Target, temperature: float | None
    ) -> tuple[dict[str, Any] | None, float]:
        method, classes = fitted.method, target.known.classes
        transfer = classes != setting.classes
        if transfer and not method.supports_new_classes:
            return None, 0.0
        features = self.rows(target.known, fitted.bank)
        labels = self.labels(target.known, classes).numpy()
        if not transfer:
            return score(method.predict_logits, features, labels, temperature)
        names, weights = self.names(classes), self.class_text(classes)
        return score(
            lambda f: method.transfer_logits(f, weights, names), features, labels, temperature
        )

    def fit_temperature(
        self, fitted: Fitted, setting: Setting, shots: int, seed: int
    ) -> dict[str, Any]:
        """Temperature scaling of ``fitted``'s logits, fitted on the few-shot validation set
        (the images the runner offers methods for selection; never a test image): the
        temperature, what it was fitted on and the validation NLL before and after. With no
        validation images, or no finite minimiser (``choose_temperature``), the temperature
        stays 1 and ``reason`` says why."""
        record: dict[str, Any] = {"mode": "temperature", "fitted_on": "few-shot validation set"}
        if len(fitted.data.val_labels) == 0:
            return record | {
                "temperature": 1.0,
                "n": 0,
                "reason": "no few-shot validation images (val_per_class 0): T left at 1",
            }
        val = self.val_features(fitted, setting, shots, seed, local=False)
        features = val.features if val.method_features is None else val.method_features
        with torch_threads(), torch.inference_mode():
            logits = fitted.method.predict_logits(features)
        return record | {"n": len(val.labels)} | choose_temperature(logits, val.labels)

    # -- open-set evaluation --------------------------------------------------------------
    def fit_detectors(
        self, setting: Setting, data: FewShotData, names: tuple[str, ...], seed: int
    ) -> tuple[dict[str, Detector], dict[str, torch.Tensor | None]]:
        """Every detector fitted on the labeled support and validation set (no views,
        nothing from the tests), and its cross-fitted scores of the support images
        (``Detector.held_out_scores``; None where it has none), which thresholds pool with
        the validation scores."""
        full = FitData(
            class_embeddings=self.class_text(setting.classes),
            logit_scale=self.backend.logit_scale,
            classnames=self.names(setting.classes),
            support_features=data.support,
            support_labels=data.support_labels,
            val_features=data.val,
            val_labels=data.val_labels,
            seed=seed,
        )
        encode = cached_text_encoder(self.backend, self.cache)
        with torch_threads():
            detectors = {n: create_detector(n).fit(full, encode_texts=encode) for n in names}
            held = {n: d.held_out_scores(full, encode_texts=encode) for n, d in detectors.items()}
        return detectors, held

    def evaluate_open_set(
        self,
        fitted: Fitted,
        setting: Setting,
        detectors: dict[str, Detector],
        held_out: dict[str, torch.Tensor | None],
        shots: int,
        seed: int,
        accept: float,
    ) -> OpenSetEvaluation:
        local = any(ScoreInput.LOCAL_FEATURES in d.uses for d in detectors.values())
        classes = setting.classes
        val = self.val_features(fitted, setting, shots, seed, local=local)
        targets = {}
        for target in setting.targets:
            known_labels = self.labels(target.known, classes)
            known = self._feature_set(fitted, self._pairs(target.known), known_labels, local)
            unknown_pairs = self._pairs(target.unknown)
            unknown_labels = torch.full((len(unknown_pairs),), OOD_LABEL, dtype=torch.int64)
            unknown = self._feature_set(fitted, unknown_pairs, unknown_labels, local)
            targets[target.name] = (known, unknown)
        with torch_threads(), torch.inference_mode():
            return evaluate_open_set(
                fitted.method, detectors, val, targets, accept=accept, held_out=held_out
            )

    def val_features(
        self, fitted: Fitted, setting: Setting, shots: int, seed: int, *, local: bool
    ) -> FeatureSet:
        """The few-shot validation set's features (thresholds are calibrated on it)."""
        chosen = self._val_images(setting, shots, seed)
        return self._feature_set(fitted, chosen, fitted.data.val_labels, local)

    def _val_images(self, setting: Setting, shots: int, seed: int) -> list[tuple[str, int]]:
        """(domain, index) of the validation images, in ``gather``'s order."""
        mapping = {
            source: label_map(len(self.domains[source].class_ids), setting.classes)
            for source in setting.sources
        }
        out = []
        for source in setting.sources:
            dataset = self.domains[source]
            val = self.bank.readable(dataset, self.splits.few_shot(source, shots, seed).val)
            out += [(source, i) for i in val if mapping[source][dataset.labels[i]] >= 0]
        return out

    def _feature_set(
        self, fitted: Fitted, chosen: list[tuple[str, int]], labels: torch.Tensor, local: bool
    ) -> FeatureSet:
        """Features of the (domain, index) images ``chosen``, and the method's own when it
        adapted the image side; patch features when ``local`` and the tower has them."""
        features = self._rows(chosen, self.bank)
        method_features = None if fitted.bank is self.bank else self._rows(chosen, fitted.bank)
        patches = None
        if local:
            paths = [self.domains[d].samples[i].path for d, i in chosen]
            try:
                patches = extract_local_features(self.backend, paths, progress=self.progress)
            except NoLocalFeaturesError:  # a CNN tower: detectors that need them are skipped
                patches = None
        return FeatureSet(features, labels, patches, method_features)

    def _pairs(self, images: Images) -> list[tuple[str, int]]:
        return [(images.domain, i) for i in self.readable(images)]

    def _rows(self, chosen: list[tuple[str, int]], bank: FeatureBank) -> torch.Tensor:
        by_domain: dict[str, list[int]] = {}
        for domain, index in chosen:
            by_domain.setdefault(domain, []).append(index)
        if len(by_domain) == 1:
            domain, indices = next(iter(by_domain.items()))
            return bank.rows(self.domains[domain], indices)
        return torch.cat([bank.rows(self.domains[d], [i]) for d, i in chosen])
