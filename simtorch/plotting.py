"""Heatmaps of similarity grids (matplotlib only, headless-safe)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from .result import SimilarityResult

__all__ = ["plot_heatmap", "plot_result", "resolve_save_path"]

_FIGURE_SUFFIXES = {".png", ".pdf", ".svg", ".jpg", ".jpeg", ".eps"}


def _pyplot() -> Any:
    import matplotlib

    if not os.environ.get("DISPLAY") and not os.environ.get("MPLBACKEND"):
        # no screen: never let matplotlib try an interactive backend
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def resolve_save_path(save_path: str | os.PathLike, title: str) -> Path:
    """A file path as given (its suffix picks the format), or, for a directory (simtorch
    0.2.1 behaviour), ``<dir>/<title with spaces as underscores>.png``."""
    path = Path(save_path)
    if path.suffix.lower() in _FIGURE_SUFFIXES:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
    path.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^\w.+-]+", "_", title).strip("_") or "similarity"
    return path / f"{stem}.png"


def plot_heatmap(
    matrix: np.ndarray,
    labels_a: Sequence[str],
    labels_b: Sequence[str],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    cmap: str = "magma",
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar_label: str = "",
    annotate: bool | None = None,
    ax: "Axes | None" = None,
    save_path: str | os.PathLike | None = None,
    dpi: int = 200,
) -> "Axes":
    """Draw ``matrix[i, j]`` with ``labels_a`` on the y axis (row 0 at the bottom, as in
    Kornblith et al.'s figures) and ``labels_b`` on the x axis, with a colorbar.

    NaN cells (undefined similarity) are drawn grey. ``annotate`` writes values in the cells
    (default: when the grid is at most 12 × 12). Saves to ``save_path`` if given.
    """
    plt = _pyplot()
    matrix = np.asarray(matrix, dtype=float)
    la, lb = matrix.shape
    if ax is None:
        w = min(max(4.5, 0.32 * lb + 3.0), 20)
        h = min(max(4.0, 0.3 * la + 2.5), 20)
        _, ax = plt.subplots(figsize=(w, h), dpi=100)
    cm = plt.get_cmap(cmap).copy()
    cm.set_bad("lightgrey")
    im = ax.imshow(np.ma.masked_invalid(matrix), origin="lower", aspect="auto", cmap=cm, vmin=vmin, vmax=vmax,
                   interpolation="nearest")
    fs = 8 if max(la, lb) <= 24 else 6 if max(la, lb) <= 48 else 4
    ax.set_xticks(range(lb), labels=list(labels_b), rotation=90, fontsize=fs)
    ax.set_yticks(range(la), labels=list(labels_a), fontsize=fs)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    cbar = ax.figure.colorbar(im, ax=ax)
    if colorbar_label:
        cbar.set_label(colorbar_label)
    if annotate is None:
        annotate = max(la, lb) <= 12
    if annotate:
        lo, hi = im.get_clim()
        for i in range(la):
            for j in range(lb):
                v = matrix[i, j]
                if np.isfinite(v):
                    dark = (v - lo) / ((hi - lo) or 1.0) < 0.6
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=fs - 1,
                            color="white" if dark else "black")
    ax.figure.tight_layout()
    if save_path is not None:
        ax.figure.savefig(save_path, dpi=dpi, bbox_inches="tight")
    return ax


def plot_result(
    result: "SimilarityResult",
    *,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    cmap: str = "magma",
    save_path: str | os.PathLike | None = None,
    **kwargs: Any,
) -> "Axes":
    """Heatmap of a :class:`SimilarityResult` with the layer names on both axes."""
    if title is None:
        title = f"{result.metric}: {result.model_a} vs {result.model_b}"
    path = resolve_save_path(save_path, title) if save_path is not None else None
    return plot_heatmap(
        result.matrix,
        result.layers_a,
        result.layers_b,
        title=title,
        xlabel=result.model_b if xlabel is None else xlabel,
        ylabel=result.model_a if ylabel is None else ylabel,
        cmap=cmap,
        colorbar_label=result.metric,
        save_path=path,
        **kwargs,
    )
