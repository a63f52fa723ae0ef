"""NegLabel (Jiang et al., ICLR 2024): negative labels mined from a large English vocabulary.

Fit: embed every vocabulary noun with one prompt template, measure each candidate's
``percentile``-th percentile cosine similarity to the known class prompts (NegMining), and
keep the ``fraction`` of candidates with the lowest value (at most ``max_negatives``): words
far from every known class in text space. Words equal to a known class name or to one of its
words are never candidates.

Score: with ``s_i = cos(f, t_i) / tau`` for the known classes and ``n_j = cos(f, v_j) / tau``
for the negatives, the ID confidence is the softmax mass on the known labels,
``S = sum_i e^{s_i} / (sum_i e^{s_i} + sum_j e^{n_j})``, averaged over ``groups`` random
disjoint groups of negatives (the paper's grouping strategy). The OOD score is the mass on
the negatives, ``1 - S`` (the paper's ``-S`` plus one: the same ranking), computed in float64
log space so that a confident input keeps a tiny positive score instead of rounding to
``S = 1``.
The paper's settings: 15% of the candidates, the 95th percentile, 100 groups, tau = 0.01 for
CLIP (whose logit scale is 100); ``tau`` defaults to ``1 / logit_scale`` of the backend.

The vocabulary is the English nouns of the LemmInflect package (PyPI ``lemminflect``, MIT):
the lower-case alphabetic lemmas tagged ``noun`` in its inflection lexicon, itself built from
the NIH SPECIALIST Lexicon; about 19,000 words, read offline from the installed package.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
from collections.abc import Sequence
from functools import cache
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from clipadapt.feature_cache import FeatureCache
from clipadapt.methods.base import FitData
from clipadapt.models.base import TEXT_CHUNK, Backend
from clipadapt.ood.base import Detector, ScoreInput, TextEncoder

VOCABULARY_SOURCE = "lemminflect"
TEXT_VIEW = "text"  # the feature cache's "view" for text embeddings
_WORD = re.compile(r"[a-z]{3,}")


@cache
def english_nouns() -> tuple[str, ...]:
    """The sorted English noun lemmas shipped with LemmInflect (lower-case, 3+ letters)."""
    try:
        from lemminflect import config
    except ImportError as err:
        raise ImportError(
            "NegLabel's vocabulary comes from the PyPI package 'lemminflect': "
            "pip install lemminflect (or pass vocabulary=<file with one word per line>)"
        ) from err
    path = Path(config.inflection_lu_fn)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: lemminflect's lexicon is missing; reinstall lemminflect")
    nouns = set()
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            lemma, pos, *_ = line.rstrip("\n").split(",")
            if pos == "noun" and _WORD.fullmatch(lemma):
                nouns.add(lemma)
    return tuple(sorted(nouns))


def load_vocabulary(source: str | os.PathLike[str] | None = None) -> tuple[str, ...]:
    """``english_nouns()`` for ``None``/``"lemminflect"``, else a text file, one word a line."""
    if source is None or source == VOCABULARY_SOURCE:
        return english_nouns()
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(
            f"vocabulary {source!r}: not {VOCABULARY_SOURCE!r} nor a file with one word per line"
        )
    words = {line.strip().lower() for line in path.read_text(encoding="utf-8").splitlines()}
    return tuple(sorted(w for w in words if w))


def cached_text_encoder(
    backend: Backend, cache: FeatureCache | None = None, *, progress: bool = True
) -> TextEncoder:
    """``backend.encode_texts`` with a progress bar, through the feature cache if given.

    Embedding a vocabulary of ~20,000 prompts takes minutes on a CPU; cached, milliseconds.
    Texts are embedded ``TEXT_CHUNK`` at a time and each chunk is cached at once, so an
    interrupted run keeps what it did. The bar (``progress``) shows only while texts are
    being embedded and is cleared when they are done.
    """

    def encode(texts: list[str]) -> torch.Tensor:
        keys = {t: hashlib.sha256(t.encode()).hexdigest() for t in texts}
        model = backend.text_fingerprint if cache else ""
        found = cache.get_many(model, TEXT_VIEW, list(keys.values())) if cache else {}
        todo = [t for t, k in keys.items() if k not in found]
        with tqdm(
            total=len(todo),
            desc=f"embed texts {backend.info.spec}",
            unit="text",
            leave=False,
            disable=not (progress and todo),
        ) as bar:
            for start in range(0, len(todo), TEXT_CHUNK):
                chunk = todo[start : start + TEXT_CHUNK]
                vectors = backend.encode_texts(chunk).numpy()
                new = [(keys[t], v) for t, v in zip(chunk, vectors, strict=True)]
                if cache is not None:
                    cache.put_many(model, backend.info.spec, TEXT_VIEW, new)
                found |= dict(new)
                bar.update(len(chunk))
        return torch.from_numpy(np.stack([found[keys[t]] for t in texts]).astype(np.float32))

    return encode


def excluded_words(classnames: Sequence[str]) -> set[str]:
    """Each class name, lower-cased, and every word in it."""
    names = {name.lower().strip() for name in classnames}
    return names | {word for name in names for word in re.findall(r"[a-z]+", name)}


class NegLabel(Detector):
    """Known labels against mined negative labels, grouped (see the module docstring)."""

    name = "neglabel"
    uses = frozenset({ScoreInput.FEATURES})
    score_version = 2  # 1: -S in float32

    def __init__(
        self,
        template: str = "a photo of a {}.",
        fraction: float = 0.15,
        max_negatives: int = 10000,
        percentile: float = 0.95,
        groups: int = 100,
        temperature: float | None = None,
        vocabulary: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if "{}" not in template:
            raise ValueError(f"neglabel: template {template!r} needs '{{}}' for the word")
        if not 0 < fraction <= 1 or not 0 <= percentile <= 1:
            raise ValueError("neglabel: fraction must be in (0, 1] and percentile in [0, 1]")
        if groups < 1 or max_negatives < 1:
            raise ValueError("neglabel: groups and max_negatives must be positive")
        if temperature is not None and not temperature > 0:
            raise ValueError(f"neglabel: temperature must be positive, got {temperature}")
        self.template = template
        self.fraction = float(fraction)
        self.max_negatives = int(max_negatives)
        self.percentile = float(percentile)
        self.groups = int(groups)
        self.temperature = temperature
        self.vocabulary = vocabulary
        self.seed = int(seed)

    def _fit(self, data: FitData, *, encode_texts: TextEncoder | None = None) -> None:
        if encode_texts is None:
            raise ValueError(
                "neglabel: fit needs encode_texts (e.g. backend.encode_texts, or "
                "clipadapt.ood.neglabel.cached_text_encoder(backend, cache)) to embed its "
                "vocabulary"
            )
        excluded = excluded_words(data.classnames)
        words = [w for w in load_vocabulary(self.vocabulary) if w not in excluded]
        if not words:
            raise ValueError("neglabel: the vocabulary has no word besides the class names")
        keep = min(max(round(self.fraction * len(words)), 1), self.max_negatives)
        prompts = [self.template.format(c) for c in data.classnames]
        known = F.normalize(encode_texts(prompts), dim=-1)
        candidates = F.normalize(encode_texts([self.template.format(w) for w in words]), dim=-1)
        closeness = torch.quantile(candidates @ known.T, self.percentile, dim=-1)
        chosen = torch.argsort(closeness, stable=True)[:keep]
        self.set_state(
            known=known,
            negatives=candidates[chosen],
            temperature=torch.tensor(self.temperature or 1.0 / data.logit_scale),
        )
        self.info = {
            "vocabulary_source": self.vocabulary or f"{VOCABULARY_SOURCE} {version('lemminflect')}",
            "vocabulary_size": len(words),
            "negative_labels": [words[i] for i in chosen.tolist()],
        }

    def _score(self, features, logits, local_features) -> torch.Tensor:
        tau = self.state("temperature").double()
        negatives = self.state("negatives")
        groups = min(self.groups, len(negatives))
        order = torch.randperm(len(negatives), generator=torch.Generator().manual_seed(self.seed))
        order = order[: len(order) - len(order) % groups].view(groups, -1)
        known = (features @ self.state("known").T).double() / tau  # (N, C)
        negative = (features @ negatives.T).double()[:, order] / tau  # (N, G, M/G)
        negative_mass = torch.logsumexp(negative, dim=-1)  # (N, G)
        known_mass = torch.logsumexp(known, dim=-1, keepdim=True)  # (N, 1)
        total = torch.logaddexp(known_mass, negative_mass)  # (N, G)
        return (negative_mass - total).exp().mean(dim=-1)
