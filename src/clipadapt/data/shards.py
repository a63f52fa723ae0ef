"""Image-text pairs from webdataset tar shards (open_clip's training format, img2dataset's output).

A sample is the files of one key: an image ``<key>.jpg|jpeg|png|webp`` and a caption,
``<key>.txt`` or ``<key>.json`` with a ``"caption"`` field. The shards are read once, in
order, through the ``webdataset`` package (the optional extra ``clipadapt[pairs]``), and
every image is written to ``extract_dir`` as ``<sha256>.<ext>``. Extracting to files, not
memory, lets the rest of clipadapt (feature cache keyed by content, splits, dedup by
sha256) treat these pairs like any other; naming files by content means a re-run writes
nothing new and identical images in the shards become one image (one group).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipadapt.atomic import atomic_write
from clipadapt.data.dataset import UNLABELED
from clipadapt.data.errors import DatasetError
from clipadapt.data.pairs import CountTokens, PairDataset, caption_checker, make_pair_dataset

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
CAPTION_KEYS = ("txt", "json")


def load_pairs_webdataset(
    shards: Sequence[str | os.PathLike[str]],
    extract_dir: str | os.PathLike[str],
    *,
    skip_bad: bool = False,
    count_tokens: CountTokens | None = None,
    max_tokens: int | None = None,
) -> PairDataset:
    """Pairs from local webdataset ``shards`` (tar files), images extracted to ``extract_dir``.

    A sample without an image or a caption, or with an unusable caption (see
    ``caption_checker``), is a ``DatasetError`` naming the shard and key, or with
    ``skip_bad`` is skipped and listed as ``<shard>#<key>``.
    """
    try:
        import webdataset as wds
    except ImportError as exc:
        raise DatasetError(
            "reading webdataset shards needs the 'webdataset' package: "
            "pip install 'clipadapt[pairs]'"
        ) from exc
    if not shards:
        raise DatasetError("give at least one webdataset shard (.tar)")
    paths = [Path(os.path.abspath(s)) for s in shards]
    for path in paths:
        if not path.is_file():
            raise DatasetError(f"webdataset shard {path} does not exist or is not a file")
    check = caption_checker(count_tokens, max_tokens)
    out = Path(os.path.abspath(extract_dir))
    rows: list[tuple[Path, str, int]] = []
    skipped: list[dict] = []
    samples = wds.WebDataset(
        [str(p) for p in paths],
        shardshuffle=False,
        empty_check=False,
        nodesplitter=None,
        workersplitter=None,
    )
    try:
        for sample in samples:
            where = f"{sample.get('__url__')}#{sample.get('__key__')}"
            image_key = next((k for k in IMAGE_KEYS if k in sample), None)
            caption, problem = _caption(sample)
            if image_key is None:
                problem = f"no image ({', '.join('.' + k for k in IMAGE_KEYS)})"
            problem = problem or check(caption)
            if problem:
                if not skip_bad:
                    raise DatasetError(
                        f"webdataset sample {where}: {problem}; fix the shard, or pass "
                        "--skip-bad to skip the sample"
                    )
                skipped.append({"path": where, "reason": problem})
                continue
            rows.append((_extract(sample[image_key], image_key, out), caption.strip(), UNLABELED))
    except DatasetError:
        raise
    except Exception as exc:  # tarfile and webdataset raise many types for a broken shard
        raise DatasetError(
            f"cannot read webdataset shards {', '.join(map(str, paths))} "
            f"({type(exc).__name__}: {exc}); check they are tar files"
        ) from exc
    if not rows:
        raise DatasetError(f"webdataset shards {', '.join(map(str, paths))} hold no usable pairs")
    return make_pair_dataset(paths[0].stem, out, rows, (), skipped)


def _caption(sample: dict[str, Any]) -> tuple[str, str | None]:
    """The sample's caption text and why it cannot be read (or None)."""
    try:
        if "txt" in sample:
            return sample["txt"].decode("utf-8"), None
        if "json" in sample:
            caption = json.loads(sample["json"]).get("caption")
            if isinstance(caption, str):
                return caption, None
            return "", "its .json has no string field 'caption'"
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        return "", f"unreadable caption ({type(exc).__name__}: {exc})"
    return "", f"no caption ({', '.join('.' + k for k in CAPTION_KEYS)})"


def _extract(data: bytes, ext: str, folder: Path) -> Path:
    """Write ``data`` as ``folder/<sha256>.<ext>`` unless that file already holds it."""
    target = folder / f"{hashlib.sha256(data).hexdigest()}.{ext}"
    if target.is_file() and target.read_bytes() == data:
        return target
    atomic_write(target, lambda tmp: tmp.write_bytes(data))
    return target
