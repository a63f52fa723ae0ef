"""Each method against its paper's equations on small cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from test_methods import make_data, one_thread  # noqa: F401 (one_thread: autouse fixture)

from clipadapt.methods import FitData, create_method


def test_zero_shot_is_scaled_cosine() -> None:
    data = make_data()
    logits = create_method("zeroshot").fit(data).predict_logits(data.val_features)
    expected = 100.0 * F.cosine_similarity(
        data.val_features[:, None], data.class_embeddings[None], dim=-1
    )
    torch.testing.assert_close(logits, expected)


def test_ncm_picks_the_nearest_class_mean_including_views() -> None:
    support = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    views = torch.tensor([[[0.6, 0.8], [0.0, 1.0], [0.0, 1.0]]])
    data = FitData(
        class_embeddings=torch.tensor([[0.0, 1.0], [1.0, 0.0]]),  # swapped: NCM must ignore it
        logit_scale=10.0,
        classnames=["a", "b"],
        support_features=support,
        support_labels=torch.tensor([0, 1, 1]),
        support_views=views,
    )
    method = create_method("ncm").fit(data)
    mean0 = F.normalize(torch.tensor([0.8, 0.4]), dim=0)  # mean of [1, 0] and its view [.6, .8]
    torch.testing.assert_close(
        method.state("prototypes"), torch.stack([mean0, torch.tensor([0.0, 1.0])])
    )
    queries = F.normalize(torch.tensor([[1.0, 0.2], [0.1, 1.0], [0.9, 0.5]]), dim=-1)
    assert method.predict(queries).tolist() == [0, 1, 0]
    torch.testing.assert_close(
        method.predict_logits(queries), 10.0 * queries @ method.state("prototypes").T
    )


def test_linear_probe_separates_separable_data() -> None:
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(60, 8, generator=g), dim=-1)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long() * 2  # four quadrant classes
    data = FitData(
        class_embeddings=F.normalize(torch.randn(4, 8, generator=g), dim=-1),
        logit_scale=100.0,
        classnames=list("abcd"),
        support_features=x[:40],
        support_labels=y[:40],
        val_features=x[40:],
        val_labels=y[40:],
    )
    method = create_method("linear_probe").fit(data)
    assert torch.equal(method.predict(x[:40]), y[:40])
    assert method.selected["c"]["value"] in method.selected["c"]["grid"]
    assert method.state("weight").shape == (4, 8) and method.state("bias").shape == (4,)


def test_lp_zs_with_a_huge_penalty_stays_at_zero_shot() -> None:
    data = make_data()
    data.logit_scale = 5.0  # unsaturated softmax: the cross-entropy pulls W away from T
    zero_shot = create_method("zeroshot").fit(data).predict_logits(data.val_features)
    anchored = create_method("lp_zs", penalty=1e9).fit(data)
    torch.testing.assert_close(anchored.state("weight"), data.class_embeddings)
    torch.testing.assert_close(anchored.predict_logits(data.val_features), zero_shot)
    loose = create_method("lp_zs", penalty=1.0).fit(data)
    assert (loose.state("weight") - data.class_embeddings).abs().max() > 1e-2


def test_lp_zs_with_a_small_penalty_learns_from_the_support() -> None:
    data = make_data(text="random")
    method = create_method("lp_zs", penalty=0.1).fit(data)
    assert torch.equal(method.predict(data.val_features), data.val_labels)


def test_clip_adapter_with_ratio_zero_is_zero_shot() -> None:
    data = make_data()
    method = create_method("clip_adapter", ratio=0.0, epochs=3).fit(data)
    zero_shot = create_method("zeroshot").fit(data)
    torch.testing.assert_close(
        method.predict_logits(data.val_features), zero_shot.predict_logits(data.val_features)
    )


def test_clip_adapter_applies_the_residual_mlp() -> None:
    data = make_data(text="random")
    method = create_method("clip_adapter", ratio=0.6, epochs=30, lr=1e-2).fit(data)
    f = data.val_features
    down, up = method.state("down"), method.state("up")
    assert down.shape == (8, 32) and up.shape == (32, 8)  # reduction 4, no biases
    adapted = F.normalize(0.6 * F.relu(F.relu(f @ down.T) @ up.T) + 0.4 * f, dim=-1)
    torch.testing.assert_close(method.predict_logits(f), 100.0 * adapted @ data.class_embeddings.T)
    accuracy = (method.predict(f) == data.val_labels).float().mean()
    assert accuracy > 0.9  # learns the classes although the text embeddings are random


def three_sample_cache() -> FitData:
    s = 1 / math.sqrt(2)
    return FitData(
        class_embeddings=torch.tensor([[1.0, 0.0, 0.0], [0.0, s, s]]),
        logit_scale=10.0,
        classnames=["a", "b"],
        support_features=torch.eye(3),
        support_labels=torch.tensor([0, 1, 1]),
    )


def test_tip_adapter_matches_the_paper_formula_on_a_three_sample_cache() -> None:
    method = create_method("tip_adapter", alpha=0.5, beta=2.0)
    method.fit(three_sample_cache())
    f = torch.tensor([[0.6, 0.8, 0.0]])
    # affinities to the keys e1, e2, e3 are 0.6, 0.8, 0.0; A = exp(-beta (1 - a))
    cache = [math.exp(-2.0 * 0.4), math.exp(-2.0 * 0.2) + math.exp(-2.0 * 1.0)]
    zero_shot = [10.0 * 0.6, 10.0 * 0.8 / math.sqrt(2)]
    expected = torch.tensor([[zero_shot[k] + 0.5 * cache[k] for k in range(2)]])
    torch.testing.assert_close(method.predict_logits(f), expected)


def test_tip_adapter_keys_average_the_views() -> None:
    data = three_sample_cache()
    data.support_views = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    keys = create_method("tip_adapter").fit(data).state("keys")
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(keys, torch.tensor([[s, s, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))


def test_tip_adapter_f_trains_the_keys_and_keeps_the_formula() -> None:
    data = make_data(text="random")  # zero-shot errs, so the cross-entropy has gradients
    fixed = create_method("tip_adapter").fit(data)
    tuned = create_method("tip_adapter_f").fit(data)
    keys = tuned.state("keys")
    assert not torch.allclose(keys, fixed.state("keys"))
    assert (keys - fixed.state("keys")).norm() < 0.5 * keys.norm()  # fine-tuned, not replaced
    f = data.val_features
    alpha, beta = tuned.selected["alpha"]["value"], tuned.selected["beta"]["value"]
    values = F.one_hot(data.support_labels, data.num_classes).float()
    expected = (
        100.0 * f @ data.class_embeddings.T + alpha * torch.exp(-beta * (1 - f @ keys.T)) @ values
    )
    torch.testing.assert_close(tuned.predict_logits(f), expected)


def test_gda_weights_and_bias_follow_the_paper() -> None:
    support = torch.tensor(
        [[2.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 1.0, 2.0], [0.0, 3.0, 0.0], [0.0, 2.0, 1.0]]
    )
    labels = torch.tensor([0, 0, 1, 1, 1])
    data = FitData(
        class_embeddings=torch.eye(2, 3),
        logit_scale=100.0,
        classnames=["a", "b"],
        support_features=support,
        support_labels=labels,
    )
    method = create_method("gda").fit(data)
    x, y = support.double().numpy(), labels.numpy()
    mu = np.stack([x[y == k].mean(0) for k in range(2)])
    xc = x - mu[y]
    cov = xc.T @ xc / (len(x) - 1)
    precision = 3 * np.linalg.inv((len(x) - 1) * cov + np.trace(cov) * np.eye(3))
    weight = mu @ precision
    bias = np.log(1 / 2) - 0.5 * np.einsum("kd,de,ke->k", mu, precision, mu)
    expected = {"means": mu, "weight": weight, "bias": bias}
    for key, value in expected.items():
        torch.testing.assert_close(method.state(key), torch.tensor(value, dtype=torch.float32))
    torch.testing.assert_close(method.precision(), torch.tensor(precision, dtype=torch.float32))
    f = torch.tensor([[0.5, 0.5, 0.5]])
    q = f.double().numpy()[0]
    nearest = min((q - m) @ precision @ (q - m) for m in mu)
    torch.testing.assert_close(method.mahalanobis_distance(f), torch.tensor([nearest]).float())
    alpha = method.selected["alpha"]["value"]
    torch.testing.assert_close(
        method.predict_logits(f),
        100.0 * f @ data.class_embeddings.T
        + alpha * (f @ method.state("weight").T + method.state("bias")),
    )


def test_gda_recovers_the_bayes_optimal_classifier() -> None:
    """Two well-separated Gaussians with a shared anisotropic covariance: GDA (zero-shot term
    switched off by zero text embeddings) agrees with the Bayes rule."""
    g = torch.Generator().manual_seed(0)
    dim, n = 4, 500
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
    cov = rotation @ torch.diag(torch.tensor([0.5, 1.0, 2.0, 1.0])) @ rotation.T
    chol = torch.linalg.cholesky(cov)
    means = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, 1.0, 0.0, -1.0]])

    def sample(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(2).repeat_interleave(per_class)
        return means[y] + torch.randn(len(y), dim, generator=g) @ chol.T, y

    xs, ys = sample(n)
    data = FitData(
        class_embeddings=torch.zeros(2, dim),
        logit_scale=1.0,
        classnames=["a", "b"],
        support_features=xs,
        support_labels=ys,
    )
    method = create_method("gda", alpha=1.0).fit(data)
    xt, _ = sample(2000)
    precision = torch.linalg.inv(cov)
    bayes = ((xt @ precision @ means.T) - 0.5 * ((means @ precision) * means).sum(-1)).argmax(-1)
    agreement = (method.predict(xt) == bayes).float().mean()
    assert agreement > 0.97


def test_gda_with_one_example_per_class_falls_back_to_the_identity() -> None:
    data = three_sample_cache()
    data.support_features = torch.eye(3)[:2]
    data.support_labels = torch.tensor([0, 1])
    method = create_method("gda").fit(data)
    torch.testing.assert_close(method.precision(), torch.eye(3))
    assert method.selected["precision"]["value"] == "identity"
