"""Prompt learning under torchrun: two processes follow the one-process loss curve for the
same global batch, and a checkpoint resumes on another number of processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

JOB = Path(__file__).with_name("ddp_prompt_job.py")
# float32 sums in another order: the curves agree far below any training effect (a step
# moves the loss by ~1e-2 here) and far above float32 rounding
TOLERANCE = 1e-5


def run_job(model_dir: Path, out: Path, procs: int, checkpoints: str = "-", stop: int = -1):
    """The job as one plain process (procs=0) or under torchrun with ``procs`` ranks."""
    launcher = [sys.executable]
    if procs:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(procs)]
        launcher += ["--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0"]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*launcher, str(JOB), str(model_dir), str(out), checkpoints, str(stop)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    return done


def result(path: Path) -> dict:
    return json.loads(path.read_text())


def assert_close(a: list[float], b: list[float]) -> None:
    assert len(a) == len(b)
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < TOLERANCE


@pytest.fixture(scope="module")
def single(tiny_open_clip_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("single") / "one.json"
    done = run_job(tiny_open_clip_dir, out, 0)
    assert done.returncode == 0, done.stderr[-2000:]
    return result(out)


def test_two_processes_follow_the_one_process_loss_curve(single, tiny_open_clip_dir, tmp_path):
    done = run_job(tiny_open_clip_dir, tmp_path / "two.json", 2)
    assert done.returncode == 0, done.stderr[-2000:]
    two = result(tmp_path / "two.json")
    assert len(single["losses"]) == 12  # 4 epochs x 3 global batches (5, 5, 2)
    assert single["losses"][0] != single["losses"][-1]  # it trains
    assert_close(two["losses"], single["losses"])
    assert_close(two["ctx"], single["ctx"])


@pytest.mark.parametrize(("first", "then"), [(2, 0), (0, 2)])
def test_checkpoint_resumes_on_another_number_of_processes(
    first, then, single, tiny_open_clip_dir, tmp_path
):
    checkpoints = str(tmp_path / "ckpt")
    stopped = run_job(tiny_open_clip_dir, tmp_path / "x.json", first, checkpoints, stop=1)
    assert stopped.returncode != 0 and not (tmp_path / "x.json").exists()
    assert (tmp_path / "ckpt" / "coop.ckpt").is_file()
    done = run_job(tiny_open_clip_dir, tmp_path / "resumed.json", then, checkpoints)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = result(tmp_path / "resumed.json")
    assert_close(resumed["losses"], single["losses"][6:])  # epochs 2 and 3 only
    assert_close(resumed["ctx"], single["ctx"])


def test_only_adapt_runs_under_torchrun(monkeypatch, capsys):
    from clipadapt.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["models"]) == 2
    assert "only 'clipadapt adapt' and 'finetune' run" in capsys.readouterr().err


def test_finetune_runs_under_torchrun(tiny_open_clip_dir, tmp_path):
    from clipadapt.models import create_backend
    from tests.conftest import make_image_folder

    data = make_image_folder(tmp_path / "data", {"cat": 4, "dog": 4, "fish": 4})
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    launcher += ["--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0", "-m", "clipadapt"]
    args = ["finetune", "-q", "--model", f"local-dir:{tiny_open_clip_dir}", "--data", str(data)]
    args += ["--train", "text", "--epochs", "2", "--batch-size", "6", "--lr", "1e-3"]
    args += ["--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "model")]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launcher, *args], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("model saved to") == 1  # rank 0 alone reports and writes
    tuned = create_backend(str(tmp_path / "model"))
    base = create_backend(f"local-dir:{tiny_open_clip_dir}")
    assert tuned.text_fingerprint != base.text_fingerprint
    assert tuned.image_fingerprint == base.image_fingerprint
