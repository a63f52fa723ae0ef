"""OOD and open-set metrics: agreement with scikit-learn and hand-made known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    auc,
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from clipadapt.ood.metrics import (
    OOD_LABEL,
    accept_threshold,
    aupr_in,
    aupr_out,
    auroc,
    closed_set_accuracy,
    fpr_at_tpr,
    h_score,
    metric_conventions,
    ood_metrics,
    oscr,
    reject,
)


def random_scores(seed: int, n_id: int = 137, n_ood: int = 91) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.normal(0.0, 1.0, n_id).round(1)  # rounding makes ties
    return ids, rng.normal(0.8, 1.3, n_ood).round(1)


@pytest.mark.parametrize("seed", range(5))
def test_auroc_and_aupr_agree_with_sklearn(seed: int) -> None:
    ids, oods = random_scores(seed)
    scores = np.r_[ids, oods]
    is_ood = np.r_[np.zeros(len(ids)), np.ones(len(oods))]
    assert auroc(ids, oods) == pytest.approx(roc_auc_score(is_ood, scores))
    assert aupr_out(ids, oods) == pytest.approx(average_precision_score(is_ood, scores))
    assert aupr_in(ids, oods) == pytest.approx(average_precision_score(1 - is_ood, -scores))
    assert set(ood_metrics(ids, oods)) == {"AUROC", "FPR95", "AUPR_IN", "AUPR_OUT"}


@pytest.mark.parametrize("seed", range(5))
def test_fpr95_matches_the_roc_curve_point_reaching_95_percent_tpr(seed: int) -> None:
    ids, oods = random_scores(seed)
    # ID positive, ranked by -score: the first ROC point with TPR >= 0.95
    fpr, tpr, _ = roc_curve(
        np.r_[np.ones(len(ids)), np.zeros(len(oods))], -np.r_[ids, oods], drop_intermediate=False
    )
    assert fpr_at_tpr(ids, oods) == pytest.approx(fpr[np.argmax(tpr >= 0.95)])


def test_metric_conventions_say_how_each_metric_is_computed() -> None:
    """Recompute every metric from what ``metric_conventions`` says; the other conventions
    (OOD-positive FPR95, trapezoidal AUPR) give other numbers on these scores."""
    ids, oods = random_scores(0)
    scores, is_ood = np.r_[ids, oods], np.r_[np.zeros(len(ids)), np.ones(len(oods))]
    conventions, values = metric_conventions(), ood_metrics(ids, oods)

    def labelled(metric: str) -> tuple[np.ndarray, np.ndarray]:
        entry = conventions[metric]
        positive = is_ood if entry["positive"] == "OOD" else 1 - is_ood
        return positive, {"score": scores, "-score": -scores}[entry["ranked_by"]]

    assert values["AUROC"] == pytest.approx(roc_auc_score(*labelled("AUROC")))
    for metric in ("AUPR_IN", "AUPR_OUT"):
        assert conventions[metric]["area"].startswith("average precision")
        assert values[metric] == pytest.approx(average_precision_score(*labelled(metric)))
        precision, recall, _ = precision_recall_curve(*labelled(metric))
        assert abs(values[metric] - auc(recall, precision)) > 1e-3  # trapezoids differ
    fpr, tpr, _ = roc_curve(*labelled("FPR95"), drop_intermediate=False)
    assert values["FPR95"] == pytest.approx(fpr[np.argmax(tpr >= conventions["FPR95"]["tpr"])])
    # what it reads: the share of OOD accepted at the threshold accepting 95% of ID
    assert values["FPR95"] == np.mean(oods <= np.sort(ids)[int(np.ceil(0.95 * len(ids))) - 1])
    fpr, tpr, _ = roc_curve(is_ood, scores, drop_intermediate=False)
    assert abs(values["FPR95"] - fpr[np.argmax(tpr >= 0.95)]) > 0.05  # OOD positive differs


def test_fpr95_known_answers() -> None:
    ids = np.arange(20.0)  # 95% of 20 = 19 accepted: the threshold is the 19th smallest, 18
    assert accept_threshold(ids) == 18.0
    assert fpr_at_tpr(ids, [17.5, 18.0, 18.5, 30.0]) == 0.5  # 17.5 and 18 (ties) are accepted
    assert fpr_at_tpr(ids, [18.5, 19.0, 100.0]) == 0.0  # perfectly separated
    assert fpr_at_tpr(ids, [-5.0, 0.0, 3.0]) == 1.0  # every OOD looks more ID than ID
    assert accept_threshold([3.0, 1.0, 2.0], accept=0.5) == 2.0  # ceil(1.5) = 2nd smallest
    assert accept_threshold(np.arange(100.0), accept=0.95) == 94.0  # exactly 95 accepted


def test_metrics_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        auroc([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        auroc([0.0, float("nan")], [1.0])
    with pytest.raises(ValueError, match="accept"):
        accept_threshold([1.0], accept=0.0)


def test_reject_and_h_score_by_hand() -> None:
    predictions = torch.tensor([0, 1, 1, 2])
    scores = torch.tensor([0.1, 0.9, 0.2, 0.5])
    assert reject(predictions, scores, 0.5).tolist() == [0, OOD_LABEL, 1, 2]
    # labels [0, 1, 2, 2]: item 0 right, 1 rejected, 2 the wrong class, 3 right
    known = reject(predictions, scores, 0.5)
    unknown = torch.tensor([OOD_LABEL, OOD_LABEL, 3])
    result = h_score(known, torch.tensor([0, 1, 2, 2]), unknown)
    assert result["acc_known"] == pytest.approx(0.5)
    assert result["acc_unknown"] == pytest.approx(2 / 3)
    assert result["H_score"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert h_score(torch.tensor([OOD_LABEL]), torch.tensor([0]), torch.tensor([1]))["H_score"] == 0
    assert closed_set_accuracy(torch.tensor([1, 2]), torch.tensor([1, 0])) == 0.5


def test_oscr_known_answers() -> None:
    ids, oods = random_scores(7)
    everything_right = np.ones(len(ids), dtype=bool)
    assert oscr(ids, everything_right, oods) == pytest.approx(auroc(ids, oods))
    assert oscr(ids, np.zeros(len(ids), dtype=bool), oods) == 0.0
    # ID [0 (right), 1 (wrong)], OOD [0.5]: CCR steps to 1/2 before any OOD is accepted
    assert oscr([0.0, 1.0], [True, False], [0.5]) == pytest.approx(0.5)
    # ID [1 (right)], OOD [0]: the OOD input is accepted first, area 0
    assert oscr([1.0], [True], [0.0]) == 0.0
    with pytest.raises(ValueError, match="one entry per ID score"):
        oscr([0.0, 1.0], [True], [0.5])
