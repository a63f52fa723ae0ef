"""Protocols, local patch features (GL-MCM on ViT towers) and report figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_methods import make_data, one_thread  # noqa: F401 (one_thread: autouse fixture)

from clipadapt.bench.plots import png_bytes, roc_curves, score_histogram
from clipadapt.bench.protocols import (
    FAR_OOD,
    NEAR_OOD,
    OOD_PREFIX,
    OPEN_SET_DG,
    hold_out_classes,
    settings,
)
from clipadapt.data import load_dataset
from clipadapt.methods import create_method
from clipadapt.models import create_backend
from clipadapt.ood import OOD_LABEL, create_detector
from clipadapt.ood.local import NoLocalFeaturesError, encode_local_features
from clipadapt.pipeline.experiment import Experiment
from clipadapt.pipeline.openset import FeatureSet, evaluate_open_set
from clipadapt.pipeline.task import Splits
from clipadapt.prompts import make_prompt_set
from tests.conftest import make_image_folder

CLASSES = {"bird": 8, "ant": 8, "cat": 8, "dog": 8}


@pytest.fixture
def domains(tmp_path: Path):
    for domain in ("paint", "photo"):
        make_image_folder(tmp_path / "pacs" / domain, CLASSES, size=24)
    return load_dataset(tmp_path / "pacs")


def test_hold_out_classes_sorts_by_name():
    names = ["person", "dog", "house", "guitar", "elephant", "horse", "giraffe"]
    assert hold_out_classes(names) == (
        ["dog", "elephant", "giraffe", "guitar"],
        ["horse", "house", "person"],
    )
    with pytest.raises(ValueError, match="between 1 and 6"):
        hold_out_classes(names, num_known=7)


def experiment(domains, tmp_path, backend) -> Experiment:
    splits = Splits(
        domains, tmp_path / "splits", split_seed=1, test_fraction=0.3, on_too_few="error"
    )
    return Experiment(backend, domains, splits, make_prompt_set("default"), progress=False)


def test_class_holdout_settings_never_train_on_unknown_or_test_images(domains, tmp_path):
    from bench_fakes import ColorBackend

    near = settings(NEAR_OOD, "pacs", domains, ("photo",), known_classes=2)[0]
    dg = settings(OPEN_SET_DG, "pacs", domains, ("photo",), known_classes=2)[0]
    ids = domains["photo"].class_ids
    assert [ids[c] for c in near.classes] == ["ant", "bird"] and near.classes == dg.classes
    assert [t.name for t in dg.targets] == ["paint"] and near.open_set and dg.open_set
    run = experiment(domains, tmp_path, ColorBackend())
    data = run.gather(near, 2, 3, views=0, unlabeled=True)
    assert len(data.support_labels) == 2 * 2 and set(data.support_labels.tolist()) == {0, 1}
    fitted = {Path(p) for p in data.support_paths + data.unlabeled_paths}
    assert all(p.parent.name in {"ant", "bird"} and "photo" in p.parts for p in fitted)
    for target in (*near.targets, *dg.targets):
        for images in (target.known, target.unknown):
            dataset = domains[images.domain]
            paths = {dataset.samples[i].path for i in run.splits.indices(images)}
            assert not fitted & paths
        unknown = domains[target.unknown.domain]
        names = {unknown.samples[i].path.parent.name for i in run.splits.indices(target.unknown)}
        assert names == {"cat", "dog"}
    photo = near.targets[0]
    assert len(run.splits.indices(photo.known)) == 2 * 2  # 30% of 8, per known class
    assert len(run.splits.indices(dg.targets[0].known)) == 16  # every image of another domain


def test_far_ood_setting_tests_every_ood_image(domains, tmp_path):
    with_ood = {"photo": domains["photo"], OOD_PREFIX + "paint": domains["paint"]}
    far = settings(FAR_OOD, "pacs", with_ood, ("photo",), ood_data=["paint"])[0]
    assert far.classes is None and [t.name for t in far.targets] == ["paint"]
    splits = experiment(with_ood, tmp_path, None).splits
    assert len(splits.indices(far.targets[0].unknown)) == 32
    assert len(splits.indices(far.targets[0].known)) == 4 * 2


def synthetic_sets(seed: int):
    data = make_data(num_classes=3, dim=16, seed=seed)
    g = torch.Generator().manual_seed(seed)
    known = FeatureSet(data.val_features, data.val_labels)
    unknown_features = F.normalize(torch.randn(9, 16, generator=g), dim=-1)
    unknown = FeatureSet(unknown_features, torch.full((9,), OOD_LABEL))
    return data, known, unknown


def test_evaluation_calibrates_on_validation_only_and_skips_what_it_cannot_score():
    data, known, unknown = synthetic_sets(0)
    _, other_known, other_unknown = synthetic_sets(1)
    method = create_method("zeroshot").fit(data)
    detectors = {n: create_detector(n).fit(data) for n in ("mcm", "knn", "gl_mcm")}
    val = FeatureSet(data.val_features, data.val_labels)
    first = evaluate_open_set(method, detectors, val, {"a": (known, unknown)})
    second = evaluate_open_set(method, detectors, val, {"b": (other_known, other_unknown)})
    result = first.metrics["targets"]["a"]
    assert result["scores"]["gl_mcm"] == {
        "skipped": "needs local patch features (a ViT image tower)"
    }
    for name in ("mcm", "knn"):
        metrics = result["scores"][name]
        assert metrics["threshold"] == second.metrics["targets"]["b"]["scores"][name]["threshold"]
        assert set(metrics) >= {"AUROC", "FPR95", "AUPR_IN", "AUPR_OUT", "OSCR", "H_score"}
        assert metrics["known_accepted"] >= 0.95  # known test = validation here
        assert len(first.scores["a"][name][0]) == len(known.labels)
    assert result["closed_set_acc"] == 1.0


def test_local_features_need_a_vit(lite_backend):
    with pytest.raises(NoLocalFeaturesError, match="'lite' has a CNN image tower"):
        encode_local_features(lite_backend, torch.zeros(1, 3, 224, 224))


@pytest.mark.parametrize("kind", ["open_clip", "hf"])
def test_local_features_of_tiny_vits(kind: str, tiny_open_clip_dir: Path, tiny_hf_dir: Path):
    spec = f"local-dir:{tiny_open_clip_dir}" if kind == "open_clip" else f"hf:{tiny_hf_dir}"
    backend = create_backend(spec)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    local = encode_local_features(backend, pixels)
    assert local.shape == (2, (32 // 8) ** 2, 16)  # 4x4 patches of 8 pixels, 16-d embeddings
    torch.testing.assert_close(local.norm(dim=-1), torch.ones(2, 16))
    assert not torch.allclose(local[:, 0], local[:, 1])


def test_gl_mcm_runs_end_to_end_on_a_tiny_vit(domains, tmp_path, tiny_open_clip_dir: Path):
    backend = create_backend(f"local-dir:{tiny_open_clip_dir}")
    near = settings(NEAR_OOD, "pacs", domains, ("photo",), known_classes=2)[0]
    run = experiment(domains, tmp_path, backend)
    data = run.gather(near, 2, 1, views=0, unlabeled=False)
    fitted = run.fit(create_method("zeroshot"), near, data, seed=1)
    detectors, held = run.fit_detectors(near, data, ("gl_mcm",), seed=1)
    assert held == {"gl_mcm": None}  # it reads patch features: no held-out support scores
    val = run.val_features(fitted, near, 2, 1, local=True)
    assert val.local_features.shape == (4, 16, 16)
    metrics = run.evaluate_open_set(fitted, near, detectors, held, 2, 1, accept=0.95).metrics
    assert 0.0 <= metrics["targets"]["photo"]["scores"]["gl_mcm"]["AUROC"] <= 1.0


def test_figures_render_to_png():
    rng = np.random.default_rng(0)
    ids, oods = rng.normal(0, 1, 50), rng.normal(1, 1, 40)
    for figure in (
        score_histogram(ids, oods, title="mcm", threshold=1.2),
        roc_curves({"mcm": (ids, oods), "knn": (ids, oods + 1)}, title="photo"),
    ):
        assert png_bytes(figure).startswith(b"\x89PNG")
