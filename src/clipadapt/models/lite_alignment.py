"""Tie the MiniLM text space to the EfficientNet-Lite0 image space without image data.

The image tower's ImageNet head holds one weight vector per ImageNet class. A class text is
mapped into the image space by kernel regression over those classes: with ``t`` the text
embedding and ``T_j`` the prompt-ensembled embedding of ImageNet class ``j``,

    g(t) = sum_{j in top-k(t . T)} softmax_j(t . T_j / tau) * w_j / ||w_j||

The bandwidth ``tau``, the neighbourhood ``k`` and the logit scale are chosen by K-fold
cross-validation over ImageNet classes: held-out classes are mapped using only the other
classes, and each held-out head vector, standing in for an image of its class, must be
closest to its own class's mapped text. No benchmark images are ever read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from clipadapt.atomic import atomic_write
from clipadapt.templates import DEFAULT_TEMPLATES

TAU_GRID = (0.02, 0.05, 0.1, 0.2)
K_GRID = (5, 20, 100, 400)
SCALE_GRID = (10.0, 20.0, 30.0, 50.0, 75.0, 100.0)
FOLDS = 5
SELECTION_SEED = 0


def imagenet_classnames() -> list[str]:
    """The 1,000 ImageNet-1k class names as torchvision ships them (no download)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def kernel_map(
    queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, tau: float, k: int
) -> torch.Tensor:
    """Softmax-weighted average of the ``values`` of each query's ``k`` most similar keys."""
    sims, idx = (queries @ keys.T).topk(min(k, keys.shape[0]), dim=-1)
    weights = torch.softmax(sims / tau, dim=-1)
    return (weights.unsqueeze(-1) * values[idx]).sum(dim=-2)


@dataclass
class LiteAlignment:
    """The fitted alignment: ImageNet class text embeddings and the selected hyperparameters."""

    imagenet_text: torch.Tensor  # (1000, text_dim), normalised, template-averaged
    tau: float
    k: int
    logit_scale: float
    text_fingerprint: str
    head_fingerprint: str
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    report: dict[str, Any] = field(default_factory=dict)

    def map_texts(self, text: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        """Map normalised text embeddings (N, text_dim) into the image space (N, feature_dim)."""
        values = nn.functional.normalize(head, dim=-1)
        return kernel_map(
            text, self.imagenet_text.to(text.dtype), values.to(text.dtype), self.tau, self.k
        )

    def save(self, path: str | Path) -> Path:
        meta = {
            "tau": str(self.tau),
            "k": str(self.k),
            "logit_scale": str(self.logit_scale),
            "text_fingerprint": self.text_fingerprint,
            "head_fingerprint": self.head_fingerprint,
            "templates": json.dumps(list(self.templates)),
            "report": json.dumps(self.report),
        }
        tensors = {"imagenet_text": self.imagenet_text.contiguous()}
        return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))

    @classmethod
    def load(cls, path: str | Path) -> LiteAlignment:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            text = f.get_tensor("imagenet_text")
        return cls(
            imagenet_text=text,
            tau=float(meta["tau"]),
            k=int(meta["k"]),
            logit_scale=float(meta["logit_scale"]),
            text_fingerprint=meta["text_fingerprint"],
            head_fingerprint=meta["head_fingerprint"],
            templates=tuple(json.loads(meta["templates"])),
            report=json.loads(meta["report"]),
        )


def ensemble_text(encode, classnames: list[str], templates: tuple[str, ...]) -> torch.Tensor:
    """Normalised mean over templates of normalised text embeddings, one row per class."""
    per_template = torch.stack([encode([t.format(name) for name in classnames]) for t in templates])
    return nn.functional.normalize(per_template.mean(0), dim=-1)


def _fold_scores(
    text: torch.Tensor, head: torch.Tensor, tau: float, k: int, folds: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Cosine scores of held-out head vectors against held-out mapped texts, fold by fold."""
    head_n = nn.functional.normalize(head, dim=-1)
    blocks = []
    everything = torch.arange(text.shape[0])
    for held in folds:
        keep = everything[~torch.isin(everything, held)]
        mapped = kernel_map(text[held], text[keep], head_n[keep], tau, k)
        blocks.append(head_n[held] @ nn.functional.normalize(mapped, dim=-1).T)
    return blocks


def select_hyperparameters(
    text: torch.Tensor, head: torch.Tensor, *, seed: int = SELECTION_SEED, n_folds: int = FOLDS
) -> tuple[float, int, float, dict[str, Any]]:
    """Choose (tau, k) by held-out-class top-1 accuracy, then the logit scale by held-out NLL."""
    perm = torch.randperm(text.shape[0], generator=torch.Generator().manual_seed(seed))
    folds = list(perm.chunk(n_folds))
    grid: dict[str, float] = {}
    best: tuple[float, float, int] | None = None
    for tau in TAU_GRID:
        for k in K_GRID:
            blocks = _fold_scores(text, head, tau, k, folds)
            correct = sum(int((b.argmax(1) == torch.arange(len(b))).sum()) for b in blocks)
            acc = correct / text.shape[0]
            grid[f"tau={tau},k={k}"] = round(acc, 4)
            if best is None or acc > best[0]:
                best = (acc, tau, k)
    _, tau, k = best  # type: ignore[misc]
    blocks = _fold_scores(text, head, tau, k, folds)
    nll = {
        scale: sum(
            float(nn.functional.cross_entropy(scale * b, torch.arange(len(b)), reduction="sum"))
            for b in blocks
        )
        / text.shape[0]
        for scale in SCALE_GRID
    }
    scale = min(nll, key=nll.get)
    report = {
        "criterion": f"{n_folds}-fold held-out ImageNet classes, top-1 of head vectors",
        "grid_accuracy": grid,
        "selected": {"tau": tau, "k": k, "heldout_acc1": grid[f"tau={tau},k={k}"]},
        "logit_scale_nll": {str(s): round(v, 4) for s, v in nll.items()},
    }
    return tau, k, scale, report
