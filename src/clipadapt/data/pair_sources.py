"""One entry point for image-text pairs from any source the ``clipadapt pairs`` command takes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipadapt.data.errors import DatasetError
from clipadapt.data.load import load_dataset
from clipadapt.data.pairs import (
    CountTokens,
    PairDataset,
    load_pairs_csv,
    merge_pairs,
    pairs_from_classes,
)

DEFAULT_PAIR_TEMPLATES = ("a photo of a {}.",)


def load_pairs(
    sources: Sequence[str | os.PathLike[str]],
    *,
    templates: Sequence[str] = DEFAULT_PAIR_TEMPLATES,
    one_per_image: bool = False,
    seed: int = 1,
    extract_dir: str | os.PathLike[str] | None = None,
    classnames_file: str | os.PathLike[str] | None = None,
    skip_bad: bool = False,
    count_tokens: CountTokens | None = None,
    max_tokens: int | None = None,
    **csv_options: Any,
) -> PairDataset:
    """Pairs from webdataset ``.tar`` shards (all sources, images extracted to
    ``extract_dir``), or from each source in turn, merged: a ``.csv`` of pairs, or a
    labelled dataset ``load_dataset`` reads (folders, domain folders, ``builtin:<name>``)
    captioned with ``templates`` (see ``pairs_from_classes``)."""
    if not sources:
        raise DatasetError("give at least one source of pairs")
    budget: dict[str, Any] = {"count_tokens": count_tokens, "max_tokens": max_tokens}
    tars = [str(s).lower().endswith(".tar") for s in sources]
    if any(tars):
        if not all(tars):
            raise DatasetError("give webdataset .tar shards alone, not mixed with other sources")
        if extract_dir is None:
            raise DatasetError(
                "webdataset shards need a folder to extract their images to (--extract-dir)"
            )
        from clipadapt.data.shards import load_pairs_webdataset

        return load_pairs_webdataset(sources, extract_dir, skip_bad=skip_bad, **budget)
    parts = []
    for source in sources:
        if Path(source).suffix.lower() == ".csv":
            parts.append(
                load_pairs_csv(
                    source,
                    classnames_file=classnames_file,
                    skip_bad=skip_bad,
                    **budget,
                    **csv_options,
                )
            )
            continue
        loaded = load_dataset(
            source, classnames_file=classnames_file, skip_bad=skip_bad, min_classes=1
        )
        for dataset in loaded.values() if isinstance(loaded, dict) else [loaded]:
            parts.append(
                pairs_from_classes(dataset, templates, one_per_image=one_per_image, seed=seed)
            )
    name = "+".join(Path(s).stem for s in sources)
    return parts[0] if len(parts) == 1 else merge_pairs(parts, name=name)
