"""OOD and open-set protocols through the bench runner and the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bench_fakes import ColorBackend, make_domains, make_folder

from clipadapt.bench.config import BenchConfig
from clipadapt.bench.report import write_report
from clipadapt.bench.runner import run_bench
from clipadapt.pipeline.results import find_results, load_scores, read_result, scores_path

DETECTORS = ("msp", "mcm", "energy", "knn", "mahalanobis")


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPADAPT_CACHE_DIR", str(tmp_path / "default-cache"))


def ood_config(tmp_path: Path, **overrides) -> BenchConfig:
    root = make_domains(tmp_path / "colors", classes=("blue", "gold", "green", "red"), n=12)
    far = make_folder(tmp_path / "far" / "grey", {"gold": 10}, shade=0.1, seed=5)
    values = {
        "data": str(root),
        "out": tmp_path / "out",
        "protocol": "near_ood,open_set_dg,far_ood",
        "methods": "zeroshot,ncm",
        "sources": ("bright",),
        "shots": (2,),
        "seeds": (1, 2),
        "known_classes": 2,
        "ood_data": {"grey": str(far)},
        "detectors": DETECTORS,
        "cache_dir": tmp_path / "cache",
    } | overrides
    return BenchConfig(**values)


def test_ood_protocols_run_write_scores_and_report(tmp_path: Path) -> None:
    config = ood_config(tmp_path)
    summary = run_bench(config, backend=ColorBackend(), progress=False)
    assert len(summary.ran) == 3 * 2 * 2  # protocols x methods x seeds
    paths = find_results(config.out)
    results = {(r.protocol, r.method, r.seed): r for r in map(read_result, paths)}
    near = results[("near_ood", "ncm", 1)]
    assert near.task == "open_set"
    assert near.open_set["known_classes"] == ["blue", "gold"]
    assert near.open_set["unknown"] == ["green", "red"]
    target = near.metrics["targets"]["bright"]
    for detector in DETECTORS:
        m = target["scores"][detector]
        assert {"AUROC", "FPR95", "AUPR_IN", "AUPR_OUT", "OSCR", "H_score", "threshold"} <= set(m)
    assert list(results[("open_set_dg", "ncm", 1)].metrics["targets"]) == ["dark"]
    assert list(results[("far_ood", "zeroshot", 2)].metrics["targets"]) == ["grey"]
    path = config.out / "near_ood" / "colors" / "bright" / "ncm" / "K2_s1.json"
    scores = load_scores(path)
    ids, oods = scores["bright"]["knn"]
    assert scores_path(path).is_file() and len(ids) == target["n_known"]
    assert len(oods) == target["n_unknown"] and np.isfinite(ids).all()
    # a re-run skips every finished run
    again = run_bench(config, backend=ColorBackend(), progress=False)
    assert not again.ran and len(again.skipped) == 12

    written = write_report(config.out, tmp_path / "report")
    html = written["html"].read_text()
    assert "OOD and open-set" in html and "data:image/png;base64" in html
    md = written["markdown"].read_text()
    assert "near_ood" in md and "far_ood" in md and "knn" in md
    figures = sorted(p.name for p in (tmp_path / "report" / "figures").glob("ood_*.png"))
    assert figures and any("near_ood" in f for f in figures)
    assert (tmp_path / "report" / "ood_table.csv").read_text().count("\n") > 10


def test_far_ood_needs_ood_data(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ood_data"):
        ood_config(tmp_path, ood_data={})


def test_every_method_can_be_attached_to_a_backend() -> None:
    from clipadapt.methods import METHODS

    method = METHODS["gda"]()
    assert method.attach(ColorBackend()) is method  # a no-op for cached-feature methods


def test_tower_methods_and_patch_scores_in_the_ood_protocols(tmp_path, tiny_open_clip_dir) -> None:
    from clipadapt.models import create_backend

    backend = create_backend(f"local-dir:{tiny_open_clip_dir}")
    methods = {"coop": {"epochs": 1}, "visual_prompt": {"epochs": 1, "size": 4}}
    config = ood_config(
        tmp_path,
        protocol="near_ood",
        methods=methods,
        seeds=(1,),
        detectors=("msp", "knn", "gl_mcm"),
        cache_dir=tmp_path / "cache",
    )
    summary = run_bench(config, backend=backend, progress=False)
    results = {r.method: r for r in map(read_result, summary.ran)}
    assert set(results) == set(methods)
    visual = results["visual_prompt"]
    assert visual.feature_fingerprint != visual.image_fingerprint
    for r in results.values():
        scores = r.metrics["targets"]["bright"]["scores"]
        assert {"msp", "knn", "gl_mcm"} <= set(scores) and "AUROC" in scores["gl_mcm"]
