"""Calibration metrics against hand-computed answers, temperature scaling, and
``calibrate: temperature`` through the runner, the report, adapt and predict."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from bench_fakes import ColorBackend, make_domains, make_folder

from clipadapt.adapted import load_adapted, predict
from clipadapt.bench.config import BenchConfig
from clipadapt.bench.report import write_report
from clipadapt.bench.runner import run_bench
from clipadapt.calibration import (
    adaptive_ece,
    brier,
    calibration_metrics,
    choose_temperature,
    ece,
    fit_temperature,
    nll,
)
from clipadapt.cli import main
from clipadapt.features import extract_features
from clipadapt.pipeline.results import find_results, read_result

# Five two-class images: probability of class 0, the true label, and the top-1 confidence.
P0 = [0.9, 0.09, 0.38, 0.3, 0.15]
LABELS = [0, 0, 0, 1, 1]
# top-1: 0.9 right; 0.91 (class 1) wrong; 0.62 (class 1) wrong; 0.7 right; 0.85 right


def hand_case() -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.tensor([[p, 1 - p] for p in P0], dtype=torch.float64)
    return probs.log(), torch.tensor(LABELS)


def test_metrics_match_hand_computed_answers() -> None:
    logits, labels = hand_case()
    m = calibration_metrics(logits, labels)
    # equal-width bins of 1/15: 0.9 and 0.91 share bin 13 (acc 0.5, conf 0.905, 2 of 5 images);
    # 0.62, 0.7 and 0.85 are alone in bins 9, 10 and 12
    assert m["ece"] == pytest.approx((2 * 0.405 + 0.62 + 0.3 + 0.15) / 5)
    assert m["reliability"]["count"][13] == 2 and sum(m["reliability"]["count"]) == 5
    # Brier for two classes: 2 (1 - p_true)^2 per image
    p_true = [0.9, 0.09, 0.38, 0.7, 0.85]
    assert m["brier"] == pytest.approx(sum(2 * (1 - p) ** 2 for p in p_true) / 5)
    assert m["nll"] == pytest.approx(-sum(math.log(p) for p in p_true) / 5)
    # equal-mass, 2 bins over the sorted confidences: {.62 w, .7 r, .85 r} and {.9 r, .91 w}
    confidence = np.array([0.9, 0.91, 0.62, 0.7, 0.85])
    correct = np.array([1.0, 0, 0, 1, 1])
    assert adaptive_ece(confidence, correct, bins=2) == pytest.approx((0.17 + 0.81) / 5)
    # 15 equal-mass bins over 5 images: one image per bin
    assert m["adaptive_ece"] == pytest.approx((0.1 + 0.91 + 0.62 + 0.3 + 0.15) / 5)


def test_perfectly_calibrated_and_overconfident_cases() -> None:
    confidence = np.full(10, 0.8)
    assert ece(confidence, np.array([1.0] * 8 + [0.0] * 2)) == pytest.approx(0.0)
    assert ece(confidence, np.zeros(10)) == pytest.approx(0.8)
    probs = np.eye(3)[[0, 1, 2]]
    assert brier(probs, np.array([0, 1, 2])) == 0.0
    assert brier(probs, np.array([1, 2, 0])) == pytest.approx(2.0)


def test_temperature_recovers_a_known_temperature() -> None:
    g = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 10, generator=g, dtype=torch.float64) * 2
    labels = torch.multinomial(true_logits.softmax(-1), 1, generator=g)[:, 0]
    fit = fit_temperature(true_logits * 3, labels)
    assert fit.temperature == pytest.approx(3.0, rel=0.1)
    assert fit.nll_after < fit.nll_before and not fit.at_bound
    assert fit.nll_after == pytest.approx(nll(true_logits * 3, labels, fit.temperature))
    assert fit_temperature(true_logits * 3, labels) == fit  # deterministic
    # scaling by the fitted temperature lowers the ECE of the over-confident logits a lot
    before = calibration_metrics(true_logits * 3, labels)["ece"]
    after = calibration_metrics(true_logits * 3, labels, fit.temperature)["ece"]
    assert after < before / 2


def test_separable_data_has_no_temperature_and_keeps_one() -> None:
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 1])
    fit = fit_temperature(logits, labels)
    assert fit.at_bound and fit.temperature == pytest.approx(0.01, rel=1e-3)
    chosen = choose_temperature(logits, labels)
    assert chosen["temperature"] == 1.0 and "already classified right" in chosen["reason"]
    assert chosen["nll_after"] == chosen["nll_before"] and chosen["search"]["at_bound"]
    one_wrong = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    chosen = choose_temperature(one_wrong, torch.tensor([0, 1, 1]))
    assert chosen["reason"] is None and chosen["temperature"] > 1


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="need \\(N, C\\)"):
        calibration_metrics(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))


# -- through the runner, the report, adapt and predict ----------------------------------
@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPADAPT_CACHE_DIR", str(tmp_path / "default-cache"))


@pytest.fixture
def backend(monkeypatch) -> ColorBackend:
    fake = ColorBackend()
    monkeypatch.setattr("clipadapt.models.create_backend", lambda spec, device="cpu": fake)
    return fake


def bench_config(tmp_path: Path, **overrides) -> BenchConfig:
    values = {
        "data": str(make_domains(tmp_path / "colors")),
        "out": tmp_path / "out",
        "model": "fake",
        "methods": "zeroshot,linear_probe,gda",
        "shots": (2, 4),
        "seeds": (1, 2),
        "views": 0,
        "cache_dir": tmp_path / "cache",
        "calibrate": "temperature",
    }
    return BenchConfig(**(values | overrides))


def test_calibrate_temperature_through_the_runner_and_report(tmp_path, backend) -> None:
    cfg = bench_config(tmp_path)
    run_bench(cfg, backend=backend, progress=False)
    results = [read_result(p) for p in find_results(cfg.out)]
    assert len(results) == 2 * 3 * 2 * 2
    for r in results:
        record = r.calibration
        assert record["mode"] == "temperature" and record["fitted_on"] == "few-shot validation set"
        assert record["n"] == r.n_val > 0 and record["temperature"] > 0
        assert record["reason"] is None or record["temperature"] == 1.0
        assert r.config["calibrate"] == "temperature"
        for target in r.targets:
            scored = r.metrics[target["name"]]["calibration"]
            raw, scaled = scored["uncalibrated"], scored["temperature_scaled"]
            assert sum(raw["reliability"]["count"]) == target["n"]
            assert 0 <= raw["ece"] <= 1 and 0 <= scaled["ece"] <= 1
            if record["temperature"] != pytest.approx(1.0):
                assert scaled["nll"] != pytest.approx(raw["nll"])
    # the temperature is the validation NLL's minimiser: refitting on the same data gives it
    gda = next(r for r in results if r.method == "gda" and r.group == "bright" and r.shots == 4)
    assert gda.calibration["nll_after"] <= gda.calibration["nll_before"]

    written = write_report(cfg.out, tmp_path / "report")
    rows = list(csv.DictReader(written["calibration_csv"].open()))
    assert {r["scaling"] for r in rows} == {"uncalibrated", "temperature_scaled"}
    assert {r["method"] for r in rows} == {"zeroshot", "linear_probe", "gda"}
    one = next(
        r
        for r in rows
        if (r["method"], r["source"], r["target"], r["shots"], r["scaling"])
        == ("gda", "bright", "dark", "4", "uncalibrated")
    )
    expected = [
        read_result(p).metrics["dark"]["calibration"]["uncalibrated"]["ece"]
        for p in find_results(cfg.out)
        if "bright/gda/K4" in str(p)
    ]
    assert float(one["ece_mean"]) == pytest.approx(np.mean(expected), abs=1e-4)
    page = written["html"].read_text()
    assert "Effective robustness" in page and "ECE (%)" in page
    figures = sorted(p.name for p in (tmp_path / "report/figures").glob("*.png"))
    assert "calibration_single_source_colors_effective_robustness.png" in figures
    assert sum("reliability" in name for name in figures) == 3  # one per method


def test_calibrate_is_validated_and_old_runs_keep_their_hash(tmp_path, backend) -> None:
    with pytest.raises(ValueError, match="calibrate 'platt': use one of none, temperature"):
        bench_config(tmp_path, calibrate="platt")
    cfg = bench_config(tmp_path, calibrate="none", methods="zeroshot", seeds=(1,), shots=(2,))
    run_bench(cfg, backend=backend, progress=False)
    result = read_result(find_results(cfg.out)[0])
    assert "calibrate" not in result.config and result.calibration == {"mode": "none"}
    assert "temperature_scaled" not in result.metrics["dark"]["calibration"]


def test_adapt_saves_the_temperature_and_predict_uses_it(tmp_path, backend, capsys) -> None:
    classes = dict.fromkeys(["blue", "gold", "green", "red"], 16)
    folder = make_folder(tmp_path / "colors", classes, shade=0.15)  # dark: some val errors
    model = tmp_path / "model"
    args = [
        "-q", "adapt", "--model", "fake", "--data", str(folder), "--shots", "4",
        "--method", "gda", "--views", "0", "--cache-dir", str(tmp_path / "cache"),
        "--no-ood", "--calibrate", "temperature", "--out", str(model),
    ]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "temperature T = " in printed and "test ECE (15 equal-width bins)" in printed
    config = json.loads((model / "config.json").read_text())
    saved = config["adapted"]["calibration"]
    assert saved["mode"] == "temperature" and saved["n"] == 16 and saved["reason"] is None
    adapted = load_adapted(model)
    assert adapted.temperature == saved["temperature"] != 1.0

    paths = [folder / "green" / f"{i:03d}.png" for i in range(4)]
    scaled = predict(adapted, backend, paths, progress=False)[0]
    features = extract_features(backend, paths, progress=False).features
    logits = adapted.method.predict_logits(features).double()
    expected = (logits / adapted.temperature).softmax(-1).max(-1).values
    assert [float(r["score"]) for r in scaled] == pytest.approx(expected.tolist(), abs=1e-5)

    # a model saved before temperatures existed loads with T = 1 and raw softmax scores
    del config["adapted"]["calibration"]
    (model / "config.json").write_text(json.dumps(config))
    old = load_adapted(model)
    assert old.temperature == 1.0
    raw = predict(old, backend, paths, progress=False)[0]
    assert [float(r["score"]) for r in raw] == pytest.approx(
        logits.softmax(-1).max(-1).values.tolist(), abs=1e-5
    )
    assert [r["margin"] for r in raw] == [r["margin"] for r in scaled]  # raw logits both times
