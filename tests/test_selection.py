"""Searched hyperparameters: given values, the validation and cross-validation modes, and
``auto``, the method chosen by cross-validation."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
import torch
from test_methods import SEARCHED, make_data, one_thread  # noqa: F401 (autouse fixture)

from clipadapt.methods import METHODS, DataKind, FitData, create_method, load_method
from clipadapt.methods import auto as auto_module
from clipadapt.methods.gda import GDA
from clipadapt.methods.ncm import NearestClassMean
from clipadapt.methods.selection import (
    Grid,
    GridFit,
    Search,
    Searchable,
    SearchedMethod,
    search_value,
)


def rows_of(part: torch.Tensor, pool: torch.Tensor) -> list[int]:
    """The row of ``pool`` equal to each row of ``part`` (every row must be there)."""
    matches = (part[:, None] == pool[None]).all(dim=-1)
    assert bool(matches.any(dim=1).all()), "rows from outside the pool"
    return matches.int().argmax(dim=1).tolist()


class Flat(SearchedMethod):
    """Every grid point scores the same: only the tie rules choose."""

    name = "flat"
    reads = frozenset({DataKind.SUPPORT, DataKind.VALIDATION})
    searches: ClassVar[dict[str, Search]] = {
        "a": Search((1.0, 2.0, 3.0), 3.0, stronger="low"),
        "b": Search((5.0, 6.0), 6.0, stronger="high"),
    }

    def __init__(self, a: Searchable = None, b: Searchable = None) -> None:
        super().__init__()
        self.a, self.b = search_value("a", a), search_value("b", b)

    def _fit_grid(self, data: FitData, grid: Grid) -> GridFit:
        sizes = (len(grid["a"]), len(grid["b"]))
        return GridFit(
            lambda f: torch.zeros(*sizes, len(f), data.num_classes),
            lambda p: {"a": torch.tensor(grid["a"][p[0]]), "b": torch.tensor(grid["b"][p[1]])},
        )


def accuracy(method, data: FitData) -> float:
    return float((method.predict(data.val_features) == data.val_labels).float().mean())


def chosen(method: SearchedMethod) -> tuple[float, ...]:
    return tuple(method.selected[name]["value"] for name in method.searches)


@pytest.mark.parametrize(
    ("selection", "grid", "expected"),
    [
        ("validation", {}, (3.0, 6.0)),  # the preferred point ties with the best
        ("validation", {"a": (1.0, 2.0)}, (1.0, 5.0)),  # it is not in the grid: the first best
        ("cv", {}, (1.0, 6.0)),  # the stronger regularisation of each
        ("cv", {"a": (2.0, 3.0)}, (2.0, 6.0)),
    ],
)
def test_tie_rules(selection: str, grid: dict, expected: tuple[float, ...]) -> None:
    data = make_data()
    data.selection = selection
    method = Flat(**grid).fit(data)
    assert chosen(method) == expected
    assert method.selected["b"]["mode"] == selection
    assert method.selected["b"]["how"].endswith("jointly with a")


def test_without_validation_data_the_preferred_value_or_the_first_is_used() -> None:
    data = make_data()
    data.val_features = data.val_labels = None
    assert chosen(Flat().fit(data)) == (3.0, 6.0)
    assert chosen(Flat(a=[1.0, 2.0]).fit(data)) == (1.0, 6.0)


def test_a_given_value_is_used_as_is() -> None:
    data = make_data(seed=4)
    data.support_labels = (data.support_labels + 1) % data.num_classes  # trust the text
    searched = create_method("gda").fit(data)
    method = create_method("gda", alpha=1.0).fit(data)
    assert searched.selected["alpha"]["value"] < 1.0
    assert searched.selected["alpha"]["val_acc1"] > accuracy(method, data)
    assert method.selected["alpha"] == {"value": 1.0, "how": "given"}
    f = data.val_features
    gda = f @ method.state("weight").T + method.state("bias")
    assert torch.equal(method.predict_logits(f), 100.0 * (f @ data.class_embeddings.T) + gda)


def test_given_values_are_not_searched() -> None:
    grids: list[Grid] = []

    class Spy(GDA):
        def _fit_grid(self, data: FitData, grid: Grid) -> GridFit:
            grids.append(grid)
            return super()._fit_grid(data, grid)

    for selection in ("validation", "cv"):
        data = make_data()
        data.selection = selection
        Spy(alpha=2.0).fit(data)
    assert grids == [{"alpha": (2.0,)}] * 2


@pytest.mark.parametrize("name", SEARCHED)
def test_none_searches_the_default_grid_and_a_list_searches_it(name: str) -> None:
    data = make_data()
    cls = METHODS[name]
    default = cls().fit(data)
    own = cls(**{k: list(s.grid[:2]) for k, s in cls.searches.items()}).fit(data)
    for key, search in cls.searches.items():
        assert default.selected[key]["grid"] == list(search.grid)
        assert default.selected[key]["value"] in search.grid
        assert own.selected[key]["grid"] == list(search.grid[:2])
        assert own.selected[key]["value"] in search.grid[:2]
        assert "val_acc1" in own.selected[key]
    with pytest.raises(ValueError, match="non-empty list of numbers"):
        cls(**{key: [] for key in cls.searches})


Call = tuple[FitData, Grid, list[torch.Tensor]]  # what _fit_grid got, the features it scored


def spying_gda(calls: list[Call]) -> type[GDA]:
    """GDA recording every ``_fit_grid`` call and the features its logits are asked for."""

    class Spy(GDA):
        def _fit_grid(self, data: FitData, grid: Grid) -> GridFit:
            fit = super()._fit_grid(data, grid)
            scored: list[torch.Tensor] = []
            calls.append((data, grid, scored))
            logits = fit.logits
            fit.logits = lambda f: scored.append(f) or logits(f)
            return fit

    return Spy


def pooled(data: FitData) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.cat([data.support_features, data.val_features]),
        torch.cat([data.support_labels, data.val_labels]),
    )


def test_cross_validation_folds_over_support_and_validation_only() -> None:
    calls: list[Call] = []
    data = make_data(shots=6, val_per_class=4, views=2)
    data.selection = "cv"
    method = spying_gda(calls)().fit(data)
    pool, labels = pooled(data)
    *folds, final = calls
    record = method.selected["alpha"]
    assert len(folds) == 5 == record["folds"]  # min(5, 10 per class)
    held_out = []
    for fold, grid, scored in folds:
        assert fold.support_views is None and fold.val_features is None  # no views, no leak
        assert grid == {"alpha": GDA.searches["alpha"].grid}
        train = rows_of(fold.support_features, pool)
        (held,) = (rows_of(features, pool) for features in scored)
        assert not set(train) & set(held) and len(train) + len(held) == len(pool)
        assert torch.bincount(labels[held]).tolist() == [2, 2, 2]  # stratified
        held_out += held
    assert sorted(held_out) == list(range(len(pool)))
    final_data, grid, scored = final
    assert final_data is data and not scored  # the final model: support (and views) only
    assert grid == {"alpha": (record["value"],)} and record["mode"] == "cv"
    assert (record["cv_acc1"] * len(pool)) % 1 == pytest.approx(0.0)  # pooled held-out acc1
    given = create_method("gda", alpha=record["value"]).fit(data)
    assert torch.equal(method.predict_logits(pool), given.predict_logits(pool))


def test_cross_validation_folds_follow_the_seed() -> None:
    def held_out(seed: int) -> list[list[int]]:
        calls: list[Call] = []
        data = make_data()
        data.selection, data.seed = "cv", seed
        spying_gda(calls)().fit(data)
        pool, _ = pooled(data)
        return [rows_of(f, pool) for _, _, scored in calls for f in scored]

    assert held_out(1) == held_out(1) != held_out(2)


def test_cross_validation_needs_two_images_per_class() -> None:
    data = make_data(shots=1, views=0)
    data.val_features = data.val_labels = None
    data.selection = "cv"
    record = create_method("gda").fit(data).selected["alpha"]
    assert record["value"] == 0.1 and record["how"].startswith("preferred (a class has under 2")


# -- auto ------------------------------------------------------------------------------------
def test_auto_picks_by_cross_validation_and_delegates(tmp_path: Path) -> None:
    data = make_data(text="random", seed=5)
    method = create_method("auto").fit(data)
    record = method.selected["method"]
    scores = record["candidates"]
    assert list(scores) == list(auto_module.CANDIDATES) and record["folds"] == 5
    assert record["value"] == max(scores, key=scores.get)  # the first of the best
    assert scores["zeroshot"] < scores[record["value"]]  # random text embeddings lose
    cls = METHODS[record["value"]]
    direct = cls().fit(data.only(cls.reads))
    assert torch.equal(
        method.predict_logits(data.val_features), direct.predict_logits(data.val_features)
    )
    assert method.selected == {"method": record, **direct.selected}
    loaded = load_method(method.save(tmp_path / "auto"))
    assert type(loaded) is cls and loaded.selected == method.selected
    assert torch.equal(
        loaded.predict_logits(data.val_features), method.predict_logits(data.val_features)
    )


@pytest.mark.parametrize("order", [("ncm", "zeroshot"), ("zeroshot", "ncm")])
def test_auto_breaks_ties_towards_the_earlier_candidate(order: tuple[str, str]) -> None:
    method = create_method("auto", candidates=order).fit(make_data())  # both classify all
    assert method.selected["method"]["candidates"] == dict.fromkeys(order, 1.0)
    assert method.selected["method"]["value"] == order[0]


def test_auto_candidates_see_only_the_labelled_few_shot_images(monkeypatch) -> None:
    seen: list[torch.Tensor] = []

    class Spy(NearestClassMean):
        def _fit(self, data: FitData) -> None:
            seen.append(data.support_features)
            assert data.unlabeled_features is None and data.backend is None
            super()._fit(data)

        def predict_logits(self, features: torch.Tensor) -> torch.Tensor:
            seen.append(features)
            return super().predict_logits(features)

    monkeypatch.setitem(auto_module.CANDIDATES, "ncm", Spy)
    data = make_data()
    data.unlabeled_features = torch.randn(5, 32)  # not read: auto reads labelled kinds only
    create_method("auto", candidates=["ncm"]).fit(data.only(METHODS["auto"].reads))
    pool = torch.cat([data.support_features, data.val_features])
    for features in seen:
        rows_of(features, pool)
    assert len(seen) == 11  # 5 folds x (fit, predict), then the chosen fit


def test_auto_rejects_unknown_candidates() -> None:
    with pytest.raises(ValueError, match="candidates \\['coop'\\]: choose among zeroshot, ncm"):
        create_method("auto", candidates=["coop"])
