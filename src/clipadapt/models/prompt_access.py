"""Token-level access to a backend's text tower, for methods that learn prompts or adapters.

One small interface, :class:`PromptableText`, implemented over the modules each backend
already loaded (no copy of any model file):

* ``tokenize(texts)`` -> :class:`Tokens` (ids and a real-token mask, padded to the longest);
* ``token_embedding(ids)`` -> input embeddings (N, L, width);
* ``encode_embedded(embeds, tokens)`` -> unnormalised shared-space embeddings (N, D),
  differentiable in ``embeds`` and in the tower's weights.

Prompt learners edit the embeddings of placeholder tokens and keep ``tokens`` for the parts
the tower reads from ids (the end-of-text position, the padding mask).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from clipadapt.models.base import Backend


@dataclass
class Tokens:
    """Token ids (N, L) and a mask (N, L) of real tokens (specials included, padding not)."""

    ids: torch.Tensor
    mask: torch.Tensor

    def __getitem__(self, rows: slice | torch.Tensor) -> Tokens:
        return Tokens(self.ids[rows], self.mask[rows])


class PromptableText(ABC):
    """A text tower opened up at the token-embedding level."""

    max_length: int  # positions the tower can take, special tokens included
    width: int  # token embedding width
    specials: int  # special tokens around the text (start + end)
    module: nn.Module  # the tower's modules (to freeze, or to wrap with adapters)

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @abstractmethod
    def _ids(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids and mask padded to at least the longest text, without truncation."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` without the special ones."""

    @abstractmethod
    def token_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings (N, L, width) of ids (N, L)."""

    @abstractmethod
    def encode_embedded(self, embeds: torch.Tensor, tokens: Tokens) -> torch.Tensor:
        """Unnormalised shared-space embeddings (N, D) of input embeddings (N, L, width)."""

    def tokenize(self, texts: list[str]) -> Tokens:
        """Tokens padded to the longest text; a text longer than ``max_length`` is an error."""
        longest = max(self.count_tokens(t) for t in texts) + self.specials
        if longest > self.max_length:
            raise ValueError(
                f"{self.backend.info.spec}: a prompt needs {longest} tokens but the text tower "
                f"takes at most {self.max_length}"
            )
        ids, mask = self._ids(texts)
        length = int(mask.sum(1).max())
        device = self.backend.device
        return Tokens(ids[:, :length].to(device), mask[:, :length].to(device))


class _HFTokenized(PromptableText):
    """Text towers tokenised by a Hugging Face tokenizer (``self.tokenizer``)."""

    tokenizer: Any

    def _ids(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.tokenizer(texts, padding=True, return_tensors="pt")
        return out["input_ids"], out["attention_mask"]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.tokenize(text))


class LiteText(_HFTokenized):
    """The built-in MiniLM tower: BERT word embeddings, mean pooling, the kernel map."""

    specials = 2  # [CLS] ... [SEP]

    def __init__(self, backend: Backend) -> None:
        from clipadapt.models.minilm import MAX_TOKENS

        super().__init__(backend)
        tower = backend.text_tower
        self.tokenizer = tower.tokenizer
        self.bert = tower.bert
        self.module = tower
        self.max_length = MAX_TOKENS
        self.width = int(self.bert.config.hidden_size)

    def token_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        return self.bert.embeddings.word_embeddings(ids)

    def encode_embedded(self, embeds: torch.Tensor, tokens: Tokens) -> torch.Tensor:
        from clipadapt.models.minilm import mean_pool

        hidden = self.bert(inputs_embeds=embeds, attention_mask=tokens.mask).last_hidden_state
        text = nn.functional.normalize(mean_pool(hidden, tokens.mask), dim=-1)
        return self.backend.alignment.map_texts(text, self.backend.head.to(text.device))


class OpenClipText(PromptableText):
    """open_clip's built-in text transformer (``CLIP``, or ``CustomTextCLIP.text``)."""

    specials = 2  # <start_of_text> ... <end_of_text>

    def __init__(self, backend: Backend) -> None:
        super().__init__(backend)
        model = backend.model
        tower = getattr(model, "text", model)
        needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
        missing = [name for name in needed if not hasattr(tower, name)]
        if missing or not hasattr(backend.tokenizer, "encode"):
            raise NotImplementedError(
                f"{backend.info.spec}: prompt learning needs open_clip's own text transformer "
                f"and BPE tokenizer; this model's text tower lacks {missing or 'a BPE tokenizer'}"
            )
        self.tower = tower
        self.module = tower
        self.tokenizer = backend.tokenizer
        self.max_length = int(tower.positional_embedding.shape[0])
        self.width = int(tower.token_embedding.weight.shape[1])

    def _ids(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.tokenizer(texts)
        return ids, (ids != 0).long()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def token_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tower.token_embedding(ids)

    def encode_embedded(self, embeds: torch.Tensor, tokens: Tokens) -> torch.Tensor:
        from open_clip.transformer import text_global_pool

        tower, length = self.tower, embeds.shape[1]
        x = embeds + tower.positional_embedding[:length].to(embeds.dtype)
        mask = tower.attn_mask[:length, :length] if tower.attn_mask is not None else None
        x = tower.ln_final(tower.transformer(x, attn_mask=mask))
        pool = getattr(tower, "text_pool_type", getattr(tower, "pool_type", "argmax"))
        x = text_global_pool(x, tokens.ids, pool, eos_token_id=getattr(tower, "text_eos_id", None))
        projection = tower.text_projection
        if projection is None:
            return x
        return projection(x) if isinstance(projection, nn.Linear) else x @ projection


class HFText(_HFTokenized):
    """transformers' CLIPModel: its text model, fed input embeddings, and text projection."""

    specials = 2

    def __init__(self, backend: Backend) -> None:
        super().__init__(backend)
        model = backend.model
        self.text_model = model.text_model
        self.projection = model.text_projection
        self.tokenizer = backend.tokenizer
        self.module = nn.ModuleList([model.text_model, model.text_projection])
        self.max_length = int(model.config.text_config.max_position_embeddings)
        self.width = int(model.config.text_config.hidden_size)

    def token_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_model.embeddings.token_embedding(ids)

    def encode_embedded(self, embeds: torch.Tensor, tokens: Tokens) -> torch.Tensor:
        with _replace_token_embeddings(self.text_model.embeddings, embeds):
            out = self.text_model(input_ids=tokens.ids, attention_mask=tokens.mask)
        return self.projection(out.pooler_output)


@contextmanager
def _replace_token_embeddings(embeddings: nn.Module, embeds: torch.Tensor) -> Iterator[None]:
    """Make the embedding layer return ``embeds`` plus its position embeddings.

    transformers' text model finds the end-of-text position from the ids, so the ids still go
    in; only their lookup is replaced.
    """

    def hook(module: nn.Module, args, kwargs, output: torch.Tensor) -> torch.Tensor:
        positions = module.position_ids[:, : embeds.shape[1]]
        return embeds + module.position_embedding(positions)

    handle = embeddings.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def promptable_text(backend: Backend) -> PromptableText:
    """The token-level text access for ``backend``; a clear error for unsupported backends."""
    from clipadapt.models.hf_backend import HFClipBackend
    from clipadapt.models.lite import LiteBackend
    from clipadapt.models.open_clip_backend import OpenClipBackend

    for kind, access in (
        (LiteBackend, LiteText),
        (OpenClipBackend, OpenClipText),
        (HFClipBackend, HFText),
    ):
        if isinstance(backend, kind):
            return access(backend)
    raise NotImplementedError(
        f"{type(backend).__name__} ({backend.info.spec}) gives no token-level text access; "
        "prompt methods support the lite, open_clip and Hugging Face CLIP backends"
    )


def vit_image_tower(
    backend: Backend,
    method: str,
    purpose: str = "inserts prompts into",
    alternative: str = "an open_clip ViT model",
) -> nn.Module:
    """The open_clip ``VisionTransformer`` of ``backend``, or an error naming ``method``
    (which ``purpose`` a ViT image tower; ``alternative`` models it supports)."""
    from open_clip.transformer import VisionTransformer

    visual = getattr(getattr(backend, "model", None), "visual", None)
    if not isinstance(visual, VisionTransformer):
        if visual is not None:
            tower = type(visual).__name__
        elif hasattr(backend, "image_tower"):
            tower = f"a CNN ({type(backend.image_tower).__name__})"
        else:
            tower = "no open_clip image tower"
        raise ValueError(
            f"{method} {purpose} a ViT image tower, but {backend.info.spec} has "
            f"{tower}; use {alternative}, or pixel-space visual prompts "
            "('visual_prompt'), which work on any tower"
        )
    return visual


def backend_modules(backend: Backend) -> nn.Module:
    """All of ``backend``'s trainable modules (to freeze them while training prompts)."""
    if hasattr(backend, "model"):
        return backend.model
    return nn.ModuleList([backend.image_tower, backend.text_tower])
