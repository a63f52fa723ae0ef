"""Report tables: one ``Table`` type, one number format, one renderer per output format
(Markdown, HTML, CSV) for every section of ``clipadapt report``."""

from __future__ import annotations

import csv
import html
import io
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(
    values: Sequence[float] | None,
    max_seeds: int | None = None,
    *,
    scale: float = 100.0,
    digits: int = 1,
) -> str:
    """ "mean ± std" over seeds of ``values * scale`` (percent by default); "" when there is no
    entry, "n/a" when it is not applicable; "(n seeds)" when fewer seeds than ``max_seeds``
    contributed."""
    if values is None:
        return ""
    if not values:
        return "n/a"
    mean, std = mean_std(values)
    text = f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"
    n = len(values)
    if max_seeds is None or n == max_seeds:
        return text
    return f"{text} ({n} seed{'s' if n > 1 else ''})"


def markdown(table: Table) -> str:
    rows = [table.header, ["---"] * len(table.header), *table.rows]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in table.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def csv_text(columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
