"""Report figures: accuracy against shots, per-domain bars, confusion matrices, and for OOD
results ID-vs-OOD score histograms and ROC curves.

Figures are built with matplotlib's object API (no pyplot state, no display needed) and
rendered to PNG by the Agg canvas.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterable, Mapping

import matplotlib
import matplotlib.lines
import matplotlib.patches
import matplotlib.ticker
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from clipadapt.bench.aggregate import (
    PRIMARY_ROLES,
    ROLE_TITLES,
    Cell,
    Key,
    source_label,
)
from clipadapt.bench.protocols import IN_DOMAIN
from clipadapt.ood.metrics import ArrayLike, as_scores, auroc

Section = dict[Key, Cell]  # the cells of one (protocol, dataset)


def png_bytes(figure: Figure, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def method_colors(methods: list[str]) -> dict[str, tuple[float, ...]]:
    palette = matplotlib.colormaps["tab10"].colors
    return {m: palette[i % len(palette)] for i, m in enumerate(methods)}


def shots_figure(
    cells: Section, protocol: str, groups: list[str], methods: list[str], shots: list[int]
) -> Figure:
    """acc1 against shots: one panel per (headline role, source), one line per method."""
    roles = PRIMARY_ROLES[protocol]
    colors = method_colors(methods)
    figure = Figure(figsize=(3.4 * len(groups) + 1.8, 2.9 * len(roles)))
    axes = figure.subplots(len(roles), len(groups), squeeze=False, sharex=True)
    for r, role in enumerate(roles):
        for g, group in enumerate(groups):
            ax = axes[r][g]
            for method in methods:
                points = [
                    (k, c.mean * 100, c.std * 100)
                    for k in shots
                    if (c := _find(cells, group, role, method, k)) and c.applicable
                ]
                if points:
                    x, y, err = zip(*points, strict=True)
                    ax.errorbar(
                        x,
                        y,
                        yerr=err,
                        marker="o",
                        ms=3,
                        lw=1.4,
                        capsize=2,
                        color=colors[method],
                        label=method,
                    )
            ax.set_xscale("log", base=2)
            ax.set_xticks(shots, [str(k) for k in shots])
            ax.minorticks_off()
            ax.grid(alpha=0.3)
            if r == 0:
                ax.set_title(f"source: {source_label(protocol, group)}", fontsize=10)
            if g == 0:
                ax.set_ylabel(f"acc1 (%)\n{ROLE_TITLES[role]}", fontsize=8)
            if r == len(roles) - 1:
                ax.set_xlabel("shots per class")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    figure.tight_layout()
    return figure


def domain_bars_figure(
    cells: Section, protocol: str, groups: list[str], methods: list[str], shots: int
) -> Figure:
    """acc1 at ``shots``: per source, bars per target domain (single_source), otherwise bars
    per source for each headline role; one bar per method, error bars = std over seeds."""
    colors = method_colors(methods)
    if protocol == "single_source":
        panels = [
            (f"source: {g}", [(_target_label(k), k) for k in _targets(cells, g)]) for g in groups
        ]
    else:
        panels = [
            (ROLE_TITLES[role], [(source_label(protocol, g), _key(cells, g, role)) for g in groups])
            for role in PRIMARY_ROLES[protocol]
        ]
    columns_of_panels = min(2, len(panels))
    rows_of_panels = -(-len(panels) // columns_of_panels)
    figure = Figure(figsize=(6.0 * columns_of_panels + 1.8, 3.4 * rows_of_panels))
    axes = figure.subplots(rows_of_panels, columns_of_panels, squeeze=False, sharey=True)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    width = 0.8 / len(methods)
    for i, (ax, (title, columns)) in enumerate(zip(axes.flat, panels, strict=False)):
        for m, method in enumerate(methods):
            heights, errors = [], []
            for _, key in columns:
                cell = cells.get(_with(key, method, shots)) if key else None
                ok = cell is not None and cell.applicable
                heights.append(cell.mean * 100 if ok else np.nan)
                errors.append(cell.std * 100 if ok else 0.0)
            x = np.arange(len(columns)) + (m - (len(methods) - 1) / 2) * width
            ax.bar(x, heights, width, yerr=errors, capsize=1.5, color=colors[method], label=method)
        ax.set_xticks(
            np.arange(len(columns)),
            [label for label, _ in columns],
            fontsize=8,
        )
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
        if i % columns_of_panels == 0:
            ax.set_ylabel(f"acc1 (%) at {shots} shots")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    figure.tight_layout()
    return figure


def confusion_figure(
    cells: Section, protocol: str, groups: list[str], method: str, shots: int
) -> Figure:
    """Row-normalised confusion matrices of ``method`` at ``shots`` (summed over seeds): a row
    of panels per source when sources have several targets, else a grid of up to 4 columns."""
    panels = [
        [
            (f"{source_label(protocol, g)} -> {k.target}", c)
            for k in _targets(cells, g)
            if (c := cells.get(_with(k, method, shots))) is not None and c.confusion is not None
        ]
        for g in groups
    ]
    if max(map(len, panels)) > 1:
        columns = max(map(len, panels))
        grid = [row + [None] * (columns - len(row)) for row in panels]
    else:
        flat = [p for row in panels for p in row]
        columns = min(4, len(flat))
        flat += [None] * (-len(flat) % columns)
        grid = [flat[i : i + columns] for i in range(0, len(flat), columns)]
    size = max(len(c.classnames or c.confusion) for row in panels for _, c in row)
    side = 1.0 + 0.32 * size
    figure = Figure(figsize=(side * columns, side * len(grid) + 0.4))
    axes = figure.subplots(len(grid), columns, squeeze=False)
    for ax, panel in zip(axes.flat, (p for row in grid for p in row), strict=True):
        if panel is None:
            ax.axis("off")
        else:
            _confusion_panel(ax, *panel)
    figure.suptitle(f"{method}, {shots} shots, summed over seeds (rows: true class)", fontsize=10)
    figure.tight_layout()
    return figure


def _confusion_panel(ax, title: str, cell: Cell) -> None:
    matrix = cell.confusion / np.maximum(cell.confusion.sum(axis=1, keepdims=True), 1)
    ax.imshow(matrix, vmin=0, vmax=1, cmap="Blues")
    names = cell.classnames or [str(i) for i in range(len(matrix))]
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_yticks(range(len(names)), names, fontsize=6)
    if len(names) <= 12:
        for i, j in np.ndindex(matrix.shape):
            if matrix[i, j] >= 0.005:
                color = "white" if matrix[i, j] > 0.6 else "black"
                text = f"{matrix[i, j] * 100:.0f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=5, color=color)
    ax.set_title(f"{title}\nacc1 {cell.mean * 100:.1f}%", fontsize=8)
    ax.set_ylabel("true", fontsize=7)
    ax.set_xlabel("predicted", fontsize=7)


def _target_label(key: Key) -> str:
    return f"{key.target}\n(in-domain)" if key.role == IN_DOMAIN else key.target


def _find(cells: Section, group: str, role: str, method: str, shots: int) -> Cell | None:
    key = _key(cells, group, role)
    return cells.get(_with(key, method, shots)) if key else None


def _key(cells: Section, group: str, role: str) -> Key | None:
    """A key of ``group`` with ``role`` (any method, any shots), or None."""
    return next((k for k in cells if k.group == group and k.role == role), None)


def _targets(cells: Section, group: str) -> list[Key]:
    """One key per target of ``group``, in the order the results list them."""
    seen: dict[str, Key] = {}
    for k in cells:
        if k.group == group:
            seen.setdefault(k.target, k)
    return list(seen.values())


def _with(key: Key, method: str, shots: int) -> Key:
    return Key(key.protocol, key.dataset, key.group, key.target, key.role, method, shots)


# -- OOD scores -------------------------------------------------------------------------
ID_COLOUR = "#1f77b4"
OOD_COLOURS = ("#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")

OodScores = ArrayLike | Mapping[str, ArrayLike]
"""OOD scores: one set, or ``{target: scores}`` for several OOD sets (each its own colour)."""


def ood_sets(ood_scores: OodScores) -> dict[str, np.ndarray]:
    """``{target: scores}``; a single unnamed set is keyed ``""``."""
    if isinstance(ood_scores, Mapping):
        if not ood_scores:
            raise ValueError("ood_scores: expected at least one OOD set, got none")
        return {t: as_scores(v, f"ood_scores[{t!r}]") for t, v in ood_scores.items()}
    return {"": as_scores(ood_scores, "ood_scores")}


def _pooled(ood_scores: OodScores) -> np.ndarray:
    return np.concatenate(list(ood_sets(ood_scores).values()))


def score_histogram(
    id_scores: ArrayLike,
    ood_scores: OodScores,
    *,
    title: str = "",
    threshold: float | None = None,
    bins: int = 40,
) -> Figure:
    """Overlaid density histograms of ID and OOD scores (one colour per OOD set), with the
    threshold if given; the title's AUROC pools the OOD sets."""
    fig = Figure(figsize=(5, 3.2), layout="constrained")
    draw_histogram(fig.add_subplot(), id_scores, ood_scores, title, threshold, bins)
    return fig


def draw_histogram(
    ax: Axes,
    id_scores: ArrayLike,
    ood_scores: OodScores,
    title: str = "",
    threshold: float | None = None,
    bins: int = 40,
    *,
    legend: bool = True,
    xlabel: str = "OOD score (higher = more likely OOD)",
) -> None:
    """``score_histogram`` drawn on the given axes."""
    ids, oods = as_scores(id_scores, "id_scores"), ood_sets(ood_scores)
    pooled = np.concatenate(list(oods.values()))
    edges = np.histogram_bin_edges(np.r_[ids, pooled], bins=bins)
    ax.hist(ids, edges, density=True, alpha=0.55, color=ID_COLOUR, label=f"ID (n={len(ids)})")
    alpha = 0.55 if len(oods) == 1 else 0.45
    for (target, scores), colour in zip(oods.items(), itertools.cycle(OOD_COLOURS)):
        label = f"OOD {target} (n={len(scores)})" if len(oods) > 1 else f"OOD (n={len(scores)})"
        ax.hist(scores, edges, density=True, alpha=alpha, color=colour, label=label)
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label="threshold")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(f"{title}  AUROC {auroc(ids, pooled):.3f}".strip(), fontsize=10)
    if legend:
        ax.legend(fontsize=8)


def roc_curves(curves: Mapping[str, tuple[ArrayLike, OodScores]], *, title: str = "") -> Figure:
    """ROC curves (OOD = positive) for ``{label: (id_scores, ood_scores)}``, OOD sets pooled."""
    fig = Figure(figsize=(4.2, 4.2), layout="constrained")
    draw_roc(fig.add_subplot(), curves, title)
    return fig


def draw_roc(ax: Axes, curves: Mapping[str, tuple[ArrayLike, OodScores]], title: str = "") -> None:
    """``roc_curves`` drawn on the given axes."""
    for label, (id_scores, ood_scores) in curves.items():
        ids, oods = as_scores(id_scores, "id_scores"), _pooled(ood_scores)
        fpr, tpr, _ = roc_curve(np.r_[np.zeros(len(ids)), np.ones(len(oods))], np.r_[ids, oods])
        ax.plot(fpr, tpr, linewidth=1.3, label=f"{label} ({auroc(ids, oods):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false positive rate (ID called OOD)")
    ax.set_ylabel("true positive rate (OOD called OOD)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right", title="score (AUROC)", title_fontsize=7)


def detector_panels(
    scores: Mapping[str, tuple[ArrayLike, OodScores]],
    *,
    thresholds: Mapping[str, float] | None = None,
    title: str = "",
    columns: int = 4,
) -> Figure:
    """Small multiples: an ID-vs-OOD histogram per detector, then one panel of all ROC curves."""
    names = list(scores)
    panels = len(names) + 1
    rows = -(-panels // columns)
    fig = Figure(figsize=(3.3 * columns, 2.6 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for i, name in enumerate(names):
        threshold = (thresholds or {}).get(name)
        draw_histogram(axes[i], *scores[name], name, threshold, 30, legend=i == 0, xlabel="score")
    draw_roc(axes[len(names)], scores, "ROC (OOD = positive)")
    for ax in axes[panels:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


# -- calibration and effective robustness -------------------------------------------------
Reliability = Mapping[str, list[float]]  # clipadapt.calibration.reliability sums (pooled)


def reliability_figure(
    rows: list[tuple[str, list[tuple[str, Reliability]]]], title: str = ""
) -> Figure:
    """Reliability diagrams: one row per ``(row title, panels)``, each panel ``(title, sums)``
    of top-1 confidence bins; bars = accuracy per bin, red = the gap to the bin's mean
    confidence, the diagonal = perfect calibration; under each, the share of images per bin."""
    columns = max(len(panels) for _, panels in rows)
    figure = Figure(figsize=(2.9 * columns + 0.4, 3.5 * len(rows) + 0.5), layout="constrained")
    grid = figure.add_gridspec(2 * len(rows), columns, height_ratios=[3, 1] * len(rows))
    for r, (row_title, panels) in enumerate(rows):
        for c, (panel_title, sums) in enumerate(panels):
            top = figure.add_subplot(grid[2 * r, c])
            share = figure.add_subplot(grid[2 * r + 1, c], sharex=top)
            _reliability_panel(top, share, sums, panel_title)
            if c == 0:
                top.set_ylabel(f"{row_title}\naccuracy in bin (%)", fontsize=8)
                share.set_ylabel("images (%)", fontsize=8)
    handles = [
        matplotlib.patches.Patch(color=ID_COLOUR, label="accuracy in bin"),
        matplotlib.patches.Patch(facecolor="none", edgecolor="#d62728", hatch="///", label="gap"),
        matplotlib.lines.Line2D([], [], color="grey", linestyle=":", label="perfect calibration"),
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def _reliability_panel(top: Axes, share: Axes, sums: Reliability, title: str) -> None:
    count = np.asarray(sums["count"], dtype=np.float64)
    bins = len(count)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.asarray(sums["correct"]) / count * 100
        confidence = np.asarray(sums["confidence_sum"]) / count * 100
    centres = (np.arange(bins) + 0.5) / bins * 100
    width = 100 / bins
    top.bar(centres, accuracy, width, color=ID_COLOUR, edgecolor="white", linewidth=0.5)
    gap_low, gap = np.minimum(accuracy, confidence), np.abs(confidence - accuracy)
    top.bar(centres, gap, width, bottom=gap_low, facecolor="none", edgecolor="#d62728", hatch="///")
    top.plot([0, 100], [0, 100], color="grey", linestyle=":", linewidth=1)
    top.set_xlim(0, 100)
    top.set_ylim(0, 100)
    top.grid(alpha=0.3)
    top.tick_params(labelbottom=False, labelsize=7)
    gaps = np.abs(np.asarray(sums["correct"]) - np.asarray(sums["confidence_sum"]))
    ece = gaps.sum() / count.sum() * 100
    top.set_title(f"{title}\nECE {ece:.1f}%, n={int(count.sum())}", fontsize=8)
    share.bar(centres, count / count.sum() * 100, width, color="#7f7f7f")
    share.set_xlabel("top-1 confidence (%)", fontsize=8)
    share.tick_params(labelsize=7)
    share.grid(alpha=0.3)


def effective_robustness_figure(
    panels: list[tuple[str, dict[str, dict[int, tuple[float, float]]], tuple[float, float] | None]],
    *,
    xlabel: str,
    ylabel: str,
    baseline: str,
) -> Figure:
    """Shifted against in-domain accuracy on logit-scaled axes: one panel per ``(title,
    {method: {shots: (in-domain acc, shifted acc)}}, line)`` (accuracies as fractions; one
    marker shape per shot count) and the baseline ``line`` (slope, intercept in logit space;
    None when there are too few points). x and y have their own ranges."""
    methods = ordered_union(p[1] for p in panels)
    shots = sorted({k for _, points, _ in panels for by in points.values() for k in by})
    markers = dict(zip(shots, itertools.cycle("osD^vP*X"), strict=False))
    colors = method_colors(methods)
    figure = Figure(figsize=(4.6 * len(panels) + 2.2, 4.4), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, points, line) in zip(axes, panels, strict=True):
        xs = [x for by in points.values() for x, _ in by.values()]
        ys = [y for by in points.values() for _, y in by.values()]
        (x_low, x_high), (y_low, y_high) = _logit_limits(xs), _logit_limits(ys)
        ax.set_xscale("logit")
        ax.set_yscale("logit")
        ax.set_xlim(x_low, x_high)
        ax.set_ylim(y_low, y_high)
        for method, by in points.items():
            for k, (x, y) in by.items():
                x, y = np.clip([x, y], LOGIT_CLIP, 1 - LOGIT_CLIP)  # 0 and 1 lie at infinity
                ax.scatter(x, y, color=colors[method], marker=markers[k], s=42, zorder=3)
        grid = np.linspace(x_low, x_high, 200)
        if line is not None:
            slope, intercept = line
            fitted = 1 / (1 + np.exp(-(slope * np.log(grid / (1 - grid)) + intercept)))
            ax.plot(grid, fitted, color="black", linewidth=1.2)
        for axis, (low, high) in ((ax.xaxis, (x_low, x_high)), (ax.yaxis, (y_low, y_high))):
            axis.set_major_locator(matplotlib.ticker.FixedLocator(_logit_ticks(low, high)))
            axis.set_major_formatter(matplotlib.ticker.FuncFormatter(_percent_tick))
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="major")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=8)
    axes[0].set_ylabel(ylabel, fontsize=8)
    handles = [
        matplotlib.lines.Line2D([], [], color=colors[m], marker="o", linestyle="", label=m)
        for m in methods
    ]
    handles += [
        matplotlib.lines.Line2D([], [], color="black", marker=markers[k], linestyle="",
                                markerfacecolor="none", label=f"K={k} shots")
        for k in shots
    ]  # fmt: skip
    handles += [
        matplotlib.lines.Line2D([], [], color="black", label=baseline),
    ]
    figure.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)
    return figure


LOGIT_CLIP = 1e-3  # accuracies are clipped to [0.1%, 99.9%] on logit axes
LOGIT_TICKS = (0.01, 0.02, 0.05, *(i / 20 for i in range(2, 19)), 0.95, 0.98, 0.99)


def _logit_limits(values: list[float], pad: float = 0.25) -> tuple[float, float]:
    """Axis limits around ``values`` (fractions), padded by ``pad`` of their span (at least
    0.3) in logit units."""
    clipped = np.clip(values, LOGIT_CLIP, 1 - LOGIT_CLIP)
    logits = np.log(clipped / (1 - clipped))
    margin = max(pad * float(np.ptp(logits)), 0.3)
    low, high = logits.min() - margin, logits.max() + margin
    return float(1 / (1 + np.exp(-low))), float(1 / (1 + np.exp(-high)))


def _logit_ticks(low: float, high: float) -> list[float]:
    return [t for t in LOGIT_TICKS if low <= t <= high] or [low, high]


def _percent_tick(value: float, _position: int) -> str:
    return f"{value * 100:.3g}"


def ordered_union(mappings: Iterable[Mapping[str, object]]) -> list[str]:
    """The keys of ``mappings`` in first-seen order."""
    return list(dict.fromkeys(k for m in mappings for k in m))
