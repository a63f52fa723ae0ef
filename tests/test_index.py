"""The FAISS image index: build, save, load, search; refusing foreign directories."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clipadapt.index.recall import exact_topk, recall_at_k

faiss = pytest.importorskip("faiss", reason="the index needs faiss-cpu (extra 'index')")

from clipadapt.index import ImageIndex, build_index, is_index_dir, load_index  # noqa: E402


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered_rows(n: int, dim: int, clusters: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(clusters, size=n)] + 0.3 * rng.standard_normal((n, dim))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build(tmp_path, feats, **kw) -> ImageIndex:
    paths = [f"img{i}.png" for i in range(len(feats))]
    return build_index(
        feats, paths, tmp_path / "idx", model_spec="lite", image_fingerprint="fp", **kw
    )


def test_flat_round_trip_equals_numpy_ranking(tmp_path):
    feats = unit_rows(200, 16)
    queries = unit_rows(5, 16, seed=1)
    built = build(tmp_path, feats)
    loaded = load_index(tmp_path / "idx")
    assert loaded.kind == "flat" and loaded.model_spec == "lite"
    assert loaded.image_fingerprint == "fp" and loaded.paths[3] == "img3.png"
    scores, ids = loaded.search(queries, 7)
    expected = np.argsort(-(queries @ feats.T), axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ feats.T, ids, 1), atol=1e-5)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(built.search(queries, 7)[1], ids)


def test_fewer_rows_than_k_pads_with_minus_one(tmp_path):
    index = build(tmp_path, unit_rows(3, 8))
    scores, ids = index.search(unit_rows(2, 8, seed=5), 5)
    assert ids.shape == (2, 5) and (ids[:, 3:] == -1).all() and (ids[:, :3] >= 0).all()
    assert np.isneginf(scores[:, 3:]).all()


def test_ivfpq_records_measured_recall_and_nprobe(tmp_path):
    feats = clustered_rows(4000, 32, clusters=40)
    index = build(tmp_path, feats, kind="ivfpq", seed=3)
    build_info = json.loads((tmp_path / "idx" / "index.json").read_text())["build"]
    assert index.kind == "ivfpq"
    nprobe = build_info["nprobe"]
    assert build_info["recall@10"] == build_info["recall_by_nprobe"][str(nprobe)]
    # the recorded recall is what a search with the loaded index gives
    loaded = load_index(tmp_path / "idx")
    sample = np.sort(np.random.default_rng(3).choice(len(feats), 1000, replace=False))
    _, found = loaded.search(feats[sample], 10)
    truth = exact_topk(feats, feats[sample], 10)
    assert recall_at_k(found, truth) == pytest.approx(build_info["recall@10"], abs=1e-4)
    assert build_info["recall@10"] > 0.9  # chance is 10/4000
    # nprobe is the first power of two to reach the target
    curve = {int(p): r for p, r in build_info["recall_by_nprobe"].items()}
    assert max(curve) == nprobe and curve[nprobe] >= 0.95
    assert all(r < 0.95 for p, r in curve.items() if p < nprobe)


def test_ivfpq_scans_every_cell_when_the_target_is_out_of_reach(tmp_path):
    index = build(tmp_path, clustered_rows(2000, 16, clusters=20), kind="ivfpq", recall_target=1)
    build_info = index.meta["build"]
    assert build_info["nprobe"] == build_info["nlist"] or build_info["recall@10"] == 1


def test_ivfpq_is_deterministic(tmp_path):
    feats = clustered_rows(3000, 16, clusters=20)
    a = build(tmp_path / "a", feats, kind="ivfpq", seed=1)
    b = build(tmp_path / "b", feats, kind="ivfpq", seed=1)
    q = feats[:50]
    np.testing.assert_array_equal(a.search(q, 10)[1], b.search(q, 10)[1])
    assert a.meta["build"]["recall_by_nprobe"] == b.meta["build"]["recall_by_nprobe"]


def test_refuses_to_overwrite_a_foreign_directory(tmp_path):
    foreign = tmp_path / "idx"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a clipadapt index"):
        build(tmp_path, unit_rows(10, 8))
    assert (foreign / "notes.txt").read_text() == "mine" and len(list(foreign.iterdir())) == 1


def test_rebuilds_over_its_own_index(tmp_path):
    build(tmp_path, unit_rows(10, 8))
    index = build(tmp_path, unit_rows(12, 8, seed=2))
    assert len(load_index(tmp_path / "idx")) == 12 == len(index)
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # no staging left behind


def test_load_rejects_a_directory_that_is_not_an_index(tmp_path):
    with pytest.raises(ValueError, match="not a clipadapt index"):
        load_index(tmp_path)
    assert not is_index_dir(tmp_path)


def test_recall_target_is_checked_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="recall-target"):
        build(tmp_path, unit_rows(10, 8), recall_target=1.5)
    assert not (tmp_path / "idx").exists()


@pytest.mark.parametrize(
    ("feats", "match"),
    [
        (np.ones((4, 8), np.float32), "L2-normalised"),
        (np.full((4, 8), np.nan, np.float32), "NaN"),
        (np.ones((3, 8), np.float32) / np.sqrt(8), "one row per path"),
    ],
)
def test_bad_features_are_refused(tmp_path, feats, match):
    with pytest.raises(ValueError, match=match):
        build_index(feats, ["a"] * 4, tmp_path / "i", model_spec="m", image_fingerprint="f")


def test_search_checks_query_shape(tmp_path):
    index = build(tmp_path, unit_rows(10, 8))
    with pytest.raises(ValueError, match=r"shape \(n, 8\)"):
        index.search(unit_rows(2, 4), 3)


def test_recall_at_k_known_answer():
    truth = np.array([[0, 1, 2], [3, 4, 5]])
    found = np.array([[2, 9, 0], [5, -1, -1]])
    assert recall_at_k(found, truth) == pytest.approx((2 / 3 + 1 / 3) / 2)
