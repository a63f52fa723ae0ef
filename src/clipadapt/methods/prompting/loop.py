"""Mini-batch AdamW training with an atomic checkpoint after every epoch.

Batches (and any dropout masks) come from generators seeded by (seed, epoch), so a run
resumed from the checkpoint of epoch k draws exactly the batches an uninterrupted run draws
after epoch k, and ends with the same parameters.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from clipadapt.atomic import atomic_write

EpochHook = Callable[[int, float], None]  # (epoch, seconds) after each epoch


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
) -> list[float]:
    """Train ``params`` on ``batch_loss(epoch, indices)`` over shuffled batches of ``range(n)``.

    A cosine schedule spans all steps. With ``checkpoint``, the parameters, optimizer and
    schedule are saved after every epoch and a matching checkpoint (same ``key``) is resumed.
    ``after_epoch(epoch)`` may update ``buffers`` (untrained tensors saved alongside, e.g. a
    running average of the parameters) before the checkpoint. Returns the seconds each epoch
    took (training only, not checkpointing).
    """
    steps_per_epoch = -(-n // batch_size)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(epochs * steps_per_epoch, 1)
    )
    start = _resume(checkpoint, key, [*params, *buffers], optimizer, schedule)
    seconds: list[float] = []
    with torch.enable_grad():
        for epoch in range(start, epochs):
            epoch_seed = seed * 1_000_003 + epoch
            began = time.perf_counter()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(epoch_seed)  # dropout, if any, repeats on resume
                order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed))
                for batch in order.split(batch_size):
                    optimizer.zero_grad()
                    value = batch_loss(epoch, batch)
                    if value.requires_grad:  # else batch_loss back-propagated itself
                        value.backward()
                    optimizer.step()
                    schedule.step()
            seconds.append(time.perf_counter() - began)
            if after_epoch is not None:
                after_epoch(epoch)
            if checkpoint is not None:
                state = {
                    "key": key,
                    "epoch": epoch + 1,
                    "params": [p.detach().clone() for p in [*params, *buffers]],
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                }
                atomic_write(checkpoint, lambda path, s=state: torch.save(s, path))
            if on_epoch is not None:
                on_epoch(epoch, seconds[-1])
    return seconds


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
