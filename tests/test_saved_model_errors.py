"""A corrupt model directory is refused with one line naming the file and what to do."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from bench_fakes import ColorBackend, make_folder
from safetensors.torch import load_file, save_file
from test_methods import make_data, one_thread  # noqa: F401 (one_thread: autouse fixture)

from clipadapt.cli import main
from clipadapt.methods import create_method, load_method
from clipadapt.ood import OpenSetClassifier, create_detector, load_detector

REBUILD = "re-run clipadapt adapt"


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-20])


def drop_tensor(path: Path) -> None:
    state = load_file(str(path))
    state.pop(sorted(state)[0])
    save_file(state, str(path))


def edit_config(path: Path, change: Callable[[dict], object]) -> None:
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


CORRUPTIONS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "truncated state": ("state.safetensors", truncate),
    "missing state": ("state.safetensors", Path.unlink),
    "missing tensor": ("state.safetensors", drop_tensor),
    "config not JSON": ("config.json", lambda p: p.write_text('{"method": "gda",')),
    "config not an object": ("config.json", lambda p: p.write_text("[1, 2]")),
    "config lacks params": ("config.json", lambda p: edit_config(p, lambda c: c.pop("params"))),
    "config lacks method": ("config.json", lambda p: edit_config(p, lambda c: c.pop("method"))),
    "params of another method": (
        "config.json",
        lambda p: edit_config(p, lambda c: c["params"].update(nope=1)),
    ),
}


def assert_refused(load: Callable[[], object], file: Path) -> None:
    with pytest.raises(ValueError) as error:
        load()
    message = str(error.value)
    assert "\n" not in message and str(file) in message and REBUILD in message, message


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_method_directory_is_refused(corruption: str, tmp_path: Path) -> None:
    directory = create_method("gda").fit(make_data()).save(tmp_path / "model")
    name, corrupt = CORRUPTIONS[corruption]
    corrupt(directory / name)
    assert_refused(lambda: load_method(directory), directory / name)


@pytest.mark.parametrize("corruption", ["truncated state", "missing tensor", "config not JSON"])
def test_corrupt_detector_directory_is_refused(corruption: str, tmp_path: Path) -> None:
    directory = tmp_path / "detector"
    create_detector("mcm").fit(make_data()).save(directory)
    name, corrupt = CORRUPTIONS[corruption]
    corrupt(directory / name)
    assert_refused(lambda: load_detector(directory), directory / name)


def test_detector_config_without_hyperparameters_or_of_an_older_score_is_refused(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "detector"
    create_detector("msp").fit(make_data()).save(directory)
    config = directory / "config.json"
    edit_config(config, lambda c: c.update(score_version=1))  # before msp became log-odds
    assert_refused(lambda: load_detector(directory), config)
    edit_config(config, lambda c: c.pop("hyperparameters"))
    assert_refused(lambda: load_detector(directory), config)


def test_open_set_directory_without_a_threshold_is_refused(tmp_path: Path) -> None:
    data = make_data()
    method = create_method("zeroshot").fit(data)
    detector = create_detector("msp").fit(data)
    directory = OpenSetClassifier(method, detector, 0.5).save(tmp_path / "model")
    config = directory / "config.json"
    edit_config(config, lambda c: c["open_set"].pop("threshold"))
    assert_refused(lambda: OpenSetClassifier.load(directory), config)


def test_predict_on_a_corrupt_adapted_model_prints_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLIPADAPT_CACHE_DIR", str(tmp_path / "default-cache"))
    monkeypatch.setattr(
        "clipadapt.models.create_backend", lambda spec, device="cpu": ColorBackend()
    )
    folder = make_folder(tmp_path / "colors", dict.fromkeys(["blue", "green", "red"], 12))
    model = tmp_path / "model"
    adapt = ["adapt", "--model", "fake", "--data", str(folder), "--shots", "2", "--views", "0"]
    assert main(["-q", *adapt, "--method", "gda", "--out", str(model)]) == 0
    for corrupt_file in (model / "state.safetensors", model / "ood" / "state.safetensors"):
        broken = tmp_path / f"broken-{corrupt_file.parent.name}"
        shutil.copytree(model, broken)
        truncate(broken / corrupt_file.relative_to(model))
        capsys.readouterr()
        assert main(["-q", "predict", str(broken), str(folder)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "state.safetensors" in err and REBUILD in err, err
