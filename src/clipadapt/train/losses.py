"""Image-text training losses, each with its paper's equation.

Every loss is an ``nn.Module`` whose learnable temperature (and SigLIP's bias) are its own
parameters, so an optimiser given ``loss.parameters()`` trains them beside the towers. The
forward takes a batch of paired embeddings ``image`` and ``text`` (``B x D``; row ``i`` of
each is pair ``i``), L2-normalises them, so ``x_i . y_j`` below is a cosine similarity, and
returns a scalar. ``valid`` (``B`` booleans) marks real rows; padding rows are dropped before
anything is computed, so they are neither anchors nor negatives and receive no gradient.

Duplicate captions: CLIP, SigLIP, InfoLOOB and the distillation term follow their papers
and treat pair ``j != i`` as a negative even when its caption repeats caption ``i``; CWCL
(continuous weights) and the supervised loss (shared labels) count such pairs as positives.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CLIP_INIT_SCALE = 1 / 0.07
MAX_SCALE = 100.0


class LogitScale(nn.Module):
    """A learnable positive scale kept as its log, as CLIP does: ``s = exp(clamp(log s, 0,
    log max))``. The forward clamp keeps ``s`` in ``[1, max]`` whatever the parameter holds;
    a training loop should also call ``project_`` after each optimiser step, as CLIP and
    open_clip clip the parameter itself, so that it never drifts past the bound where the
    clamp's gradient is zero."""

    def __init__(self, init: float, max_value: float = MAX_SCALE) -> None:
        super().__init__()
        if not 1.0 <= init <= max_value:
            raise ValueError(f"logit scale init must lie in [1, {max_value}], got {init}")
        self.log_max = math.log(max_value)
        self.log_scale = nn.Parameter(torch.tensor(math.log(init)))

    def forward(self) -> Tensor:
        return self.log_scale.clamp(0.0, self.log_max).exp()

    @torch.no_grad()
    def project_(self) -> None:
        """Clamp the stored log scale into ``[0, log max]`` in place (after an optimiser step)."""
        self.log_scale.clamp_(0.0, self.log_max)


def _kept(valid: Tensor | None, *tensors: Tensor) -> tuple[Tensor, ...]:
    """The rows of each tensor that ``valid`` marks (all rows when ``valid`` is None)."""
    if valid is None:
        return tensors
    if valid.dtype != torch.bool or valid.shape != tensors[0].shape[:1]:
        raise ValueError(
            f"valid must be {tensors[0].shape[0]} booleans, got {valid.dtype} {tuple(valid.shape)}"
        )
    return tuple(t[valid] for t in tensors)


def _unit_pair(image: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
    """The paired ``B x D`` embeddings, each row L2-normalised."""
    if image.ndim != 2 or image.shape != text.shape:
        raise ValueError(
            f"image and text embeddings must both be B x D, got "
            f"{tuple(image.shape)} and {tuple(text.shape)}"
        )
    return F.normalize(image, dim=-1), F.normalize(text, dim=-1)


def _cosine(image: Tensor, text: Tensor) -> Tensor:
    """``B x B`` cosine similarities ``x_i . y_j`` of paired embeddings."""
    x, y = _unit_pair(image, text)
    return x @ y.T


def _weighted_nll(logits: Tensor, weights: Tensor) -> Tensor:
    """``-1/N sum_i (1 / sum_j w_ij) sum_j w_ij log softmax_j(logits_i)``: cross-entropy of
    each row's softmax against the row's weights normalised to sum to one."""
    log_p = logits.log_softmax(dim=-1)
    return (-(weights * log_p).sum(-1) / weights.sum(-1)).mean()


def _both_ways(logits: Tensor, weights: Tensor) -> Tensor:
    """Mean of the image->text (rows) and text->image (columns) weighted cross-entropies."""
    return (_weighted_nll(logits, weights) + _weighted_nll(logits.T, weights.T)) / 2


def _identity_like(logits: Tensor) -> Tensor:
    """The ``B x B`` identity in the logits' dtype and device: ``i`` is pair ``i``'s positive."""
    return torch.eye(len(logits), dtype=logits.dtype, device=logits.device)


class ClipLoss(nn.Module):
    """Symmetric InfoNCE of CLIP (Radford et al. 2021, "Learning Transferable Visual Models
    From Natural Language Supervision", Fig. 3):

    ``L = 1/2 [ -1/N sum_i log softmax_j(s x_i.y_j)_i  -  1/N sum_i log softmax_j(s x_j.y_i)_i ]``

    with ``s = exp(log s)`` learnable, initialised to ``1/0.07`` and clamped at 100.
    """

    name = "clip"

    def __init__(self, init_scale: float = CLIP_INIT_SCALE, max_scale: float = MAX_SCALE) -> None:
        super().__init__()
        self.scale = LogitScale(init_scale, max_scale)

    def forward(self, image: Tensor, text: Tensor, valid: Tensor | None = None) -> Tensor:
        image, text = _kept(valid, image, text)
        logits = self.scale() * _cosine(image, text)
        return _both_ways(logits, _identity_like(logits))


class SigLipLoss(nn.Module):
    """Pairwise sigmoid loss of SigLIP (Zhai et al. 2023, "Sigmoid Loss for Language Image
    Pre-Training", Sec. 3 and Algorithm 1):

    ``L = -1/|B| sum_i sum_j log sigmoid(z_ij (t x_i.y_j + b))``, ``z_ii = 1``, ``z_ij = -1``

    normalised by the batch size ``|B|`` (not the ``|B|^2`` pairs), as the paper and
    open_clip do. ``t = exp(t')`` with ``t'`` initialised to ``log 10`` and ``b`` to ``-10``
    (the paper's values), both learnable; ``t`` is clamped at 100 like CLIP's scale.
    """

    name = "siglip"

    def __init__(
        self, init_scale: float = 10.0, init_bias: float = -10.0, max_scale: float = MAX_SCALE
    ) -> None:
        super().__init__()
        self.scale = LogitScale(init_scale, max_scale)
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    def forward(self, image: Tensor, text: Tensor, valid: Tensor | None = None) -> Tensor:
        image, text = _kept(valid, image, text)
        logits = self.scale() * _cosine(image, text) + self.bias
        signs = 2 * _identity_like(logits) - 1
        return -F.logsigmoid(signs * logits).sum() / len(logits)


def hopfield_retrieve(state: Tensor, stored: Tensor, beta: float) -> Tensor:
    """CLOOB's modern-Hopfield retrieval: ``normalize(softmax(beta state stored^T) stored)``,
    each state pattern replaced by the L2-normalised softmax-weighted mean of the stored ones."""
    return F.normalize((beta * state @ stored.T).softmax(dim=-1) @ stored, dim=-1)


def _info_loob(anchors: Tensor, candidates: Tensor, inv_tau: Tensor) -> Tensor:
    """``1/N sum_i [ -k_ii + log sum_{j != i} exp(k_ij) ]`` with ``k = inv_tau anchors
    candidates^T``: the positive is left out of the denominator."""
    k = inv_tau * anchors @ candidates.T
    eye = torch.eye(len(k), dtype=torch.bool, device=k.device)
    negatives = k.masked_fill(eye, float("-inf")).logsumexp(dim=-1)
    return (negatives - k.diagonal()).mean()


class InfoLOOBLoss(nn.Module):
    """Symmetric InfoLOOB of CLOOB (Fürst et al. 2022, "CLOOB: Modern Hopfield Networks with
    InfoLOOB Outperform CLIP", and the ``infoLOOB_loss`` / ``cloob`` of ml-jku/cloob):

    ``L = tau [ 1/N sum_i -log( exp(x_i.y_i / tau) / sum_{j != i} exp(x_i.y_j / tau) )
              + 1/N sum_i -log( exp(x_i.y_i / tau) / sum_{j != i} exp(x_j.y_i / tau) ) ]``

    The leave-one-out bound excludes the positive from the denominator, so with a batch of
    one there is no negative and the loss is undefined (N >= 2 required). The factor ``tau``
    (the paper's equation has none) is the reference code's scaling; the two directions are
    summed, as there. ``1/tau`` is learnable, kept as its log, initialised to 14.3 (the code's
    default) and clamped to ``[1, 100]`` as the code does.

    ``hopfield_beta`` switches on CLOOB's retrieval (``hopfield_retrieve``, the code's default
    beta is 14.3): images are anchored as ``U_x = retrieve(x, X)`` against texts
    ``U_y = retrieve(y, X)``, texts as ``V_y = retrieve(y, Y)`` against ``V_x = retrieve(x, Y)``.
    """

    name = "infoloob"

    def __init__(
        self,
        init_inv_tau: float = 14.3,
        hopfield_beta: float | None = None,
        max_inv_tau: float = MAX_SCALE,
    ) -> None:
        super().__init__()
        self.inv_tau = LogitScale(init_inv_tau, max_inv_tau)
        self.hopfield_beta = hopfield_beta

    def forward(self, image: Tensor, text: Tensor, valid: Tensor | None = None) -> Tensor:
        image, text = _kept(valid, image, text)
        if len(image) < 2:
            raise ValueError("InfoLOOB needs at least 2 pairs: the positive is left out")
        x, y = _unit_pair(image, text)
        inv_tau = self.inv_tau()
        if self.hopfield_beta is None:
            image_side, text_side = (x, y), (y, x)
        else:
            beta = self.hopfield_beta
            image_side = (hopfield_retrieve(x, x, beta), hopfield_retrieve(y, x, beta))
            text_side = (hopfield_retrieve(y, y, beta), hopfield_retrieve(x, y, beta))
        return (_info_loob(*image_side, inv_tau) + _info_loob(*text_side, inv_tau)) / inv_tau


def cwcl_weights(frozen: Tensor) -> Tensor:
    """CWCL's intra-modal weights ``w_ij = (1 + cos(f_i, f_j)) / 2`` in ``[0, 1]`` from the
    frozen tower's embeddings ``f`` (no gradient flows into them)."""
    f = F.normalize(frozen.detach(), dim=-1)
    return (1 + f @ f.T) / 2


class CWCLLoss(nn.Module):
    """Continuously weighted contrastive loss (Srinivasa et al. 2023, "CWCL: Cross-Modal
    Transfer with Continuously Weighted Contrastive Loss", NeurIPS, Sec. 3). The paper
    trains a tower for modality U (embeddings p) against a frozen pre-trained one for V
    (embeddings q), and weights every pair by how alike the frozen tower finds the samples:

    ``L_{U->V} = -1/N sum_i (1 / sum_j w_ij) sum_j w_ij log softmax_j(s p_i.q_j)``,
    ``w_ij = (1 + cos(f_i, f_j)) / 2`` in ``[0, 1]``, ``w_ii = 1``

    with ``f`` the frozen tower's embeddings of the batch (``frozen``; pass the image
    embeddings themselves, detached, when the image tower is the frozen one, as in LiT).
    Returned is the mean of the image->text and text->image directions, both weighted by the
    frozen similarities (a constant factor from their sum). ``s`` as in ``ClipLoss``.
    """

    name = "cwcl"

    def __init__(self, init_scale: float = CLIP_INIT_SCALE, max_scale: float = MAX_SCALE) -> None:
        super().__init__()
        self.scale = LogitScale(init_scale, max_scale)

    def forward(
        self, image: Tensor, text: Tensor, frozen: Tensor, valid: Tensor | None = None
    ) -> Tensor:
        if len(frozen) != len(image):
            raise ValueError(f"frozen embeddings have {len(frozen)} rows, the batch {len(image)}")
        image, text, frozen = _kept(valid, image, text, frozen)
        logits = self.scale() * _cosine(image, text)
        return _both_ways(logits, cwcl_weights(frozen).to(logits.dtype))


class SupervisedContrastiveLoss(nn.Module):
    """Image-text contrastive loss where every pair sharing a class label is a positive, in
    the form of UniCL (Yang et al. 2022, "Unified Contrastive Learning in Image-Text-Label
    Space"), i.e. SupCon's ``L_out`` (Khosla et al. 2020): the log-probabilities
    are averaged over the positives ``P(i) = {j : label_j = label_i}`` outside the log,

    ``L_{i->t} = -1/N sum_i 1/|P(i)| sum_{k in P(i)} log softmax_j(s x_i.y_j)_k``

    and ``L = (L_{i->t} + L_{t->i}) / 2`` (mean, where UniCL sums; with all labels distinct
    this is exactly ``ClipLoss``). Duplicate captions given the same label become positives.
    """

    name = "supervised"

    def __init__(self, init_scale: float = CLIP_INIT_SCALE, max_scale: float = MAX_SCALE) -> None:
        super().__init__()
        self.scale = LogitScale(init_scale, max_scale)

    def forward(
        self, image: Tensor, text: Tensor, labels: Tensor, valid: Tensor | None = None
    ) -> Tensor:
        if labels.shape != image.shape[:1]:
            raise ValueError(f"labels must be {len(image)} values, got {tuple(labels.shape)}")
        image, text, labels = _kept(valid, image, text, labels)
        logits = self.scale() * _cosine(image, text)
        return _both_ways(logits, (labels[:, None] == labels[None, :]).to(logits.dtype))


class DistillLoss(nn.Module):
    """CLIP loss mixed with distillation from teachers' image-text similarities, as in
    MobileCLIP's multi-modal reinforced training (Vasu et al. 2024, "MobileCLIP: Fast
    Image-Text Models through Multi-Modal Reinforced Training", Sec. 3, and the
    ``DistillClipLoss`` of its open_clip patch):

    ``L = (1 - lambda) L_CLIP + lambda L_KD``,
    ``L_KD = 1/2 [ 1/N sum_i KL(P_i || softmax(S_i / tau))
                 + 1/N sum_i KL(P'_i || softmax(S^T_i / tau)) ]``

    ``S = s x_i.y_j`` are the student's logits (its learnable ``ClipLoss`` scale).
    ``teacher_logits`` are a teacher's image-by-text logits ``T`` (``B x B``, already scaled by
    the teacher's temperature; MobileCLIP uses 100) or a stack of K teachers (``K x B x B``);
    ``P = mean_k softmax(T_k / tau)`` row-wise (image->text) and ``P'`` the same over ``T_k^T``
    (text->image), an ensemble averaged after the softmax as MobileCLIP does. KL differs from
    the patch's cross-entropy ``-sum P log Q`` by the teachers' entropy, a constant: same
    gradients. ``tau`` is an extra distillation temperature (1 = none, as in MobileCLIP).
    ``lambda`` (``weight``) mixes the two terms: MobileCLIP's released DataCompDR runs use
    ``lambda = 1`` (``--distill-loss-weights 0.0 1.0``); the default 0.5 here is an even mix
    for fine-tuning on a user's own pairs, not the paper's value.
    """

    name = "distill"

    def __init__(
        self,
        weight: float = 0.5,
        tau: float = 1.0,
        init_scale: float = CLIP_INIT_SCALE,
        max_scale: float = MAX_SCALE,
    ) -> None:
        super().__init__()
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"distillation weight lambda must lie in [0, 1], got {weight}")
        if not tau > 0:
            raise ValueError(f"distillation temperature tau must be positive, got {tau}")
        self.weight = weight
        self.tau = tau
        self.scale = LogitScale(init_scale, max_scale)

    def forward(
        self, image: Tensor, text: Tensor, teacher_logits: Tensor, valid: Tensor | None = None
    ) -> Tensor:
        n = len(image)
        if teacher_logits.shape[-2:] != (n, n) or teacher_logits.ndim not in (2, 3):
            raise ValueError(
                f"teacher_logits must be {n} x {n} or K x {n} x {n}, got "
                f"{tuple(teacher_logits.shape)}"
            )
        teachers = teacher_logits.detach().reshape(-1, n, n)
        if valid is not None:
            teachers = teachers[:, valid][:, :, valid]
        image, text = _kept(valid, image, text)
        student = self.scale() * _cosine(image, text)
        teachers = teachers.to(student.dtype) / self.tau
        rows = teachers.softmax(dim=-1).mean(0)
        columns = teachers.transpose(1, 2).softmax(dim=-1).mean(0)
        distill = (_kl_rows(rows, student / self.tau) + _kl_rows(columns, student.T / self.tau)) / 2
        contrastive = _both_ways(student, _identity_like(student))
        return (1 - self.weight) * contrastive + self.weight * distill


def _kl_rows(target: Tensor, logits: Tensor) -> Tensor:
    """``1/N sum_i KL(target_i || softmax(logits_i))`` for rows of probabilities ``target``."""
    return (torch.xlogy(target, target) - target * logits.log_softmax(dim=-1)).sum(-1).mean()
