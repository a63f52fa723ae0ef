"""Bad arguments fail before torch loads: the user waits milliseconds, not seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clipadapt.catalog import DETECTOR_CLASSES, METHOD_CLASSES
from clipadapt.methods import METHODS
from clipadapt.ood import DETECTORS

PROBE = """
import json, sys
from clipadapt.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "torch": "torch" in sys.modules}))
"""


def test_catalog_names_the_registered_classes() -> None:
    assert list(METHODS) == list(METHOD_CLASSES)
    assert all(cls.name == name for name, cls in METHODS.items())
    assert list(DETECTORS) == list(DETECTOR_CLASSES)
    assert all(cls.name == name for name, cls in DETECTORS.items())


@pytest.mark.parametrize(
    "argv",
    [
        ["adapt", "--data", "{tmp}", "--out", "{tmp}/m", "--method", "nope"],
        ["adapt", "--data", "{tmp}", "--out", "{tmp}/m", "--ood-score", "nope"],
        ["adapt", "--data", "{tmp}/absent", "--out", "{tmp}/m"],
        ["bench", "--data", "{tmp}", "--out", "{tmp}/b", "--methods", "nope"],
        ["zeroshot", "--data", "{tmp}/absent"],
        ["embed", "--data", "{tmp}/absent"],
        ["predict", "{tmp}/absent", "x.jpg"],
        ["predict", "{tmp}/model", "{tmp}/absent.jpg"],
        ["report", "{tmp}/absent"],
        ["pairs", "--data", "{tmp}/absent", "--out", "{tmp}/pairs.csv"],
        ["finetune", "--data", "{tmp}", "--out", "{tmp}/f", "--loss", "nope"],
        ["finetune", "--data", "{tmp}", "--out", "{tmp}/f", "--train", "last:0"],
        ["finetune", "--data", "{tmp}", "--out", "{tmp}/f", "--epochs", "0"],
        ["finetune", "--data", "{tmp}", "--out", "{tmp}/f", "--accumulate", "999"],
        ["finetune", "--data", "{tmp}/absent", "--out", "{tmp}/f"],
        ["finetune", "--data", "{tmp}", "--out", "{tmp}"],
    ],
)
def test_bad_arguments_fail_before_torch_loads(tmp_path: Path, argv: list[str]) -> None:
    model = tmp_path / "model"
    model.mkdir()  # a model directory that exists, so predict reaches the image check
    (model / "config.json").write_text(json.dumps({"format_version": 2}))
    args = [a.format(tmp=tmp_path) for a in argv]
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120
    )
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome == {"code": 2, "torch": False}, done.stderr
    assert done.stderr.startswith("clipadapt: error: ") and "Traceback" not in done.stderr
