"""The benchmark runner: what methods are given, protocols, re-runs, bad input, the report."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import ClassVar, Self

import pytest
import torch
from bench_fakes import ColorBackend, make_domains, make_folder

from clipadapt.bench.config import BenchConfig, read_config_file
from clipadapt.bench.protocols import base_novel_classes, harmonic_mean
from clipadapt.bench.report import write_report
from clipadapt.bench.runner import run_bench
from clipadapt.cli import main
from clipadapt.data import DatasetError, load_dataset
from clipadapt.features import extract_features
from clipadapt.methods import METHODS, DataKind, FitData, Method
from clipadapt.pipeline.results import find_results, read_result


class Spy(Method):
    """Records the FitData it is given; predicts like zero-shot."""

    name = "spy"
    reads = frozenset(DataKind) - {DataKind.TOWER}
    seen: ClassVar[list[FitData]] = []

    def fit(self, data: FitData) -> Self:
        type(self).seen.append(data)
        self.set_state(text=data.class_embeddings)
        return self

    def predict_logits(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.state("text").T


class SupportSpy(Spy):
    name = "spy_support"
    reads = frozenset({DataKind.SUPPORT})
    seen: ClassVar[list[FitData]] = []


SPIES = {"spy": Spy, "spy_support": SupportSpy, "zeroshot": METHODS["zeroshot"]}


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a test embeds without naming a cache lands in its own directory."""
    monkeypatch.setenv("CLIPADAPT_CACHE_DIR", str(tmp_path / "default-cache"))


@pytest.fixture
def backend() -> ColorBackend:
    return ColorBackend()


@pytest.fixture
def domains(tmp_path: Path) -> Path:
    return make_domains(tmp_path / "colors")


def config(root: Path, tmp_path: Path, **overrides) -> BenchConfig:
    values = {
        "data": str(root),
        "out": tmp_path / "out",
        "model": "fake",
        "methods": "zeroshot,ncm",
        "shots": (1, 2),
        "seeds": (1, 2),
        "views": 2,
        "cache_dir": tmp_path / "cache",
    }
    return BenchConfig(**(values | overrides))


def test_fit_never_sees_test_images_and_only_what_it_reads(domains, tmp_path, backend) -> None:
    Spy.seen.clear()
    SupportSpy.seen.clear()
    cfg = config(domains, tmp_path, methods="spy,spy_support", shots=(2,), seeds=(1,))
    summary = run_bench(cfg, backend=backend, registry=SPIES, progress=False)
    assert len(summary.ran) == 4 and len(Spy.seen) == len(SupportSpy.seen) == 2
    loaded = load_dataset(domains)
    for data, result_path in zip(
        Spy.seen, sorted(p for p in summary.ran if "/spy/" in str(p)), strict=True
    ):
        result = read_result(result_path)
        source = result.sources[0]
        split = json.loads((cfg.out / result.split_files[source]).read_text())
        root = loaded[source].root
        forbidden = [root / e["path"] for e in split["test"]]
        forbidden += [p for d, ds in loaded.items() if d != source for p in ds.paths]
        test_features = extract_features(backend, forbidden, progress=False).features
        seen_rows = [data.support_features, data.val_features, data.unlabeled_features]
        seen_rows.append(data.support_views.flatten(0, 1))
        for rows in seen_rows:
            assert len(rows) and torch.cdist(rows, test_features).min() > 1e-4
        assert not {str(p) for p in forbidden} & set(data.support_paths + data.unlabeled_paths)
        assert data.backend is None and data.unlabeled_includes_test is False
        assert result.transductive is False and result.views == 2
    for data in SupportSpy.seen:
        assert data.support_features is not None and data.support_views is None
        assert data.val_features is None and data.unlabeled_features is None
        assert data.support_paths is None


def test_single_source_results_name_their_inputs(domains, tmp_path, backend) -> None:
    summary = run_bench(config(domains, tmp_path), backend=backend, progress=False)
    assert len(summary.ran) == 2 * 2 * 2 * 2  # sources x methods x shots x seeds
    path = tmp_path / "out/single_source/colors/bright/ncm/K2_s1.json"
    result = read_result(path)
    assert [t["name"] for t in result.targets] == ["bright", "dark"]
    assert [t["part"] for t in result.targets] == ["test", "all"]
    assert result.metrics["dark"]["n"] == 3 * 14
    assert result.summary["other_domains_mean"] == result.metrics["dark"]["acc1"]
    assert result.n_support == 2 * 3 and result.n_val == 2 * 3
    assert result.hyperparameters == {} and result.selected == {}
    assert (tmp_path / "out" / result.split_files["bright"]).is_file()
    assert set(result.data_fingerprint) == {"bright", "dark"}
    for key in ("model_fingerprint", "config_hash", "peak_memory_mb", "package_version"):
        assert getattr(result, key)
    assert set(result.timing) == {"fit_seconds", "predict_seconds"}


def test_variants_of_one_method_run_side_by_side(domains, tmp_path, backend) -> None:
    methods = {"tip_adapter": {}, "tip_flat": {"method": "tip_adapter", "beta": 1.0}}
    cfg = config(domains, tmp_path, methods=methods, sources=("bright",), shots=(2,), seeds=(1,))
    summary = run_bench(cfg, backend=backend, progress=False)
    assert len(summary.ran) == 2
    variant = read_result(tmp_path / "out/single_source/colors/bright/tip_flat/K2_s1.json")
    plain = read_result(tmp_path / "out/single_source/colors/bright/tip_adapter/K2_s1.json")
    assert variant.method == "tip_flat" and variant.config["variant_of"] == "tip_adapter"
    assert variant.hyperparameters["beta"] == 1.0 != plain.hyperparameters["beta"]
    assert "variant_of" not in plain.config
    with pytest.raises(ValueError, match="unknown method 'nope' \\(for 'x'\\)"):
        run_bench(config(domains, tmp_path, methods={"x": {"method": "nope"}}), backend=backend)


def test_transductive_methods_get_the_test_images_and_say_so(domains, tmp_path, backend) -> None:
    Spy.seen.clear()
    methods = {"spy": {}, "spy_td": {"method": "spy", "unlabeled": "test"}}
    cfg = config(domains, tmp_path, methods=methods, sources=("bright",), shots=(2,), seeds=(1,))
    run_bench(cfg, backend=backend, registry=SPIES, progress=False)
    inductive, transductive = Spy.seen
    loaded = load_dataset(domains)
    tested = read_result(tmp_path / "out/single_source/colors/bright/spy_td/K2_s1.json")
    test_paths = {  # every image the run is scored on: bright's test split and all of dark
        str(loaded["bright"].root / e["path"])
        for e in json.loads((cfg.out / tested.split_files["bright"]).read_text())["test"]
    } | {str(p) for p in loaded["dark"].paths}
    assert set(transductive.unlabeled_paths) == test_paths
    assert len(transductive.unlabeled_features) == len(test_paths)
    assert not test_paths & set(inductive.unlabeled_paths)
    assert transductive.unlabeled_includes_test and not inductive.unlabeled_includes_test
    assert tested.transductive is True and tested.config["unlabeled"] == "test"
    plain = read_result(tmp_path / "out/single_source/colors/bright/spy/K2_s1.json")
    assert plain.transductive is False and "unlabeled" not in plain.config
    rows = list(csv.DictReader(write_report(cfg.out, tmp_path / "report")["csv"].open()))
    assert {r["method"] for r in rows} == {"spy", "spy_td (transductive)"}
    figures = sorted(p.name for p in (tmp_path / "report" / "figures").iterdir())
    assert "single_source_colors_confusion_spy.png" in figures  # inductive rows rank first
    assert all(" " not in name and "(" not in name for name in figures)
    for methods, match in (
        ({"zeroshot": {"unlabeled": "test"}}, "'zeroshot' does not"),
        ({"spy": {"unlabeled": "all"}}, "unlabeled must be one of"),
    ):
        with pytest.raises(ValueError, match=match):
            run_bench(config(domains, tmp_path, methods=methods), backend=backend, registry=SPIES)
    ood = config(domains, tmp_path, methods={"spy": {"unlabeled": "test"}}, protocol="near_ood")
    with pytest.raises(ValueError, match="the OOD protocols do not offer"):
        run_bench(ood, backend=backend, registry=SPIES)


def test_rerun_skips_finished_runs_and_refuses_other_configs(domains, tmp_path, backend) -> None:
    cfg = config(domains, tmp_path, sources=("bright",))
    first = run_bench(cfg, backend=backend, progress=False)
    again = run_bench(cfg, backend=backend, progress=False)
    assert not again.ran and sorted(again.skipped) == sorted(first.ran)
    more = run_bench(
        config(domains, tmp_path, sources=("bright",), seeds=(1, 2, 3)),
        backend=backend,
        progress=False,
    )
    assert len(more.ran) == 4 and len(more.skipped) == 8
    changed = config(domains, tmp_path, sources=("bright",), views=3)
    with pytest.raises(
        ValueError, match=r"another configuration \(differs in: views\).*--overwrite"
    ):
        run_bench(changed, backend=backend, progress=False)
    redone = run_bench(changed, backend=backend, overwrite=True, progress=False)
    assert read_result(redone.ran[0]).config["views"] in (0, 3)


def test_results_of_an_incompatible_version_are_refused(domains, tmp_path, backend) -> None:
    cfg = config(domains, tmp_path)
    old = cfg.out / "single_source/colors/bright/ncm/K1_s1.json"
    old.parent.mkdir(parents=True)
    old.write_text(json.dumps({"schema": "clipadapt.result/0"}))
    with pytest.raises(ValueError, match=r"refusing to add results to .*clipadapt.result/0"):
        run_bench(cfg, backend=backend, progress=False)
    with pytest.raises(ValueError, match="incompatible clipadapt version"):
        write_report(cfg.out, tmp_path / "report")


def test_base_to_novel_splits_classes_and_reports_transfer(tmp_path, backend) -> None:
    root = make_folder(tmp_path / "four", dict.fromkeys(["blue", "gold", "green", "red"], 12))
    cfg = config(root, tmp_path, protocol="base_to_novel", methods="zeroshot,ncm,clip_adapter")
    run_bench(cfg, backend=backend, progress=False)
    zs = read_result(cfg.out / "base_to_novel/four/four/zeroshot/K2_s1.json")
    assert [t["classnames"] for t in zs.targets] == [["blue", "gold"], ["green", "red"]]
    base, novel = zs.summary["base"], zs.summary["novel"]
    assert zs.summary["hm"] == pytest.approx(2 * base * novel / (base + novel))
    assert zs.metrics["novel"]["n"] == 2 * 4  # round(12 * 0.3) test images per class
    ncm = read_result(cfg.out / "base_to_novel/four/four/ncm/K2_s1.json")
    assert ncm.metrics["novel"] is None and ncm.summary["hm"] is None
    assert ncm.n_support == 2 * 2  # base classes only
    adapter = read_result(cfg.out / "base_to_novel/four/four/clip_adapter/K2_s1.json")
    assert adapter.summary["novel"] is not None


def test_harmonic_mean_and_class_halves() -> None:
    assert harmonic_mean(0.8, 0.4) == pytest.approx(2 * 0.32 / 1.2)
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert base_novel_classes(7) == ((0, 1, 2, 3), (4, 5, 6))
    with pytest.raises(DatasetError, match="at least 2 classes"):
        base_novel_classes(1)


def test_lodo_fits_on_every_other_domain(tmp_path, backend) -> None:
    root = make_domains(tmp_path / "colors")
    make_folder(root / "pale", dict.fromkeys(["blue", "green", "red"], 14), shade=1.2, seed=3)
    cfg = config(root, tmp_path, protocol="lodo", sources=("dark",), shots=(2,), seeds=(1,))
    run_bench(cfg, backend=backend, progress=False)
    result = read_result(cfg.out / "lodo/colors/dark/ncm/K2_s1.json")
    assert result.sources == ["bright", "pale"] and result.n_support == 2 * 3 * 2
    assert result.targets[0] | {"classnames": None} == {
        "name": "dark", "domain": "dark", "part": "all", "role": "held_out", "classes": None,
        "classnames": None, "n": 3 * 14,
    }  # fmt: skip


def test_too_many_shots_names_the_class_or_uses_all(tmp_path, backend) -> None:
    root = make_folder(tmp_path / "small", {"blue": 12, "red": 5})
    with pytest.raises(DatasetError, match=r"class 'red' has 3"):
        run_bench(
            config(root, tmp_path, protocol="fewshot", shots=(4,)), backend=backend, progress=False
        )
    cfg = config(root, tmp_path, protocol="fewshot", shots=(4,), on_too_few="use_all")
    summary = run_bench(cfg, backend=backend, progress=False)
    result = read_result(summary.ran[0])
    assert result.shortfalls["small"]["red"] == {"available": 3, "support": 2, "val": 1}


def test_single_source_needs_domains(tmp_path, backend) -> None:
    root = make_folder(tmp_path / "one", {"blue": 6, "red": 6})
    with pytest.raises(DatasetError, match="use --protocol fewshot"):
        run_bench(config(root, tmp_path), backend=backend, progress=False)


def test_report_writes_csv_markdown_and_html(domains, tmp_path, backend) -> None:
    cfg = config(domains, tmp_path, methods="zeroshot,ncm,gda")
    run_bench(cfg, backend=backend, progress=False)
    written = write_report(cfg.out, tmp_path / "report")
    rows = list(csv.DictReader(written["csv"].open()))
    ncm = [
        r
        for r in rows
        if (r["method"], r["source"], r["target"], r["shots"]) == ("ncm", "bright", "dark", "2")
    ]
    assert len(ncm) == 1 and ncm[0]["seeds"] == "2" and 0 <= float(ncm[0]["acc1_mean"]) <= 1
    values = [
        read_result(p).metrics["dark"]["acc1"]
        for p in find_results(cfg.out)
        if "bright/ncm/K2" in str(p)
    ]
    assert float(ncm[0]["acc1_mean"]) == pytest.approx(sum(values) / 2, abs=1e-4)
    assert {r["target"] for r in rows} == {"bright", "dark", "mean of others"}
    markdown = written["markdown"].read_text()
    assert "## single_source · colors" in markdown and "| gda |" in markdown
    assert "Source bright: acc1 (%) per target at 2 shots" in markdown
    page = written["html"].read_text()
    # accuracy: shots, domains, confusion; calibration: 3 reliability + effective robustness
    assert page.count("data:image/png;base64,") == 3 + 4 and "<table>" in page
    assert (tmp_path / "report/figures/single_source_colors_shots.png").stat().st_size > 1000


def test_cli_bench_from_yaml_then_report(domains, tmp_path, backend, monkeypatch, capsys) -> None:
    monkeypatch.setattr("clipadapt.models.create_backend", lambda spec, device="cpu": backend)
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(
        "model: fake\ndata: colors\nprotocol: fewshot\nmethods: [zeroshot, tip_adapter]\n"
        "shots: [1]\nseeds: [1]\nviews: 0\nout: results\ncache_dir: cache\n"
    )
    assert read_config_file(run_yaml)["data"] == str(domains)
    assert main(["-q", "bench", "--config", str(run_yaml), "--sources", "dark"]) == 0
    assert "2 runs done, 0 already finished" in capsys.readouterr().out
    assert main(["-q", "bench", "--config", str(run_yaml), "--sources", "dark"]) == 0
    assert "0 runs done, 2 already finished" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "results")]) == 0
    assert (tmp_path / "results/report/report.html").is_file()


def test_cli_errors_name_the_problem(domains, tmp_path, backend, monkeypatch, capsys) -> None:
    monkeypatch.setattr("clipadapt.models.create_backend", lambda spec, device="cpu": backend)
    (domains / "dark" / "red").rename(domains / "dark" / "crimson")
    out = str(tmp_path / "out")
    assert main(["bench", "--data", str(domains), "--out", out, "--cache-dir", str(tmp_path)]) == 2
    assert "must have the same class folders" in capsys.readouterr().err
    assert main(["bench", "--data", str(domains), "--out", out, "--methods", "nope"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["bench", "--data", str(domains)]) == 2
    assert "out must be given" in capsys.readouterr().err


def test_tower_methods_get_the_backend_and_are_scored_through_their_features(
    tmp_path, tiny_open_clip_dir
) -> None:
    from clipadapt.models import create_backend

    backend = create_backend(f"local-dir:{tiny_open_clip_dir}")
    root = make_folder(tmp_path / "four", dict.fromkeys(["blue", "gold", "green", "red"], 8))
    methods = {
        "coop": {"epochs": 1},
        "visual_prompt": {"epochs": 1, "size": 4},
        "coop_unsupervised": {"epochs": 1, "per_class": 2},
    }
    cfg = config(root, tmp_path, protocol="base_to_novel", methods=methods, shots=(1,), seeds=(1,))
    summary = run_bench(cfg, backend=backend, progress=False)
    results = {r.method: r for r in map(read_result, summary.ran)}
    assert set(results) == set(methods)
    assert results["coop"].summary["novel"] is not None  # learned prompts, new class names
    visual = results["visual_prompt"]
    assert visual.feature_fingerprint != visual.image_fingerprint
    assert results["coop"].feature_fingerprint == results["coop"].image_fingerprint
    assert not list(cfg.out.rglob("*.ckpt"))  # checkpoints only live while a fit runs
