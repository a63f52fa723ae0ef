"""Each training loss against its paper's equation: hand-computed answers on tiny batches and
explicit loops over pairs (written independently of the vectorised code), in float64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clipadapt.catalog import LOSS_CLASSES, check_loss
from clipadapt.train.losses import LogitScale, hopfield_retrieve
from clipadapt.train.registry import LOSSES, create_loss

N, D = 5, 4


def batch(seed: int = 0, n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g, dtype=torch.float64), torch.randn(
        n, D, generator=g, dtype=torch.float64
    )


def loss_of(name: str, **kw: float) -> torch.nn.Module:
    """The loss built with float64 parameters (exact initial temperatures, not float32's)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return create_loss(name, **kw)
    finally:
        torch.set_default_dtype(previous)


def cos(a: torch.Tensor, b: torch.Tensor) -> list[list[float]]:
    """Cosine similarities by explicit sums, as nested lists."""
    rows = []
    for u in a.tolist():
        row = []
        for v in b.tolist():
            dot = sum(p * q for p, q in zip(u, v, strict=True))
            row.append(dot / math.sqrt(sum(p * p for p in u) * sum(q * q for q in v)))
        rows.append(row)
    return rows


def log_softmax_at(row: list[float], k: int) -> float:
    return row[k] - math.log(sum(math.exp(v) for v in row))


def column(m: list[list[float]], j: int) -> list[float]:
    return [r[j] for r in m]


def weighted_both_ways(sim: list[list[float]], w: list[list[float]], s: float) -> float:
    """1/2 [ -1/N sum_i sum_j w_ij log p(i->j) / sum_j w_ij + the same over columns ]."""
    n = len(sim)
    total = 0.0
    for i in range(n):
        row = [s * v for v in sim[i]]
        col = [s * v for v in column(sim, i)]
        total -= sum(w[i][j] * log_softmax_at(row, j) for j in range(n)) / sum(w[i])
        total -= sum(w[j][i] * log_softmax_at(col, j) for j in range(n)) / sum(column(w, i))
    return total / (2 * n)


# CLIP -------------------------------------------------------------------------------------


def test_clip_on_orthonormal_pairs_is_log_one_plus_exp_minus_s() -> None:
    eye = torch.eye(2, dtype=torch.float64)
    loss = loss_of("clip", init_scale=10.0)(eye, eye)
    # each row's logits are [s, 0]: -log(e^s / (e^s + 1)) = log(1 + e^-s), in both directions
    assert loss.item() == pytest.approx(math.log1p(math.exp(-10.0)), rel=1e-12)


def test_clip_matches_an_explicit_loop_and_treats_duplicate_captions_as_negatives() -> None:
    image, text = batch()
    text[3] = text[1]  # a duplicate caption stays a negative for image 1's neighbours
    loss = loss_of("clip")(image, text)
    sim, s = cos(image, text), 1 / 0.07
    n = len(sim)
    expected = 0.0
    for i in range(n):
        expected -= log_softmax_at([s * v for v in sim[i]], i)
        expected -= log_softmax_at([s * v for v in column(sim, i)], i)
    assert loss.item() == pytest.approx(expected / (2 * n), rel=1e-12)


def test_logit_scale_is_clamped_at_100_and_projected_like_clip() -> None:
    scale = LogitScale(50.0)
    with torch.no_grad():
        scale.log_scale.fill_(math.log(1000.0))
    assert scale().item() == pytest.approx(100.0)
    scale.project_()
    assert scale.log_scale.item() == pytest.approx(math.log(100.0))
    assert LogitScale(1 / 0.07)().item() == pytest.approx(1 / 0.07)
    with pytest.raises(ValueError, match="init"):
        LogitScale(1000.0)


# SigLIP -----------------------------------------------------------------------------------


def test_siglip_at_its_paper_init_on_orthonormal_pairs() -> None:
    eye = torch.eye(2, dtype=torch.float64)
    loss = loss_of("siglip")(eye, eye)  # t = 10, b = -10
    # -1/|B| [2 log sig(t + b) + 2 log sig(-b)] = log 2 + log(1 + e^-10)
    assert loss.item() == pytest.approx(math.log(2) + math.log1p(math.exp(-10.0)), rel=1e-12)


def test_siglip_matches_an_explicit_loop_normalised_by_batch_size() -> None:
    image, text = batch(1)
    loss = loss_of("siglip", init_scale=3.0, init_bias=-1.5)(image, text)
    sim = cos(image, text)
    expected = 0.0
    for i in range(N):
        for j in range(N):
            z = 1.0 if i == j else -1.0
            expected += math.log(1 + math.exp(-z * (3.0 * sim[i][j] - 1.5)))
    assert loss.item() == pytest.approx(expected / N, rel=1e-12)


# InfoLOOB ---------------------------------------------------------------------------------


def infoloob_loop(x: list[list[float]], y: list[list[float]], inv_tau: float) -> float:
    """tau [1/N sum_i -log(e^{k_ii} / sum_{j!=i} e^{k_ij}) + the same with roles swapped]."""
    n = len(x)

    def one_way(a: list[list[float]], b: list[list[float]]) -> float:
        total = 0.0
        for i in range(n):
            k = [inv_tau * sum(p * q for p, q in zip(a[i], b[j], strict=True)) for j in range(n)]
            total += -k[i] + math.log(sum(math.exp(k[j]) for j in range(n) if j != i))
        return total / n

    return (one_way(x, y) + one_way(y, x)) / inv_tau


def test_infoloob_on_orthonormal_pairs_is_minus_two() -> None:
    eye = torch.eye(2, dtype=torch.float64)
    # each row: -inv_tau + log(e^0) over the one negative; times tau, two directions: -2
    assert loss_of("infoloob", init_inv_tau=30.0)(eye, eye).item() == pytest.approx(-2.0)


def test_infoloob_leaves_the_positive_out_of_the_denominator() -> None:
    image, text = batch(2)
    x, y = F.normalize(image, dim=-1).tolist(), F.normalize(text, dim=-1).tolist()
    loss = loss_of("infoloob")(image, text)
    assert loss.item() == pytest.approx(infoloob_loop(x, y, 14.3), rel=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        loss_of("infoloob")(image[:1], text[:1])


def test_cloob_hopfield_retrieval_matches_an_explicit_loop() -> None:
    image, text = batch(3)
    beta = 8.0

    def retrieve(state: torch.Tensor, stored: torch.Tensor) -> list[list[float]]:
        out = []
        for u in F.normalize(state, dim=-1).tolist():
            stored_rows = F.normalize(stored, dim=-1).tolist()
            e = [
                math.exp(beta * sum(p * q for p, q in zip(u, v, strict=True))) for v in stored_rows
            ]
            mix = [sum(e[k] * stored_rows[k][d] for k in range(N)) / sum(e) for d in range(D)]
            norm = math.sqrt(sum(m * m for m in mix))
            out.append([m / norm for m in mix])
        return out

    u_x, u_y = retrieve(image, image), retrieve(text, image)
    v_y, v_x = retrieve(text, text), retrieve(image, text)
    n = N
    expected = 0.0
    for anchors, candidates in ((u_x, u_y), (v_y, v_x)):
        for i in range(n):
            k = [
                14.3 * sum(p * q for p, q in zip(anchors[i], candidates[j], strict=True))
                for j in range(n)
            ]
            expected += (-k[i] + math.log(sum(math.exp(k[j]) for j in range(n) if j != i))) / n
    loss = loss_of("infoloob", hopfield_beta=beta)(image, text)
    assert loss.item() == pytest.approx(expected / 14.3, rel=1e-12)
    x = F.normalize(image, dim=-1)
    torch.testing.assert_close(hopfield_retrieve(x, x, beta).norm(dim=-1), torch.ones(N).double())


# CWCL -------------------------------------------------------------------------------------


def test_cwcl_with_identical_frozen_embeddings_weights_every_pair_fully() -> None:
    eye = torch.eye(2, dtype=torch.float64)
    frozen = torch.ones(2, 3, dtype=torch.float64)  # w_ij = (1 + 1) / 2 = 1 for all pairs
    s = 10.0
    loss = loss_of("cwcl", init_scale=s)(eye, eye, frozen)
    # row logits [s, 0]: -(1/2)[log p_ii + log p_ij] = log(1 + e^-s) + s / 2
    assert loss.item() == pytest.approx(math.log1p(math.exp(-s)) + s / 2, rel=1e-12)


def test_cwcl_matches_an_explicit_loop_with_cosine_weights() -> None:
    image, text = batch(4)
    frozen = batch(5)[0]
    f = cos(frozen, frozen)
    w = [[(1 + f[i][j]) / 2 for j in range(N)] for i in range(N)]
    loss = loss_of("cwcl")(image, text, frozen)
    assert loss.item() == pytest.approx(
        weighted_both_ways(cos(image, text), w, 1 / 0.07), rel=1e-12
    )


def test_cwcl_gives_no_gradient_to_the_frozen_embeddings() -> None:
    image, text = batch(6)
    frozen = batch(7)[0].requires_grad_()
    loss_of("cwcl")(image.requires_grad_(), text, frozen).backward()
    assert frozen.grad is None and image.grad is not None


# Supervised -------------------------------------------------------------------------------


def test_supervised_with_distinct_labels_is_the_clip_loss() -> None:
    image, text = batch(8)
    supervised = loss_of("supervised")(image, text, torch.arange(N))
    torch.testing.assert_close(supervised, loss_of("clip")(image, text), rtol=1e-12, atol=0)


def test_supervised_averages_over_positives_outside_the_log() -> None:
    image, text = batch(9)
    text[2] = text[0]  # a duplicate caption, given the same label: a positive, not a negative
    labels = torch.tensor([0, 1, 0, 1, 2])
    w = [[1.0 if labels[i] == labels[j] else 0.0 for j in range(N)] for i in range(N)]
    loss = loss_of("supervised")(image, text, labels)
    assert loss.item() == pytest.approx(
        weighted_both_ways(cos(image, text), w, 1 / 0.07), rel=1e-12
    )


def test_supervised_one_class_equals_cwcl_with_identical_frozen_embeddings() -> None:
    image, text = batch(10)
    one_class = loss_of("supervised")(image, text, torch.zeros(N, dtype=torch.long))
    same = loss_of("cwcl")(image, text, torch.ones(N, 2, dtype=torch.float64))
    torch.testing.assert_close(one_class, same, rtol=1e-12, atol=0)


# Distillation -----------------------------------------------------------------------------


def test_distill_is_kl_to_the_teacher_mixed_with_clip() -> None:
    image, text = batch(11)
    teacher = 20 * torch.tensor(cos(*batch(12)), dtype=torch.float64)
    lam, tau, s = 0.3, 2.0, 1 / 0.07
    loss = loss_of("distill", weight=lam, tau=tau)(image, text, teacher)
    sim = cos(image, text)

    def kl(p_logits: list[float], q_logits: list[float]) -> float:
        zp = sum(math.exp(v / tau) for v in p_logits)
        zq = sum(math.exp(v / tau) for v in q_logits)
        return sum(
            math.exp(a / tau)
            / zp
            * (math.log(math.exp(a / tau) / zp) - math.log(math.exp(b / tau) / zq))
            for a, b in zip(p_logits, q_logits, strict=True)
        )

    t = teacher.tolist()
    distill = 0.0
    for i in range(N):
        distill += kl(t[i], [s * v for v in sim[i]])
        distill += kl(column(t, i), [s * v for v in column(sim, i)])
    clip = loss_of("clip")(image, text).item()
    assert loss.item() == pytest.approx((1 - lam) * clip + lam * distill / (2 * N), rel=1e-12)


def test_distill_from_two_teachers_averages_their_softmaxes() -> None:
    image, text = batch(18)
    teachers = torch.stack(
        [100 * torch.tensor(cos(*batch(k)), dtype=torch.float64) for k in (19, 20)]
    )
    loss = loss_of("distill", weight=1.0)(image, text, teachers)
    student = [[v / 0.07 for v in row] for row in cos(image, text)]
    t = [m.tolist() for m in teachers]

    def softmax(row: list[float]) -> list[float]:
        z = sum(math.exp(v - max(row)) for v in row)
        return [math.exp(v - max(row)) / z for v in row]

    expected = 0.0
    for i in range(N):
        for rows, s_row in (
            ([m[i] for m in t], student[i]),
            ([column(m, i) for m in t], column(student, i)),
        ):
            p = [sum(vals) / 2 for vals in zip(*(softmax(r) for r in rows), strict=True)]
            q = softmax(s_row)
            expected += sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))
    assert loss.item() == pytest.approx(expected / (2 * N), rel=1e-10)


def test_distill_from_a_teacher_equal_to_the_student_is_the_weighted_clip_loss() -> None:
    image, text = batch(13)
    teacher = (1 / 0.07) * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    loss = loss_of("distill", weight=0.4)(image, text, teacher)
    torch.testing.assert_close(loss, 0.6 * loss_of("clip")(image, text), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="lambda"):
        create_loss("distill", weight=1.5)


# Shared behaviour -------------------------------------------------------------------------


def extras(name: str, n: int = N) -> dict[str, torch.Tensor]:
    """The extra inputs a loss needs, for a batch of ``n``."""
    g = torch.Generator().manual_seed(99)
    return {
        "cwcl": {"frozen": torch.randn(n, 3, generator=g, dtype=torch.float64)},
        "supervised": {"labels": torch.tensor([0, 1, 0, 2, 1, 3, 2][:n])},
        "distill": {"teacher_logits": torch.randn(n, n, generator=g, dtype=torch.float64)},
    }.get(name, {})


@pytest.mark.parametrize("name", list(LOSS_CLASSES))
def test_padding_rows_are_dropped_and_get_no_gradient(name: str) -> None:
    image, text = batch(14, n=7)
    image[5:] = text[5:] = 1e6  # padding: huge values that would dominate if used
    valid = torch.tensor([True] * 5 + [False] * 2)
    image.requires_grad_()
    loss = loss_of(name)
    more = extras(name, 7)
    padded = loss(image, text, valid=valid, **more)
    kept = {k: (v[:5, :5] if k == "teacher_logits" else v[:5]) for k, v in more.items()}
    torch.testing.assert_close(padded, loss(image[:5], text[:5], **kept), rtol=1e-12, atol=0)
    padded.backward()
    assert torch.all(image.grad[5:] == 0) and torch.any(image.grad[:5] != 0)


@pytest.mark.parametrize("name", list(LOSS_CLASSES))
def test_gradients_are_finite_and_reach_the_temperature(name: str) -> None:
    image, text = (t.requires_grad_() for t in batch(15))
    loss = loss_of(name)
    loss(image, text, **extras(name)).backward()
    assert torch.isfinite(image.grad).all() and torch.isfinite(text.grad).all()
    for pname, p in loss.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad != 0, pname


def test_float32_tower_outputs_train_the_float32_temperature() -> None:
    image, text = (t.float().requires_grad_() for t in batch(16))
    loss = create_loss("siglip")
    value = loss(image, text)
    value.backward()
    assert value.dtype == torch.float32 and loss.scale.log_scale.grad is not None


def test_mismatched_inputs_fail_with_a_one_line_message() -> None:
    image, text = batch(17)
    with pytest.raises(ValueError, match="B x D"):
        loss_of("clip")(image, text[:3])
    with pytest.raises(ValueError, match="labels"):
        loss_of("supervised")(image, text, torch.arange(3))
    with pytest.raises(ValueError, match="teacher_logits"):
        loss_of("distill")(image, text, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="valid"):
        loss_of("clip")(image, text, valid=torch.ones(N))


def test_registry_names_its_classes_and_rejects_unknown_names() -> None:
    assert list(LOSSES) == list(LOSS_CLASSES)
    assert all(cls.name == name for name, cls in LOSSES.items())
    with pytest.raises(ValueError, match="known losses: clip, cwcl, distill"):
        check_loss("nope")
