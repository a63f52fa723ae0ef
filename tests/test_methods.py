"""The method contract: registry, input checks, selection, save/load, determinism."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clipadapt.methods import METHODS, DataKind, FitData, Method, create_method, load_method
from clipadapt.methods.selection import SearchedMethod

# methods over features alone; those that run a tower (DataKind.TOWER) are tested with tiny
# models in test_prompt_methods.py
FEATURE_METHODS = sorted(n for n, c in METHODS.items() if DataKind.TOWER not in c.reads)
TRAINED = sorted(n for n in FEATURE_METHODS if not METHODS[n].training_free)
SEARCHED = sorted(n for n, c in METHODS.items() if issubclass(c, SearchedMethod))


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors run far faster on one thread, above all on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_data(
    num_classes: int = 3,
    dim: int = 32,
    shots: int = 6,
    views: int = 2,
    val_per_class: int = 4,
    seed: int = 0,
    text: str = "good",
) -> FitData:
    """Clustered normalised features; text embeddings near the class means ("good") or random."""
    g = torch.Generator().manual_seed(seed)
    means = F.normalize(torch.randn(num_classes, dim, generator=g), dim=-1)

    def sample(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(num_classes).repeat_interleave(per_class)
        x = means[y] + 0.3 * torch.randn(len(y), dim, generator=g) / dim**0.5
        return F.normalize(x, dim=-1), y

    xs, ys = sample(shots)
    xv, yv = sample(val_per_class)
    noise = torch.randn(views, len(xs), dim, generator=g) * 0.1 / dim**0.5
    class_embeddings = means if text == "good" else torch.randn(num_classes, dim, generator=g)
    return FitData(
        class_embeddings=F.normalize(class_embeddings, dim=-1),
        logit_scale=100.0,
        classnames=[f"class{i}" for i in range(num_classes)],
        support_features=xs,
        support_labels=ys,
        support_views=F.normalize(xs + noise, dim=-1) if views else None,
        val_features=xv,
        val_labels=yv,
        seed=1,
    )


def test_registry_lists_all_methods_under_their_names() -> None:
    assert set(METHODS) == {
        "zeroshot",
        "ncm",
        "linear_probe",
        "lp_zs",
        "clip_adapter",
        "tip_adapter",
        "tip_adapter_f",
        "gda",
        "coop",
        "kgcoop",
        "cocoop",
        "lora_text",
        "lora_image",
        "visual_prompt",
        "prompt_distill",
        "coop_unsupervised",
        "maple",
        "ivlp",
        "ft",
        "lp_ft",
        "flyp",
        "wise_ft",
        "auto",
    }
    for name, cls in METHODS.items():
        assert cls.name == name and issubclass(cls, Method)
    assert METHODS["zeroshot"].reads == frozenset()
    assert {DataKind.SUPPORT, DataKind.VALIDATION} <= METHODS["tip_adapter"].reads


def test_unknown_method_name_lists_known_names() -> None:
    with pytest.raises(ValueError, match="unknown method 'nope'") as error:
        create_method("nope")
    for name in METHODS:
        assert name in str(error.value)


def test_load_method_rejects_wrong_format_version(tmp_path: Path) -> None:
    directory = create_method("zeroshot").fit(make_data()).save(tmp_path / "model")
    config = json.loads((directory / "config.json").read_text())
    config["format_version"] = 999
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="format_version 999"):
        load_method(directory)


def test_load_method_rejects_unknown_method(tmp_path: Path) -> None:
    directory = create_method("zeroshot").fit(make_data()).save(tmp_path / "model")
    config = json.loads((directory / "config.json").read_text())
    config["method"] = "nope"
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"known methods: .*zeroshot"):
        load_method(directory)


@pytest.mark.parametrize(
    "name", sorted(n for n, c in METHODS.items() if DataKind.SUPPORT in c.reads)
)
@pytest.mark.parametrize("field", ["support_features", "support_labels"])
def test_fit_without_declared_support_names_the_missing_field(name: str, field: str) -> None:
    data = make_data()
    setattr(data, field, None)
    with pytest.raises(ValueError, match=f"{name}: fit needs FitData.{field}"):
        create_method(name).fit(data)


def test_fit_rejects_inconsistent_inputs() -> None:
    data = make_data()
    data.val_labels = None
    with pytest.raises(ValueError, match="val_labels is None"):
        create_method("gda").fit(data)
    data = make_data()
    data.support_labels = data.support_labels + 5
    with pytest.raises(ValueError, match="support_labels must lie in"):
        create_method("ncm").fit(data)
    data = make_data()
    data.support_views = data.support_views[:, :2]
    with pytest.raises(ValueError, match="support_views must be"):
        create_method("tip_adapter").fit(data)


def test_zero_shot_needs_no_support() -> None:
    data = make_data()
    data.support_features = data.support_labels = None
    assert create_method("zeroshot").fit(data).is_fitted


@pytest.mark.parametrize("name", sorted(set(FEATURE_METHODS) - {"auto"}))
def test_save_load_round_trip_gives_identical_logits(name: str, tmp_path: Path) -> None:
    data = make_data()
    method = create_method(name).fit(data)
    loaded = load_method(method.save(tmp_path / name))
    assert type(loaded) is type(method) and loaded.is_fitted
    assert loaded.selected == method.selected
    assert loaded.get_params() == method.get_params()
    assert torch.equal(
        loaded.predict_logits(data.val_features), method.predict_logits(data.val_features)
    )


def test_saved_config_shows_the_values_in_use_then_the_search(tmp_path: Path) -> None:
    method = create_method("tip_adapter", beta=3.0).fit(make_data())
    config = json.loads((method.save(tmp_path / "model") / "config.json").read_text())
    alpha = method.selected["alpha"]["value"]
    assert list(config)[:4] == ["format_version", "method", "hyperparameters", "selected"]
    assert config["hyperparameters"] == {"alpha": alpha, "beta": 3.0}
    assert config["params"] == {"alpha": None, "beta": 3.0}
    assert config["selected"]["beta"] == {"value": 3.0, "how": "given"}


@pytest.mark.parametrize("name", TRAINED)
def test_trained_methods_are_deterministic_given_the_seed(name: str) -> None:
    first = create_method(name).fit(make_data()).predict_logits(make_data().val_features)
    second = create_method(name).fit(make_data()).predict_logits(make_data().val_features)
    assert torch.equal(first, second)


def test_clip_adapter_initialisation_follows_the_seed() -> None:
    data = make_data()
    first = create_method("clip_adapter").fit(data).state("down")
    data.seed = 2
    assert not torch.equal(first, create_method("clip_adapter").fit(data).state("down"))


@pytest.mark.parametrize("name", ["tip_adapter", "gda"])
@pytest.mark.parametrize("selection", ["validation", "cv"])
def test_alpha_search_trusts_the_cache_when_text_is_useless(name: str, selection: str) -> None:
    data = make_data(text="random", seed=3)
    data.selection = selection
    method = create_method(name, alpha=[0.0001, 1000.0]).fit(data)
    record = method.selected["alpha"]
    assert record["value"] == 1000.0
    assert record["mode"] == selection and record["grid"] == [0.0001, 1000.0]


@pytest.mark.parametrize("name", ["tip_adapter", "gda"])
def test_alpha_search_trusts_the_text_when_support_labels_are_wrong(name: str) -> None:
    data = make_data(seed=4)
    data.support_labels = (data.support_labels + 1) % data.num_classes
    data.support_views = None
    method = create_method(name, alpha=[0.0001, 1000.0]).fit(data)
    assert method.selected["alpha"]["value"] == 0.0001
    assert method.selected["alpha"]["val_acc1"] == 1.0


@pytest.mark.parametrize(
    "name",  # prompt_distill reads validation for the teacher it fits, not for itself; the
    # tower methods (wise_ft) need a model: tests/test_finetuning_methods.py covers them
    sorted(
        n
        for n, c in METHODS.items()
        if DataKind.VALIDATION in c.reads
        and DataKind.TOWER not in c.reads
        and n != "prompt_distill"
    ),
)
def test_without_validation_the_preferred_values_are_used_and_recorded(name: str) -> None:
    data = make_data()
    data.val_features = data.val_labels = None
    method = create_method(name).fit(data)
    if name == "auto":  # cross-validates on the support set alone
        assert method.selected["method"]["folds"] == 5
        return
    for key, search in METHODS[name].searches.items():
        assert method.selected[key] == {
            "value": search.preferred,
            "how": "preferred (no validation set)",
            "mode": "validation",
            "grid": list(search.grid),
        }
