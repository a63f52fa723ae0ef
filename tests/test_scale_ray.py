"""Bulk embedding with Ray Data: same features as the local path, shards that import into the
cache, unreadable files listed (never fatal), and a killed job resumed without re-encoding."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from clipadapt.cli import main
from clipadapt.feature_cache import FeatureCache
from clipadapt.features import extract_features
from tests.conftest import make_image_folder

ray = pytest.importorskip("ray", reason="Ray is the optional 'scale' extra")
pytest.importorskip("pyarrow", reason="pyarrow is the optional 'scale' extra")

from clipadapt.scale.ray_embed import embed_with_ray, start_ray  # noqa: E402
from clipadapt.scale.shards import import_shards, read_shard, shard_files  # noqa: E402

BATCH = 4


@pytest.fixture(scope="module")
def ray_cluster():
    """One small local Ray for the module (starting it takes seconds)."""
    start_ray(num_cpus=2, object_store_memory=100 * 2**20)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    root = make_image_folder(tmp_path_factory.mktemp("ray_images"), {"a": 7, "b": 7, "c": 6})
    return sorted(str(p) for p in root.rglob("*.png"))


@pytest.fixture(scope="module")
def backend(tiny_open_clip_dir):
    from clipadapt.models import create_backend

    return create_backend(f"local-dir:{tiny_open_clip_dir}")


def shard_features(directory: Path) -> dict[str, np.ndarray]:
    rows: dict[str, np.ndarray] = {}
    for path in shard_files(directory):
        shard = read_shard(path)
        rows.update(zip(shard.paths, shard.features, strict=True))
    return rows


def run(backend, paths, directory, **options):
    options = {"shard_size": 8, "batch_size": BATCH, "progress": False} | options
    return embed_with_ray(backend, paths, directory, **options)


def test_ray_features_equal_the_local_path_and_import_into_the_cache(
    ray_cluster, backend, images, tmp_path
):
    local = extract_features(backend, images, batch_size=BATCH, progress=False)
    threads = torch.get_num_threads()  # the local path's; actors must use as many
    job = run(backend, images, tmp_path / "shards", workers=1, worker_cpus=threads)
    assert (job.shards, job.reused, job.computed, job.skipped) == (3, 0, 20, [])
    rows = shard_features(tmp_path / "shards")
    ray_rows = np.stack([rows[p] for p in images])
    assert np.abs(ray_rows - local.features.numpy()).max() == 0.0

    cache = FeatureCache(tmp_path / "cache")
    imported = import_shards(tmp_path / "shards", cache)
    assert (imported.shards, imported.rows) == (3, 20)
    warm = extract_features(backend, images, cache=cache, batch_size=BATCH, progress=False)
    assert (warm.cached, warm.computed) == (20, 0)
    assert torch.equal(warm.features, local.features)


def test_two_workers_write_every_shard_once(ray_cluster, backend, images, tmp_path):
    local = extract_features(backend, images, batch_size=BATCH, progress=False).features
    job = run(backend, images, tmp_path / "shards", workers=2)
    assert (job.shards, job.computed) == (3, len(images))
    rows = shard_features(tmp_path / "shards")
    assert rows.keys() == set(images)
    # one torch thread per actor here: equal to the local path's up to float rounding
    assert np.allclose(np.stack([rows[p] for p in images]), local.numpy(), atol=1e-6)


def test_corrupt_and_empty_files_are_skipped_and_listed(ray_cluster, backend, images, tmp_path):
    corrupt, empty = tmp_path / "corrupt.jpg", tmp_path / "empty.png"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    empty.write_bytes(b"")
    paths = [*images[:5], str(corrupt), *images[5:], str(empty)]
    job = run(backend, paths, tmp_path / "shards")
    assert job.computed == len(images)
    assert [item["path"] for item in job.skipped] == [str(corrupt), str(empty)]
    assert "empty file" in job.skipped[1]["reason"]
    assert set(shard_features(tmp_path / "shards")) == set(images)
    again = run(backend, paths, tmp_path / "shards")  # the listing survives a resume
    assert (again.reused, again.computed, again.skipped) == (job.shards, 0, job.skipped)


KILLED_JOB = """
import sys, time
from clipadapt.models import create_backend
from clipadapt.scale import ray_embed

write = ray_embed._ShardWriter._write
def slow_write(self, index):  # the driver writes shards; slow it so the kill lands mid-job
    time.sleep(0.4)
    return write(self, index)
ray_embed._ShardWriter._write = slow_write
paths = sys.argv[4:]
ray_embed.start_ray()
ray_embed.embed_with_ray(
    create_backend(sys.argv[1]), paths, sys.argv[2], shard_size=4, batch_size=4,
    worker_cpus=int(sys.argv[3]), progress=False
)
"""


def test_killed_job_resumes_without_re_encoding_finished_shards(
    ray_cluster, backend, images, tmp_path, tiny_open_clip_dir
):
    shards, threads = tmp_path / "shards", torch.get_num_threads()
    env = os.environ | {"RAY_ADDRESS": ray_cluster, "PYTHONPATH": os.pathsep.join(sys.path)}
    model, script = f"local-dir:{tiny_open_clip_dir}", textwrap.dedent(KILLED_JOB)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, model, str(shards), str(threads), *images],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 90
    while len(list(shards.glob("part-*.parquet"))) < 2 and proc.poll() is None:
        assert time.monotonic() < deadline, "the job wrote no shards in 90 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(shard_files(shards))
    assert 2 <= finished < 5, "the kill should land after some shards and before the last"

    resumed = run(backend, images, shards, shard_size=4, worker_cpus=threads)
    assert resumed.reused == finished
    assert resumed.computed == len(images) - 4 * finished  # finished shards not re-encoded
    local = extract_features(backend, images, batch_size=BATCH, progress=False).features
    rows = shard_features(shards)
    assert rows.keys() == set(images)
    assert np.array_equal(np.stack([rows[p] for p in images]), local.numpy())


def test_cli_embed_with_ray_imports_into_the_cache(
    ray_cluster, tmp_path, tiny_open_clip_dir, capsys
):
    data = make_image_folder(tmp_path / "data", {"x": 3, "y": 3})
    model = f"local-dir:{tiny_open_clip_dir}"
    common = ["--model", model, "--data", str(data), "--cache-dir", str(tmp_path / "cache")]
    ray_args = ["--engine", "ray", "--shards", str(tmp_path / "s")]
    code = main(["embed", *common, *ray_args, "-q", "--output", str(tmp_path / "f.safetensors")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "6 computed, 0 skipped" in out and "imported 6 features from 1 shards" in out
    assert "0 computed" in out.splitlines()[-1]  # --output read the cache, encoded nothing
    assert main(["cache", "import", str(tmp_path / "s"), "--cache-dir", str(tmp_path / "c2")]) == 0
    assert "imported 6 features from 1 shards" in capsys.readouterr().out
    if importlib.util.find_spec("faiss") is not None:  # the index reads them, encodes nothing
        index = ["index", "--model", model, "--data", str(data), "--out", str(tmp_path / "i")]
        assert main([*index, "--cache-dir", str(tmp_path / "c2"), "-q"]) == 0
        assert "(6 from cache, 0 computed, 0 skipped)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["embed", "--data", ".", "--engine", "ray"], "--shards DIR"),
        (
            ["embed", "--data", ".", "--engine", "ray", "--shards", "s", "--workers", "0"],
            "--workers",
        ),
        (["cache", "import"], "folder of Parquet shards"),
        (["cache", "import", "no_such_folder"], "no_such_folder is not a folder"),
    ],
)
def test_cli_rejects_bad_ray_arguments_before_loading_a_model(
    argv, message, capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err
