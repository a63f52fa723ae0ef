"""Where clipadapt keeps files it can rebuild (materialised datasets, feature caches)."""

from __future__ import annotations

import os
from pathlib import Path


def clipadapt_cache_dir() -> Path:
    """``$CLIPADAPT_CACHE_DIR``, else ``$XDG_CACHE_HOME/clipadapt``, else ``~/.cache/clipadapt``."""
    if explicit := os.environ.get("CLIPADAPT_CACHE_DIR"):
        return Path(explicit).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "clipadapt"
    return Path.home() / ".cache" / "clipadapt"


def display_path(path: str | bytes | os.PathLike[str]) -> str:
    """``path`` as text that always prints and encodes as UTF-8, for messages and CSV cells.

    A file name that is not valid UTF-8 reaches Python as a ``str`` with surrogate escapes,
    which ``print``, ``str.encode`` and UTF-8 files reject; here its undecodable bytes show
    as ``\\xff``. Keep the original ``str`` wherever the file must be found again (JSON from
    ``json.dumps`` and ``clipadapt.atomic.atomic_write_text`` round-trip it exactly).
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")
