"""CSV files of image paths with labels and/or captions (open_clip's ``filepath``, ``title``)."""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from clipadapt.data.classnames import read_classnames_file, resolve_classnames
from clipadapt.data.dataset import CLASS_DROPPED, UNLABELED, ImageDataset, Sample
from clipadapt.data.errors import DatasetError, quoted
from clipadapt.paths import display_path

DEFAULT_LABEL_COLUMN = "label"
DEFAULT_CAPTION_COLUMN = "title"


def load_csv(
    csv_path: str | os.PathLike[str],
    *,
    path_column: str = "filepath",
    label_column: str = DEFAULT_LABEL_COLUMN,
    caption_column: str = DEFAULT_CAPTION_COLUMN,
    sep: str = ",",
    classnames_file: str | os.PathLike[str] | None = None,
    skip_bad: bool = False,
    several_captions: bool = False,
    check_caption: Callable[[str], str | None] | None = None,
) -> ImageDataset:
    """Load a CSV (UTF-8, header row) with one image per row.

    Relative paths resolve against the CSV's folder, which becomes the dataset root. The
    CSV may have labels, captions or both: the default label and caption columns are each
    optional (at least one must exist), while a column named explicitly must exist. Classes
    are the distinct labels, sorted as strings; names come from ``classnames_file`` (a JSON
    object mapping each label to a name) or, without one, are the labels themselves (single
    digits become "zero".."nine"). Caption-only rows get ``label == UNLABELED``.

    A row with an empty path or label, a missing or empty (0-byte) file, or (in a labelled
    CSV) the same image as an earlier row is an error naming the line; with ``skip_bad`` the
    row is skipped and recorded in ``dataset.skipped``, and so is a label none of whose rows
    was usable (reason ``class dropped: ...``). Images are not decoded here.

    For image-text pairs, ``several_captions`` requires the caption column and lets an image
    appear on several rows (one caption each; a labelled image must keep its label), and
    ``check_caption(caption)`` returns why a row's caption is unusable, or ``None``; such a
    row is an error or skipped like any other bad row.
    """
    csv_path = Path(os.path.abspath(csv_path))
    if len(sep) != 1:
        raise DatasetError(f"the CSV separator must be one character, got {sep!r}")
    if not csv_path.is_file():
        raise DatasetError(f"CSV file {csv_path} does not exist or is not a file")
    base = csv_path.parent
    rows: list[tuple[Path, str | None, str | None]] = []
    skipped: list[dict] = []

    def reject(line: int, path_text: str, reason: str) -> None:
        if not skip_bad:
            raise DatasetError(
                f"{csv_path}, line {line}: {reason}; fix or remove the row, "
                "or pass --skip-bad to skip it"
            )
        skipped.append({"path": path_text, "reason": f"{csv_path.name} line {line}: {reason}"})

    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, delimiter=sep)
            has_label, has_caption = _check_columns(
                csv_path, reader.fieldnames, path_column, label_column, caption_column, sep
            )
            if several_captions and not has_caption:
                raise DatasetError(
                    f"{csv_path} has no caption column {caption_column!r}; name it with "
                    "--caption-column, or the separator with --csv-sep"
                )
            first_line: dict[Path, tuple[int, str | None]] = {}
            rows_per_label: Counter[str] = Counter()
            for row in reader:
                line = reader.line_num
                path_text = (row.get(path_column) or "").strip()
                label = (row.get(label_column) or "").strip() if has_label else None
                caption = ((row.get(caption_column) or "").strip() or None) if has_caption else None
                path = Path(os.path.abspath(base / path_text))
                if label:
                    rows_per_label[label] += 1
                if not path_text:
                    reject(line, path_text, f"empty {path_column!r}")
                elif not path.is_file():
                    reject(
                        line,
                        path_text,
                        f"image file {path_text!r} not found (looked for {path}; relative "
                        f"paths resolve against the CSV's folder {base})",
                    )
                elif path.stat().st_size == 0:
                    reject(line, path_text, f"image file {path} is empty (0 bytes)")
                elif label == "":
                    reject(line, path_text, f"empty {label_column!r}")
                elif has_label and not several_captions and path in first_line:
                    reject(
                        line,
                        path_text,
                        f"{path_text!r} was already listed on line {first_line[path][0]}; a "
                        "labelled image must appear once, or it could land in both train and test",
                    )
                elif path in first_line and first_line[path][1] != label:
                    earlier, earlier_label = first_line[path]
                    reject(
                        line,
                        path_text,
                        f"{path_text!r} is labelled {label!r} here but {earlier_label!r} on line "
                        f"{earlier}; an image has one label",
                    )
                elif check_caption is not None and (problem := check_caption(caption or "")):
                    reject(line, path_text, problem)
                else:
                    first_line.setdefault(path, (line, label))
                    rows.append((path, label, caption))
    except csv.Error as exc:
        raise DatasetError(f"{csv_path} is not a readable CSV ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{csv_path} is not UTF-8 text ({exc}); save it as UTF-8") from exc
    kept = Counter(label for _, label, _ in rows)
    skipped += [
        {
            "path": display_path(csv_path),
            "reason": f"{CLASS_DROPPED}: no usable row of {n} for {label!r}",
        }
        for label, n in sorted(rows_per_label.items())
        if not kept[label]
    ]
    if not rows:
        raise DatasetError(f"{csv_path} lists no usable images")

    class_ids = sorted({label for _, label, _ in rows if label is not None})
    names_file = None if classnames_file is None else Path(os.path.abspath(classnames_file))
    mapping = None if names_file is None else read_classnames_file(names_file)
    classnames = resolve_classnames(
        class_ids, mapping, f"classnames file {names_file}", f"labels in {csv_path}"
    )
    index = {cid: i for i, cid in enumerate(class_ids)}
    samples = [
        Sample(path, UNLABELED if label is None else index[label], caption)
        for path, label, caption in rows
    ]
    return ImageDataset(csv_path.stem, base, class_ids, classnames, samples, skipped)


def _check_columns(
    csv_path: Path,
    columns: list[str] | None,
    path_column: str,
    label_column: str,
    caption_column: str,
    sep: str,
) -> tuple[bool, bool]:
    """Which of the label and caption columns exist; errors for missing required ones."""
    if not columns:
        raise DatasetError(
            f"{csv_path} is empty; expected a header row such as "
            f"{sep.join([path_column, label_column])}"
        )
    has = f"(its columns, split on {sep!r}: {quoted(columns)})"
    if path_column not in columns:
        raise DatasetError(
            f"{csv_path} has no column {path_column!r} for image paths {has}; "
            "name the right column with --path-column, or the separator with --csv-sep"
        )
    for column, default, option in (
        (label_column, DEFAULT_LABEL_COLUMN, "--label-column"),
        (caption_column, DEFAULT_CAPTION_COLUMN, "--caption-column"),
    ):
        if column != default and column not in columns:
            raise DatasetError(f"{csv_path} has no column {column!r} {has}; fix {option}")
    has_label, has_caption = label_column in columns, caption_column in columns
    if not (has_label or has_caption):
        raise DatasetError(
            f"{csv_path} has neither a label column {label_column!r} nor a caption column "
            f"{caption_column!r} {has}; name them with --label-column / --caption-column"
        )
    return has_label, has_caption
