"""The estimator contract shared by adaptation methods and OOD detectors.

As in scikit-learn's ``BaseEstimator``: hyperparameters are the constructor's arguments,
read back from its signature (``get_params``) rather than kept in a second hand-written
list, and each is stored on the instance under its own name. A constructor may end in
``**kwargs`` that it passes on to its parent's constructor; the parent's parameters then
count as its own. ``fit`` starts from a freshly constructed object (every piece of learned
state from an earlier fit is gone), calls the subclass's ``_fit`` and returns the fitted
object; using learned state before that raises ``NotFittedError``.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, ClassVar, Self

import torch


class NotFittedError(RuntimeError):
    """Raised when a method or detector is used before ``fit``."""


class Estimator:
    """Base class: constructor hyperparameters, learned tensors in ``_state``, and ``selected``
    (hyperparameters chosen during ``fit`` and how they were chosen)."""

    name: str = "estimator"
    kept_on_fit: ClassVar[tuple[str, ...]] = ()
    """Attributes that are neither hyperparameters nor learned state (e.g. a progress hook
    set by the caller) and survive ``fit``'s reset."""

    def __init__(self) -> None:
        self._state: dict[str, torch.Tensor] = {}
        self.selected: dict[str, Any] = {}
        self._fitted = False

    # -- hyperparameters ----------------------------------------------------------------
    @classmethod
    def param_names(cls) -> list[str]:
        """The constructor's parameter names, followed through ``**kwargs`` to the parent's
        constructor (``*args`` is not allowed)."""
        names: list[str] = []
        for klass in cls.__mro__:
            if "__init__" not in vars(klass):
                continue
            forwards = False
            for name, param in inspect.signature(klass.__init__).parameters.items():
                if param.kind is param.VAR_POSITIONAL:
                    raise TypeError(f"{cls.__name__}.__init__ must name its hyperparameters")
                if param.kind is param.VAR_KEYWORD:
                    forwards = True
                elif name != "self" and name not in names:
                    names.append(name)
            if not forwards:
                return names
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
        self._reset({**self.get_params(), **params})
        return self

    def clone(self) -> Self:
        """A new, unfitted estimator with the same hyperparameters."""
        return type(self)(**copy.deepcopy(self.get_params()))

    # -- fitting ------------------------------------------------------------------------
    def fit(self, data: Any, **kwargs: Any) -> Self:
        """Reset all learned state, learn from ``data`` (``_fit``) and return ``self``."""
        self._reset(self.get_params())
        self._fit(data, **kwargs)
        self._fitted = True
        return self

    def _fit(self, data: Any, **kwargs: Any) -> None:
        raise NotImplementedError

    def _reset(self, params: dict[str, Any]) -> None:
        """Re-run the constructor with ``params``, keeping the ``kept_on_fit`` attributes."""
        kept = {name: getattr(self, name) for name in self.kept_on_fit}
        self.__init__(**params)  # type: ignore[misc]
        for name, value in kept.items():
            setattr(self, name, value)

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
