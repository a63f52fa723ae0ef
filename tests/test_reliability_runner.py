"""Regression tests for the runner, report and CLI failures of issue 10: user files survive,
bad input is a one-line message (exit code 2) before any model loads, nothing is hidden."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bench_fakes import ColorBackend, make_domains, make_folder

from clipadapt.bench.config import BenchConfig, read_config_file
from clipadapt.bench.report import write_report
from clipadapt.bench.runner import run_bench
from clipadapt.cli import main
from clipadapt.pipeline.openset import false_unknown_rate
from clipadapt.pipeline.results import find_results, read_result


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPADAPT_CACHE_DIR", str(tmp_path / "default-cache"))


@pytest.fixture
def domains(tmp_path: Path) -> Path:
    return make_domains(tmp_path / "colors", n=10)


def config(domains: Path, tmp_path: Path, **overrides) -> BenchConfig:
    values = {
        "data": str(domains),
        "out": tmp_path / "out",
        "protocol": "fewshot",
        "methods": "zeroshot,ncm",
        "sources": ("bright",),
        "shots": (2,),
        "seeds": (1,),
        "views": 0,
        "cache_dir": tmp_path / "cache",
    } | overrides
    return BenchConfig.from_mapping(values)


def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to build a model fails the test: errors must come before that."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr("clipadapt.models.create_backend", refuse)


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        ("shots: 1.7", "every item of shots must be an integer, got 1.7"),
        ("seeds: true", "seeds must be a list"),
        ("views: -3", "views must be an integer >= 0, got -3"),
        ("accept: high", "accept must be a number, got 'high'"),
        ("methods: {gda: [1, 2]}", "the value for 'gda' must be a mapping"),
        ("out: 123", "out must be a path, got 123"),
        ("test_fraction: 2", "test_fraction must be in (0, 1)"),
        ("selection: best", "selection 'best': use one of validation, cv"),
    ],
)
def test_wrongly_typed_yaml_values_name_the_key(
    domains, tmp_path, monkeypatch, capsys, yaml, message
) -> None:
    no_model(monkeypatch)
    path = tmp_path / "run.yaml"
    path.write_text(f"data: {domains}\nout: {tmp_path / 'o'}\n{yaml}\n")
    assert main(["-q", "bench", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_data_given_as_a_list_is_refused(tmp_path, monkeypatch, capsys) -> None:
    no_model(monkeypatch)
    path = tmp_path / "run.yaml"
    path.write_text("data: [a, b]\nout: o\n")
    assert main(["-q", "bench", "--config", str(path)]) == 2
    assert "data must be a string" in capsys.readouterr().err


@pytest.mark.parametrize("label", ["/some/abs/dir", "../../escaped", "a/b", ".hidden", ""])
def test_method_labels_cannot_leave_the_results_directory(
    domains, tmp_path, monkeypatch, label
) -> None:
    no_model(monkeypatch)
    outside = tmp_path / "escaped"
    outside.mkdir()
    (outside / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match="method label"):
        run_bench(config(domains, tmp_path, methods={label: {"method": "ncm"}}), progress=False)
    assert (outside / "mine.txt").read_text() == "keep" and not (tmp_path / "out").exists()


def test_corrupt_result_files_are_named_and_overwrite_replaces_them(domains, tmp_path) -> None:
    cfg = config(domains, tmp_path)
    summary = run_bench(cfg, backend=ColorBackend(), progress=False)
    broken = summary.ran[0]
    broken.write_text("")
    with pytest.raises(ValueError, match=f"{broken}: not a readable result file"):
        run_bench(cfg, backend=ColorBackend(), progress=False)
    with pytest.raises(ValueError, match=f"{broken}: not a readable result file"):
        write_report(cfg.out, tmp_path / "report")
    stale = broken.with_name(f".{broken.name}.abc123.tmp")  # a run killed mid-write
    stale.write_text("{")
    mine = broken.with_name("notes.tmp")
    mine.write_text("keep")
    again = run_bench(cfg, backend=ColorBackend(), overwrite=True, progress=False)
    assert not stale.exists() and mine.read_text() == "keep"
    assert broken in again.ran and read_result(broken).method in ("zeroshot", "ncm")
    assert not (cfg.out / "checkpoints").exists()  # no empty folders left behind


def test_report_deletes_only_the_figures_it_wrote(domains, tmp_path) -> None:
    cfg = config(domains, tmp_path, methods="zeroshot,ncm,gda")
    run_bench(cfg, backend=ColorBackend(), progress=False)
    figures = tmp_path / "report" / "figures"
    figures.mkdir(parents=True)
    mine = figures / "my_plot.png"
    mine.write_bytes(b"\x89PNG mine")
    write_report(cfg.out, tmp_path / "report")
    written = {p.name for p in figures.glob("*.png")} - {"my_plot.png"}
    assert written and mine.read_bytes() == b"\x89PNG mine"
    stale = figures / sorted(written)[0]
    for path in find_results(cfg.out):  # results of another protocol: other figure names
        path.unlink()
    run_bench(
        config(domains, tmp_path, protocol="single_source"), backend=ColorBackend(), progress=False
    )
    write_report(cfg.out, tmp_path / "report")
    assert not stale.exists() and mine.read_bytes() == b"\x89PNG mine"


def test_ood_protocols_honour_views_and_builtin_ood_data(domains, tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("ood_data: [builtin:textile, ../far]\n")
    assert read_config_file(path)["ood_data"] == [
        "builtin:textile",
        str((tmp_path.parent / "far").resolve()),  # relative to the YAML file's folder
    ]
    assert BenchConfig.from_mapping(
        {"data": "d", "out": "o", "ood_data": ["builtin:textile"]}
    ).ood_data == {"textile": "builtin:textile"}
    cfg = config(
        domains,
        tmp_path,
        protocol="near_ood",
        methods="zeroshot,tip_adapter",
        views=2,
        known_classes=2,
        detectors=("msp", "knn"),
    )
    summary = run_bench(cfg, backend=ColorBackend(), progress=False)
    views = {read_result(p).method: read_result(p).views for p in summary.ran}
    assert views == {"zeroshot": 0, "tip_adapter": 2}  # only methods that read views get them
    result = read_result(summary.ran[0])
    counts = result.metrics["calibrated_on_n"]  # knn pools cross-fitted support scores
    assert counts["msp"] == result.n_val and counts["knn"] == result.n_val + result.n_support
    assert result.metrics["conventions"]["FPR95"]
    assert all((cfg.out / "splits").rglob("*.json"))  # split files, as for classification


def test_skipped_support_images_are_listed_in_bench_results(domains, tmp_path) -> None:
    bad = sorted((domains / "bright" / "red").glob("*.png"))[0]
    bad.write_bytes(b"not an image")
    cfg = config(domains, tmp_path, skip_bad=True)
    summary = run_bench(cfg, backend=ColorBackend(), progress=False)
    result = read_result(summary.ran[0])
    assert [entry["path"] for entry in result.skipped] == [str(bad)]
    assert "cannot" in result.skipped[0]["reason"] or result.skipped[0]["reason"]


def test_adapt_checks_arguments_before_loading_a_model(tmp_path, monkeypatch, capsys) -> None:
    no_model(monkeypatch)
    folder = make_folder(tmp_path / "f", {"blue": 6, "red": 6})
    base = ["-q", "adapt", "--data", str(folder), "--out", str(tmp_path / "m")]
    for extra, message in [
        (["--method", "foo"], "unknown method 'foo'"),
        (["--views", "-3"], "--views must be an integer >= 0"),
        (["--accept", "1.5"], "--accept must be in (0, 1]"),
        (["--ood-score", "nope"], "unknown OOD score 'nope'"),
    ]:
        assert main([*base, *extra]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_false_unknown_rate_matches_simulation() -> None:
    """The calibrated threshold's miss rate on new known-class scores, by simulation."""
    n, accept = 12, 0.95
    rng = np.random.default_rng(0)
    misses = []
    for _ in range(4000):
        val = rng.normal(size=n)
        threshold = np.sort(val)[int(np.ceil(accept * n)) - 1]
        misses.append((rng.normal(size=200) > threshold).mean())
    rate = false_unknown_rate(n, accept)
    assert rate["expected"] == pytest.approx(1 / 13)
    assert abs(np.mean(misses) - rate["expected"]) < 0.01  # far from 1 - accept = 0.05
    inside = np.mean([rate["low"] <= m <= rate["high"] for m in misses])
    assert 0.85 <= inside <= 0.95


def test_adapt_says_which_unknown_score_and_its_expected_error(tmp_path, monkeypatch, capsys):
    fake = ColorBackend()
    monkeypatch.setattr("clipadapt.models.create_backend", lambda spec, device="cpu": fake)
    folder = make_folder(tmp_path / "f", {"blue": 12, "red": 12, "green": 12})
    args = ["adapt", "--model", "fake", "--data", str(folder), "--shots", "4"]
    args += ["--method", "ncm", "--out", str(tmp_path / "m"), "--cache-dir", str(tmp_path / "c")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "knn score >" in out and "the default" in out
    # 12 validation images + 12 cross-fitted support scores: r = 23 of 24, (24 - 23 + 1) / 25
    assert "of 24 known-image scores (few-shot validation set + 12 held-out" in out
    assert "so about 8.0% of known-class images will be called unknown" in out
    saved = json.loads((tmp_path / "m" / "config.json").read_text())["adapted"]["open_set"]
    assert saved["false_unknown_rate"]["n_val"] == 24


def test_csv_columns_and_separator_come_from_flags(tmp_path, monkeypatch, capsys) -> None:
    folder = make_folder(tmp_path / "f", {"blue": 4, "red": 4})
    rows = [f"{p.relative_to(folder)};{p.parent.name}" for p in sorted(folder.rglob("*.png"))]
    table = tmp_path / "f" / "images.csv"
    table.write_text("image;colour\n" + "\n".join(rows) + "\n")
    monkeypatch.setattr(
        "clipadapt.models.create_backend", lambda spec, device="cpu": ColorBackend()
    )
    base = ["-q", "embed", "--model", "fake", "--data", str(table)]
    base += ["--cache-dir", str(tmp_path / "cache")]
    assert main(base) == 2
    assert "--path-column" in capsys.readouterr().err  # the message names the flag
    flags = ["--csv-sep", ";", "--path-column", "image", "--label-column", "colour"]
    out = tmp_path / "features.safetensors"
    assert main([*base, *flags, "--output", str(out)]) == 0
    assert "8 images" in capsys.readouterr().out
    from safetensors import safe_open

    with safe_open(str(out), "pt") as handle:  # rows join with split files by path
        meta, labels = handle.metadata(), handle.get_tensor("labels")
    paths, class_ids = json.loads(meta["paths"]), json.loads(meta["class_ids"])
    assert class_ids == ["blue", "red"] and len(paths) == len(labels) == 8
    assert [Path(p).parent.name for p in paths] == [class_ids[i] for i in labels.tolist()]


def test_augment_recipe_is_configurable_and_recorded(domains, tmp_path) -> None:
    from PIL import Image

    from clipadapt.views import augment, augmented_view_name, view_key

    ramp = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))  # dark left, bright right
    image = Image.fromarray(np.stack([ramp] * 3, axis=-1))

    def mirrored(view: str, content: str) -> bool:
        pixels = np.asarray(augment(image, content, view), dtype=float)
        return pixels[:, : pixels.shape[1] // 2].mean() > pixels[:, pixels.shape[1] // 2 :].mean()

    contents = [f"{i:064x}" for i in range(40)]
    crop_only = augmented_view_name(0, ("crop",))
    assert crop_only == "aug0@crop" and view_key(crop_only) != view_key("aug0")
    assert not any(mirrored(crop_only, c) for c in contents)  # digits and text stay readable
    assert 5 < sum(mirrored("aug0", c) for c in contents) < 35  # the default flips a coin
    cfg = config(domains, tmp_path, methods="tip_adapter", views=2, augment="crop")
    result = read_result(run_bench(cfg, backend=ColorBackend(), progress=False).ran[0])
    assert result.augment == ["crop"] and result.config["augment"] == ["crop"]
    with pytest.raises(ValueError, match=r"augment \['spin'\]: use one or more of crop, flip"):
        config(domains, tmp_path, augment="spin")


def test_adapt_gives_trained_methods_a_checkpoint_dir_and_removes_it(tmp_path, monkeypatch):
    """A killed prompt-learner fit under adapt resumes from its checkpoints (as under bench);
    the folder is adapt's own and is gone once the model is saved."""
    from clipadapt.adapted import adapt
    from clipadapt.data import load_dataset
    from clipadapt.pipeline import experiment

    seen = []

    def spy(method, data):
        seen.append(data.checkpoint_dir)
        return real(method, data)

    real = experiment.timed_fit
    monkeypatch.setattr(experiment, "timed_fit", spy)
    folder = make_folder(tmp_path / "f", {"blue": 10, "red": 10})
    model = tmp_path / "m"
    adapt(ColorBackend(), load_dataset(folder), model, method="clip_adapter", shots=2,
          progress=False, ood_score=None)  # fmt: skip
    assert seen[0] == tmp_path / ".m.checkpoints" and not seen[0].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "m"]
