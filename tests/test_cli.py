"""The CLI end to end on tiny data, and the README/CI contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipadapt.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPADAPT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def test_zeroshot_writes_a_clip_benchmark_style_result(
    cli_env, image_folder, tiny_open_clip_dir, capsys
):
    out = cli_env / "r.json"
    model = f"local-dir:{tiny_open_clip_dir}"
    args = ["-q", "zeroshot", "--model", model, "--data", str(image_folder), "--output", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    for key in ("dataset", "model", "pretrained", "task", "metrics", "model_fingerprint"):
        assert key in result
    assert set(result["metrics"]) >= {"acc1", "acc5", "mean_per_class_recall", "macro_f1"}
    assert result["n_samples"] == 18 and result["features"]["computed"] == 18
    assert main(args) == 0  # second run: everything from the cache
    assert json.loads(out.read_text())["features"]["cached"] == 18


def test_zeroshot_test_split_writes_the_split_file(cli_env, image_folder, tiny_open_clip_dir):
    out = cli_env / "r.json"
    model = f"local-dir:{tiny_open_clip_dir}"
    args = ["-q", "zeroshot", "--model", model, "--data", str(image_folder), "--split", "test"]
    assert main([*args, "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    split = json.loads(Path(result["protocol"]["split_file"]).read_text())
    assert result["n_samples"] == 6  # 30% of 6 per class
    assert len(split["test"]) == 6


def test_bad_data_is_a_clear_error_exit_2(cli_env, capsys):
    assert main(["zeroshot", "--data", str(cli_env / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_quiet_goes_before_or_after_the_command():
    parser = build_parser()
    assert parser.parse_args(["cache", "show"]).quiet is False
    assert parser.parse_args(["-q", "cache", "show"]).quiet is True
    assert parser.parse_args(["cache", "show", "--quiet"]).quiet is True


def test_cache_show_and_clear(cli_env, image_folder, tiny_open_clip_dir, capsys):
    model = f"local-dir:{tiny_open_clip_dir}"
    main(["-q", "embed", "--model", model, "--data", str(image_folder)])
    main(["cache", "show"])
    assert "18 entries" in capsys.readouterr().out
    main(["cache", "clear"])
    assert "removed 18 entries" in capsys.readouterr().out


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("python3 -m venv")]
    assert len(commands) == 2, "the README starts with exactly two set-up commands"
    assert commands[1] in (REPO / ".ci" / "run").read_text()
