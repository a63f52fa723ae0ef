"""Retrieval recall@k and mAP on hand-built inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from clipadapt.retrieval_metrics import relevance_from_groups, retrieval_metrics


def test_known_answer_both_directions():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.3]])  # 2 texts x 3 images
    relevant = np.array([[False, True, True], [True, False, False]])
    m = retrieval_metrics(scores, relevant, ks=(1, 2, 5))
    # text 0 ranks images 0, 2, 1: first hit at rank 2, AP = (1/2 + 2/3) / 2
    # text 1 ranks images 1, 2, 0: first hit at rank 3, AP = 1/3
    assert m["image_retrieval_recall@1"] == 0
    assert m["image_retrieval_recall@2"] == 0.5
    assert m["image_retrieval_recall@5"] == 1
    assert m["image_retrieval_mAP"] == pytest.approx((7 / 12 + 1 / 3) / 2)
    # image 0 ranks texts 0, 1 (hit at 2); image 1: 1, 0 (hit at 2); image 2: 0, 1 (hit at 1)
    assert m["text_retrieval_recall@1"] == pytest.approx(1 / 3)
    assert m["text_retrieval_recall@2"] == 1
    assert m["text_retrieval_mAP"] == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)


def test_perfect_scores_give_one_everywhere():
    groups = np.array([0, 0, 1, 2, 2, 2])
    relevant = relevance_from_groups(np.arange(3), groups)
    m = retrieval_metrics(relevant.astype(float), relevant)
    assert all(v == 1 for v in m.values())


def test_map_equals_scikit_learn_average_precision_without_ties():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    scores = rng.standard_normal((7, 40))
    relevant = relevance_from_groups(np.arange(7) % 4, rng.integers(0, 4, 40))
    pairs = zip(scores, relevant, strict=True)
    expected = np.mean([average_precision_score(r, s) for s, r in pairs])
    assert retrieval_metrics(scores, relevant)["image_retrieval_mAP"] == pytest.approx(expected)


def test_ties_break_in_favour_of_the_lower_index():
    m = retrieval_metrics(np.full((2, 2), 0.5), np.eye(2, dtype=bool), ks=(1,))
    # every ranking is 0, 1: text 0 and image 0 find their match first, the others second
    assert m["image_retrieval_recall@1"] == 0.5 and m["text_retrieval_recall@1"] == 0.5
    assert m["image_retrieval_mAP"] == 0.75


@pytest.mark.parametrize(
    ("relevant", "match"),
    [
        (np.array([[True, True], [False, False]]), "text 1"),
        (np.array([[True, False], [True, False]]), "image 1"),
        (np.ones((3, 2), bool), "same"),
    ],
)
def test_bad_relations_are_refused(relevant, match):
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(np.zeros((2, 2)), relevant)
