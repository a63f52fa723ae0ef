"""Protocols, local patch features (GL-MCM on ViT towers) and report figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_methods import make_data, one_thread  # noqa: F401 (one_thread: autouse fixture)

from clipadapt.data import load_dataset
from clipadapt.methods import create_method
from clipadapt.models import create_backend
from clipadapt.ood import OOD_LABEL, create_detector
from clipadapt.ood.local import NoLocalFeaturesError, encode_local_features
from clipadapt.ood.plots import figure_png, roc_curves, score_histogram
from clipadapt.ood.protocols import (
    FAR_OOD,
    NEAR_OOD,
    OPEN_SET_DG,
    FeatureSet,
    class_holdout_task,
    evaluate_open_set,
    extract_task_features,
    far_ood_task,
    hold_out_classes,
    task_fit_data,
)
from clipadapt.prompts import class_embeddings, make_prompt_set
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


def test_class_holdout_task_never_trains_on_unknown_or_test_images(domains):
    task = class_holdout_task(domains, sources=["photo"], num_known=2, shots=2, seed=3)
    assert task.known_classes == ["ant", "bird"] and task.unknown == ["cat", "dog"]
    assert {t: task.targets[t].protocol for t in task.targets} == {
        "photo": NEAR_OOD,
        "paint": OPEN_SET_DG,
    }
    fitted = {task.train.samples[i].path for i in task.split.support + task.split.val}
    assert all(p.parent.name in {"ant", "bird"} and "photo" in p.parts for p in fitted)
    for target in task.targets.values():
        assert not fitted & set(target.known.paths) and not fitted & set(target.unknown.paths)
        assert (target.unknown.labels == OOD_LABEL).all()
        assert {p.parent.name for p in target.unknown.paths} == {"cat", "dog"}
    photo = task.targets["photo"]
    assert len(photo.known.paths) == 2 * 2 and len(photo.unknown.paths) == 2 * 2  # 30% of 8
    assert len(task.targets["paint"].known.paths) == 16  # every image of a held-out domain
    two = class_holdout_task(domains, sources=["photo", "paint"], num_known=2, shots=2)
    assert {t.protocol for t in two.targets.values()} == {NEAR_OOD}
    assert all("photo" in p.parts for p in two.targets["photo"].known.paths)
    assert task.describe()["targets"]["photo"] == {
        "protocol": NEAR_OOD,
        "n_known": 4,
        "n_unknown": 4,
    }


def test_far_ood_task_tests_every_ood_image(domains):
    task = far_ood_task(domains["photo"], {"paint": domains["paint"]}, shots=2)
    assert task.unknown == ["paint"] and task.targets["paint"].protocol == FAR_OOD
    assert len(task.targets["paint"].unknown.paths) == 32
    assert len(task.targets["paint"].known.paths) == 4 * 2


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


def test_gl_mcm_runs_end_to_end_on_a_tiny_vit(domains, tiny_open_clip_dir: Path):
    backend = create_backend(f"local-dir:{tiny_open_clip_dir}")
    task = class_holdout_task(domains, sources=["photo"], num_known=2, shots=2, targets=["photo"])
    features = extract_task_features(task, backend, local=True, progress=False)
    assert features.val.local_features.shape == (4, 16, 16)
    assert features.support.local_features is None  # support patches are never needed
    text = class_embeddings(backend, task.classnames, make_prompt_set("default"))
    data = task_fit_data(task, features, text, backend.logit_scale)
    method = create_method("zeroshot").fit(data)
    detectors = {"gl_mcm": create_detector("gl_mcm").fit(data)}
    metrics = evaluate_open_set(method, detectors, features.val, features.targets).metrics
    assert 0.0 <= metrics["targets"]["photo"]["scores"]["gl_mcm"]["AUROC"] <= 1.0


def test_figures_render_to_png():
    rng = np.random.default_rng(0)
    ids, oods = rng.normal(0, 1, 50), rng.normal(1, 1, 40)
    for figure in (
        score_histogram(ids, oods, title="mcm", threshold=1.2),
        roc_curves({"mcm": (ids, oods), "knn": (ids, oods + 1)}, title="photo"),
    ):
        assert figure_png(figure).startswith(b"\x89PNG")
