"""Searched hyperparameters: given values, selection on the validation set, k-fold CV.

A searched hyperparameter takes ``None`` (search the class's default grid), a sequence
(search that grid) or a number (used as given, recorded as ``{"value": v, "how": "given"}``).
Each is declared by a :class:`Search`: its default grid, the value preferred on ties, and the
end of the grid that regularises more. ``FitData.selection`` says how a search chooses; the
test split is never part of it:

* ``"validation"``: the grid point with the best acc1 on the few-shot validation set, the
  model fitted on the support set (and views). Ties go to the preferred point when it is
  among the best, else to the first best point in grid order. Without a validation set every
  point ties: the preferred value is used (the grid's first value when it lacks it).
* ``"crafted_shift"``: as ``"validation"``, on the validation set the runner gives, which is
  then the few-shot validation images under crafted shifts (``clipadapt.views.CRAFTED_SHIFTS``).
* ``"cv"``: stratified k-fold cross-validation over the labelled few-shot images, support
  and validation pooled (plain features only: a held-out image's augmented views would leak
  it into the training folds), ``k = min(5, smallest class count)``, folds seeded by
  ``FitData.seed``. The score is the acc1 of the pooled held-out predictions; ties go to the
  stronger regularisation, the first hyperparameter of a joint search deciding first. The
  final model is then fitted on the support set (and views) only, with the chosen values, so
  a K-shot result has fitted on K labelled images per class. With fewer than two images in
  some class there are no folds: the preferred values are used.

A searched method implements ``_fit_grid(data, grid)``: fitted on ``data``'s support set, it
returns the logits of every grid point and the state of any one (:class:`GridFit`); the
machinery here calls it on the support set and on each fold alike.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

import torch

from clipadapt.methods.base import FitData, Method
from clipadapt.methods.common import check_fit_data, validation_set

T = TypeVar("T")
Searchable = float | Sequence[float] | None
"""A searched hyperparameter as the constructor takes it: a value, a grid, or None."""
Grid = dict[str, tuple[float, ...]]
Position = tuple[int, ...]
MAX_FOLDS = 5
CRAFTED_HOW = "acc1 on the validation images under crafted shifts"


@dataclass(frozen=True)
class Search:
    """How one hyperparameter is searched: the grid searched when it is None, the value
    preferred on validation ties (and without validation data), and which end of a grid
    regularises more (``"low"`` or ``"high"``: cv's tie rule)."""

    grid: tuple[float, ...]
    preferred: float
    stronger: Literal["low", "high"]

    def strength_order(self, values: Sequence[float]) -> list[int]:
        """Rank of each value, 0 = strongest regularisation."""
        order = sorted(range(len(values)), key=lambda i: values[i], reverse=self.stronger == "high")
        ranks = [0] * len(values)
        for rank, i in enumerate(order):
            ranks[i] = rank
        return ranks


@dataclass
class GridFit:
    """A searched method fitted on one labelled set, for every point of a grid."""

    logits: Callable[[torch.Tensor], torch.Tensor]
    """Features (M, D) -> logits (*grid sizes, M, C), grid axes in the order of the grid."""
    state: Callable[[Position], dict[str, torch.Tensor]]
    """Grid position -> the learned state of that point."""
    selected: dict[str, Any] = field(default_factory=dict)
    """Facts of this fit worth recording (e.g. a fallback taken)."""


def search_value(name: str, value: Searchable) -> float | tuple[float, ...] | None:
    """A searched hyperparameter as stored: None, a float, or a non-empty tuple of floats."""
    if value is None:
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0:
        return tuple(float(v) for v in value)
    raise ValueError(
        f"{name}: give a number (used as is), a non-empty list of numbers (searched) or None "
        f"(the default grid is searched), got {value!r}"
    )


def fit_each(
    values: Sequence[float],
    fit: Callable[[float], T],
    logits: Callable[[T, torch.Tensor], torch.Tensor],
    state: Callable[[T, float], dict[str, torch.Tensor]],
) -> GridFit:
    """A one-hyperparameter GridFit from one model per value, fitted in grid order (so
    ``fit`` may warm-start from the previous value's model)."""
    models = [fit(value) for value in values]
    return GridFit(
        logits=lambda features: torch.stack([logits(model, features) for model in models]),
        state=lambda position: state(models[position[0]], values[position[0]]),
    )


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy over the last two dimensions: logits (..., M, C) -> (...)."""
    return (logits.argmax(dim=-1) == labels).to(torch.float32).mean(dim=-1)


def cv_folds(data: FitData) -> list[tuple[FitData, torch.Tensor, torch.Tensor]]:
    """Stratified folds over support + validation (plain features): per fold, a FitData
    holding the training part as its support set (no views, no validation), and the held-out
    features and labels. Empty when some class has fewer than two labelled images."""
    from sklearn.model_selection import StratifiedKFold  # scikit-learn takes ~1 s to import

    parts = [(data.support_features, data.support_labels)]
    if validation_set(data) is not None:
        parts.append((data.val_features, data.val_labels))
    x = torch.cat([features for features, _ in parts])
    y = torch.cat([labels for _, labels in parts]).long()
    folds = min(MAX_FOLDS, int(torch.bincount(y, minlength=data.num_classes).min()))
    if folds < 2:
        return []
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=data.seed)
    out = []
    for train, held in splitter.split(x.numpy(), y.numpy()):
        train, held = torch.from_numpy(train), torch.from_numpy(held)
        fold = dataclasses.replace(
            data,
            support_features=x[train],
            support_labels=y[train],
            support_views=None,
            val_features=None,
            val_labels=None,
        )
        out.append((fold, x[held], y[held]))
    return out


class SearchedMethod(Method):
    """A method with searched hyperparameters (``searches``); subclasses implement
    ``_fit_grid`` and store each searched constructor argument with :func:`search_value`."""

    searches: ClassVar[dict[str, Search]]

    def fixed_value(self, name: str) -> float:
        """The value of ``name`` where one is needed before the search: as given, else the
        preferred value."""
        value = getattr(self, name)
        return value if isinstance(value, float) else self.searches[name].preferred

    def params_in_use(self) -> dict[str, Any]:
        chosen = {name: self.selected[name]["value"] for name in self.searches}
        return {**self.get_params(), **chosen}

    def _fit_grid(self, data: FitData, grid: Grid) -> GridFit:
        raise NotImplementedError

    def _fit(self, data: FitData) -> None:
        check_fit_data(self, data)
        grid: Grid = {}
        searched = []
        for name, search in self.searches.items():
            value = getattr(self, name)
            if isinstance(value, float):
                grid[name] = (value,)
                self.selected[name] = {"value": value, "how": "given"}
            else:
                grid[name] = search.grid if value is None else value
                searched.append(name)
        fit = None
        if not searched:
            position = (0,) * len(grid)
        elif data.selection == "cv":
            position = self._cross_validate(data, grid, searched)
        elif (val := validation_set(data)) is None:
            position = self._preferred(grid)
            self._record(grid, searched, position, "validation", "preferred (no validation set)")
        else:  # the whole grid fitted on the support set, as the final model
            fit = self._fit_grid(data, grid)
            accs = accuracy(fit.logits(val[0]), val[1])
            sizes = tuple(len(values) for values in grid.values())
            if tuple(accs.shape) != sizes:
                raise RuntimeError(
                    f"{self.name}: validation logits cover grid {tuple(accs.shape)}, not {sizes}"
                )
            position = self._validation_choice(accs, grid, searched)
            how = CRAFTED_HOW if data.selection == "crafted_shift" else "validation acc1"
            self._record(grid, searched, position, data.selection, how, val_acc1=accs)
        if fit is None:  # the final model fitted at the chosen point only
            point = zip(grid.items(), position, strict=True)
            fit = self._fit_grid(data, {name: (values[i],) for (name, values), i in point})
            position = (0,) * len(grid)
        self.selected.update(fit.selected)
        self.set_state(**fit.state(position))

    def _preferred(self, grid: Grid) -> Position:
        """The preferred point: each preferred value, or the grid's first if it lacks it."""
        return tuple(
            values.index(p) if (p := self.searches[name].preferred) in values else 0
            for name, values in grid.items()
        )

    def _validation_choice(self, accs: torch.Tensor, grid: Grid, searched: list[str]) -> Position:
        """The preferred point when it is among the best, else the first best in grid order."""
        flat = accs.flatten()
        best = flat.max()
        preferred = self._preferred(grid)
        if all(self.searches[n].preferred in grid[n] for n in searched) and accs[preferred] == best:
            return preferred
        index = int(torch.nonzero(flat == best)[0])
        return tuple(int(i) for i in torch.unravel_index(torch.tensor(index), accs.shape))

    def _cross_validate(self, data: FitData, grid: Grid, searched: list[str]) -> Position:
        """The best point by pooled held-out acc1 over stratified folds; ties go to the
        stronger regularisation."""
        folds = cv_folds(data)
        if not folds:
            position = self._preferred(grid)
            self._record(
                grid, searched, position, "cv", "preferred (a class has under 2 labelled images)"
            )
            return position
        correct = torch.zeros(tuple(len(values) for values in grid.values()), dtype=torch.long)
        total = 0
        for fold, held, labels in folds:
            logits = self._fit_grid(fold, grid).logits(held)
            correct += (logits.argmax(dim=-1) == labels).sum(dim=-1)
            total += len(labels)
        ranks = [self.searches[name].strength_order(values) for name, values in grid.items()]
        best = [tuple(int(i) for i in p) for p in torch.nonzero(correct == correct.max())]
        position = min(best, key=lambda p: [r[i] for r, i in zip(ranks, p, strict=True)])
        how = f"{len(folds)}-fold cross-validation acc1 on the labelled few-shot images"
        self._record(grid, searched, position, "cv", how, cv_acc1=correct / total, folds=len(folds))
        return position

    def _record(
        self,
        grid: Grid,
        searched: list[str],
        position: Position,
        mode: str,
        how: str,
        **scores: Any,
    ) -> None:
        """Record each searched hyperparameter's choice in ``selected``."""
        for name, i in zip(grid, position, strict=True):
            if name not in searched:
                continue
            others = [other for other in searched if other != name]
            joint = f", jointly with {', '.join(others)}" if others and scores else ""
            record = {
                "value": grid[name][i],
                "how": how + joint,
                "mode": mode,
                "grid": list(grid[name]),
            }
            for key, value in scores.items():
                record[key] = float(value[position]) if isinstance(value, torch.Tensor) else value
            self.selected[name] = record
