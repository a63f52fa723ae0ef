"""Hyperparameter selection on the few-shot validation set (never on test).

Methods give a grid per hyperparameter and a callable that returns the validation logits for
every grid point at once; the best point by top-1 accuracy wins. Ties go to the default
point when it is among the best, otherwise to the first best point in grid order, so grids
list their most conservative values first. Each choice is recorded in ``method.selected``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from clipadapt.methods.base import FitData, Method
from clipadapt.methods.common import validation_set

T = TypeVar("T")


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy over the last two dimensions: logits (..., M, C) -> (...)."""
    return (logits.argmax(dim=-1) == labels).to(torch.float32).mean(dim=-1)


def choose(
    method: Method,
    data: FitData,
    grid: dict[str, Sequence[float]],
    default: dict[str, float],
    val_logits: Callable[[torch.Tensor], torch.Tensor],
) -> dict[str, float]:
    """Pick the grid point with the best validation acc1 and record it in ``method.selected``.

    ``val_logits(val_features)`` returns logits of shape (*grid sizes, M, C), the grid axes
    in the order of ``grid``. Without a validation set the defaults are used and recorded.
    """
    val = validation_set(data)
    if val is None:
        for key, value in default.items():
            method.selected[key] = {"value": float(value), "how": "default (no validation set)"}
        return {key: float(value) for key, value in default.items()}
    features, labels = val
    sizes = tuple(len(values) for values in grid.values())
    accs = accuracy(val_logits(features), labels)
    if tuple(accs.shape) != sizes:
        raise RuntimeError(
            f"{method.name}: validation logits cover grid {tuple(accs.shape)}, not {sizes}"
        )
    flat = accs.flatten()
    best = flat.max()
    index = int(torch.nonzero(flat == best)[0])
    if all(default[key] in values for key, values in grid.items()):
        position = [list(values).index(default[key]) for key, values in grid.items()]
        default_index = int(torch.arange(flat.numel()).view(sizes)[tuple(position)])
        if flat[default_index] == best:
            index = default_index
    position = [int(i) for i in torch.unravel_index(torch.tensor(index), sizes)]
    chosen = {
        key: float(values[i]) for (key, values), i in zip(grid.items(), position, strict=True)
    }
    for key, values in grid.items():
        others = [other for other in grid if other != key]
        how = f"validation acc1 over grid {[float(v) for v in values]}"
        if others:
            how += f" jointly with {', '.join(others)}"
        method.selected[key] = {"value": chosen[key], "how": how, "val_acc1": float(best)}
    return chosen


def choose_fitted(
    method: Method,
    data: FitData,
    name: str,
    values: Sequence[float],
    default: float,
    fit: Callable[[float], T],
    logits: Callable[[T, torch.Tensor], torch.Tensor],
) -> tuple[float, T]:
    """Fit one model per grid value, keep the best on validation; without one, fit the default.

    ``fit`` is called in grid order, so it may warm-start from the previous value's model.
    """
    models: list[T] = []

    def val_logits(features: torch.Tensor) -> torch.Tensor:
        models.extend(fit(value) for value in values)
        return torch.stack([logits(model, features) for model in models])

    value = choose(method, data, {name: values}, {name: default}, val_logits)[name]
    if not models:
        return value, fit(value)
    return value, models[[float(v) for v in values].index(value)]
