"""The user's path: clipadapt adapt -> predict, and the demo built on it."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from bench_fakes import ColorBackend, make_domains, make_folder

from clipadapt.adapted import adapt, load_adapted, predict
from clipadapt.cli import main
from clipadapt.data import load_dataset


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a test embeds without naming a cache lands in its own directory."""
    monkeypatch.setenv("CLIPADAPT_CACHE_DIR", str(tmp_path / "default-cache"))


@pytest.fixture
def backend(monkeypatch) -> ColorBackend:
    fake = ColorBackend()
    monkeypatch.setattr("clipadapt.models.create_backend", lambda spec, device="cpu": fake)
    return fake


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "colors", dict.fromkeys(["blue", "green", "red"], 16))


def adapt_args(folder: Path, out: Path, *extra: str) -> list[str]:
    return [
        "-q", "adapt", "--model", "fake", "--data", str(folder), "--shots", "4",
        "--method", "tip_adapter", "--views", "2", "--cache-dir", str(out.parent / "cache"),
        "--out", str(out), *extra,
    ]  # fmt: skip


def test_adapt_then_predict_writes_one_csv_row_per_image(folder, tmp_path, backend, capsys) -> None:
    model = tmp_path / "model"
    assert main(adapt_args(folder, model, "--no-ood")) == 0  # closed-set: no "unknown"
    printed = capsys.readouterr().out
    assert "test split (15 images): zero-shot acc1" in printed and "tip_adapter acc1" in printed
    config = json.loads((model / "config.json").read_text())
    info = config["adapted"]
    assert config["method"] == "tip_adapter" and info["classes"]["class_ids"] == [
        "blue",
        "green",
        "red",
    ]
    assert info["model"]["image_fingerprint"] == backend.image_fingerprint
    assert info["fewshot"] | {"shortfalls": None} == info["fewshot"] | {
        "shots": 4, "seed": 1, "views": 2, "n_support": 12, "n_val": 12, "shortfalls": None,
    }  # fmt: skip
    assert (model / "split.json").is_file() and (model / "state.safetensors").is_file()

    images = [folder / "red" / "000.png", folder / "blue"]
    assert (
        main(["-q", "predict", str(model), *map(str, images), "--output", str(tmp_path / "p.csv")])
        == 0
    )
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert rows[0]["path"] == str(images[0]) and len(rows) == 1 + 16
    for row in rows:
        top = [item.split(":") for item in row["top5"].split(";")]
        assert len(top) == 3 and top[0] == [row["label"], row["score"]]
        assert row["label"] in {"blue", "green", "red"} and 0 < float(row["score"]) <= 1
        assert [float(s) for _, s in top] == sorted((float(s) for _, s in top), reverse=True)
    assert "17 predictions written to" in capsys.readouterr().out
    assert main(["-q", "predict", str(model), str(images[0])]) == 0
    assert capsys.readouterr().out.startswith("path,label,class_id,score,margin,top5\n")

    loaded = load_adapted(model)
    in_memory = adapt(
        backend,
        load_dataset(folder),
        tmp_path / "again",
        method="tip_adapter",
        shots=4,
        views=2,
        progress=False,
        ood_score=None,
    )
    paths = [folder / "green" / f"{i:03d}.png" for i in range(5)]
    assert predict(loaded, backend, paths, progress=False) == predict(
        in_memory, backend, paths, progress=False
    )


def test_adapt_calibrates_unknown_and_predict_rejects_unseen_classes(
    tmp_path, backend, capsys
) -> None:
    folder = make_folder(tmp_path / "colors", dict.fromkeys(["blue", "green", "red"], 24))
    unseen = make_folder(tmp_path / "unseen", {"gold": 20}, seed=9)
    model = tmp_path / "model"
    assert main(adapt_args(folder, model, "--shots", "8")) == 0  # default score: knn
    printed = capsys.readouterr().out
    assert "unknown threshold: knn score >" in printed and "accepted as known" in printed
    config = json.loads((model / "config.json").read_text())
    assert config["open_set"]["detector"] == "knn"
    # 4 validation images per class, pooled with knn's cross-fitted scores of the 8 support
    assert (
        config["open_set"]["calibrated_on"]
        == "few-shot validation set + 24 held-out support scores"
    )
    assert (model / "ood" / "config.json").is_file()
    out = tmp_path / "p.csv"
    images = [str(unseen / "gold"), str(folder / "red"), str(folder / "blue")]
    assert main(["-q", "predict", str(model), *images, "--output", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == [
        "path", "label", "class_id", "score", "margin", "top5", "ood_score"
    ]  # fmt: skip
    gold = [r for r in rows if "/gold/" in r["path"]]
    known = [r for r in rows if "/gold/" not in r["path"]]
    assert sum(r["label"] == "unknown" for r in gold) >= 0.8 * len(gold)
    kept = sum(r["label"] == Path(r["path"]).parent.name for r in known)
    assert kept >= 0.75 * len(known)
    loaded = load_adapted(model)
    assert loaded.open_set is not None and loaded.open_set.detector.name == "knn"
    for r in rows:
        assert (r["label"] == "unknown") == (float(r["ood_score"]) > loaded.open_set.threshold)

    other = tmp_path / "model2"
    assert main(adapt_args(folder, other, "--ood-score", "msp")) == 0
    assert json.loads((other / "config.json").read_text())["open_set"]["detector"] == "msp"
    assert main(adapt_args(folder, tmp_path / "m3", "--ood-score", "nope")) == 2
    assert "unknown OOD score 'nope'" in capsys.readouterr().err


def test_predict_refuses_a_changed_backend(folder, tmp_path, backend, capsys) -> None:
    model = tmp_path / "model"
    assert main(adapt_args(folder, model)) == 0
    backend.projection.mul_(2)  # "new weights"
    backend.__dict__.pop("_image_fp")
    assert main(["predict", str(model), str(folder)]) == 2
    assert "its weights or preprocessing changed" in capsys.readouterr().err


def test_adapt_errors_are_clear(folder, tmp_path, backend, capsys) -> None:
    assert main(adapt_args(folder, tmp_path / "m", "--shots", "20")) == 2
    assert "class 'blue' has 11" in capsys.readouterr().err
    roots = make_domains(tmp_path / "domains")
    assert main(adapt_args(roots, tmp_path / "m")) == 2
    assert "holds domains (bright, dark); give one domain's folder" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(adapt_args(folder, tmp_path / "busy")) == 2
    assert "holds files that are not a clipadapt model" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "busy"), str(folder)]) == 2
    assert "config.json: not found; is" in capsys.readouterr().err


def test_demo_compares_with_zero_shot(tmp_path, backend, monkeypatch, capsys) -> None:
    data = make_folder(tmp_path / "textile", dict.fromkeys(["blue", "green", "red"], 30))
    monkeypatch.setattr("clipadapt.demo.DEMO_DATA", str(data))
    out = tmp_path / "demo"
    assert main(["-q", "demo", "--output-dir", str(out), "--cache-dir", str(tmp_path / "c")]) == 0
    printed = capsys.readouterr().out
    assert "gain over zero-shot:" in printed and f"results written to {out}" in printed
    result = json.loads((out / "result.json").read_text())
    assert set(result["metrics"]) == {"zeroshot", "auto"} and result["n_test"] == 27
    gain = result["metrics"]["auto"]["acc1"] - result["metrics"]["zeroshot"]["acc1"]
    assert result["gain_acc1"] == pytest.approx(gain)
    chosen = result["chosen"]  # what auto chose, on cross-validation scores it records
    assert chosen["value"] in chosen["candidates"] and f"auto chose {chosen['value']}" in printed
    assert chosen["candidates"][chosen["value"]] == max(chosen["candidates"].values())
    rows = list(csv.DictReader(io.StringIO((out / "predictions.csv").read_text())))
    assert len(rows) == 27
    assert sum(r["label"] == Path(r["path"]).parent.name for r in rows) / 27 == pytest.approx(
        result["metrics"]["auto"]["acc1"]
    )


def test_a_prompt_learner_predicts_after_loading(tmp_path, tiny_open_clip_dir, capsys) -> None:
    folder = make_folder(tmp_path / "colors", dict.fromkeys(["blue", "green", "red"], 8))
    model, spec = tmp_path / "model", f"local-dir:{tiny_open_clip_dir}"
    args = ["-q", "adapt", "--model", spec, "--data", str(folder), "--shots", "2"]
    assert main([*args, "--method", "cocoop", "--views", "1", "--out", str(model)]) == 0
    capsys.readouterr()
    assert main(["-q", "predict", str(model), str(folder / "red")]) == 0  # needs the text tower
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 8 and all(r["label"] in {"blue", "green", "red", "unknown"} for r in rows)


def test_adapt_never_deletes_a_directory_it_did_not_write(tmp_path, capsys, monkeypatch) -> None:
    """A project folder with its own config.json, a file and a sub-folder survives --out."""
    folder = make_folder(tmp_path / "colors", {"blue": 8, "red": 8})
    project = tmp_path / "proj"
    (project / "src").mkdir(parents=True)
    (project / "config.json").write_text("{}")
    (project / "keep.txt").write_text("x")
    (project / "src" / "main.py").write_text("print(1)")
    before = sorted(p.relative_to(project) for p in project.rglob("*"))
    assert main(adapt_args(folder, project)) == 2
    assert "not a clipadapt model" in capsys.readouterr().err
    assert sorted(p.relative_to(project) for p in project.rglob("*")) == before
    assert (project / "config.json").read_text() == "{}"
    assert not list(tmp_path.glob(".proj*"))  # no staging or .old leftovers
    monkeypatch.chdir(project)
    assert main(adapt_args(folder, Path("."))) == 2
    assert "not '.' itself" in capsys.readouterr().err
    assert main(adapt_args(folder, project / "keep.txt")) == 2
    assert "is a file" in capsys.readouterr().err
    assert sorted(p.relative_to(project) for p in project.rglob("*")) == before
