"""CoOp, KgCoOp and CoCoOp: learned context tokens in place of a hand-made template.

CoOp (Zhou et al., IJCV 2022, arXiv:2109.01134): class c's prompt is
``[SOS][V]_1..[V]_M[CLASS_c][.][EOS]`` (class token at the end, middle or front), the context
``V`` shared by all classes or specific to each, trained with cross-entropy of
``s * cos(f, g(t_c))`` against the frozen image features ``f``.

KgCoOp (Yao et al., CVPR 2023, arXiv:2303.13283) adds ``lambda * mean_c ||w_c - w_c^clip||^2``,
keeping each learned class embedding near the hand-made zero-shot one (lambda = 8 there).

CoCoOp (Zhou et al., CVPR 2022, arXiv:2203.05557): a meta-network
``pi(f) = W2 ReLU(W1 f + b1) + b2`` (hidden size D/16; weights drawn like
``nn.Linear``'s, biases zero) adds one image-conditioned vector to
every context token, ``V_m(f) = V_m + pi(f)``, so the class embeddings depend on the image.

The image tower is frozen, so training reads cached image features (``image_path="cached"``)
or, to measure what the cache saves, re-encodes every batch (``"reencode"``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Self

import torch
import torch.nn.functional as F

from clipadapt.methods.base import FitData
from clipadapt.methods.clip_adapter import _linear_init
from clipadapt.methods.common import check_fit_data, cosine_logits, scale_tensor
from clipadapt.methods.prompting.base import TowerMethod, frozen
from clipadapt.methods.prompting.context import DEFAULT_INIT, ClassPrompts, init_context
from clipadapt.methods.prompting.images import SupportFeatures, require_backend
from clipadapt.models.base import TEXT_CHUNK, Backend
from clipadapt.models.prompt_access import promptable_text


class CoOp(TowerMethod):
    """CoOp; ``kg_weight > 0`` adds KgCoOp's regulariser (see the module docstring).

    ``ctx_init`` initialises the context from a phrase with exactly ``n_ctx`` tokens (else
    N(0, 0.02^2)); ``position`` is where the class name goes ("end", "middle", "front");
    more than ``text_chunk`` classes are encoded and back-propagated in chunks.
    """

    name = "coop"

    def __init__(
        self,
        n_ctx: int = 4,
        ctx_init: str | None = DEFAULT_INIT,
        class_specific: bool = False,
        position: str = "end",
        kg_weight: float = 0.0,
        epochs: int = 20,
        batch_size: int = 32,
        lr: float = 2e-3,
        weight_decay: float = 0.0,
        image_path: str = "cached",
        text_chunk: int = TEXT_CHUNK,
        precision: str = "fp32",
    ) -> None:
        super().__init__(epochs, batch_size, lr, weight_decay, image_path, precision)
        self.n_ctx = int(n_ctx)
        self.ctx_init = ctx_init
        self.class_specific = bool(class_specific)
        self.text_chunk = int(text_chunk)
        self.position = position
        self.kg_weight = float(kg_weight)

    def _fit(self, data: FitData) -> None:
        check_fit_data(self, data)
        features = SupportFeatures(data, self.image_path, self.name)
        labels = data.support_labels.long()
        self._fit_context(
            data,
            features,
            data.support_features,
            lambda logits, rows: F.cross_entropy(logits, labels[rows]),
        )

    def _fit_context(
        self,
        data: FitData,
        features: Callable[[int, torch.Tensor], torch.Tensor],
        examples: torch.Tensor,
        objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> None:
        """Learn the context on ``objective(logits, rows)`` for batches ``rows`` of
        ``examples``, whose image features at an epoch are ``features(epoch, rows)``."""
        access = promptable_text(require_backend(data, self.name))
        with frozen(access.module):
            prompts = ClassPrompts(access, data.classnames, self.n_ctx, self.position)
            generator = torch.Generator().manual_seed(data.seed)
            classes = data.num_classes if self.class_specific else None
            ctx = init_context(access, self.n_ctx, self.ctx_init, generator, classes)
            hand, scale = data.class_embeddings, scale_tensor(data)

            def loss(epoch: int, rows: torch.Tensor) -> torch.Tensor:
                feats = features(epoch, rows)

                def of_text(text: torch.Tensor) -> torch.Tensor:
                    value = objective(cosine_logits(feats, text, scale), rows)
                    if self.kg_weight:
                        value = value + self.kg_weight * (text - hand).pow(2).sum(-1).mean()
                    return value

                return prompts.backward_chunked(ctx, of_text, self.text_chunk)

            self._train(data, [ctx], loss, examples)
            self.set_state(
                ctx=ctx, text=prompts.encode_chunked(ctx, self.text_chunk), logit_scale=scale
            )

    @property
    def supports_new_classes(self) -> bool:  # type: ignore[override]
        return not self.class_specific

    def predict_logits(self, features: torch.Tensor) -> torch.Tensor:
        return cosine_logits(features, self.state("text"), self.state("logit_scale"))

    def class_embeddings_for(self, backend: Backend, classnames: list[str]) -> torch.Tensor:
        if self.class_specific:
            raise ValueError(
                f"{self.name}: class-specific context cannot embed unseen class names; "
                "fit with class_specific=False for base-to-novel evaluation"
            )
        access = promptable_text(backend)
        prompts = ClassPrompts(access, classnames, self.n_ctx, self.position)
        return prompts.encode_chunked(self.state("ctx").to(backend.device))


class KgCoOp(CoOp):
    """CoOp with KgCoOp's knowledge-guided regulariser on by default (lambda = 8)."""

    name = "kgcoop"

    def __init__(self, kg_weight: float = 8.0, **kwargs: Any) -> None:
        super().__init__(kg_weight=kg_weight, **kwargs)


class CoCoOp(TowerMethod):
    """CoCoOp (see the module docstring). Predicting runs the text tower per image, so a
    loaded model needs ``attach(backend)`` first; a freshly fitted one is attached."""

    name = "cocoop"

    def __init__(
        self,
        n_ctx: int = 4,
        ctx_init: str | None = DEFAULT_INIT,
        epochs: int = 10,
        batch_size: int = 8,
        lr: float = 2e-3,
        weight_decay: float = 0.0,
        image_path: str = "cached",
        precision: str = "fp32",
    ) -> None:
        super().__init__(epochs, batch_size, lr, weight_decay, image_path, precision)
        self.n_ctx = int(n_ctx)
        self.ctx_init = ctx_init
        self._prompts: ClassPrompts | None = None

    def _fit(self, data: FitData) -> None:
        check_fit_data(self, data)
        access = promptable_text(require_backend(data, self.name))
        features = SupportFeatures(data, self.image_path, self.name)
        with frozen(access.module):
            prompts = ClassPrompts(access, data.classnames, self.n_ctx)
            generator = torch.Generator().manual_seed(data.seed)
            ctx = init_context(access, self.n_ctx, self.ctx_init, generator)
            dim = data.class_embeddings.shape[1]
            hidden = max(dim // 16, 1)
            net = [
                _linear_init(hidden, dim, generator),
                torch.zeros(hidden, requires_grad=True),
                _linear_init(access.width, hidden, generator),
                torch.zeros(access.width, requires_grad=True),
            ]
            scale, labels = scale_tensor(data), data.support_labels.long()

            def loss(epoch: int, rows: torch.Tensor) -> torch.Tensor:
                feats = features(epoch, rows)
                text = prompts.encode(_conditioned(ctx, net, feats))
                logits = scale * torch.einsum("bd,bcd->bc", feats, text)
                return F.cross_entropy(logits, labels[rows])

            self._train(data, [ctx, *net], loss)
            names = ("w1", "b1", "w2", "b2")
            self.set_state(ctx=ctx, logit_scale=scale, **dict(zip(names, net, strict=True)))
        self._prompts = prompts

    def attach(self, backend: Backend) -> Self:
        super().attach(backend)
        self._prompts = ClassPrompts(promptable_text(backend), self.classnames, self.n_ctx)
        return self

    def for_classes(self, backend: Backend, classnames: list[str]) -> Self:
        other = copy.copy(self)
        other.classnames = list(classnames)
        return other.attach(backend)

    def predict_logits(self, features: torch.Tensor) -> torch.Tensor:
        if self._prompts is None:
            self.state("ctx")
            raise RuntimeError(
                f"{self.name}: predicting runs the text tower; call attach(backend) after loading"
            )
        s = self.state
        net = [s("w1"), s("b1"), s("w2"), s("b2")]
        chunk = max(1, TEXT_CHUNK // len(self.classnames))
        parts = []
        with torch.no_grad():
            for feats in features.split(chunk):
                text = self._prompts.encode(_conditioned(s("ctx"), net, feats))
                parts.append(s("logit_scale") * torch.einsum("bd,bcd->bc", feats, text.cpu()))
        return torch.cat(parts)


def _conditioned(ctx: torch.Tensor, net: list[torch.Tensor], feats: torch.Tensor) -> torch.Tensor:
    """Per-image context (B, 1, n_ctx, width): ``ctx + pi(f)`` with CoCoOp's meta-network."""
    w1, b1, w2, b2 = net
    shift = F.linear(torch.relu(F.linear(feats, w1, b1)), w2, b2)
    return (ctx.unsqueeze(0) + shift.unsqueeze(1)).unsqueeze(1)
