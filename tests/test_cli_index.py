"""``clipadapt index`` and ``clipadapt search`` end to end with the built-in model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clipadapt.cli import main
from clipadapt.index import build_index

pytest.importorskip("faiss", reason="the index needs faiss-cpu (extra 'index')")


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPADAPT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def test_index_then_search_by_image_and_text(cli_env, image_folder, capsys):
    out = cli_env / "idx"
    assert main(["-q", "index", "--data", str(image_folder), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "indexed 18 images (0 from cache, 18 computed, 0 skipped)" in printed
    meta = json.loads((out / "index.json").read_text())
    assert meta["kind"] == "flat" and meta["model_spec"] == "lite" and meta["count"] == 18

    query = image_folder / "dog" / "3.png"
    assert main(["search", str(out), "--image", str(query), "--k", "3"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [r[0] for r in rows] == ["1", "2", "3"]
    assert rows[0][2] == str(query.resolve()) and float(rows[0][1]) == pytest.approx(1, abs=1e-4)

    assert main(["search", str(out), "--text", "a photo of a dog", "--k", "50"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 18  # k larger than the collection: every image once
    scores = [float(r.split("\t")[1]) for r in rows]
    assert scores == sorted(scores, reverse=True)

    # indexing the same collection again re-encodes nothing and replaces the index
    assert main(["-q", "index", "--data", str(image_folder), "--out", str(out)]) == 0
    assert "(18 from cache, 0 computed" in capsys.readouterr().out


def test_skip_bad_leaves_unreadable_images_out(cli_env, image_folder, capsys):
    (image_folder / "cat" / "broken.png").write_bytes(b"not an image")
    out = cli_env / "idx"
    args = ["-q", "index", "--data", str(image_folder), "--out", str(out)]
    assert main(args) == 2
    assert "broken.png" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--skip-bad"]) == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "broken.png" in captured.err
    assert "indexed 18 images" in captured.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "{idx}", "--text", "dog", "--k", "0"], "--k must be"),
        (["search", "{idx}", "--image", "{tmp}/missing.png"], "is not a file"),
        (["search", "{idx}", "--text", "  "], "--text is empty"),
        (["search", "{tmp}", "--text", "dog"], "not a clipadapt index"),
        (["index", "--data", "{tmp}/nowhere", "--out", "{tmp}/i"], "does not exist"),
        (["index", "--data", "{tmp}", "--out", "{tmp}/notes.txt"], "is a file"),
        (["index", "--data", "{tmp}", "--out", "{tmp}/own"], "not a clipadapt index"),
        (["index", "--data", "{tmp}", "--out", "{tmp}/i", "--recall-target", "0"], "in (0, 1]"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(cli_env, capsys, monkeypatch, args, message):
    import clipadapt.models

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(clipadapt.models, "create_backend", no_model)
    (cli_env / "notes.txt").write_text("mine")
    (cli_env / "own").mkdir()
    (cli_env / "own" / "keep.txt").write_text("mine")
    filled = [a.format(tmp=cli_env, idx=cli_env / "own") for a in args]
    assert main(filled) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert (cli_env / "own" / "keep.txt").read_text() == "mine"


def test_search_refuses_a_model_other_than_the_index_ones(cli_env, capsys):
    out = cli_env / "idx"
    feats = np.eye(4, dtype=np.float32)
    build_index(feats, list("abcd"), out, model_spec="lite", image_fingerprint="other")
    assert main(["search", str(out), "--text", "dog", "--model", "lite"]) == 2
    err = capsys.readouterr().err
    assert "image fingerprint other" in err and "rebuild the index" in err
