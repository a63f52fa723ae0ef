"""The estimator contract of methods and detectors: hyperparameters read from the
constructor, clone/set_params, fit resets the learned state, errors before fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_methods import make_data, one_thread  # noqa: F401 (one_thread: autouse fixture)

from clipadapt.estimator import Estimator, NotFittedError
from clipadapt.methods import METHODS, DataKind, FitData, create_method
from clipadapt.methods import NotFittedError as MethodsNotFittedError
from clipadapt.methods.base import NotFittedError as BaseNotFittedError
from clipadapt.ood import DETECTORS, create_detector

ESTIMATORS = {f"method:{n}": c for n, c in METHODS.items()}
ESTIMATORS |= {f"detector:{n}": c for n, c in DETECTORS.items()}
FEATURE_METHODS = sorted(n for n, c in METHODS.items() if DataKind.TOWER not in c.reads)


@pytest.mark.parametrize("label", sorted(ESTIMATORS))
def test_params_come_from_the_constructor_and_round_trip(label: str) -> None:
    cls = ESTIMATORS[label]
    estimator = cls()
    params = estimator.get_params()
    assert list(params) == cls.param_names()
    stored = json.loads(json.dumps(params))  # as config.json keeps them
    assert cls(**stored).get_params() == params
    copy = estimator.clone()
    assert type(copy) is cls and copy is not estimator and not copy.is_fitted
    assert copy.get_params() == params
    assert estimator.set_params(**params) is estimator and estimator.get_params() == params
    with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) \['nope'\]"):
        estimator.set_params(nope=1)


def test_set_params_changes_a_value_and_drops_the_fit() -> None:
    data = make_data()
    method = create_method("gda").fit(data)
    method.set_params(alpha=1.0)
    assert method.alpha == 1.0 and not method.is_fitted
    with pytest.raises(NotFittedError):
        method.predict_logits(data.val_features)
    assert method.fit(data).selected["alpha"] == {"value": 1.0, "how": "given"}


def test_params_follow_kwargs_to_the_parent_constructor() -> None:
    names = METHODS["kgcoop"].param_names()
    assert names[0] == "kg_weight" and "n_ctx" in names and names.count("kg_weight") == 1
    assert set(METHODS["prompt_distill"].param_names()) > set(METHODS["coop"].param_names())
    params = create_method("kgcoop", n_ctx=2).get_params()
    assert params["n_ctx"] == 2 and params["kg_weight"] == 8.0

    class Positional(Estimator):
        def __init__(self, *sizes: int) -> None:
            super().__init__()

    with pytest.raises(TypeError, match="must name its hyperparameters"):
        Positional.param_names()


def test_fit_resets_the_learned_state() -> None:
    one_shot = make_data(shots=1, views=0)
    method = create_method("gda").fit(one_shot)
    assert method.selected["precision"]["value"] == "identity"
    method.fit(make_data(shots=4, views=0))
    assert "precision" not in method.selected
    assert not torch.allclose(method.precision(), torch.eye(one_shot.class_embeddings.shape[1]))


def test_detector_fit_resets_the_learned_state() -> None:
    first, second = make_data(seed=0), make_data(seed=1, shots=2, views=0)
    detector = create_detector("knn").fit(first).fit(second)
    assert torch.equal(detector.state("bank"), second.support_features)
    mahalanobis = create_detector("mahalanobis").fit(make_data(shots=1, views=0))
    assert mahalanobis.info["precision"]["value"] == "identity"
    assert mahalanobis.fit(second).info["precision"] == {"value": "ridge"}


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_methods_refuse_to_predict_or_save_before_fit(name: str, tmp_path: Path) -> None:
    method = create_method(name)
    assert NotFittedError is MethodsNotFittedError is BaseNotFittedError
    with pytest.raises(NotFittedError, match=f"{name}: call fit"):
        method.predict_logits(make_data().val_features)
    with pytest.raises(NotFittedError, match=r"call fit\(\)"):
        method.save(tmp_path / name)


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_detectors_refuse_to_score_or_save_before_fit(name: str, tmp_path: Path) -> None:
    detector = create_detector(name)
    features = make_data().val_features
    with pytest.raises(NotFittedError, match=f"{name}: call fit"):
        detector.score(features, torch.zeros(len(features), 3), local_features=features[:, None])
    with pytest.raises(NotFittedError, match="nothing to save"):
        detector.save(tmp_path / name)


def test_fit_data_names_the_selection_modes() -> None:
    with pytest.raises(ValueError, match="selection 'test': use one of validation, cv"):
        FitData(torch.eye(2), 1.0, ["a", "b"], selection="test")
