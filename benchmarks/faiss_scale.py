"""FAISS at scale: exact (flat) against IVF-PQ on clustered synthetic unit vectors.

Vectors: ``--clusters`` random centres in ``--dim`` dimensions, each vector a centre plus
Gaussian noise (``--noise`` per dimension relative to unit-variance centres), L2-normalised,
so that the IVF cells mean something (uniform noise has no structure to exploit). Both
indexes are built with ``clipadapt.index.build_index`` (IVF-PQ: ``kind="ivfpq"``, its nprobe
tuned and its recall recorded at build as usual). Then, on held-out query vectors drawn the
same way (not indexed): build seconds, median per-query latency at batch 1 and batch 64
(FAISS threads as given by ``--threads``), and recall@10 against exact search
(|IVF-PQ top-10 & exact top-10| / 10, averaged over queries). Timing: run on a quiet machine.

    .venv/bin/python benchmarks/faiss_scale.py                      # 100k x 512, the lead's run
    .venv/bin/python benchmarks/faiss_scale.py --count 10000 --out /tmp/faiss_10k.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from clipadapt.atomic import atomic_write_json
from clipadapt.index import ImageIndex, build_index
from clipadapt.index.recall import exact_topk, recall_at_k

OUT = Path(__file__).resolve().parent / "results" / "faiss_scale.json"
K = 10


def clustered(count: int, dim: int, clusters: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(clusters, size=count)] + noise * rng.standard_normal((count, dim))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def latency_ms(index: ImageIndex, queries: np.ndarray, batch: int, repeats: int) -> float:
    """Median over batches of (batch seconds / batch size), in milliseconds."""
    index.search(queries[:batch], K)  # warm-up
    per_query = []
    for _ in range(repeats):
        for start in range(0, len(queries) - batch + 1, batch):
            t = time.perf_counter()
            index.search(queries[start : start + batch], K)
            per_query.append((time.perf_counter() - t) / batch)
    return round(1000 * statistics.median(per_query), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="indexed vectors")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--queries", type=int, default=1024, help="held-out query vectors")
    parser.add_argument("--threads", type=int, default=1, help="FAISS OpenMP threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)

    data = clustered(args.count + args.queries, args.dim, args.clusters, args.noise, args.seed)
    features, queries = data[: args.count], data[args.count :]
    paths = [f"synthetic/{i}" for i in range(args.count)]
    truth = exact_topk(features, queries, K)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("flat", "ivfpq"):
            start = time.perf_counter()
            index = build_index(
                features,
                paths,
                Path(tmp) / kind,
                model_spec="synthetic",
                image_fingerprint="synthetic",
                kind=kind,
                seed=args.seed,
            )
            total = time.perf_counter() - start
            _, found = index.search(queries, K)
            rows[kind] = {
                "build_seconds_total": round(total, 3),  # with ivfpq's nprobe tuning
                "build": index.meta["build"],
                "index_bytes": sum(f.stat().st_size for f in (Path(tmp) / kind).iterdir()),
                f"recall@{K}_heldout": round(recall_at_k(found, truth), 4),
                "latency_ms_batch1": latency_ms(index, queries, 1, args.repeats),
                "latency_ms_batch64": latency_ms(index, queries, 64, args.repeats),
            }
            print(kind, json.dumps(rows[kind]), flush=True)
    result = {
        "benchmark": "faiss_scale",
        "vectors": {
            "count": args.count,
            "dim": args.dim,
            "clusters": args.clusters,
            "noise": args.noise,
            "queries": args.queries,
            "seed": args.seed,
        },
        "threads": args.threads,
        "faiss_version": faiss.__version__,
        "latency": "median over batches of batch seconds / batch size (ms per query), k=10",
        "recall_convention": f"|top-{K} & exact top-{K}| / {K}, mean over held-out queries",
        "results": rows,
    }
    atomic_write_json(args.out, result)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
