"""Full-batch optimisation loops shared by the trained methods (CPU, fp32, deterministic)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def minimize_lbfgs(
    params: list[torch.Tensor], loss: Callable[[], torch.Tensor], max_iter: int
) -> None:
    """Minimise a smooth full-batch ``loss()`` over ``params`` in place with L-BFGS.

    Uses a strong-Wolfe line search; ``max_iter`` bounds the iterations (and the cost).
    """
    optimizer = torch.optim.LBFGS(
        params, lr=1.0, max_iter=max_iter, history_size=10, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = loss()
        value.backward()
        return value

    with torch.enable_grad():
        optimizer.step(closure)


def train_adamw(
    params: list[torch.Tensor],
    loss: Callable[[int], torch.Tensor],
    steps: int,
    lr: float,
    weight_decay: float = 0.0,
    eps: float = 1e-8,
) -> None:
    """Run ``steps`` AdamW steps on ``loss(step)`` with a cosine learning-rate schedule.

    ``loss`` gets the step index so callers can cycle through augmented views per epoch.
    """
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, eps=eps)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    with torch.enable_grad():
        for step in range(steps):
            optimizer.zero_grad()
            loss(step).backward()
            optimizer.step()
            schedule.step()
