"""Mini-batch AdamW training with an atomic checkpoint after every epoch, on one process or
many (``torchrun``: any ``torch.distributed`` process group that is initialised).

Batches (and any dropout masks) come from generators seeded by (seed, epoch), so a run
resumed from the checkpoint of epoch k draws exactly the batches an uninterrupted run draws
after epoch k, and ends with the same parameters.

Distributed: every rank draws the same global batch order and takes its contiguous share of
each global batch (``tensor_split``: shares differ by at most one row, a share may be empty).
Each rank's gradient of its mean loss is weighted by its share of the batch and the weighted
gradients (and losses) are summed in one ``all_reduce``, which gives the gradient of the
global batch's mean loss whatever the world size, also when shares are unequal (DDP's
wrapper averages with equal weights, and needs an ``nn.Module`` whose forward it owns, while
the loss functions here back-propagate in chunks themselves). All ranks then take the same
AdamW step and keep identical parameters; only the summation order differs from one
process, so loss curves agree to float rounding. Random ops (dropout) are seeded per rank
(rank 0 as a single process). Rank 0 alone writes the checkpoint, which holds no world size:
a run resumes on any number of processes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from clipadapt.atomic import atomic_write
from clipadapt.train.options import PRECISION_NAMES

EpochHook = Callable[[int, float], None]  # (epoch, seconds) after each epoch
StepHook = Callable[[int, float], None]  # (rows in the global batch, its loss) after each step
BatchLoss = Callable[[int, torch.Tensor], torch.Tensor]  # (epoch, rows) -> loss
PRECISIONS = dict(zip(PRECISION_NAMES, (None, torch.bfloat16), strict=True))
"""Training precisions: fp32, or bf16 autocast (CPUs with bf16 support and GPUs; needs no
loss scaling, unlike fp16)."""


def autocast_loss(loss: BatchLoss, device: torch.device, precision: str) -> BatchLoss:
    """``loss`` run under autocast to ``precision`` on ``device`` (parameters, optimizer
    state and the backward pass stay fp32); ``loss`` itself for fp32."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return loss

    def mixed(epoch: int, rows: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype):
            value = loss(epoch, rows)
        return value.float()

    return mixed


@dataclass
class TrainLog:
    """Seconds each epoch took (training only) and the global batch loss of every step."""

    seconds: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


def world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def run_key(**parts: Any) -> str:
    """A short hash of what determines a run; a checkpoint of another run is not resumed."""
    digest = hashlib.sha256()
    for name, value in sorted(parts.items()):
        digest.update(name.encode())
        if isinstance(value, torch.Tensor):
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        else:
            digest.update(json.dumps(value, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def train_epochs(
    params: list[torch.Tensor],
    batch_loss: Callable[[int, torch.Tensor], torch.Tensor],
    n: int,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    checkpoint: Path | None = None,
    key: str = "",
    on_epoch: EpochHook | None = None,
    buffers: list[torch.Tensor] = (),
    after_epoch: Callable[[int], None] | None = None,
    on_step: StepHook | None = None,
    after_step: Callable[[], None] | None = None,
    fused: bool = False,
) -> TrainLog:
    """Train ``params`` on ``batch_loss(epoch, indices)`` over shuffled batches of ``range(n)``.

    A cosine schedule spans all steps. With ``checkpoint``, the parameters, optimizer and
    schedule are saved after every epoch and a matching checkpoint (same ``key``) is resumed.
    ``after_epoch(epoch)`` may update ``buffers`` (untrained tensors saved alongside, e.g. a
    running average of the parameters) before the checkpoint. ``after_step()`` runs after each
    optimiser step (e.g. to clamp a temperature), ``on_step(rows, loss)`` then reports it.
    ``batch_loss`` must return the mean over its rows (plus terms that do not depend on them).
    ``fused`` uses AdamW's fused kernel (several times faster for millions of weights on a
    CPU; other rounding than the default, so the prompt learners keep the default).
    Returns the ``TrainLog``.
    """
    rank, size = world()
    steps_per_epoch = -(-n // batch_size)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(epochs * steps_per_epoch, 1)
    )
    start = _resume(checkpoint, key, [*params, *buffers], optimizer, schedule)
    log = TrainLog()
    with torch.enable_grad():
        for epoch in range(start, epochs):
            epoch_seed = seed * 1_000_003 + epoch
            began = time.perf_counter()
            with torch.random.fork_rng(devices=[]):
                # dropout, if any, repeats on resume; each rank draws its own
                torch.manual_seed(epoch_seed if rank == 0 else hash((epoch_seed, rank)))
                order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed))
                for batch in order.split(batch_size):
                    optimizer.zero_grad()
                    rows = batch.tensor_split(size)[rank]
                    value = torch.zeros(())
                    if len(rows):
                        value = batch_loss(epoch, rows)
                        if value.requires_grad:  # else batch_loss back-propagated itself
                            value.backward()
                    if size > 1:
                        value = _all_reduce(params, value.detach(), len(rows) / len(batch))
                    log.losses.append(float(value.detach()))
                    optimizer.step()
                    schedule.step()
                    if after_step is not None:
                        after_step()
                    if on_step is not None:
                        on_step(len(batch), log.losses[-1])
            log.seconds.append(time.perf_counter() - began)
            if after_epoch is not None:
                after_epoch(epoch)
            if checkpoint is not None and rank == 0:
                state = {
                    "key": key,
                    "epoch": epoch + 1,
                    "params": [p.detach().clone() for p in [*params, *buffers]],
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                }
                atomic_write(checkpoint, lambda path, s=state: torch.save(s, path))
            if on_epoch is not None:
                on_epoch(epoch, log.seconds[-1])
    return log


def _all_reduce(params: list[torch.Tensor], value: torch.Tensor, share: float) -> torch.Tensor:
    """Sum ``share``-weighted gradients and loss over ranks, in place; returns the loss.

    A parameter keeps no gradient (``None``, which AdamW skips) only if no rank gave it one.
    """
    device = (
        torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    )
    parts = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    flat = torch.cat(
        [
            *(g.detach().reshape(-1).float().to(device) * share for g in parts),
            torch.tensor([float(p.grad is not None) for p in params], device=device),
            (value.float() * share).reshape(1).to(device),
        ]
    )
    dist.all_reduce(flat)
    start = 0
    for param, grad in zip(params, parts, strict=True):
        summed = flat[start : start + grad.numel()].view_as(grad)
        param.grad = summed.to(param.device, param.dtype).clone()
        start += grad.numel()
    for param, present in zip(params, flat[start : start + len(params)].tolist(), strict=True):
        if not present:
            param.grad = None
    return flat[-1].cpu()


def _resume(checkpoint, key, params, optimizer, schedule) -> int:
    if checkpoint is None or not checkpoint.is_file():
        return 0
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if state.get("key") != key:
        return 0
    with torch.no_grad():
        for param, saved in zip(params, state["params"], strict=True):
            param.copy_(saved)
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    return int(state["epoch"])
