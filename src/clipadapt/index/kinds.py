"""The FAISS index kinds and how their parameters are chosen.

``flat``: exact inner-product search (``IndexFlatIP``). ``ivfpq``: an inverted file of
``nlist`` k-means cells whose residuals are product-quantised (``IndexIVFPQ``) proposes
``k_factor * k`` candidates, which are re-ranked by their exact inner product
(``IndexRefineFlat``): search touches ``nprobe / nlist`` of the collection, the scores
returned are exact, and the index keeps the float vectors besides the codes. Its recall
against exact search is measured on a seeded sample of the indexed vectors at build time.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from clipadapt.index.recall import exact_topk, recall_at_k

KINDS = ("flat", "ivfpq")
# Below this many vectors exact search is the default: at 50k x 512 float32 (100 MB) a query
# costs a few milliseconds on one core, and IVF-PQ would only add an approximation.
AUTO_FLAT_MAX = 50_000
RECALL_K = 10
RECALL_QUERIES = 1000
# Candidates re-ranked exactly per result wanted: PQ alone on 4-dimensional sub-vectors
# reaches only ~0.4 recall@10 on clustered synthetic features; re-ranking 16k lifts it to
# the IVF limit (~0.96 at the chosen nprobe).
K_FACTOR = 16
# k-means training points per centroid (a seeded subsample; FAISS's default is 256).
TRAIN_POINTS_PER_CENTROID = 64
# nprobe: the smallest power of two whose measured recall@10 reaches this (all cells if none).
RECALL_TARGET = 0.95
# k-means wants >= 39 training points per centroid (FAISS warns below that).
POINTS_PER_CENTROID = 39

FaissIndex = Any  # a faiss.Index; faiss ships no type stubs


def faiss_module() -> Any:
    try:
        import faiss
    except ImportError:
        raise ValueError(
            "the image index needs the faiss-cpu package: pip install 'clipadapt[index]'"
        ) from None
    return faiss


def choose_kind(kind: str, count: int) -> str:
    if kind == "auto":
        return "flat" if count <= AUTO_FLAT_MAX else "ivfpq"
    if kind not in KINDS:
        raise ValueError(f"index kind {kind!r} is not one of auto, {', '.join(KINDS)}")
    return kind


def check_recall_target(target: float) -> float:
    if not 0 < target <= 1:
        raise ValueError(f"--recall-target must be in (0, 1], got {target}")
    return target


def ivfpq_params(count: int, dim: int) -> dict[str, int]:
    """``nlist`` ~ sqrt(N) cells (balances scanning cells against scanning their members;
    each cell trained on >= 39 points); ``m`` sub-quantisers of about 4 dimensions each (the
    largest divisor of ``dim`` <= dim/4), 8 bits each when there are enough points to train
    256 centroids, fewer otherwise."""
    nlist = max(1, min(round(math.sqrt(count)), count // POINTS_PER_CENTROID))
    m = max(d for d in range(1, max(1, dim // 4) + 1) if dim % d == 0)
    nbits = max(1, min(8, int(math.log2(max(2, count // POINTS_PER_CENTROID)))))
    return {"nlist": nlist, "m": m, "nbits": nbits}


def make_faiss_index(
    features: np.ndarray, kind: str, *, seed: int = 0, recall_target: float = RECALL_TARGET
) -> tuple[FaissIndex, dict[str, Any]]:
    """Build the FAISS index of ``features`` (float32, L2-normalised rows).

    Returns the index and a JSON-able record of how it was built (``kind``, parameters,
    build seconds and, for ``ivfpq``, the recall measured and the ``nprobe`` chosen).
    """
    faiss = faiss_module()
    count, dim = features.shape
    kind = choose_kind(kind, count)
    start = time.perf_counter()
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
        index.add(features)
        return index, {"kind": kind, "build_seconds": round(time.perf_counter() - start, 3)}
    params = ivfpq_params(count, dim)
    ivf = faiss.IndexIVFPQ(
        faiss.IndexFlatIP(dim),
        dim,
        params["nlist"],
        params["m"],
        params["nbits"],
        faiss.METRIC_INNER_PRODUCT,
    )
    for clustering in (ivf.cp, ivf.pq.cp):
        clustering.seed = seed
        clustering.max_points_per_centroid = TRAIN_POINTS_PER_CENTROID
    index = faiss.IndexRefineFlat(ivf)
    index.k_factor = K_FACTOR
    index.train(features)
    index.add(features)
    build_seconds = time.perf_counter() - start
    nprobe, curve, queries = tune_nprobe(index, features, seed=seed, target=recall_target)
    set_nprobe(index, nprobe)
    return index, {
        "kind": kind,
        **params,
        "k_factor": K_FACTOR,
        "nprobe": nprobe,
        "seed": seed,
        "build_seconds": round(build_seconds, 3),
        f"recall@{RECALL_K}": curve[str(nprobe)],
        "recall_by_nprobe": curve,
        "recall_convention": (
            f"mean over {queries} seeded indexed vectors used as queries of "
            f"|approximate top-{RECALL_K} & exact top-{RECALL_K}| / {RECALL_K}"
        ),
        "recall_target": recall_target,
        "nprobe_rule": (
            f"smallest power of two whose recall@{RECALL_K} reaches recall_target "
            "(every cell when none does)"
        ),
    }


def tune_nprobe(
    index: FaissIndex, features: np.ndarray, *, seed: int, target: float = RECALL_TARGET
) -> tuple[int, dict[str, float], int]:
    """Measure recall@10 against exact search for nprobe = 1, 2, 4, ... (then every cell) and
    stop at the first that reaches ``target``.

    Returns the chosen nprobe, the recall at every nprobe tried (keys are strings, as in
    JSON) and the number of query vectors.
    """
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(features), size=min(RECALL_QUERIES, len(features)), replace=False)
    queries = features[np.sort(sample)]
    k = min(RECALL_K, len(features))
    truth = exact_topk(features, queries, k)
    curve: dict[str, float] = {}
    nlist = faiss_module().extract_index_ivf(index).nlist
    nprobe = 1
    while True:
        set_nprobe(index, nprobe)
        _, found = index.search(queries, k)
        curve[str(nprobe)] = round(recall_at_k(found, truth), 4)
        if curve[str(nprobe)] >= target or nprobe == nlist:
            return nprobe, curve, len(queries)
        nprobe = min(2 * nprobe, nlist)


def set_nprobe(index: FaissIndex, nprobe: int) -> None:
    """Cells scanned per query by the IVF part of an ``ivfpq`` index."""
    faiss_module().extract_index_ivf(index).nprobe = nprobe
