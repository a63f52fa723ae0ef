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
