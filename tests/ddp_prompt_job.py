"""A tiny CoOp fit, run as one process or under torchrun by tests/test_scale_ddp.py.

    python ddp_prompt_job.py MODEL_DIR OUT_JSON CHECKPOINT_DIR|- STOP_AFTER_EPOCH|-1

Fits CoOp (4 epochs, global batch 5 over 12 examples: batches 5, 5, 2, so two ranks get
unequal shares) on fixed random features with a tiny open_clip text tower; rank 0 writes the
loss of every step and the learned context to OUT_JSON. With STOP_AFTER_EPOCH >= 0 the fit
stops (exit 3) after that epoch's checkpoint.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

from clipadapt.methods import FitData, create_method
from clipadapt.models import create_backend
from clipadapt.prompts import PromptSet, class_embeddings

NAMES = ["dog", "cat", "house"]


class Stop(Exception):
    pass


def main() -> int:
    model_dir, out, checkpoints, stop_after = sys.argv[1:5]
    torch.set_num_threads(1)
    rank = 0
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
        rank = dist.get_rank()
    backend = create_backend(f"local-dir:{model_dir}")
    g = torch.Generator().manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(12, backend.embed_dim, generator=g), dim=1)
    data = FitData(
        class_embeddings=class_embeddings(backend, NAMES, PromptSet(("a photo of a {}.",))),
        logit_scale=backend.logit_scale,
        classnames=list(NAMES),
        support_features=features,
        support_labels=torch.arange(3).repeat_interleave(4),
        backend=backend,
        checkpoint_dir=None if checkpoints == "-" else checkpoints,
    )
    method = create_method("coop", epochs=4, batch_size=5, ctx_init=None)

    def stop(epoch: int, seconds: float) -> None:
        if epoch == int(stop_after):
            raise Stop

    method.on_epoch = stop
    try:
        method.fit(data)
    except Stop:
        return 3
    finally:
        if dist.is_initialized():  # no rank may close its sockets while another still reads
            dist.barrier()
            dist.destroy_process_group()
    if rank == 0:
        result = {"losses": method.step_losses, "ctx": method.state("ctx").flatten().tolist()}
        with open(out, "w") as handle:
            json.dump(result, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
