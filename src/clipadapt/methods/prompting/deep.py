"""Deep multi-modal prompts for ViT image towers: MaPLe and IVLP, with PromptSRC's options.

IVLP (independent vision-language prompting; Rasheed et al. / Khattak et al. 2023): learned
tokens in both towers up to ``depth`` layers. Text: the CoOp context replaces the
placeholder embeddings at the input; before each block 1..depth-1 the hidden states at those
positions are replaced by that layer's learned tokens. Vision: ``n_ctx`` learned tokens are
appended after the patch tokens at the input (no positional embedding) and replaced before
each block 1..depth-1; later blocks carry them on. The class token is pooled, as before.

MaPLe (Khattak et al., CVPR 2023, arXiv:2210.03117): the vision tokens of layer j are a linear
map of the language tokens of layer j, ``P^v_j = W_j P^t_j + b_j`` (vision-language coupling).

PromptSRC (Khattak et al., ICCV 2023, arXiv:2307.06948) options: ``src_text`` and
``src_image`` weight L1 distances between prompted and frozen features (the frozen text is
the runner's template-ensembled class embeddings, i.e. the text-template diversity), ``src_kl``
weights KL(prompted || zero-shot) on logits, and ``gpa_mean``/``gpa_std`` (std > 0) average
the prompts over epochs with Gaussian weights N(epoch; mean, std).

Prompts are put in with forward pre-hooks on the backend's own transformer blocks, only for
the duration of one forward; the model file is not copied. Training re-encodes images (the
image side changes); test features come from ``feature_backend(backend)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from clipadapt.methods.base import DataKind, FitData
from clipadapt.methods.clip_adapter import _linear_init
from clipadapt.methods.common import check_fit_data, cosine_logits, scale_tensor
from clipadapt.methods.prompting.base import TowerMethod, frozen
from clipadapt.methods.prompting.context import DEFAULT_INIT, ClassPrompts, init_context
from clipadapt.methods.prompting.images import (
    SupportFeatures,
    SupportPixels,
    require_backend,
    require_paths,
)
from clipadapt.models.base import Backend, ImageAdaptedBackend
from clipadapt.models.prompt_access import backend_modules, promptable_text, vit_image_tower


@contextmanager
def block_prompts(blocks: nn.ModuleList, prompts: list[torch.Tensor], where: str) -> Iterator[None]:
    """Insert ``prompts[j]`` (n, width) before block j for j < len(prompts).

    ``where="append"``: vision tokens appended at block 0, replaced at later blocks.
    ``where="after_start"``: text hidden states at positions 1..n replaced (blocks >= 1;
    block 0's come from the token embeddings).
    """

    def hook_for(j: int):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["q_x"]
            p = prompts[j].to(x.dtype).expand(x.shape[0], -1, -1)
            n = p.shape[1]
            if where == "append":
                x = torch.cat([x if j == 0 else x[:, :-n], p], dim=1)
            else:
                x = torch.cat([x[:, :1], p, x[:, 1 + n :]], dim=1)
            if args:
                return (x, *args[1:]), kwargs
            return args, {**kwargs, "q_x": x}

        return hook

    first = 0 if where == "append" else 1
    handles = [
        blocks[j].register_forward_pre_hook(hook_for(j), with_kwargs=True)
        for j in range(first, len(prompts))
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _blocks(module: nn.Module, method: str) -> nn.ModuleList:
    transformer = module.transformer
    if not getattr(transformer, "batch_first", True):
        raise ValueError(f"{method}: needs an open_clip transformer with batch_first=True")
    return transformer.resblocks


class DeepPromptedBackend(ImageAdaptedBackend):
    """``base`` with deep vision prompts inserted into its ViT for every image batch."""

    def __init__(self, base: Backend, vision_prompts: list[torch.Tensor], method: str) -> None:
        self.blocks = _blocks(vit_image_tower(base, method), method)
        self.vision_prompts = [p.detach() for p in vision_prompts]
        super().__init__(base, self.vision_prompts)

    def encode_image_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        with block_prompts(self.blocks, self.vision_prompts, "append"):
            return self.base.encode_image_batch(pixels)


class MaPLe(TowerMethod):
    """MaPLe (``coupled=True``) or IVLP (``coupled=False``) on an open_clip ViT backend."""

    name = "maple"
    coupled: ClassVar[bool] = True
    reads: ClassVar[frozenset[DataKind]] = frozenset(
        {DataKind.SUPPORT, DataKind.SUPPORT_VIEWS, DataKind.TOWER, DataKind.SUPPORT_IMAGES}
    )

    def __init__(
        self,
        n_ctx: int = 2,
        depth: int = 9,
        ctx_init: str | None = DEFAULT_INIT,
        src_text: float = 0.0,
        src_image: float = 0.0,
        src_kl: float = 0.0,
        gpa_mean: float = 0.0,
        gpa_std: float = 0.0,
        epochs: int = 5,
        batch_size: int = 4,
        lr: float = 3.5e-3,
        weight_decay: float = 0.0,
        precision: str = "fp32",
    ) -> None:
        super().__init__(epochs, batch_size, lr, weight_decay, "reencode", precision)
        self.n_ctx = int(n_ctx)
        self.depth = int(depth)
        self.ctx_init = ctx_init
        self.src_text, self.src_image, self.src_kl = (
            float(src_text),
            float(src_image),
            float(src_kl),
        )
        self.gpa_mean, self.gpa_std = float(gpa_mean), float(gpa_std)

    # -- prompts from parameters --------------------------------------------------------
    def _vision(self, params: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        if not self.coupled:
            return list(params["vision"].unbind(0))
        text = [params["ctx"], *params["text_deep"].unbind(0)]
        return [
            F.linear(t, w, b)
            for t, w, b in zip(text, params["couple_w"], params["couple_b"], strict=True)
        ]

    def _check_depth(self, backend: Backend, access) -> tuple[nn.ModuleList, nn.ModuleList, int]:
        """The vision and text blocks of an open_clip ViT backend, and the vision width."""
        visual = vit_image_tower(backend, self.name)  # a clear error on other towers
        if getattr(visual, "pool_type", "tok") != "tok" or visual.attn_pool is not None:
            raise ValueError(f"{self.name}: needs a ViT that pools its class token")
        vision, text = _blocks(visual, self.name), _blocks(access.tower, self.name)
        layers = min(len(vision), len(text))
        if not 1 <= self.depth <= layers:
            raise ValueError(
                f"{self.name}: depth {self.depth} must be between 1 and the towers' "
                f"{layers} layers ({backend.info.spec})"
            )
        return vision, text, int(visual.conv1.out_channels)

    def _fit(self, data: FitData) -> None:
        check_fit_data(self, data)
        backend = require_backend(data, self.name)
        access = promptable_text(backend)
        vision_blocks, text_blocks, v_width = self._check_depth(backend, access)
        pixels = SupportPixels(
            backend, require_paths(data, self.name), self._views(data), data.augment
        )
        frozen_features = SupportFeatures(data, "cached", self.name)
        generator = torch.Generator().manual_seed(data.seed)
        prompts = ClassPrompts(access, data.classnames, self.n_ctx)
        params = self._init(access, v_width, generator)
        names = list(params)
        averaged = [torch.zeros_like(p) for p in params.values()] if self.gpa_std > 0 else []
        hand, scale, labels = data.class_embeddings, scale_tensor(data), data.support_labels.long()

        def loss(epoch: int, rows: torch.Tensor) -> torch.Tensor:
            text_deep = list(params["text_deep"].unbind(0))
            with block_prompts(text_blocks, [params["ctx"], *text_deep], "after_start"):
                text = prompts.encode(params["ctx"])[0]
            with block_prompts(vision_blocks, self._vision(params), "append"):
                image = F.normalize(backend.encode_image_batch(pixels.pixels(epoch, rows)), dim=-1)
            logits = cosine_logits(image.float(), text, scale)
            value = F.cross_entropy(logits, labels[rows])
            if self.src_text:
                value = value + self.src_text * (text - hand).abs().mean()
            if self.src_image or self.src_kl:
                fixed = frozen_features(epoch, rows)
                value = value + self.src_image * (image - fixed).abs().mean()
                zero_shot = F.log_softmax(cosine_logits(fixed, hand, scale), dim=-1)
                value = value + self.src_kl * F.kl_div(
                    F.log_softmax(logits, -1), zero_shot, log_target=True, reduction="batchmean"
                )
            return value

        hook = self._gpa_hook(list(params.values()), averaged)
        with frozen(backend_modules(backend)):
            self._train(data, list(params.values()), loss, buffers=averaged, after_epoch=hook)
            if averaged:
                params = dict(zip(names, averaged, strict=True))
            with block_prompts(
                text_blocks, [params["ctx"], *params["text_deep"].unbind(0)], "after_start"
            ):
                text = prompts.encode_chunked(params["ctx"])
        self.set_state(text=text, logit_scale=scale, **params)

    def _views(self, data: FitData) -> int:
        return 0 if data.support_views is None else len(data.support_views)

    def _init(self, access, v_width: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        ctx = init_context(access, self.n_ctx, self.ctx_init, generator)
        deep = torch.randn(self.depth - 1, self.n_ctx, access.width, generator=generator) * 0.02
        params = {"ctx": ctx, "text_deep": deep.requires_grad_()}
        if self.coupled:
            params["couple_w"] = (
                torch.stack(
                    [_linear_init(v_width, access.width, generator) for _ in range(self.depth)]
                )
                .detach()
                .requires_grad_()
            )
            params["couple_b"] = torch.zeros(self.depth, v_width, requires_grad=True)
        else:
            vision = torch.randn(self.depth, self.n_ctx, v_width, generator=generator) * 0.02
            params["vision"] = vision.requires_grad_()
        return params

    def _gpa_hook(self, params: list[torch.Tensor], averaged: list[torch.Tensor]):
        """PromptSRC's Gaussian prompt aggregation: add w_e * params after epoch e."""
        if not averaged:
            return None
        weights = torch.tensor(
            [
                math.exp(-0.5 * ((e + 1 - self.gpa_mean) / self.gpa_std) ** 2)
                for e in range(self.epochs)
            ]
        )
        weights = weights / weights.sum()

        def hook(epoch: int) -> None:
            with torch.no_grad():
                for total, param in zip(averaged, params, strict=True):
                    total.add_(weights[epoch] * param)

        return hook

    def predict_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Scores for features from ``feature_backend(backend)`` (prompted image tower)."""
        return cosine_logits(features, self.state("text"), self.state("logit_scale"))

    def feature_backend(self, backend: Backend) -> Backend:
        self._check_backend(backend)
        return DeepPromptedBackend(backend, self._vision(self._state), self.name)

    def class_embeddings_for(self, backend: Backend, classnames: list[str]) -> torch.Tensor:
        access = promptable_text(backend)
        _, text_blocks, _ = self._check_depth(backend, access)
        prompts = ClassPrompts(access, classnames, self.n_ctx)
        s = self.state
        with block_prompts(text_blocks, [s("ctx"), *s("text_deep").unbind(0)], "after_start"):
            return prompts.encode_chunked(s("ctx"))


class IVLP(MaPLe):
    """Independent vision-language prompts (no coupling) up to ``depth`` layers."""

    name = "ivlp"
    coupled = False
