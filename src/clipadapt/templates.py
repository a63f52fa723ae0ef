"""Prompt templates shipped with clipadapt (plain data, importable from every layer)."""

from __future__ import annotations

# A 12-template subset of CLIP's ImageNet ensemble, covering photos and depictions.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a drawing of a {}.",
    "a painting of a {}.",
    "a sketch of a {}.",
    "a cartoon of a {}.",
    "art of the {}.",
    "a close-up photo of the {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a {}.",
    "itap of a {}.",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "default": DEFAULT_TEMPLATES,
    "photo": ("a photo of a {}.",),
    "name": ("{}",),
}
