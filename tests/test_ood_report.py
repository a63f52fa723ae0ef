"""The OOD report: method-independent detectors once, ID scores counted once, one colour per
OOD target."""

from __future__ import annotations

import pytest
from bench_fakes import ColorBackend, make_domains, make_folder

from clipadapt.bench.config import BenchConfig
from clipadapt.bench.ood_report import (
    IMAGE_FEATURES,
    make_ood_sections,
    ood_figures,
    ood_results,
    ood_tables,
    pooled_scores,
)
from clipadapt.bench.runner import run_bench
from clipadapt.pipeline.results import find_results, load_scores, read_result


@pytest.fixture(scope="module")
def far_ood_runs(tmp_path_factory: pytest.TempPathFactory) -> list:
    """far_ood with two OOD sets, both tested against the same known test split."""
    tmp = tmp_path_factory.mktemp("far")
    root = make_domains(tmp / "colors", classes=("blue", "gold", "green"), n=12)
    config = BenchConfig(
        data=str(root),
        out=tmp / "out",
        protocol="far_ood",
        methods="zeroshot,ncm",
        sources=("bright",),
        shots=(2,),
        seeds=(1,),
        ood_data={
            "grey": str(make_folder(tmp / "grey", {"gold": 10}, shade=0.1, seed=5)),
            "pale": str(make_folder(tmp / "pale", {"red": 8}, shade=0.3, seed=6)),
        },
        detectors=("msp", "knn"),
        cache_dir=tmp / "cache",
    )
    run_bench(config, backend=ColorBackend(), progress=False)
    paths = find_results(config.out)
    return ood_results(paths, [read_result(p) for p in paths])


def test_image_feature_detectors_get_one_row_and_logit_scores_one_per_method(far_ood_runs):
    [section] = make_ood_sections(far_ood_runs)
    detection, h_score, oscr = ood_tables(section)
    rows = [tuple(row[:2]) for row in detection.rows]
    assert rows == [("zeroshot", "msp"), ("ncm", "msp"), (IMAGE_FEATURES, "knn")]
    assert detection.header == ["method", "detector", "AUROC grey", "AUROC pale", "AUROC mean",
                                "FPR95", "AUPR_IN", "AUPR_OUT"]  # fmt: skip
    # the H-score and OSCR depend on each method's predictions: every method, every detector
    assert [row[0] for row in h_score.rows] == ["zeroshot", "ncm"]
    assert h_score.header == ["method", "closed-set acc", "msp", "knn"]
    assert oscr.header == ["method", "msp", "knn"]


def test_figures_count_the_shared_known_images_once_and_colour_each_ood_target(far_ood_runs):
    [section] = make_ood_sections(far_ood_runs)
    path, result = next((p, r) for p, r in far_ood_runs if r.method == "zeroshot")
    ids, oods = pooled_scores(result, load_scores(path), "knn")
    n_known = result.metrics["targets"]["grey"]["n_known"]
    assert len(ids) == n_known == result.metrics["targets"]["pale"]["n_known"]
    assert {t: len(s) for t, s in oods.items()} == {"grey": 10, "pale": 8}

    figures = dict(ood_figures(section))
    stem = f"{section.stem}_bright"
    assert set(figures) == {f"{stem}_image_features.png", f"{stem}_zeroshot.png", f"{stem}_ncm.png"}
    shared = figures[f"{stem}_image_features.png"].axes
    assert shared[0].get_title().startswith("knn") and shared[1].get_title().startswith("ROC")
    legend = [t.get_text() for t in shared[0].get_legend().get_texts()]
    assert legend == [f"ID (n={n_known})", "OOD grey (n=10)", "OOD pale (n=8)", "threshold"]
    colours = {p.get_facecolor() for p in shared[0].patches}
    assert len(colours) == 3  # ID and each OOD target
    per_method = figures[f"{stem}_ncm.png"].axes
    assert per_method[0].get_title().startswith("msp")
