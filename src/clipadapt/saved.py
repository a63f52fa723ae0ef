"""Saved directories without torch: reading ``config.json``, and where ``adapt`` may write.

The CLI checks an ``--out`` directory and reads a saved config with these before any model
or tensor library loads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FORMAT_VERSION = 2
"""2: ``config.json`` keeps the constructor arguments under ``params`` and the values in use
under ``hyperparameters``."""
CONFIG_FILE = "config.json"
REBUILD = "re-run clipadapt adapt to rebuild the model directory"
ADAPTED_FORMAT = "clipadapt.adapted/1"
FINETUNED_FORMAT = "clipadapt.finetuned/1"
FINETUNED_KEY = "finetuned"
FINETUNE_CHECKPOINT = ".clipadapt-finetune.ckpt"
"""Written into a ``finetune --out`` directory after every epoch, removed once it is saved."""


def read_config(directory: Path, *required: str) -> dict[str, Any]:
    """Read and check a saved method's ``config.json``, which must hold the keys ``required``."""
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path}: not found; is {directory} a saved clipadapt model?"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{config_path}: not readable JSON ({err}); {REBUILD}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: holds {type(config).__name__}, not an object; {REBUILD}")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{config_path}: format_version {version!r} is not {FORMAT_VERSION}; "
            "re-fit the model with this clipadapt version"
        )
    missing = [key for key in required if key not in config]
    if missing:
        raise ValueError(f"{config_path}: lacks {', '.join(map(repr, missing))}; {REBUILD}")
    return config


def check_model_dir(out: str | os.PathLike[str], *, finetuned: bool = False) -> Path:
    """Where ``adapt`` (``finetune`` with ``finetuned``) may write a model: a new path, an
    empty directory, or a directory that holds a model that command wrote (replaced whole).
    Anything else is refused, before any work is done: the user's own files are never
    deleted."""
    target = Path(out)
    if target.resolve() == Path.cwd().resolve() or target.name in ("", ".", ".."):
        raise ValueError(f"--out {out}: name a directory for the model, not '{out}' itself")
    if target.exists() and not target.is_dir():
        raise ValueError(f"--out {out} is a file; name a new or empty directory for the model")
    ours = is_finetuned_dir if finetuned else is_adapted_dir
    resumable = (
        finetuned
        and target.is_dir()
        and all(  # a killed run's checkpoint only
            p.name.lstrip(".").startswith(FINETUNE_CHECKPOINT.lstrip(".")) for p in target.iterdir()
        )
    )
    if target.is_dir() and any(target.iterdir()) and not (ours(target) or resumable):
        raise ValueError(
            f"--out {out} holds files that are not a clipadapt model; choose a new or empty "
            "directory (nothing was changed)"
        )
    return target


def is_adapted_dir(directory: Path) -> bool:
    """True when ``directory/config.json`` records a model written by ``adapt``."""
    return _records(directory, "adapted", ADAPTED_FORMAT)


def is_finetuned_dir(directory: Path) -> bool:
    """True when ``directory/config.json`` records a model written by ``finetune``."""
    return _records(directory, FINETUNED_KEY, FINETUNED_FORMAT)


def _records(directory: Path, key: str, form: str) -> bool:
    try:
        info = read_config(directory).get(key)
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("format") == form
