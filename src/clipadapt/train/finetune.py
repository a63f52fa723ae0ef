"""``clipadapt finetune`` as a library call: fine-tune on pairs, save a model directory.

The run checkpoints into the output directory after every epoch; running the same command
again after a kill resumes from there and ends with the same weights as an uninterrupted
run. The checkpoint is removed once the model is saved. Under ``torchrun`` every rank
trains and rank 0 alone writes.
"""

from __future__ import annotations

import os
from pathlib import Path

from clipadapt.data.pairs import PairDataset
from clipadapt.feature_cache import FeatureCache
from clipadapt.models.base import Backend
from clipadapt.models.finetuned import save_finetuned
from clipadapt.saved import FINETUNE_CHECKPOINT, check_model_dir
from clipadapt.train.contrastive import FinetuneResult, finetune_pairs
from clipadapt.train.loop import world
from clipadapt.train.options import FinetuneOptions


def finetune_model(
    backend: Backend,
    pairs: PairDataset,
    options: FinetuneOptions,
    out: str | os.PathLike[str],
    *,
    cache: FeatureCache | None = None,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune ``backend`` on ``pairs`` and save the model into ``out`` (a new or empty
    directory, one ``finetune`` wrote, or one a killed run left its checkpoint in)."""
    target = check_model_dir(out, finetuned=True)
    rank, _ = world()
    if rank == 0:
        target.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(target) / FINETUNE_CHECKPOINT
    result = finetune_pairs(
        backend, pairs, options, cache=cache, checkpoint=checkpoint, progress=progress
    )
    if rank == 0:
        save_finetuned(result.backend, target, list(result.towers), result.record)
        checkpoint.unlink(missing_ok=True)
    return result
