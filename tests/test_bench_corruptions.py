"""The corruptions protocol: corrupted test views, mCE against zero-shot, the report."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from bench_fakes import ColorBackend, make_domains

from clipadapt.bench.aggregate import Cell, Key, aggregate, corruption_errors, load_results
from clipadapt.bench.config import BenchConfig
from clipadapt.bench.report import write_report
from clipadapt.bench.runner import run_bench
from clipadapt.pipeline.results import read_result


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPADAPT_CACHE_DIR", str(tmp_path / "default-cache"))


def config(tmp_path: Path, **overrides) -> BenchConfig:
    values = {
        "data": str(make_domains(tmp_path / "colors", n=8)),
        "out": tmp_path / "out",
        "model": "fake",
        "protocol": "corruptions",
        "methods": "zeroshot,ncm",
        "sources": "bright",
        "shots": (2,),
        "seeds": (1, 2),
        "views": 0,
        "corruptions": "contrast,gaussian_noise,saturate",
        "severities": (1, 5),
        "cache_dir": tmp_path / "cache",
    }
    return BenchConfig(**(values | overrides))


def test_corruption_suite_runs_scores_every_cell_and_reports(tmp_path):
    cfg = config(tmp_path)
    backend = ColorBackend()
    summary = run_bench(cfg, backend=backend, progress=False)
    assert len(summary.ran) == 4
    result = read_result(next(p for p in summary.ran if "/ncm/" in str(p)))
    names = [t["name"] for t in result.targets]
    assert names == ["clean", *(f"{c}@{s}" for c in cfg.corruptions for s in (1, 5))]
    assert result.targets[1]["view"] == "gaussian_noise@1" and "view" not in result.targets[0]
    n = result.metrics["clean"]["n"]
    assert all(result.metrics[name]["n"] == n for name in names)
    common = [
        result.metrics[f"{c}@{s}"]["acc1"] for c in ("contrast", "gaussian_noise") for s in (1, 5)
    ]
    assert result.summary["corruption_mean"] == pytest.approx(sum(common) / 4)
    extra = [result.metrics[f"saturate@{s}"]["acc1"] for s in (1, 5)]
    assert result.summary["extra_corruption_mean"] == pytest.approx(sum(extra) / 2)
    # corrupted views are cached: a second run into a fresh folder embeds nothing
    forwards = []
    backend.encode_images = _counting(backend.encode_images, forwards)
    run_bench(config(tmp_path, out=tmp_path / "again"), backend=backend, progress=False)
    assert forwards == []

    written = write_report(cfg.out, tmp_path / "report")
    markdown = written["markdown"].read_text()
    assert "## corruptions · colors" in markdown and "relative mCE" in markdown
    zeroshot_row = next(line for line in markdown.splitlines() if line.startswith("| zeroshot |"))
    assert "100.0 ± 0.0 | 100.0 ± 0.0 |" in zeroshot_row  # its own baseline
    figures = tmp_path / "report/figures"
    assert (figures / "corruptions_colors_bright_heatmap.png").stat().st_size > 1000
    assert (figures / "corruptions_colors_bright_severity.png").stat().st_size > 1000
    rows = list(csv.DictReader(written["csv"].open()))
    assert {r["target"] for r in rows} >= {"clean", "gaussian_noise@5", "mean corruption"}
    cells = aggregate(load_results(cfg.out))
    assert corruption_errors(cells, "bright", "ncm", 2) is not None


def _counting(encode, calls):
    def wrapped(pixels):
        calls.append(len(pixels))
        return encode(pixels)

    return wrapped


def _cells(method: str, accuracies: dict[str, list[float]]) -> dict[Key, Cell]:
    out = {}
    for target, values in accuracies.items():
        role = "clean" if target == "clean" else "corrupted"
        key = Key("corruptions", "d", "g", target, role, method, 4)
        out[key] = Cell(acc1=list(values), seeds=list(range(1, len(values) + 1)))
    return out


def test_mce_and_relative_mce_by_hand():
    # zero-shot errors: clean 0.2; fog 0.4, 0.6 (sum 1.0); contrast 0.3, 0.5 (sum 0.8)
    base = _cells(
        "zeroshot",
        {
            "clean": [0.8],
            "fog@1": [0.6],
            "fog@2": [0.4],
            "contrast@1": [0.7],
            "contrast@2": [0.5],
            "saturate@1": [0.8],
            "saturate@2": [0.8],
        },
    )
    # method, seeds 1 and 2: clean errors 0.1 / 0.2; fog errors sum 0.5 / 0.8;
    # contrast errors sum 0.4 / 0.6; saturate (an extra) never enters the means
    mine = _cells(
        "ncm",
        {
            "clean": [0.9, 0.8],
            "fog@1": [0.8, 0.6],
            "fog@2": [0.7, 0.6],
            "contrast@1": [0.85, 0.7],
            "contrast@2": [0.75, 0.7],
            "saturate@1": [0.0, 0.0],
            "saturate@2": [0.0, 0.0],
        },
    )
    errors = corruption_errors(base | mine, "g", "ncm", 4)
    assert errors.ce["fog"] == pytest.approx([0.5 / 1.0, 0.8 / 1.0])
    assert errors.ce["contrast"] == pytest.approx([0.4 / 0.8, 0.6 / 0.8])
    assert errors.mce == pytest.approx([(0.5 + 0.5) / 2, (0.8 + 0.75) / 2])
    # relative: (sum of errors - 2 x clean error) / (zero-shot's, 1.0 - 0.4 and 0.8 - 0.4)
    assert errors.relative_ce["fog"] == pytest.approx([(0.5 - 0.2) / 0.6, (0.8 - 0.4) / 0.6])
    assert errors.relative_ce["contrast"] == pytest.approx([(0.4 - 0.2) / 0.4, (0.6 - 0.4) / 0.4])
    assert errors.relative_mce == pytest.approx([(0.5 + 0.5) / 2, (2 / 3 + 0.5) / 2])
    # zero-shot's own relative CE on saturate divides by 0: not a number, not an error
    assert errors.relative_ce["saturate"] == [None, None]
    assert corruption_errors(mine, "g", "ncm", 4) is None  # no baseline, no mCE


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"corruptions": "fog,rain"}, "corruptions \\['rain'\\]: use some of"),
        ({"severities": (0, 1)}, "severities must be a non-empty list of integers >= 1"),
        ({"severities": (6,)}, "severities must be 1-5"),
        ({"protocol": "corrupt"}, "protocol 'corrupt': use one of"),
    ],
)
def test_bad_corruption_settings_name_themselves(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, **overrides)
