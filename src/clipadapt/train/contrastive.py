"""Contrastive fine-tuning of a backend's towers on image-text pairs.

``finetune_pairs(backend, pairs, options)`` trains a copy of ``backend`` (the original stays
untouched and serves as the frozen reference) with one of the losses of
:mod:`clipadapt.train.losses`, through the shared checkpointed loop of
:mod:`clipadapt.train.loop` (resume, ``torchrun``):

* a locked tower is never run while training: with the image tower locked (LiT) the image
  features come from the feature cache, computed once (``image_path="reencode"`` runs it at
  every step instead, for augmented views); with the text tower locked every distinct
  caption is embedded once. A trained text tower embeds each distinct caption of a
  batch once (class-template captions repeat).
* ``cwcl`` weights pairs by the similarities of the locked tower's embeddings (the original
  image features when both towers train); ``supervised`` needs class-labelled pairs;
  ``distill`` distils the original model's image-text logits (MobileCLIP-style, with the
  original model as the teacher).
* ``retention > 0`` adds the forgetting regulariser of :mod:`clipadapt.train.retention` on
  the batch's images, times ``retention``.
* ``accumulate = k`` splits every batch into k chunks as open_clip's ``--accum-freq`` does:
  embeddings of the whole batch are first computed without gradients, then each chunk is
  re-embedded with gradients and the loss over the whole batch back-propagated through it,
  so the gradient equals the full batch's at the memory of one chunk.
* under ``torchrun`` each rank's share of a batch is its own contrastive batch (its pairs'
  negatives are its own pairs: no feature gather).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from clipadapt.data.pairs import PairDataset
from clipadapt.feature_cache import FeatureCache
from clipadapt.features import extract_features, load_pixels
from clipadapt.models.base import Backend
from clipadapt.models.finetuned import set_logit_scale
from clipadapt.models.towers import tuned_copy
from clipadapt.train.loop import TrainLog, autocast_loss, run_key, train_epochs
from clipadapt.train.options import FinetuneOptions
from clipadapt.train.registry import create_loss
from clipadapt.train.retention import reference_vocabulary, retention_kl
from clipadapt.train.tuning import plan_training
from clipadapt.views import CENTER, augmented_view_name, view_transform

SCALE_INIT = {"clip": "init_scale", "cwcl": "init_scale", "supervised": "init_scale"}
SCALE_INIT |= {"distill": "init_scale", "infoloob": "init_inv_tau"}


@dataclass
class FinetuneResult:
    """The tuned backend, the towers changed, the training log and a JSON-able record."""

    backend: Backend
    towers: tuple[str, ...]
    log: TrainLog
    record: dict[str, Any] = field(default_factory=dict)


class BatchMemoryError(MemoryError, ValueError):
    """A batch does not fit in memory; the message says what to change (a ValueError too,
    so that the CLI prints it as a one-line error)."""


def finetune_pairs(
    backend: Backend,
    pairs: PairDataset,
    options: FinetuneOptions,
    *,
    cache: FeatureCache | None = None,
    checkpoint: Path | None = None,
    reference_texts: list[str] | None = None,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune a copy of ``backend`` on ``pairs`` (see the module docstring)."""
    if len(pairs) < 2:
        raise ValueError(f"{pairs.name}: contrastive fine-tuning needs at least 2 pairs")
    if options.loss == "supervised" and not pairs.classnames:
        raise ValueError(
            f"{pairs.name}: loss 'supervised' needs class-labelled pairs (class folders or a "
            "label column); use --loss clip for captions without classes"
        )
    scale = float(backend.logit_scale)  # for lite, builds the text tower and its alignment
    reference = _Reference(backend, pairs, options, cache, reference_texts, progress)
    tuned = tuned_copy(backend, options.towers)
    plan = plan_training(
        tuned, options.train, options.towers, lora_rank=options.lora_rank, seed=options.seed
    )
    loss_fn = _create_loss(options.loss, scale)
    embed = _Embedder(tuned, pairs, options, reference)
    batch_loss = _batch_loss(embed, loss_fn, reference, options, pairs)
    params = [*plan.params, *loss_fn.parameters()]
    key = run_key(
        options=asdict(options),
        base=backend.fingerprint,
        pairs=[(str(p.path), p.caption, p.label) for p in pairs.pairs],
    )
    bar = tqdm(
        total=options.epochs * len(pairs), desc="fine-tuning", unit="pair", disable=not progress
    )

    def on_step(rows: int, value: float) -> None:
        bar.update(rows)
        bar.set_postfix(loss=f"{value:.4f}", refresh=False)

    started = time.perf_counter()
    try:
        log = train_epochs(
            params,
            autocast_loss(batch_loss, backend.device, options.precision),
            len(pairs),
            epochs=options.epochs,
            batch_size=options.batch_size,
            lr=options.lr,
            weight_decay=options.weight_decay,
            seed=options.seed,
            checkpoint=checkpoint,
            key=key,
            on_step=on_step,
            fused=True,
            after_step=lambda: [m.project_() for m in loss_fn.modules() if hasattr(m, "project_")],
        )
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if not _is_out_of_memory(err):
            raise
        raise BatchMemoryError(
            f"a batch of {options.batch_size} pairs does not fit in memory while training the "
            f"{'/'.join(plan.towers)} tower(s) ({options.train}); lower --batch-size or raise "
            f"--accumulate (now {options.accumulate}) to split each batch into chunks"
        ) from None
    finally:
        bar.close()
    plan.finish()
    tuned.__dict__.pop("_image_fp", None)
    tuned.__dict__.pop("_text_fp", None)
    learned = _learned_scale(loss_fn)
    set_logit_scale(tuned, learned)
    record = {
        **asdict(options),
        "towers": list(options.towers),
        "pairs": len(pairs),
        "images": len(pairs.images),
        "data": str(pairs.root),
        "logit_scale": {"before": scale, "after": learned},
        "epoch_seconds": log.seconds,
        "final_loss": log.losses[-1] if log.losses else None,
        "seconds": time.perf_counter() - started,
    }
    return FinetuneResult(tuned, plan.towers, log, record)


def _create_loss(name: str, scale: float) -> torch.nn.Module:
    init = {SCALE_INIT[name]: min(max(scale, 1.0), 100.0)} if name in SCALE_INIT else {}
    return create_loss(name, **init)


def _learned_scale(loss_fn: torch.nn.Module) -> float:
    module = getattr(loss_fn, "scale", None) or loss_fn.inv_tau
    return float(module().detach())


def _is_out_of_memory(err: BaseException) -> bool:
    text = str(err).lower()
    return (
        isinstance(err, torch.OutOfMemoryError)
        or "can't allocate memory" in text
        or ("out of memory" in text)
    )


class _Reference:
    """What the original (frozen) model contributes, computed once before training: its
    image features (when the image tower is locked, or for cwcl / distill / retention), its
    caption embeddings (text tower locked, cwcl, distill) and the reference vocabulary."""

    def __init__(
        self,
        backend: Backend,
        pairs: PairDataset,
        options: FinetuneOptions,
        cache: FeatureCache | None,
        reference_texts: list[str] | None,
        progress: bool,
    ) -> None:
        self.scale = float(backend.logit_scale)
        image_locked = "image" not in options.towers and options.image_path == "cached"
        text_locked = "text" not in options.towers
        self.image: torch.Tensor | None = None
        if image_locked or options.loss in ("cwcl", "distill") or options.retention > 0:
            paths = [str(p) for p in pairs.images]
            self.image = extract_features(backend, paths, cache=cache, progress=progress).features
        self.captions = sorted(set(pairs.captions))
        self.caption_index = {c: i for i, c in enumerate(self.captions)}
        self.text: torch.Tensor | None = None
        if text_locked or options.loss in ("cwcl", "distill"):
            self.text = backend.encode_texts(self.captions).clone()  # usable under autograd
        self.vocabulary: torch.Tensor | None = None
        if options.retention > 0 and not image_locked:
            self.vocabulary = reference_vocabulary(backend, reference_texts)


class _Embedder:
    """Image and text embeddings (normalised) of pair rows through the tuned backend, or
    the reference's for a locked tower."""

    def __init__(
        self, tuned: Backend, pairs: PairDataset, options: FinetuneOptions, reference: _Reference
    ) -> None:
        self.tuned = tuned
        self.reference = reference
        self.groups = torch.tensor([p.group for p in pairs.pairs])
        self.caption_rows = torch.tensor([reference.caption_index[p.caption] for p in pairs.pairs])
        self.paths = [str(p) for p in pairs.images]
        self.train_image = "image" in options.towers
        self.encode_image = self.train_image or options.image_path == "reencode"
        self.train_text = "text" in options.towers
        names = [CENTER] + [augmented_view_name(i, options.augment) for i in range(options.views)]
        self.transforms = [view_transform(tuned.preprocess, n) for n in names]

    def images(self, epoch: int, rows: torch.Tensor) -> torch.Tensor:
        groups = self.groups[rows]
        if not self.encode_image:
            return self.reference.image[groups]
        transform = self.transforms[epoch % len(self.transforms)]
        unique, inverse = groups.unique(return_inverse=True)
        pixels = torch.stack([load_pixels(self.paths[g], transform)[1] for g in unique.tolist()])
        with torch.set_grad_enabled(self.train_image and torch.is_grad_enabled()):
            out = self.tuned.encode_image_batch(pixels.to(self.tuned.device))
        return F.normalize(out.float(), dim=-1).cpu()[inverse]

    def texts(self, rows: torch.Tensor) -> torch.Tensor:
        index = self.caption_rows[rows]
        if not self.train_text:
            return self.reference.text[index]
        unique, inverse = index.unique(return_inverse=True)
        texts = [self.reference.captions[i] for i in unique.tolist()]
        out = self.tuned.encode_text_batch(texts)
        return F.normalize(out.float(), dim=-1).cpu()[inverse]


def _batch_loss(
    embed: _Embedder,
    loss_fn: torch.nn.Module,
    reference: _Reference,
    options: FinetuneOptions,
    pairs: PairDataset,
) -> Callable[[int, torch.Tensor], torch.Tensor]:
    labels = torch.tensor([p.label for p in pairs.pairs])

    def objective(rows: torch.Tensor, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        if options.loss == "cwcl":
            frozen = (
                reference.text[embed.caption_rows[rows]]
                if not embed.train_text and embed.train_image
                else reference.image[embed.groups[rows]]
            )
            value = loss_fn(image, text, frozen)
        elif options.loss == "supervised":
            value = loss_fn(image, text, labels[rows])
        elif options.loss == "distill":
            teacher = reference.scale * (
                reference.image[embed.groups[rows]] @ reference.text[embed.caption_rows[rows]].T
            )
            value = loss_fn(image, text, teacher)
        else:
            value = loss_fn(image, text)
        if reference.vocabulary is not None:
            original = reference.image[embed.groups[rows]]
            value = value + options.retention * retention_kl(
                original, image, reference.vocabulary, reference.scale
            )
        return value

    def batch_loss(epoch: int, rows: torch.Tensor) -> torch.Tensor:
        if options.accumulate == 1:
            return objective(rows, embed.images(epoch, rows), embed.texts(rows))
        chunks = [c for c in rows.tensor_split(options.accumulate) if len(c)]
        with torch.no_grad():
            images = [embed.images(epoch, c) for c in chunks]
            texts = [embed.texts(c) for c in chunks]
        value = torch.zeros(())
        for j, chunk in enumerate(chunks):
            image, text = list(images), list(texts)
            image[j], text[j] = embed.images(epoch, chunk), embed.texts(chunk)
            value = objective(rows, torch.cat(image), torch.cat(text))
            value.backward()
        for param in loss_fn.parameters():  # each chunk's pass gave the loss's own weights
            if param.grad is not None:  # the whole batch's gradient once more
                param.grad /= len(chunks)
        return value.detach()

    return batch_loss
