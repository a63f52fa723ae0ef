"""Detectors: sign convention, equations, save/load, open-set prediction and calibration."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_methods import make_data, one_thread  # noqa: F401 (one_thread: autouse fixture)

from clipadapt.methods import FitData, create_method, load_method
from clipadapt.ood import (
    DETECTORS,
    OOD_LABEL,
    Detector,
    OpenSetClassifier,
    ScoreInput,
    calibrate_threshold,
    create_detector,
    detector_scores,
    label_names,
    load_detector,
)
from clipadapt.ood.metrics import auroc
from clipadapt.ood.neglabel import english_nouns, excluded_words

DIM = 32


def fake_text_encoder(anchors: dict[str, torch.Tensor]):
    """Known prompts map to ``anchors``; any other text to a fixed random direction."""

    def encode(texts: list[str]) -> torch.Tensor:
        rows = []
        for text in texts:
            if text in anchors:
                rows.append(anchors[text])
            else:
                seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
                rows.append(torch.randn(DIM, generator=torch.Generator().manual_seed(seed)))
        return F.normalize(torch.stack(rows), dim=-1)

    return encode


def word_file(tmp_path: Path, words: list[str]) -> str:
    path = tmp_path / "words.txt"
    path.write_text("\n".join(words))
    return str(path)


@pytest.fixture
def data() -> FitData:
    fit_data = make_data(num_classes=3, dim=DIM, shots=8, views=1)
    fit_data.logit_scale = 10.0  # at CLIP's 100, softmax saturates in 32 dimensions
    return fit_data


def patches(features: torch.Tensor, n: int = 4) -> torch.Tensor:
    """Patch features near the global ones (N, n, D)."""
    noise = 0.05 * torch.randn(len(features), n, features.shape[1], generator=gen(3))
    return F.normalize(features[:, None] + noise, dim=-1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fitted(name: str, data: FitData, tmp_path: Path, **hyperparameters) -> Detector:
    """``name`` fitted on ``data``; NegLabel with a vocabulary of 60 made-up words."""
    if name == "neglabel":
        hyperparameters.setdefault("vocabulary", word_file(tmp_path, [f"w{i}" for i in range(60)]))
    anchors = {
        f"a photo of a {c}.": e for c, e in zip(data.classnames, data.class_embeddings, strict=True)
    }
    detector = create_detector(name, **hyperparameters)
    return detector.fit(data, encode_texts=fake_text_encoder(anchors))


def inputs(method, features: torch.Tensor) -> dict:
    return {
        "features": features,
        "logits": method.predict_logits(features),
        "local_features": patches(features),
    }


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_ood_inputs_score_higher_for_every_detector(name: str, data: FitData, tmp_path: Path):
    method = create_method("zeroshot").fit(data)
    detector = fitted(name, data, tmp_path)
    known = data.val_features
    unknown = F.normalize(torch.randn(40, DIM, generator=gen(5)), dim=-1)
    id_scores = detector.score(**inputs(method, known))
    ood_scores = detector.score(**inputs(method, unknown))
    assert id_scores.shape == (len(known),) and id_scores.dtype == torch.float32
    assert auroc(id_scores, ood_scores) > 0.9, (id_scores.mean(), ood_scores.mean())


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_save_load_gives_identical_scores(name: str, data: FitData, tmp_path: Path):
    method = create_method("tip_adapter").fit(data)
    detector = fitted(name, data, tmp_path)
    queries = F.normalize(torch.randn(7, DIM, generator=gen(9)), dim=-1)
    detector.save(tmp_path / "det")
    loaded = load_detector(tmp_path / "det")
    assert type(loaded) is type(detector)
    assert loaded.get_params() == detector.get_params() and loaded.is_fitted
    torch.testing.assert_close(
        loaded.score(**inputs(method, queries)), detector.score(**inputs(method, queries))
    )


def neg_log_odds(probabilities: torch.Tensor) -> torch.Tensor:
    top = probabilities.amax(-1)
    return torch.log((1 - top) / top)


def test_logit_scores_follow_their_equations(data: FitData):
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.5, 0.5, 0.5]])
    scale = data.logit_scale
    torch.testing.assert_close(
        create_detector("msp").fit(data).score(None, logits), neg_log_odds(logits.softmax(-1))
    )
    mcm = create_detector("mcm", temperature=0.5).fit(data).score(None, logits)
    torch.testing.assert_close(mcm, neg_log_odds((logits / (scale * 0.5)).softmax(-1)))
    torch.testing.assert_close(
        create_detector("max_logit").fit(data).score(None, logits), torch.tensor([-2.0, -0.5])
    )
    energy = create_detector("energy", temperature=2.0).fit(data).score(None, logits)
    torch.testing.assert_close(energy, -2.0 * torch.logsumexp(logits / 2.0, dim=-1))
    with pytest.raises(ValueError, match="temperature"):
        create_detector("mcm", temperature=0.0)


def test_mcm_at_temperature_one_over_scale_is_msp(data: FitData):
    logits = torch.randn(5, 3, generator=gen(2))
    mcm = create_detector("mcm", temperature=1.0 / data.logit_scale).fit(data)
    torch.testing.assert_close(
        mcm.score(None, logits), create_detector("msp").fit(data).score(None, logits)
    )


def margin_logits(margins: torch.Tensor, classes: int = 4) -> torch.Tensor:
    """Logits ``[m, 0, ..., 0]``: MSP ``e^m / (e^m + C - 1)`` falls as the margin ``m`` does."""
    logits = torch.zeros(len(margins), classes)
    logits[:, 0] = margins
    return logits


@pytest.mark.parametrize("name", ["msp", "mcm"])
def test_softmax_scores_keep_ranking_inputs_with_huge_margins(name: str, data: FitData):
    """GDA's logits lead by hundreds: -MSP in float32 is exactly -1 for most inputs."""
    options = {"temperature": 1 / data.logit_scale} if name == "mcm" else {}
    detector = create_detector(name, **options).fit(data)
    id_margins = torch.linspace(40.0, 400.0, 50)
    ood_margins = torch.linspace(20.0, 120.0, 30)
    id_scores = detector.score(None, margin_logits(id_margins))
    ood_scores = detector.score(None, margin_logits(ood_margins))
    assert len(torch.unique(torch.cat([id_scores, ood_scores]))) == 80
    # the ranking exact arithmetic gives: MSP is increasing in the margin
    expected = auroc(-id_margins.double(), -ood_margins.double())
    assert auroc(id_scores, ood_scores) == pytest.approx(expected, abs=1e-12)
    saturated = -margin_logits(torch.cat([id_margins, ood_margins])).softmax(-1).amax(-1)
    assert (saturated == -1).sum() > 60  # what the float32 probability gave


def test_gl_mcm_and_neglabel_do_not_round_confident_inputs_to_one(data: FitData, tmp_path: Path):
    """Their scores add or average probabilities: kept as ``1 - p``, confident inputs stay
    ranked where ``p`` itself would round to 1 (margins above ~17; below ~100, ``1 - p`` is
    still a float32 number)."""
    gl = create_detector("gl_mcm", local_weight=0.0).fit(data)
    margins = torch.linspace(20.0, 90.0, 20)
    logits = margin_logits(margins, data.num_classes) * data.logit_scale
    local = F.normalize(torch.ones(20, 2, DIM), dim=-1)
    scores = gl.score(None, logits, local_features=local)
    assert bool((scores[1:] < scores[:-1]).all()) and bool((scores > 0).all())

    neglabel = fitted("neglabel", data, tmp_path, temperature=0.03)  # -S is exactly -1 here
    known = neglabel.state("known")
    confident = F.normalize(known[:1] + torch.linspace(0.0, 0.3, 20)[:, None] * known[1:2], dim=-1)
    scores = neglabel.score(confident)
    assert len(torch.unique(scores)) == 20 and bool((scores > 0).all())


def test_knn_is_the_distance_to_the_kth_support_feature():
    support = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    data = FitData(
        class_embeddings=torch.eye(2),
        logit_scale=10.0,
        classnames=["a", "b"],
        support_features=support,
        support_labels=torch.tensor([0, 1, 0]),
    )
    query = torch.tensor([[0.6, 0.8]])
    first = create_detector("knn", k=1).fit(data).score(query)
    second = create_detector("knn", k=2).fit(data).score(query)
    torch.testing.assert_close(first, torch.tensor([(0.6**2 + 0.2**2) ** 0.5]))  # to (0, 1)
    torch.testing.assert_close(second, torch.tensor([(0.4**2 + 0.8**2) ** 0.5]))  # to (1, 0)
    with pytest.raises(ValueError, match="only 3"):
        create_detector("knn", k=4).fit(data)


def test_mahalanobis_reuses_gda(data: FitData):
    detector = create_detector("mahalanobis").fit(data)
    gda = create_method("gda").fit(data)
    queries = data.val_features
    torch.testing.assert_close(detector.score(queries), gda.mahalanobis_distance(queries))


def test_detectors_say_what_they_need(data: FitData):
    method = create_method("zeroshot").fit(data)
    with pytest.raises(ValueError, match="needs logits"):
        create_detector("energy").fit(data).score(data.val_features)
    with pytest.raises(ValueError, match=r"needs local_features.*ViT"):
        gl = create_detector("gl_mcm").fit(data)
        detector_scores(method, gl, data.val_features)
    with pytest.raises(ValueError, match="encode_texts"):
        create_detector("neglabel").fit(data)
    with pytest.raises(RuntimeError, match="call fit"):
        create_detector("knn").score(data.val_features)
    with pytest.raises(ValueError, match=r"unknown OOD score 'nope'; known scores: .*mcm"):
        create_detector("nope")
    assert DETECTORS["gl_mcm"].uses == {ScoreInput.LOGITS, ScoreInput.LOCAL_FEATURES}


def test_neglabel_vocabulary_is_offline_and_mined_negatives_exclude_known_names(
    data: FitData, tmp_path: Path
):
    nouns = english_nouns()
    assert len(nouns) > 15000 and {"dog", "guitar", "house"} <= set(nouns)
    assert excluded_words(["Guitar", "hot dog"]) == {"guitar", "hot dog", "hot", "dog"}
    names = ["dog", "house", "hot dog"]
    data = make_data(num_classes=3, dim=DIM)
    data.classnames = names
    anchors = {f"a photo of a {c}.": e for c, e in zip(names, data.class_embeddings, strict=True)}
    # "puppy" is close to "dog" in text space, so it must not be mined either
    anchors["a photo of a puppy."] = data.class_embeddings[0]
    words = ["dog", "house", "hot", "puppy"] + [f"w{i}" for i in range(36)]
    detector = create_detector("neglabel", vocabulary=word_file(tmp_path, words), fraction=0.5)
    detector.fit(data, encode_texts=fake_text_encoder(anchors))
    mined = detector.info["negative_labels"]
    assert len(mined) == 18  # 50% of the 36 usable words ("dog", "house", "hot" excluded)
    assert not {"dog", "house", "hot", "puppy", "hot dog"} & set(mined)
    assert detector.info["vocabulary_size"] == 37


def test_open_set_classifier_rejects_unknowns_and_saves_its_threshold(
    data: FitData, tmp_path: Path
):
    method = create_method("gda").fit(data)
    detector = create_detector("mcm").fit(data)
    classifier = OpenSetClassifier.calibrate(method, detector, data.val_features, accept=0.95)
    val_scores = detector_scores(method, detector, data.val_features)
    assert classifier.threshold == calibrate_threshold(val_scores, 0.95)
    assert (val_scores <= classifier.threshold).float().mean() >= 0.95
    unknown = F.normalize(torch.randn(20, DIM, generator=gen(11)), dim=-1)
    predicted = classifier.predict(unknown)
    assert (predicted == OOD_LABEL).float().mean() >= 0.9
    known_predictions = classifier.predict(data.val_features)
    assert (known_predictions == data.val_labels).float().mean() >= 0.9
    assert label_names(torch.tensor([1, OOD_LABEL]), data.classnames) == ["class1", "unknown"]

    classifier.save(tmp_path / "model", extra_config={"backend": "lite"})
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["open_set"]["threshold"] == classifier.threshold
    assert config["open_set"]["detector"] == "mcm" and config["backend"] == "lite"
    loaded = OpenSetClassifier.load(tmp_path / "model")
    assert torch.equal(loaded.predict(unknown), predicted)
    assert loaded.threshold == classifier.threshold
    assert torch.equal(load_method(tmp_path / "model").predict(unknown), method.predict(unknown))
    method.save(tmp_path / "plain")
    with pytest.raises(ValueError, match="without an unknown threshold"):
        OpenSetClassifier.load(tmp_path / "plain")


def test_calibration_needs_a_validation_set(data: FitData):
    method = create_method("zeroshot").fit(data)
    with pytest.raises(ValueError, match="validation set"):
        OpenSetClassifier.calibrate(method, create_detector("msp").fit(data), torch.zeros(0, DIM))


def test_pseudo_open_learns_an_unknown_class(data: FitData):
    detector = create_detector("pseudo_open").fit(data)
    assert detector.state("weight").shape == (data.num_classes, DIM)
    assert detector.state("bias").shape == (data.num_classes + 1,)
    between = F.normalize(data.class_embeddings[0] + data.class_embeddings[1], dim=0)[None]
    assert detector.score(between) > detector.score(data.val_features).max()
    with pytest.raises(ValueError, match="two classes"):
        one_class = make_data(num_classes=1, dim=DIM)
        create_detector("pseudo_open").fit(one_class)


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_detectors_learn_nothing_from_the_validation_set(name: str, data: FitData, tmp_path):
    """Validation scores are out-of-sample, like test scores: the threshold calibrated on
    them carries no in-sample bias."""
    method = create_method("zeroshot").fit(data)
    queries = inputs(method, data.val_features)
    with_val = fitted(name, data, tmp_path).score(**queries)
    without = dataclasses.replace(data, val_features=None, val_labels=None)
    torch.testing.assert_close(fitted(name, without, tmp_path).score(**queries), with_val)


def test_held_out_scores_leave_each_support_image_and_its_views_out(data: FitData, tmp_path):
    held = create_detector("knn").held_out_scores(data)
    bank = torch.cat([data.support_features[None], data.support_views])  # (1+V, N, D)
    rank = torch.cat([torch.arange(8)] * 3)  # 8 support images per class, in class order
    for i in range(len(held)):
        others = bank[:, rank % 4 != rank[i] % 4].flatten(0, 1)
        nearest = (others - data.support_features[i]).norm(dim=-1).min()
        torch.testing.assert_close(held[i], nearest)
    assert bool((held > 0).all())  # in-sample, every image is at distance 0 from itself
    assert create_detector("msp").fit(data).held_out_scores(data) is None  # in-sample logits
    neglabel = fitted("neglabel", data, tmp_path)  # learns nothing from images
    torch.testing.assert_close(
        neglabel.held_out_scores(data), neglabel.score(data.support_features)
    )
    one_shot = make_data(num_classes=3, dim=DIM, shots=1)
    assert create_detector("pseudo_open").held_out_scores(one_shot) is None


def test_pooled_calibration_is_not_set_by_one_atypical_validation_image():
    """PACS near-OOD, seed 1: 16 validation scores, one (a guitar lying on rocks) at 4.95,
    far above the rest; "accept 95% of 16" accepts all 16, so that image is the threshold."""
    val = torch.cat([torch.linspace(-2.0, 2.0, 15), torch.tensor([4.95])])
    held_out = torch.linspace(-2.5, 2.5, 64)
    assert calibrate_threshold(val) == pytest.approx(4.95)
    pooled = calibrate_threshold(val, held_out=held_out)
    assert pooled < 2.5 and (torch.cat([val, held_out]) <= pooled).float().mean() >= 0.95
