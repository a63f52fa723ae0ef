"""Figures for reports: score histograms (ID vs OOD) and ROC curves.

Functions return ``matplotlib.figure.Figure`` objects built without pyplot (no global state,
no display needed); ``figure_png`` renders one to PNG bytes for embedding in HTML.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from clipadapt.ood.metrics import ArrayLike, as_scores, auroc

ID_COLOUR, OOD_COLOUR = "#1f77b4", "#d62728"


def score_histogram(
    id_scores: ArrayLike,
    ood_scores: ArrayLike,
    *,
    title: str = "",
    threshold: float | None = None,
    bins: int = 40,
) -> Figure:
    """Overlaid density histograms of ID and OOD scores, with the threshold if given."""
    fig = Figure(figsize=(5, 3.2), layout="constrained")
    draw_histogram(fig.add_subplot(), id_scores, ood_scores, title, threshold, bins)
    return fig


def draw_histogram(
    ax: Axes,
    id_scores: ArrayLike,
    ood_scores: ArrayLike,
    title: str = "",
    threshold: float | None = None,
    bins: int = 40,
    *,
    legend: bool = True,
    xlabel: str = "OOD score (higher = more likely OOD)",
) -> None:
    """``score_histogram`` drawn on the given axes."""
    ids, oods = as_scores(id_scores, "id_scores"), as_scores(ood_scores, "ood_scores")
    edges = np.histogram_bin_edges(np.r_[ids, oods], bins=bins)
    ax.hist(ids, edges, density=True, alpha=0.55, color=ID_COLOUR, label=f"ID (n={len(ids)})")
    ax.hist(oods, edges, density=True, alpha=0.55, color=OOD_COLOUR, label=f"OOD (n={len(oods)})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label="threshold")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(f"{title}  AUROC {auroc(ids, oods):.3f}".strip(), fontsize=10)
    if legend:
        ax.legend(fontsize=8)


def roc_curves(curves: Mapping[str, tuple[ArrayLike, ArrayLike]], *, title: str = "") -> Figure:
    """ROC curves (OOD = positive) for ``{label: (id_scores, ood_scores)}``."""
    fig = Figure(figsize=(4.2, 4.2), layout="constrained")
    draw_roc(fig.add_subplot(), curves, title)
    return fig


def draw_roc(ax: Axes, curves: Mapping[str, tuple[ArrayLike, ArrayLike]], title: str = "") -> None:
    """``roc_curves`` drawn on the given axes."""
    for label, (id_scores, ood_scores) in curves.items():
        ids, oods = as_scores(id_scores, "id_scores"), as_scores(ood_scores, "ood_scores")
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
    scores: Mapping[str, tuple[ArrayLike, ArrayLike]],
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


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure rendered as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
