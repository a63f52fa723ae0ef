"""``clipadapt finetune`` end to end: a model directory every command takes, bad captions."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from clipadapt.cli import main
from tests.conftest import make_image_folder


@pytest.fixture
def captions(tmp_path: Path) -> Path:
    root = make_image_folder(tmp_path / "images", {"cat": 3, "dog": 3})
    rows = [(str(p), f"a photo of a {p.parent.name}") for p in sorted(root.rglob("*.png"))]
    rows[0] = (rows[0][0], " ".join(["word"] * 100))  # longer than the context of 77 tokens
    path = tmp_path / "pairs.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "title"])
        writer.writerows(rows)
    return path


def finetune(model: str, data: Path, out: Path, *extra: str) -> int:
    args = ["finetune", "-q", "--model", model, "--data", str(data), "--out", str(out)]
    return main([*args, "--train", "text", "--epochs", "1", "--batch-size", "3", *extra])


def test_a_caption_over_the_context_is_named_or_skipped(
    tiny_open_clip_dir, captions, tmp_path, capsys
) -> None:
    model = f"local-dir:{tiny_open_clip_dir}"
    assert finetune(model, captions, tmp_path / "m") == 2
    err = capsys.readouterr().err
    assert err.startswith("clipadapt: error: ") and "tokens" in err and "77" in err
    assert not (tmp_path / "m").exists()  # nothing half-written
    assert finetune(model, captions, tmp_path / "m", "--skip-bad") == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "5 pairs" in captured.out


def test_the_model_directory_works_as_model(tiny_open_clip_dir, tmp_path, capsys) -> None:
    data = make_image_folder(tmp_path / "images", {"cat": 6, "dog": 6})
    assert finetune(f"local-dir:{tiny_open_clip_dir}", data, tmp_path / "m") == 0
    capsys.readouterr()
    assert main(["zeroshot", "--model", str(tmp_path / "m"), "--data", str(data)]) == 0
    assert "images" in capsys.readouterr().out
    out = tmp_path / "adapted"
    assert (
        main(
            [
                "adapt",
                "-q",
                "--model",
                str(tmp_path / "m"),
                "--data",
                str(data),
                "--method",
                "ncm",
                "--shots",
                "2",
                "--no-ood",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["predict", str(out), str(data / "cat")]) == 0
    assert capsys.readouterr().out.count("\n") == 7  # header + 6 images
