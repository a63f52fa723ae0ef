"""Human class names for prompts: from a classnames.json mapping, or derived from the keys."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from clipadapt.data.errors import DatasetError, quoted
from clipadapt.paths import display_path

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_DIGITS = {str(i): word for i, word in enumerate(DIGIT_WORDS)}


def default_classnames(class_ids: Sequence[str]) -> list[str]:
    """The class ids themselves, except that single digits 0-9 become English words.

    Digit folders (MNIST-style ``0``..``9``) read badly in prompts ("a photo of a 3"), so when
    every class id is a single digit they are named "zero".."nine". Bytes of a folder name
    that are not UTF-8 read ``\\xe9`` (``display_path``), so that prompts can be encoded.
    """
    if class_ids and all(cid in _DIGITS for cid in class_ids):
        return [_DIGITS[cid] for cid in class_ids]
    return [display_path(cid) for cid in class_ids]


def read_classnames_file(path: Path) -> dict[str, str]:
    """Read a JSON object mapping class keys (folder names, CSV labels) to human names."""
    example = '{"n02084071": "dog", "n02121808": "cat"}'
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DatasetError(f"cannot read classnames file {path}: {exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(
            f"classnames file {path} is not valid JSON ({exc}); it must map class keys to "
            f"names, e.g. {example}"
        ) from exc
    if not isinstance(data, dict):
        raise DatasetError(
            f"classnames file {path} holds a JSON {type(data).__name__}; it must be an object "
            f"mapping class keys to names, e.g. {example}"
        )
    bad = [k for k, v in data.items() if not isinstance(v, str) or not v.strip()]
    if bad:
        raise DatasetError(
            f"classnames file {path}: the name for key(s) {quoted(bad)} is not a non-empty "
            "string; give every class a name"
        )
    return {k: v.strip() for k, v in data.items()}


def resolve_classnames(
    class_ids: Sequence[str], mapping: Mapping[str, str] | None, source: str, keys: str
) -> list[str]:
    """Names for ``class_ids``: from ``mapping`` (read from ``source``) or ``default_classnames``.

    ``keys`` says what the class ids are (e.g. "class folders in /data/x"), for error messages.
    The mapping must name exactly the classes present, and names must be unique.
    """
    if mapping is None:
        return default_classnames(class_ids)
    unknown = sorted(set(mapping) - set(class_ids))
    if unknown:
        raise DatasetError(
            f"{source} names {quoted(unknown)}, which are not among the {keys} "
            f"({quoted(class_ids)}); remove those keys or fix their spelling"
        )
    missing = [cid for cid in class_ids if cid not in mapping]
    if missing:
        raise DatasetError(
            f"{source} has no name for {quoted(missing)} (from the {keys}); add an entry "
            f'such as {json.dumps(missing[0])}: "<name used in prompts>" for each'
        )
    names = [mapping[cid] for cid in class_ids]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise DatasetError(
            f"{source} gives the same name to several classes ({quoted(clashes)}); "
            "class names must be unique so that prompts can tell the classes apart"
        )
    return names
