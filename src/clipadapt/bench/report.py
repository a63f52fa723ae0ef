"""``clipadapt report``: bench results -> ``table.csv``, ``table.md`` and ``report.html``.

Accuracies are acc1 in percent, mean ± sample standard deviation over seeds. The HTML file
is self-contained (figures embedded as base64 PNG); the figures are also written as PNG
files under ``figures/``.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipadapt.atomic import atomic_write, atomic_write_json, atomic_write_text
from clipadapt.bench import plots
from clipadapt.bench.aggregate import (
    DERIVED_TARGETS,
    PRIMARY_ROLES,
    ROLE_TITLES,
    TRANSDUCTIVE,
    Cell,
    Key,
    aggregate,
    load_results,
    ordered,
    source_label,
)
from clipadapt.bench.calibration_report import (
    CALIBRATION_NOTE,
    ROBUSTNESS_NOTE,
    CalibrationSection,
    calibration_csv_rows,
    calibration_figures,
    calibration_tables,
    make_calibration_sections,
)
from clipadapt.bench.calibration_report import CSV_COLUMNS as CALIBRATION_CSV_COLUMNS
from clipadapt.bench.ood_report import CSV_COLUMNS as OOD_CSV_COLUMNS
from clipadapt.bench.ood_report import (
    OodSection,
    make_ood_sections,
    ood_csv_rows,
    ood_figures,
    ood_results,
    ood_tables,
)
from clipadapt.bench.protocols import BASE, HELD_OUT, HM, IN_DOMAIN, NOVEL, OTHERS_MEAN
from clipadapt.bench.tables import Table, csv_text, fmt, html_table, markdown
from clipadapt.methods import METHODS
from clipadapt.pipeline.results import OPEN_SET_TASK, find_results

SHORT_ROLE = {
    IN_DOMAIN: "in",
    OTHERS_MEAN: "others",
    HELD_OUT: "held-out",
    BASE: "base",
    NOVEL: "novel",
    HM: "HM",
}
RANKING_ROLE = {"base_to_novel": HM}
SELECTION_TEXT = {
    "validation": "on the few-shot validation set (min(K, 4) per class)",
    "cv": "by k-fold cross-validation over the support and validation images",
}
FIGURE_MANIFEST = ".clipadapt-report-figures.json"  # the figures the last report wrote
OOD_NOTE = (
    "Results of the near_ood / open_set_dg / far_ood protocols (clipadapt.bench.protocols): "
    "percent, mean ± sample std over seeds; higher score = more OOD; AUROC and AUPR_OUT take "
    "OOD as positive, AUPR_IN ID; FPR95 is the share of OOD accepted at 95% ID recall; AUPR "
    "is average precision (clipadapt.ood.metrics.metric_conventions). Every threshold accepts "
    "95% (by default) of known images never fitted on: the few-shot validation set, pooled "
    "for detectors that read image features only with their cross-fitted support scores; "
    "never test data. Figures: histograms of every detector and their ROC curves at the "
    "largest shot count and the first seed (a fixed choice, not picked by results), scores "
    "pooled over the targets."
)
CSV_COLUMNS = (
    "protocol",
    "dataset",
    "source",
    "target",
    "role",
    "method",
    "shots",
    "seeds",
    "acc1_mean",
    "acc1_std",
    "fit_seconds_median",
)


@dataclass
class Section:
    """Everything reported for one (protocol, dataset)."""

    protocol: str
    dataset: str
    cells: dict[Key, Cell]

    @property
    def title(self) -> str:
        return f"{self.protocol} · {self.dataset}"

    @property
    def groups(self) -> list[str]:
        return ordered(k.group for k in self.cells)

    @property
    def methods(self) -> list[str]:
        return ordered((k.method for k in self.cells), METHODS)

    @property
    def shots(self) -> list[int]:
        return sorted({k.shots for k in self.cells})

    @property
    def max_seeds(self) -> int:
        return max(len(c.values) for c in self.cells.values())

    def cell(self, group: str, role: str, method: str, shots: int, target: str | None = None):
        for k, c in self.cells.items():
            if (k.group, k.role, k.method, k.shots) == (group, role, method, shots) and (
                target is None or k.target == target
            ):
                return c
        return None


def write_report(results_dir: str | Path, out: str | Path) -> dict[str, Path]:
    """Aggregate every result under ``results_dir`` and write the CSV, Markdown and HTML."""
    results = load_results(results_dir)
    out = Path(out)
    open_set = make_ood_sections(ood_results(find_results(results_dir), results))
    classification = [r for r in results if r.task != OPEN_SET_TASK]
    sections = make_sections(aggregate(classification))
    figures = {name: plots.png_bytes(fig) for name, fig in make_figures(sections)}
    calibration = make_calibration_sections(classification)
    for section in calibration:
        figures |= {
            name: plots.png_bytes(fig, dpi=90) for name, fig in calibration_figures(section)
        }
    for section in open_set:  # many panels per figure: a lower resolution keeps them small
        figures |= {name: plots.png_bytes(fig, dpi=72) for name, fig in ood_figures(section)}
    _write_figures(out / "figures", figures)
    written = {}
    if sections or not open_set:
        written["csv"] = atomic_write_text(
            out / "table.csv", csv_text(CSV_COLUMNS, csv_rows(sections))
        )
    if open_set:
        written["ood_csv"] = atomic_write_text(
            out / "ood_table.csv", csv_text(OOD_CSV_COLUMNS, ood_csv_rows(open_set))
        )
    if calibration:
        written["calibration_csv"] = atomic_write_text(
            out / "calibration.csv",
            csv_text(CALIBRATION_CSV_COLUMNS, calibration_csv_rows(calibration)),
        )
    written["markdown"] = atomic_write_text(
        out / "table.md", render_markdown(sections, results, open_set, calibration)
    )
    written["html"] = atomic_write_text(
        out / "report.html",
        render_html(sections, results, figures, results_dir, open_set, calibration),
    )
    return written


def _write_figures(directory: Path, figures: dict[str, bytes]) -> None:
    """Write ``figures`` and delete the ones an earlier report wrote there that this one did
    not (listed in the directory's manifest); any other file is left alone."""
    manifest = directory / FIGURE_MANIFEST
    earlier: list[str] = []
    if manifest.is_file():
        try:
            earlier = list(json.loads(manifest.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            earlier = []
    for name, data in figures.items():
        atomic_write(directory / name, lambda p, d=data: p.write_bytes(d))
    atomic_write_json(manifest, sorted(figures))
    for name in set(earlier) - set(figures):
        if Path(name).name == name:  # a bare file name, never a path elsewhere
            (directory / name).unlink(missing_ok=True)


def make_sections(cells: dict[Key, Cell]) -> list[Section]:
    grouped: dict[tuple[str, str], dict[Key, Cell]] = defaultdict(dict)
    for key, cell in cells.items():
        grouped[(key.protocol, key.dataset)][key] = cell
    order = list(PRIMARY_ROLES)
    return [
        Section(protocol, dataset, grouped[(protocol, dataset)])
        for protocol, dataset in sorted(grouped, key=lambda pd: (order.index(pd[0]), pd[1]))
    ]


# -- tables ---------------------------------------------------------------------------------
def cell_text(cell: Cell | None, max_seeds: int) -> str:
    return fmt(None if cell is None else cell.values, max_seeds)


def section_tables(section: Section) -> list[Table]:
    """Overview at the largest shot count, then per source: acc1 against shots per headline
    role, per-target acc1 (single-source), and median fit times."""
    roles, top, seeds = PRIMARY_ROLES[section.protocol], section.shots[-1], section.max_seeds
    groups, methods = section.groups, section.methods
    tables = []
    header = ["method"] + [
        f"{source_label(section.protocol, g)}: {SHORT_ROLE[r]}" for g in groups for r in roles
    ]
    if len(groups) > 1:
        header += [f"mean: {SHORT_ROLE[r]}" for r in roles]
    rows = []
    for method in methods:
        row = [method]
        for g in groups:
            row += [cell_text(section.cell(g, r, method, top), seeds) for r in roles]
        if len(groups) > 1:
            for r in roles:
                found = [section.cell(g, r, method, top) for g in groups]
                ok = all(c is not None and c.applicable for c in found)
                row.append(f"{statistics.fmean(c.mean for c in found) * 100:.1f}" if ok else "n/a")
        rows.append(row)
    tables.append(Table(f"Overview at {top} shots: acc1 (%)", header, rows))
    for g in groups:
        label = source_label(section.protocol, g)
        for r in roles:
            rows = [
                [m] + [cell_text(section.cell(g, r, m, k), seeds) for k in section.shots]
                for m in methods
            ]
            title = f"Source {label}: acc1 (%), {ROLE_TITLES[r]}"
            tables.append(Table(title, ["method"] + [f"K={k}" for k in section.shots], rows))
        if section.protocol == "single_source":
            targets = _targets(section, g)
            roles_of = {k.target: k.role for k in section.cells if k.group == g}
            rows = [
                [m] + [cell_text(section.cell(g, roles_of[t], m, top, t), seeds) for t in targets]
                for m in methods
            ]
            names = [f"{t} (in-domain)" if roles_of[t] == IN_DOMAIN else t for t in targets]
            tables.append(
                Table(
                    f"Source {label}: acc1 (%) per target at {top} shots", ["method", *names], rows
                )
            )
    fit = [[m] + [_median_fit_ms(section, m, k) for k in section.shots] for m in methods]
    header = ["method"] + [f"K={k}" for k in section.shots]
    tables.append(Table("Fit time (ms, median over runs)", header, fit))
    return tables


def _targets(section: Section, group: str) -> list[str]:
    """Targets of ``group`` in result order, derived ones last."""
    found = dict.fromkeys(k.target for k in section.cells if k.group == group)
    return [t for t in found if t not in DERIVED_TARGETS.values()] + [
        t for t in found if t in DERIVED_TARGETS.values()
    ]


def _median_fit_ms(section: Section, method: str, shots: int) -> str:
    """Median fit time over runs; each run counted once (through its first headline role)."""
    role = PRIMARY_ROLES[section.protocol][0]
    times = [
        t
        for k, c in section.cells.items()
        if (k.method, k.shots, k.role) == (method, shots, role)
        for t in c.fit_seconds
    ]
    return f"{statistics.median(times) * 1000:.1f}" if times else ""


def csv_rows(sections: list[Section]) -> list[dict[str, Any]]:
    rows = []
    for section in sections:
        methods = section.methods
        targets = {g: _targets(section, g) for g in section.groups}
        keys = sorted(
            section.cells,
            key=lambda k: (
                k.group,
                methods.index(k.method),
                k.shots,
                targets[k.group].index(k.target),
            ),
        )
        for key in keys:
            cell = section.cells[key]
            rows.append(
                {
                    "protocol": key.protocol,
                    "dataset": key.dataset,
                    "source": source_label(key.protocol, key.group),
                    "target": key.target,
                    "role": key.role,
                    "method": key.method,
                    "shots": key.shots,
                    "seeds": len(cell.values),
                    "acc1_mean": f"{cell.mean:.4f}" if cell.applicable else "",
                    "acc1_std": f"{cell.std:.4f}" if cell.applicable else "",
                    "fit_seconds_median": f"{statistics.median(cell.fit_seconds):.4f}",
                }
            )
    return rows


# -- rendering --------------------------------------------------------------------------------
def render_markdown(
    sections: list[Section],
    results: list[dict[str, Any]],
    open_set: list[OodSection] = (),
    calibration: list[CalibrationSection] = (),
) -> str:
    lines = ["# clipadapt benchmark report", "", *_provenance(results), ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for table in section_tables(section):
            lines += [f"**{table.title}**", "", markdown(table), ""]
    lines += calibration_markdown(calibration)
    if open_set:
        lines += ["# OOD and open-set rejection", "", OOD_NOTE, ""]
    for section in open_set:
        lines += [f"## {section.title}", ""]
        for table in ood_tables(section):
            lines += [f"**{table.title}**", "", markdown(table), ""]
    return "\n".join(lines)


def _provenance(results: list[dict[str, Any]]) -> list[str]:
    models = sorted({f"{r.model_spec} (fingerprint {r.model_fingerprint})" for r in results})
    seeds = sorted({r.seed for r in results})
    views = sorted({r.views for r in results if r.views})
    versions = sorted({r.package_version for r in results})
    transductive = sorted({r.method for r in results if r.transductive})
    return [
        f"- runs: {len(results)}; seeds: {', '.join(map(str, seeds))}; "
        f"acc1 in %, mean ± sample std over seeds; n/a = the method cannot score those classes",
        f"- model: {'; '.join(models)}",
        f"- augmented views per support image (methods that read them): "
        f"{', '.join(map(str, views)) or 'none'}",
        "- hyperparameters chosen "
        + " and ".join(SELECTION_TEXT[m] for m in sorted({r.selection for r in results}))
        + ", never on test images",
        "- transductive rows (learned from the test images, without their labels): "
        + (", ".join(transductive) or "none"),
        f"- clipadapt {', '.join(versions)}; peak memory of a run's process: "
        f"{max(r.peak_memory_mb for r in results):.0f} MiB",
    ]


def make_figures(sections: list[Section]) -> list[tuple[str, Any]]:
    figures = []
    for s in sections:
        stem = _file_safe(f"{s.protocol}_{s.dataset}")
        top = s.shots[-1]
        figures.append(
            (
                f"{stem}_shots.png",
                plots.shots_figure(s.cells, s.protocol, s.groups, s.methods, s.shots),
            )
        )
        figures.append(
            (
                f"{stem}_domains.png",
                plots.domain_bars_figure(s.cells, s.protocol, s.groups, s.methods, top),
            )
        )
        best = best_method(s)
        if best is not None:
            figures.append(
                (
                    f"{stem}_confusion_{_file_safe(best)}.png",
                    plots.confusion_figure(s.cells, s.protocol, s.groups, best, top),
                )
            )
    return figures


def _file_safe(name: str) -> str:
    """``name`` with every run of characters other than letters, digits, ``.-_`` as ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def best_method(section: Section) -> str | None:
    """The method with the highest mean over sources, at the largest shot count, of the
    protocol's ranking role (HM for base-to-novel, else its first headline role); zero-shot
    only when no other method has a score, transductive rows only when no inductive one has."""
    top, roles = section.shots[-1], PRIMARY_ROLES[section.protocol]
    for role in (RANKING_ROLE.get(section.protocol, roles[0]), *roles):
        best = _best_for(section, role, top)
        if best is not None:
            return best
    return None


def _best_for(section: Section, role: str, top: int) -> str | None:
    scores = {}
    for method in section.methods:
        found = [section.cell(g, role, method, top) for g in section.groups]
        if all(c is not None and c.applicable for c in found):
            scores[method] = statistics.fmean(c.mean for c in found)
    inductive = {m: v for m, v in scores.items() if not m.endswith(TRANSDUCTIVE)} or scores
    adapted = {m: v for m, v in inductive.items() if m != "zeroshot"} or inductive
    return max(adapted, key=adapted.get) if adapted else None


def render_html(
    sections: list[Section],
    results: list[dict[str, Any]],
    figures: dict[str, bytes],
    results_dir: str | Path,
    open_set: list[OodSection] = (),
    calibration: list[CalibrationSection] = (),
) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>clipadapt report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>clipadapt benchmark report</h1>",
        f"<p class='meta'>from {esc(str(results_dir))}, "
        f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}</p>",
        "<ul>" + "".join(f"<li>{esc(line[2:])}</li>" for line in _provenance(results)) + "</ul>",
    ]
    for section in sections:
        stem = f"{section.protocol}_{section.dataset}".replace("/", "_")
        parts.append(f"<h2>{esc(section.title)}</h2>")
        for name, data in figures.items():
            if name.startswith(stem + "_"):
                encoded = base64.b64encode(data).decode()
                parts.append(
                    f"<figure><img alt='{esc(name)}' src='data:image/png;base64,{encoded}'>"
                    f"<figcaption>{esc(name)}</figcaption></figure>"
                )
        for table in section_tables(section):
            parts.append(f"<h3>{esc(table.title)}</h3>{html_table(table)}")
    parts += calibration_html(calibration, figures)
    if open_set:
        parts += ["<h1>OOD and open-set rejection</h1>", f"<p>{esc(OOD_NOTE)}</p>"]
    for section in open_set:
        parts.append(f"<h2>{esc(section.title)}</h2>")
        for table in ood_tables(section):
            parts.append(f"<h3>{esc(table.title)}</h3>{html_table(table)}")
        for name, data in figures.items():
            if name.startswith(section.stem + "_"):
                encoded = base64.b64encode(data).decode()
                parts.append(
                    f"<figure><img alt='{esc(name)}' src='data:image/png;base64,{encoded}'>"
                    f"<figcaption>{esc(name)}</figcaption></figure>"
                )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# -- calibration and effective robustness (clipadapt.bench.calibration_report) ---------------
CALIBRATION_TITLE = "Calibration and effective robustness"


def calibration_markdown(sections: list[CalibrationSection]) -> list[str]:
    if not sections:
        return []
    lines = [f"# {CALIBRATION_TITLE}", "", CALIBRATION_NOTE, "", ROBUSTNESS_NOTE, ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for table in calibration_tables(section):
            lines += [f"**{table.title}**", "", markdown(table), ""]
    return lines


def calibration_html(sections: list[CalibrationSection], figures: dict[str, bytes]) -> list[str]:
    if not sections:
        return []
    esc = html.escape
    parts = [
        f"<h1>{CALIBRATION_TITLE}</h1>",
        f"<p>{esc(CALIBRATION_NOTE)}</p><p>{esc(ROBUSTNESS_NOTE)}</p>",
    ]
    for section in sections:
        parts.append(f"<h2>{esc(section.title)}</h2>")
        for table in calibration_tables(section):
            parts.append(f"<h3>{esc(table.title)}</h3>{html_table(table)}")
        parts += [
            _figure_html(n, d) for n, d in figures.items() if n.startswith(section.stem + "_")
        ]
    return parts


def _figure_html(name: str, data: bytes) -> str:
    encoded = base64.b64encode(data).decode()
    return (
        f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{encoded}'>"
        f"<figcaption>{html.escape(name)}</figcaption></figure>"
    )


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead { background: #f0f0f0; }
figure { margin: 1em 0; } img { max-width: 100%; }
figcaption, .meta { color: #666; font-size: 0.8em; }
"""
