"""The estimator contract shared by adaptation methods and OOD detectors.

As in scikit-learn's ``BaseEstimator``: hyperparameters are the constructor's arguments,
read back from its signature (``get_params``) rather than kept in a second hand-written
list, and each is stored on the instance under its own name. ``fit`` starts from a freshly
constructed object (every piece of learned state from an earlier fit is gone), calls the
subclass's ``_fit`` and returns the fitted object; using learned state before that raises
``NotFittedError``.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, Self

import torch


class NotFittedError(RuntimeError):
    """Raised when a method or detector is used before ``fit``."""


class Estimator:
    """Base class: constructor hyperparameters, learned tensors in ``_state``, and ``selected``
    (hyperparameters chosen during ``fit`` and how they were chosen)."""

    name: str = "estimator"

    def __init__(self) -> None:
        self._state: dict[str, torch.Tensor] = {}
        self.selected: dict[str, Any] = {}
        self._fitted = False

    # -- hyperparameters ----------------------------------------------------------------
    @classmethod
    def param_names(cls) -> list[str]:
        """The constructor's parameter names (no ``*args``/``**kwargs`` allowed)."""
        names = []
        for name, param in inspect.signature(cls.__init__).parameters.items():
            if name == "self":
                continue
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(f"{cls.__name__}.__init__ must list its hyperparameters")
            names.append(name)
        return names

    def get_params(self) -> dict[str, Any]:
        """The hyperparameters, as the constructor stored them."""
        return {name: getattr(self, name) for name in self.param_names()}

    def set_params(self, **params: Any) -> Self:
        """Change hyperparameters (checked by the constructor); learned state is dropped."""
        unknown = sorted(set(params) - set(self.param_names()))
        if unknown:
            raise ValueError(
                f"{self.name}: unknown hyperparameter(s) {unknown}; "
                f"known: {', '.join(self.param_names())}"
            )
        self.__init__(**{**self.get_params(), **params})  # type: ignore[misc]
        return self

    def clone(self) -> Self:
        """A new, unfitted estimator with the same hyperparameters."""
        return type(self)(**copy.deepcopy(self.get_params()))

    # -- fitting ------------------------------------------------------------------------
    def fit(self, data: Any, **kwargs: Any) -> Self:
        """Reset all learned state, learn from ``data`` (``_fit``) and return ``self``."""
        self.__init__(**self.get_params())  # type: ignore[misc]
        self._fit(data, **kwargs)
        self._fitted = True
        return self

    def _fit(self, data: Any, **kwargs: Any) -> None:
        raise NotImplementedError

    # -- learned state ------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self._fitted

    def state(self, key: str) -> torch.Tensor:
        if key not in self._state:
            raise NotFittedError(f"{self.name}: call fit() before using it")
        return self._state[key]

    def set_state(self, **tensors: torch.Tensor) -> None:
        for key, value in tensors.items():
            self._state[key] = value.detach().to(torch.float32).contiguous().cpu()
