"""Image-text retrieval metrics with CLIP_benchmark's names, in pure numpy.

Directions, as CLIP_benchmark names them: ``image_retrieval`` = text queries ranking images
(text -> image); ``text_retrieval`` = image queries ranking texts (image -> text).

- ``*_recall@k``: the share of queries with at least one relevant item among their top ``k``
  (CLIP_benchmark's and the CLIP papers' convention, not the share of relevant items found).
- ``*_mAP``: the mean over queries of average precision over *all* relevant items of the
  query in the full ranking: AP = (1/R) sum over relevant items of (relevant items up to
  its rank) / its rank.

Rankings sort by score, best first; equal scores keep item order (a stable sort), so a tie
is broken in favour of the lower index.
"""

from __future__ import annotations

import numpy as np

RECALL_KS = (1, 5, 10)
CHUNK = 1024  # queries ranked at once
CONVENTIONS = {
    "image_retrieval": "text queries rank the images (text -> image)",
    "text_retrieval": "image queries rank the texts (image -> text)",
    "recall@k": "share of queries with at least one relevant item in their top k",
    "mAP": "mean over queries of average precision over all relevant items (full ranking)",
    "ties": "equal scores keep item order (stable sort)",
}


def retrieval_metrics(
    scores: np.ndarray, relevant: np.ndarray, ks: tuple[int, ...] = RECALL_KS
) -> dict[str, float]:
    """Both directions' recall@k and mAP for ``scores`` (n_texts, n_images), higher = more
    similar, and the boolean relation ``relevant`` of the same shape (``relevant[t, i]``: image
    ``i`` answers text ``t``). Every text needs a relevant image and every image a relevant
    text."""
    scores = np.asarray(scores, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    if scores.ndim != 2 or scores.shape != relevant.shape:
        raise ValueError(
            f"scores {scores.shape} and relevant {relevant.shape} must be the same (texts, images)"
        )
    for axis, (query, item) in enumerate((("image", "text"), ("text", "image"))):
        lacking = np.flatnonzero(~relevant.any(axis=axis))
        if len(lacking):
            raise ValueError(
                f"{len(lacking)} {query}(s) have no relevant {item} (first: {query} "
                f"{lacking[0]}); every {query} must answer at least one {item}"
            )
    metrics: dict[str, float] = {}
    for direction, (s, r) in (
        ("image_retrieval", (scores, relevant)),
        ("text_retrieval", (scores.T, relevant.T)),
    ):
        first, ap = _rank_relevant(s, r)
        for k in ks:
            metrics[f"{direction}_recall@{k}"] = float((first < k).mean())
        metrics[f"{direction}_mAP"] = float(ap.mean())
    return metrics


def _rank_relevant(scores: np.ndarray, relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query: the 0-based rank of its best-ranked relevant item, and its average precision."""
    first = np.empty(len(scores), np.int64)
    ap = np.empty(len(scores), np.float64)
    positions = np.arange(1, scores.shape[1] + 1)
    for start in range(0, len(scores), CHUNK):
        rows = slice(start, start + CHUNK)
        order = np.argsort(-scores[rows], axis=1, kind="stable")
        hits = np.take_along_axis(relevant[rows], order, axis=1)
        first[rows] = hits.argmax(axis=1)
        precision = np.cumsum(hits, axis=1) / positions
        ap[rows] = (precision * hits).sum(axis=1) / hits.sum(axis=1)
    return first, ap


def relevance_from_groups(text_groups: np.ndarray, image_groups: np.ndarray) -> np.ndarray:
    """``relevant[t, i]`` when text ``t`` and image ``i`` share a group id (e.g. the same
    domain and class)."""
    return np.asarray(text_groups)[:, None] == np.asarray(image_groups)[None, :]
