"""Prompt templates, per-class descriptions (CuPL-style) and ensembling into class embeddings."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from clipadapt.models.base import Backend
from clipadapt.templates import TEMPLATE_SETS


@dataclass(frozen=True)
class PromptSet:
    """Templates applied to every class, plus optional extra sentences for some classes."""

    templates: tuple[str, ...]
    descriptions: dict[str, list[str]] = field(default_factory=dict)
    source: str = "default"

    def texts_for(self, classname: str) -> list[str]:
        return [t.format(classname) for t in self.templates] + self.descriptions.get(classname, [])


def load_templates(spec: str) -> tuple[tuple[str, ...], str]:
    """A named template set (``default``, ``photo``, ``name``) or a JSON/text file of templates."""
    if spec in TEMPLATE_SETS:
        return TEMPLATE_SETS[spec], spec
    path = Path(spec)
    if not path.is_file():
        raise ValueError(
            f"templates {spec!r}: not a known set ({', '.join(TEMPLATE_SETS)}) nor a file; "
            "pass a set name, a .json list of strings or a text file with one template per line"
        )
    if path.suffix == ".json":
        templates = json.loads(path.read_text())
    else:
        templates = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not isinstance(templates, list) or not templates:
        raise ValueError(f"{path}: expected a non-empty list of template strings")
    for t in templates:
        if not isinstance(t, str) or "{}" not in t:
            raise ValueError(
                f"{path}: template {t!r} must be a string containing '{{}}' for the class"
            )
    return tuple(templates), str(path)


def load_descriptions(path: str | Path, classnames: list[str]) -> dict[str, list[str]]:
    """A CuPL-style JSON ``{classname: [sentence, ...]}``; every key must be a known class."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read descriptions JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object mapping class names to lists of sentences")
    unknown = sorted(set(data) - set(classnames))
    if unknown:
        raise ValueError(
            f"{path}: unknown class names {unknown}; the dataset's classes are {classnames}"
        )
    for name, sentences in data.items():
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            raise ValueError(f"{path}: the value for {name!r} must be a list of strings")
    return {name: list(sentences) for name, sentences in data.items()}


def make_prompt_set(
    templates: str = "default", descriptions: str | Path | None = None, classnames: list[str] = ()
) -> PromptSet:
    chosen, source = load_templates(templates)
    desc = load_descriptions(descriptions, list(classnames)) if descriptions else {}
    return PromptSet(templates=chosen, descriptions=desc, source=source)


def class_embeddings(backend: Backend, classnames: list[str], prompts: PromptSet) -> torch.Tensor:
    """Zero-shot classifier: per class, the normalised mean of its normalised prompt embeddings."""
    texts: list[str] = []
    owners: list[int] = []
    for c, name in enumerate(classnames):
        class_texts = prompts.texts_for(name)
        texts += class_texts
        owners += [c] * len(class_texts)
    embedded = backend.encode_texts(texts)
    index = torch.tensor(owners)
    sums = torch.zeros(len(classnames), embedded.shape[1]).index_add_(0, index, embedded)
    return nn.functional.normalize(sums, dim=-1)
