"""Image-text pairs from CSVs, webdataset shards and class folders; bad pairs; group splits."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from conftest import make_image_folder
from PIL import Image

from clipadapt.data import DatasetError, load_domain_folders, load_image_folder
from clipadapt.data.pairs import (
    caption_checker,
    load_pairs_csv,
    merge_pairs,
    pairs_from_classes,
    split_pairs,
    write_pairs_csv,
)


def png(path: Path, value: int = 10) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (value, 0, 0)).save(path)
    return path


def png_data(value: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), (value, 0, 0)).save(out, format="PNG")
    return out.getvalue()


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def words(text: str) -> int:
    return len(text.split())


# -- CSV ----------------------------------------------------------------------------------
def test_csv_rows_of_one_image_are_captions_of_one_group(tmp_path: Path) -> None:
    png(tmp_path / "a.png", 1)
    png(tmp_path / "b.png", 2)
    csv = write_csv(
        tmp_path / "pairs.csv",
        "filepath,title\na.png,a red square\nb.png,a dark square\na.png,another caption\n",
    )
    pairs = load_pairs_csv(csv)
    assert pairs.captions == ["a red square", "a dark square", "another caption"]
    assert [p.group for p in pairs.pairs] == [0, 1, 0]
    assert pairs.images == [tmp_path / "a.png", tmp_path / "b.png"]
    assert pairs.classnames == []


def test_csv_labelled_image_may_repeat_with_its_label_only(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    ok = write_csv(tmp_path / "ok.csv", "filepath,title,label\na.png,one,cat\na.png,two,cat\n")
    assert [p.label for p in load_pairs_csv(ok).pairs] == [0, 0]
    bad = write_csv(tmp_path / "bad.csv", "filepath,title,label\na.png,one,cat\na.png,two,dog\n")
    with pytest.raises(DatasetError, match=r"bad.csv, line 3: 'a.png' is labelled 'dog' here"):
        load_pairs_csv(bad)


def test_csv_bad_rows_name_the_line_or_are_skipped(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    csv = write_csv(
        tmp_path / "pairs.csv",
        "filepath,title\na.png,fine caption\nmissing.png,x\na.png,\na.png,one two three four\n",
    )
    with pytest.raises(DatasetError, match=r"line 3: image file 'missing.png' not found"):
        load_pairs_csv(csv)
    loaded = load_pairs_csv(csv, skip_bad=True, count_tokens=words, max_tokens=3)
    assert loaded.captions == ["fine caption"]
    reasons = [s["reason"] for s in loaded.skipped]
    assert "line 3: image file" in reasons[0]
    assert reasons[1] == "pairs.csv line 4: empty caption"
    assert "line 5: caption of 4 tokens is longer than the text tower's context of 3" in reasons[2]


def test_csv_empty_caption_error_says_what_to_do(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    csv = write_csv(tmp_path / "p.csv", "filepath;caption\na.png;  \n")
    with pytest.raises(DatasetError, match=r"line 2: empty caption; .*--skip-bad"):
        load_pairs_csv(csv, sep=";", caption_column="caption")


def test_csv_without_caption_column_is_refused(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    csv = write_csv(tmp_path / "p.csv", "filepath,label\na.png,cat\n")
    with pytest.raises(DatasetError, match=r"no caption column 'title'.*--caption-column"):
        load_pairs_csv(csv)


def test_caption_checker_needs_both_budget_arguments() -> None:
    with pytest.raises(ValueError, match="together"):
        caption_checker(words, None)
    assert caption_checker(words, 2)("two words") is None


# -- webdataset -----------------------------------------------------------------------------
def write_shard(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_webdataset_pairs_extract_images_by_content(tmp_path: Path) -> None:
    pytest.importorskip("webdataset", reason="the 'pairs' extra (webdataset) is not installed")
    from clipadapt.data.shards import load_pairs_webdataset

    shard0 = write_shard(
        tmp_path / "00000.tar",
        {
            "000.png": png_data(1),
            "000.txt": b"a red thing",
            "001.jpg": png_data(2),  # any decodable bytes under the name
            "001.json": json.dumps({"caption": "from json", "url": "x"}).encode(),
        },
    )
    shard1 = write_shard(
        tmp_path / "00001.tar", {"100.png": png_data(1), "100.txt": b"same image again"}
    )
    out = tmp_path / "extracted"
    pairs = load_pairs_webdataset([shard0, shard1], out)
    assert pairs.captions == ["a red thing", "from json", "same image again"]
    assert [p.group for p in pairs.pairs] == [0, 1, 0]  # identical bytes: one image
    assert pairs.images[0].read_bytes() == png_data(1)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in pairs.images)
    again = load_pairs_webdataset([shard0, shard1], out)
    assert again.images == pairs.images


def test_webdataset_bad_samples_name_shard_and_key(tmp_path: Path) -> None:
    pytest.importorskip("webdataset", reason="the 'pairs' extra (webdataset) is not installed")
    from clipadapt.data.shards import load_pairs_webdataset

    shard = write_shard(
        tmp_path / "s.tar",
        {
            "a.png": png_data(1),
            "a.txt": b"good",
            "b.txt": b"no image here",
            "c.png": png_data(3),
            "d.png": png_data(4),
            "d.txt": b"   ",
        },
    )
    with pytest.raises(DatasetError, match=r"s.tar#b: no image \(.jpg"):
        load_pairs_webdataset([shard], tmp_path / "x")
    loaded = load_pairs_webdataset([shard], tmp_path / "x", skip_bad=True)
    assert loaded.captions == ["good"]
    assert [(Path(s["path"]).name, s["reason"].split(" (")[0]) for s in loaded.skipped] == [
        ("s.tar#b", "no image"),
        ("s.tar#c", "no caption"),
        ("s.tar#d", "empty caption"),
    ]


def test_webdataset_missing_shard_is_an_error(tmp_path: Path) -> None:
    pytest.importorskip("webdataset", reason="the 'pairs' extra (webdataset) is not installed")
    from clipadapt.data.shards import load_pairs_webdataset

    with pytest.raises(DatasetError, match=r"nope.tar does not exist"):
        load_pairs_webdataset([tmp_path / "nope.tar"], tmp_path / "x")


# -- class folders ----------------------------------------------------------------------------
def test_pairs_from_classes_one_caption_per_template(tmp_path: Path) -> None:
    data = load_image_folder(make_image_folder(tmp_path / "f", {"cat": 2, "dog": 1}))
    pairs = pairs_from_classes(data, ["a photo of a {}.", "art of the {classname}."])
    assert len(pairs) == 6
    assert pairs.captions[:2] == ["a photo of a cat.", "art of the cat."]
    assert [p.group for p in pairs.pairs] == [0, 0, 1, 1, 2, 2]
    assert [p.label for p in pairs.pairs][-2:] == [1, 1]


def test_pairs_from_classes_one_per_image_is_seeded(tmp_path: Path) -> None:
    data = load_image_folder(make_image_folder(tmp_path / "f", {"cat": 20}))
    templates = [f"{i} {{}}" for i in range(5)]
    first = pairs_from_classes(data, templates, one_per_image=True, seed=3).captions
    assert len(first) == 20
    assert first == pairs_from_classes(data, templates, one_per_image=True, seed=3).captions
    assert first != pairs_from_classes(data, templates, one_per_image=True, seed=4).captions
    assert len({c.split()[0] for c in first}) > 1


def test_pairs_from_classes_domain_template(tmp_path: Path) -> None:
    for domain in ("art_painting", "sketch"):
        make_image_folder(tmp_path / "d" / domain, {"dog": 1, "horse": 1})
    domains = load_domain_folders(tmp_path / "d")
    pairs = merge_pairs(
        [pairs_from_classes(d, ["a {domain} of a {class}"]) for d in domains.values()]
    )
    assert pairs.captions == [
        "a art painting of a dog",
        "a art painting of a horse",
        "a sketch of a dog",
        "a sketch of a horse",
    ]
    assert pairs.root == tmp_path / "d"
    plain = load_image_folder(tmp_path / "d" / "sketch")
    with pytest.raises(DatasetError, match=r"uses \{domain\}"):
        pairs_from_classes(plain, ["a {domain} of a {}"])
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['label'\]"):
        pairs_from_classes(plain, ["a {label}"])


# -- splits -----------------------------------------------------------------------------------
def test_split_keeps_captions_of_an_image_together(tmp_path: Path) -> None:
    data = load_image_folder(make_image_folder(tmp_path / "f", {"cat": 5, "dog": 5}))
    pairs = pairs_from_classes(data, ["a {}", "the {}", "my {}"])
    train, test = split_pairs(pairs, test_fraction=0.3, seed=2)
    assert (len(train.images), len(test.images)) == (7, 3)
    assert (len(train), len(test)) == (21, 9)
    assert not set(train.images) & set(test.images)
    again_train, _ = split_pairs(pairs, test_fraction=0.3, seed=2)
    assert again_train.captions == train.captions
    other, _ = split_pairs(pairs, test_fraction=0.3, seed=5)
    assert set(other.images) != set(train.images)


def test_pairs_csv_round_trip(tmp_path: Path) -> None:
    data = load_image_folder(make_image_folder(tmp_path / "f", {"cat": 2, "dog": 1}))
    pairs = pairs_from_classes(data, ['a "quoted", {}', "the {}"])
    out = write_pairs_csv(pairs, tmp_path / "pairs.csv")
    assert out.read_text().startswith('filepath,title,label\nf/cat/0.png,"a ""quoted"", cat",cat\n')
    elsewhere = write_pairs_csv(pairs, tmp_path / "out" / "pairs.csv")
    assert f"\n{tmp_path}/f/dog/0.png,the dog,dog\n" in elsewhere.read_text()
    back = load_pairs_csv(out)
    assert back.captions == pairs.captions
    assert back.images == pairs.images
    assert [p.label for p in back.pairs] == [p.label for p in pairs.pairs]
    with pytest.raises(DatasetError, match="already exists"):
        write_pairs_csv(pairs, out)


# -- CLI --------------------------------------------------------------------------------------
def test_cli_pairs_balances_dedups_and_writes_csv(tmp_path: Path, capsys) -> None:
    from clipadapt.cli import main

    folder = make_image_folder(tmp_path / "f", {"cat": 8, "dog": 2})
    png(tmp_path / "test" / "x.png", 1)
    (tmp_path / "test" / "copy.png").write_bytes((folder / "cat" / "0.png").read_bytes())
    test_csv = write_csv(
        tmp_path / "test" / "t.csv", "filepath,title\ncopy.png,a cat\nx.png,other\n"
    )
    out, report = tmp_path / "pairs.csv", tmp_path / "report.json"
    argv = ["pairs", "--data", str(folder), "--template", "a photo of a {}."]
    argv += ["--template", "a {} pic", "--test", str(test_csv), "--class-entries", "--cap", "4"]
    assert main([*argv, "--out", str(out), "--report", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "dropped 1 of 10 images, 2 pairs" in printed
    assert "dog: 4 -> 4" in printed  # at most the cap: all kept
    counts = json.loads(report.read_text())
    assert counts["loaded"] == 20
    assert counts["balance"]["entries"]["cat"][0] == 14
    assert counts["balance"]["kept"] == len(load_pairs_csv(out)) <= 14 + 4
    assert main([*argv, "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_pairs_validates_before_loading(tmp_path: Path, capsys) -> None:
    from clipadapt.cli import main

    code = main(["pairs", "--data", str(tmp_path / "nothing"), "--cap", "5", "--out", "o.csv"])
    assert code == 2
    assert "balancing needs --cap and entries" in capsys.readouterr().err
