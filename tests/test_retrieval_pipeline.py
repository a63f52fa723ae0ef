"""Zero-shot retrieval over domain folders: the task built, the CLIP_benchmark-style result."""

from __future__ import annotations

import numpy as np
from conftest import make_image_folder

from clipadapt.data import load_domain_folders
from clipadapt.feature_cache import FeatureCache
from clipadapt.pipeline.retrieval import domain_class_task, run_retrieval


def domains(tmp_path):
    for domain in ("photo", "art_painting"):
        make_image_folder(tmp_path / "pacs" / domain, {"cat": 3, "dog": 2})
    return load_domain_folders(tmp_path / "pacs")


def test_one_caption_per_domain_and_class_relevant_to_its_images(tmp_path):
    task = domain_class_task(domains(tmp_path), "pacs")
    assert task.texts == [
        "a art painting of a cat",
        "a art painting of a dog",
        "a photo of a cat",
        "a photo of a dog",
    ]
    assert task.relevant.shape == (4, 10) and task.relevant.sum(axis=1).tolist() == [3, 2, 3, 2]
    assert (task.relevant.sum(axis=0) == 1).all()
    for t, text in enumerate(task.texts):
        domain, classname = text.removeprefix("a ").split(" of a ")
        for i in np.flatnonzero(task.relevant[t]):
            assert f"/{domain.replace(' ', '_')}/{classname}/" in task.image_paths[i]


def test_result_has_clip_benchmark_fields_and_uses_the_cache(tmp_path, fake_backend):
    task = domain_class_task(domains(tmp_path), "pacs")
    cache = FeatureCache(tmp_path / "cache")
    result = run_retrieval(fake_backend, task, cache=cache, progress=False)
    assert result["task"] == "zeroshot_retrieval" and result["dataset"] == "pacs"
    for key in ("model", "pretrained", "model_spec", "image_fingerprint"):
        assert key in result
    directions = ("image_retrieval", "text_retrieval")
    expected = {f"{d}_recall@{k}" for d in directions for k in (1, 5, 10)}
    assert set(result["metrics"]) == expected | {f"{d}_mAP" for d in directions}
    # 4 texts: every image query finds its one relevant text within the top 5
    assert result["metrics"]["text_retrieval_recall@5"] == 1
    assert result["n_images"] == 10 and result["features"]["computed"] == 10
    again = run_retrieval(fake_backend, task, cache=cache, progress=False)
    assert again["features"]["cached"] == 10 and again["metrics"] == result["metrics"]


def test_skip_bad_drops_the_image_from_the_relation(tmp_path, fake_backend):
    datasets = domains(tmp_path)
    task = domain_class_task(datasets, "pacs")
    broken = next(p for p in task.image_paths if "/photo/cat/" in p)
    with open(broken, "wb") as f:
        f.write(b"broken")
    result = run_retrieval(fake_backend, task, skip_bad=True, progress=False)
    assert result["n_images"] == 9 and result["skipped"][0]["path"].endswith(".png")
