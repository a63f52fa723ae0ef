"""Learned context tokens placed around class names at the token-embedding level (CoOp).

Each class prompt is tokenized once as ``"X X ... X <name>."`` (one placeholder per context
token); the placeholders' embeddings are then replaced by the learned context. The class name
goes at the end (after the context), in the middle (between its two halves) or at the front.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from clipadapt.models.base import TEXT_CHUNK
from clipadapt.models.prompt_access import PromptableText, Tokens

POSITIONS = ("end", "middle", "front")
PLACEHOLDER = "X"
DEFAULT_INIT = "a photo of a"


class ClassPrompts:
    """Token layout of ``n_ctx`` context tokens and each class name, for one text tower."""

    def __init__(
        self, access: PromptableText, classnames: list[str], n_ctx: int, position: str = "end"
    ) -> None:
        if position not in POSITIONS:
            raise ValueError(f"class token position {position!r}: use one of {POSITIONS}")
        if n_ctx < 1:
            raise ValueError(f"n_ctx must be at least 1, got {n_ctx}")
        name_tokens = [access.count_tokens(f"{name}.") for name in classnames]
        need = access.specials + n_ctx + max(name_tokens)
        if need > access.max_length:
            longest = classnames[name_tokens.index(max(name_tokens))]
            raise ValueError(
                f"{n_ctx} context tokens + {max(name_tokens)} tokens of the longest class name "
                f"({longest!r}) + {access.specials} special tokens = {need} exceed the text "
                f"tower's maximum of {access.max_length} ({access.backend.info.spec}); "
                f"use at most {access.max_length - access.specials - max(name_tokens)} context "
                "tokens or shorter class names"
            )
        if access.count_tokens(" ".join([PLACEHOLDER] * n_ctx)) != n_ctx:
            raise ValueError(f"{access.backend.info.spec}: {PLACEHOLDER!r} is not one token")
        self.access = access
        self.n_ctx = n_ctx
        self.position = position
        texts = [" ".join([PLACEHOLDER] * n_ctx + [name]) + "." for name in classnames]
        self.tokens = access.tokenize(texts)
        with torch.no_grad():
            embedded = access.token_embedding(self.tokens.ids)
        self.prefix = embedded[:, :1]  # start-of-text
        self.suffix = embedded[:, 1 + n_ctx :]  # class name, ".", end-of-text, padding
        name_lens = [access.count_tokens(name) for name in classnames]
        self.order = _layout(n_ctx, name_lens, self.tokens.ids.shape[1], position)

    def embeddings(self, ctx: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Prompt embeddings (B, C, L, width) for the classes ``rows`` (default: all).

        ``ctx`` is shared (n_ctx, width), class-specific (C, n_ctx, width), or per image
        (B, 1, n_ctx, width) as in CoCoOp; B is 1 unless the context is per image.
        """
        prefix, suffix, order = self.prefix, self.suffix, self.order
        if rows is not None:
            prefix, suffix, order = prefix[rows], suffix[rows], order[rows]
        while ctx.ndim < 4:
            ctx = ctx.unsqueeze(0)
        shape = (ctx.shape[0], prefix.shape[0])
        full = torch.cat(
            [
                prefix.expand(*shape, *prefix.shape[1:]),
                ctx.expand(*shape, *ctx.shape[2:]),
                suffix.expand(*shape, *suffix.shape[1:]),
            ],
            dim=2,
        )
        return full.gather(2, order.unsqueeze(-1).expand_as(full))

    def encode(self, ctx: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised class embeddings (B, C, D) for ``ctx`` as in ``embeddings``."""
        embeds = self.embeddings(ctx, rows)
        batch, classes = embeds.shape[:2]
        tokens = self.tokens if rows is None else self.tokens[rows]
        tokens = Tokens(tokens.ids.repeat(batch, 1), tokens.mask.repeat(batch, 1))
        out = self.access.encode_embedded(embeds.flatten(0, 1), tokens)
        return torch.nn.functional.normalize(out.float(), dim=-1).view(batch, classes, -1)

    def backward_chunked(
        self,
        ctx: torch.Tensor,
        objective: Callable[[torch.Tensor], torch.Tensor],
        chunk: int = TEXT_CHUNK,
    ) -> torch.Tensor:
        """``objective(class embeddings (C, D))``, its gradient pushed into ``ctx``.

        Up to ``chunk`` classes this is one graph; beyond, the embeddings are computed
        without a graph, the objective's gradient with respect to them is taken, and each
        chunk is re-encoded and back-propagated on its own, so memory stays that of one chunk
        (1,000 classes train in a few GB). Returns the objective's value, detached.
        """
        count = self.prefix.shape[0]
        if count <= chunk:
            value = objective(self.encode(ctx)[0])
            value.backward()
            return value.detach()
        text = self.encode_chunked(ctx, chunk).to(ctx.device).requires_grad_()
        value = objective(text)
        (grad,) = torch.autograd.grad(value, text)
        for start in range(0, count, chunk):
            rows = torch.arange(start, min(start + chunk, count))
            part = self.encode(ctx[rows] if ctx.ndim == 3 else ctx, rows)[0]
            (part * grad[rows]).sum().backward()
        return value.detach()

    @torch.no_grad()
    def encode_chunked(self, ctx: torch.Tensor, chunk: int = TEXT_CHUNK) -> torch.Tensor:
        """``encode`` without gradients, ``chunk`` classes at a time (1,000 classes fit)."""
        count = self.prefix.shape[0]
        parts = []
        for start in range(0, count, chunk):
            rows = torch.arange(start, min(start + chunk, count))
            parts.append(self.encode(ctx[rows] if ctx.ndim == 3 else ctx, rows)[0])
        return torch.cat(parts).cpu()


def init_context(
    access: PromptableText,
    n_ctx: int,
    init: str | None,
    generator: torch.Generator,
    classes: int | None = None,
) -> torch.Tensor:
    """Context (n_ctx, width), or (classes, n_ctx, width) when class-specific: the embeddings of
    ``init``'s tokens when it has exactly ``n_ctx`` of them, else N(0, 0.02^2) (CoOp's init)."""
    if init and access.count_tokens(init) == n_ctx:
        tokens = access.tokenize([init])
        with torch.no_grad():
            ctx = access.token_embedding(tokens.ids)[0, 1 : 1 + n_ctx].detach().clone().cpu()
    else:
        ctx = torch.randn(n_ctx, access.width, generator=generator) * 0.02
    if classes is not None:
        ctx = ctx.expand(classes, *ctx.shape).clone()
    return ctx.float().requires_grad_()


def _layout(n_ctx: int, name_lens: list[int], length: int, position: str) -> torch.Tensor:
    """Per class, the source position of each output position in [start, ctx, name, rest]."""
    rows = []
    for name_len in name_lens:
        ctx = list(range(1, 1 + n_ctx))
        name = list(range(1 + n_ctx, 1 + n_ctx + name_len))
        rest = list(range(1 + n_ctx + name_len, length))
        if position == "end":
            order = [0, *ctx, *name, *rest]
        elif position == "front":
            order = [0, *name, *ctx, *rest]
        else:
            half = n_ctx // 2
            order = [0, *ctx[:half], *name, *ctx[half:], *rest]
        rows.append(order)
    return torch.tensor(rows)
