"""selection: crafted_shift: methods choose on the validation images under crafted shifts."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Self

import pytest
import torch
from bench_fakes import ColorBackend, make_domains

from clipadapt.bench.config import BenchConfig
from clipadapt.bench.runner import run_bench
from clipadapt.methods import METHODS, DataKind, FitData, Method
from clipadapt.pipeline.results import read_result
from clipadapt.views import CRAFTED_SHIFTS


class ValSpy(Method):
    """Records the validation set it is given; predicts like zero-shot."""

    name = "val_spy"
    reads = frozenset({DataKind.SUPPORT, DataKind.VALIDATION})
    seen: ClassVar[list[FitData]] = []

    def fit(self, data: FitData) -> Self:
        type(self).seen.append(data)
        self.set_state(text=data.class_embeddings)
        return self

    def predict_logits(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.state("text").T


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPADAPT_CACHE_DIR", str(tmp_path / "default-cache"))


def config(tmp_path: Path, **overrides) -> BenchConfig:
    values = {
        "data": str(make_domains(tmp_path / "colors", n=10)),
        "out": tmp_path / "out",
        "model": "fake",
        "protocol": "single_source",
        "sources": "bright",
        "shots": (2,),
        "seeds": (1,),
        "views": 0,
        "selection": "crafted_shift",
        "cache_dir": tmp_path / "cache",
    }
    return BenchConfig(**(values | overrides))


def test_crafted_shift_validates_on_the_validation_images_under_each_crafted_view(tmp_path):
    ValSpy.seen.clear()
    registry = {"val_spy": ValSpy, "gda": METHODS["gda"], "auto": METHODS["auto"]}
    cfg = config(tmp_path, methods="val_spy,gda,auto")
    summary = run_bench(cfg, backend=ColorBackend(), registry=registry, progress=False)
    (data,) = ValSpy.seen
    result = read_result(next(p for p in summary.ran if "/val_spy/" in str(p)))
    assert result.n_val > 0 and len(data.val_labels) == len(CRAFTED_SHIFTS) * result.n_val
    plain, crafted = data.val_features[: result.n_val], data.val_features[result.n_val :]
    assert torch.cdist(crafted, plain).min() > 1e-4  # none of the plain validation images
    assert set(result.selection_acc1) == {"validation", "crafted_shift"}
    gda = read_result(next(p for p in summary.ran if "/gda/" in str(p)))
    assert gda.selected["alpha"]["mode"] == "crafted_shift"
    auto = read_result(next(p for p in summary.ran if "/auto/" in str(p)))
    assert auto.selected["method"]["mode"] == "crafted_shift"


def test_unknown_selection_lists_crafted_shift(tmp_path):
    with pytest.raises(ValueError, match="validation, cv, crafted_shift"):
        config(tmp_path, selection="crafted")
