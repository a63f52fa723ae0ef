"""NegLabel's vocabulary embedding: a progress bar while it runs, none left behind, and
the work done before an interruption kept in the cache."""

from __future__ import annotations

import hashlib

import pytest
import torch

from clipadapt.feature_cache import FeatureCache
from clipadapt.models.base import TEXT_CHUNK
from clipadapt.ood.neglabel import TEXT_VIEW, cached_text_encoder
from tests.conftest import FakeBackend

TEXTS = [f"a photo of a word{i}." for i in range(2 * TEXT_CHUNK + 88)]


def _last_line(err: str) -> str:
    """What stays on screen on the bar's line: the text after the last carriage return."""
    return err.rsplit("\r", 1)[-1].strip()


def test_vocabulary_embedding_shows_a_bar_and_clears_it(tmp_path, capsys) -> None:
    backend = FakeBackend()
    encode = cached_text_encoder(backend, FeatureCache(tmp_path / "cache"))
    out = encode(TEXTS)
    err = capsys.readouterr().err
    assert f"embed texts fake0:   0%|          | 0/{len(TEXTS)}" in err
    assert _last_line(err) == ""
    assert torch.allclose(out, backend.encode_texts(TEXTS), atol=1e-6)
    assert torch.equal(encode(TEXTS), out)  # from the cache, silently
    quiet = cached_text_encoder(backend, None, progress=False)
    assert torch.allclose(quiet(TEXTS), out, atol=1e-6)
    assert capsys.readouterr().err == ""


def test_interrupted_embedding_keeps_finished_chunks_and_clears_the_bar(tmp_path, capsys) -> None:
    backend, cache = FakeBackend(), FeatureCache(tmp_path / "cache")
    encode_texts, calls = backend.encode_texts, []

    def interrupted_on_second_chunk(texts: list[str]) -> torch.Tensor:
        calls.append(len(texts))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return encode_texts(texts)

    backend.encode_texts = interrupted_on_second_chunk
    with pytest.raises(KeyboardInterrupt):
        cached_text_encoder(backend, cache)(TEXTS)
    assert _last_line(capsys.readouterr().err) == ""
    keys = [hashlib.sha256(t.encode()).hexdigest() for t in TEXTS]
    assert len(cache.get_many(backend.text_fingerprint, TEXT_VIEW, keys)) == TEXT_CHUNK
