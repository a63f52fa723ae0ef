"""Joining the process group that ``torchrun`` describes in the environment.

``torchrun --nproc_per_node N clipadapt adapt ...`` starts N copies of the command with
``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and the rendezvous address set; each joins the group
here (gloo on CPU, NCCL when there are GPUs, one GPU per local rank) and the shared training
loop (``clipadapt.train.loop``) then splits every global batch over the ranks.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str) -> str:
    """Join the group if ``WORLD_SIZE`` > 1; returns the device this rank should use
    (``cuda`` becomes ``cuda:<LOCAL_RANK>``)."""
    if not launched_by_torchrun() or dist.is_initialized():
        return device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no GPU is visible to this process")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        return f"cuda:{local}"
    dist.init_process_group("gloo")
    return device


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def leave() -> None:
    """Leave the process group (at the end of a command), after every rank got here."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
