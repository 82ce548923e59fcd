"""Heatmap of one similarity matrix (:func:`plot_heatmap`): colour scale, ticks, cell text.

Colour scales come from the metric (its declared ``value_range``), so every CKA figure
reads on the same ``[0, 1]`` scale; a distance (Information Imbalance) gets the reversed
map and an upside-down colourbar, so brighter and higher mean "more alike" in every figure.
Tick labels are thinned to what fits at ≥ 6 pt, and cell text is written only where it fits.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from . import _base
from ._base import MIN_FONT, color_limits, pyplot

if TYPE_CHECKING:
    from matplotlib.axes import Axes


__all__ = ["plot_heatmap", "annotate_cells", "default_size", "finish_layout"]

_STATE = "_simtorch_heatmap"  # what the finishing pass needs, kept on the Axes


def default_size(la: int, lb: int) -> tuple[float, float]:
    return float(np.clip(0.32 * lb + 3.0, 4.5, 14.0)), float(np.clip(0.3 * la + 2.5, 4.0, 12.0))


def plot_heatmap(
    matrix: np.ndarray,
    labels_a: Sequence[str],
    labels_b: Sequence[str],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    cmap: Any = "magma",
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar_label: str = "",
    annotate: bool | None = None,
    ax: "Axes | None" = None,
    save_path: str | os.PathLike | None = None,
    dpi: int = 200,
    errors: np.ndarray | None = None,
    metric: Any = None,
    layer_name_depth: int | None = None,
    label_fn: Callable[[str], str] | None = None,
    ticks: str = "layers",
    stage_lines: bool | None = None,
    orient_cmap: bool = True,
    norm: str | None = None,
    colorbar: bool = True,
    layout: bool = True,
    pvalues: np.ndarray | None = None,
    significance: float | None = None,
) -> "Axes":
    """Draw ``matrix[i, j]`` with ``labels_a`` on the y axis (row 0 at the bottom, as in
    Kornblith et al.'s figures) and ``labels_b`` on the x axis, with a colorbar.

    Parameters
    ----------
    metric : str, metric class or result, optional
        What the values are (``"CKA"``, ``"II"``…; see :func:`metric_class_of`). It sets
        the default colour limits to the metric's ``value_range`` (``[0, 1]`` for CKA,
        dCKA, II; the data's range for an unknown metric) and, for a distance such as
        Information Imbalance, reverses ``cmap`` and turns the colourbar upside down so
        that brighter/higher means "more alike" as for CKA.
    vmin, vmax : float, optional
        Override the colour limits. Values outside them get a pointed colourbar end
        (``extend``), e.g. the small negatives of the unbiased CKA estimator.
    cmap : str or Colormap
        Named for similarities (bright = alike); reversed for a distance unless
        ``orient_cmap=False``.
    annotate : bool, optional
        Write the values into the cells (default: grids up to 12 × 12). Text is written
        only when it fits at ≥ 6 pt; an explicit ``True`` that cannot fit warns.
    errors : ndarray, optional
        Same shape as ``matrix`` (e.g. standard errors): each annotation reads
        ``value`` over ``±error`` with two significant digits (never ``±0.00``).
    layer_name_depth : int, optional
        Tick labels keep the last ``k`` dotted parts of each name (as in pytorch-cka).
    norm : ``"linear"`` (default) or ``"log"``
        A log colour scale spreads small distances apart (Information Imbalance of
        informative layers sits near its floor 2/n); its lower limit defaults to the decade
        below the smallest value, so figures of one batch size still share it.
    label_fn : callable, optional
        Name → tick label, after ``layer_name_depth`` (e.g. to abbreviate).
    ticks : ``"layers"`` or ``"stages"``
        Label layers (thinned to every k-th when they do not fit at ≥ 6 pt) or stages:
        one label per run of layers sharing their first name part after the common
        prefix (``layer1``…``layer4``, ``denseblock1``…), minor ticks at the layers.
    stage_lines : bool, optional
        Thin lines between stages (the first part of the names after what they share:
        ``layer1``, ``layer2``… or ``denseblock1``…). Default: on when the ticks are thinned.
    pvalues, significance : ndarray, float, optional
        Per-cell p-values (e.g. ``result.pvalue`` of a permutation null) and a level: cells
        with ``p > significance`` are washed out in grey (and hatched on grids up to
        40 × 40), so only the significant cells keep their colour; the x label says so.
    colorbar, layout
        Draw the colourbar; tidy the figure's layout (``plot_results`` does it once).
    ax, save_path, dpi
        Draw into ``ax``; save to ``save_path`` (a file whose suffix picks the format, or a
        directory, see :func:`resolve_save_path`).

    NaN cells (undefined similarity) are drawn grey. Long axes show every k-th label at
    6 pt rather than overprinted ones. Returns the Axes.
    """
    plt = pyplot()
    matrix = np.asarray(matrix, dtype=float)
    if matrix.ndim != 2 or matrix.shape != (len(labels_a), len(labels_b)):
        raise ValueError(f"matrix has shape {matrix.shape}, the labels {(len(labels_a), len(labels_b))}")
    la, lb = matrix.shape
    err = None if errors is None else np.asarray(errors, dtype=float)
    if err is not None and err.shape != matrix.shape:
        raise ValueError(f"errors has shape {err.shape}, the matrix {matrix.shape}")
    if ax is None:
        w, h = default_size(la, lb)
        if annotate:  # room for the cell text at ≥ 6.5 pt, up to a 24-inch figure
            chars = 6 if err is not None else 5
            lines = 2 if err is not None else 1
            w = min(max(w, lb * (0.62 * chars + 0.8) * 6.5 / 72 / 0.72 + 1.0), 24.0)
            h = min(max(h, la * (1.15 * lines + 0.5) * 6.5 / 72 / 0.72 + 1.0), 24.0)
        _, ax = plt.subplots(figsize=(w, h), dpi=100)
    cm = _base.orient_cmap(cmap, metric) if orient_cmap else plt.get_cmap(cmap)
    cm = cm.with_extremes(bad="lightgrey")  # NaN (undefined) cells in grey
    if norm not in (None, "linear", "log"):
        raise ValueError(f"norm must be 'linear' or 'log', got {norm!r}")
    lo, hi, extend = color_limits(matrix, metric, vmin, vmax, log=norm == "log")
    if norm == "log":
        from matplotlib.colors import LogNorm

        scale: dict[str, Any] = {"norm": LogNorm(lo, hi)}
    else:
        scale = {"vmin": lo, "vmax": hi}
    im = ax.imshow(np.ma.masked_invalid(matrix), origin="lower", aspect="auto", cmap=cm, interpolation="nearest",
                   **scale)
    if significance is not None:
        xlabel = _grey_out(ax, matrix, pvalues, significance, xlabel)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    cbar = None
    if colorbar:
        cbar = ax.figure.colorbar(im, ax=ax, extend=extend, fraction=0.05, pad=0.03)
        cbar.ax.tick_params(labelsize=8)
        if norm == "log":  # plain numbers (0.02, 0.05, 0.1 …), not powers of ten
            from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

            cbar.ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            cbar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            cbar.ax.yaxis.set_minor_formatter(NullFormatter())
        if _base.is_distance(metric) and orient_cmap:
            cbar.ax.invert_yaxis()  # low distance (alike) at the top, as high CKA is
        if colorbar_label:
            note = "\n(low = more alike, at the top)" if _base.is_distance(metric) and orient_cmap else ""
            cbar.set_label(colorbar_label + note, fontsize=9)
    setattr(ax, _STATE, {
        "names_a": [str(t) for t in labels_a], "names_b": [str(t) for t in labels_b], "ticks": ticks,
        "labels_a": _base.shorten_labels(labels_a, layer_name_depth, label_fn),
        "labels_b": _base.shorten_labels(labels_b, layer_name_depth, label_fn),
        "stage_a": _base.stage_boundaries(labels_a), "stage_b": _base.stage_boundaries(labels_b),
        "stage_lines": stage_lines, "matrix": matrix, "errors": err, "image": im, "colorbar": cbar,
        "annotate": annotate,
    })
    _fit_ticks(ax)  # a first plan, so that the layout sees labels of about the right size
    if layout:
        finish_layout([ax])
    if save_path is not None:
        _base.save_figure(ax.figure, save_path, title, dpi)
    return ax


def _grey_out(ax: "Axes", matrix: np.ndarray, pvalues: Any, alpha: float, xlabel: str) -> str:
    """Wash out (and, on small grids, hatch) the cells with ``p > alpha``; the x label's note."""
    if pvalues is None:
        raise ValueError("significance= needs p-values: a result computed with permutations=K (result.pvalue), "
                         "or pvalues=(La, Lb) array")
    p = np.asarray(pvalues, dtype=float)
    if p.shape != matrix.shape:
        raise ValueError(f"pvalues has shape {p.shape}, the matrix {matrix.shape}")
    if not 0 < float(alpha) < 1:
        raise ValueError(f"significance must be a level in (0, 1), got {alpha!r}")
    off = p > alpha  # NaN p-values (undefined cells) are grey already
    overlay = np.zeros((*matrix.shape, 4))
    overlay[off] = (0.86, 0.86, 0.86, 0.85)
    ax.imshow(overlay, origin="lower", aspect="auto", interpolation="nearest", zorder=2)
    if off.any() and max(matrix.shape) <= 40:
        from matplotlib.patches import Rectangle

        for i, j in zip(*np.nonzero(off)):
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.55", lw=0,
                                   zorder=3))
    note = f"grey: not significant (permutation p > {alpha:g}; {int(off.sum())} of {off.size} cells)"
    return f"{xlabel}\n{note}" if xlabel else note


def _fit_ticks(ax: "Axes") -> bool:
    """Tick labels for the axes' current size: every layer when they fit at ≥ 6 pt, every
    k-th otherwise (minor ticks still mark every cell) or one per stage, and stage lines
    when thinned. True when the labels differ from the last plan (the layout must be
    redone)."""
    st = getattr(ax, _STATE)
    y = _base.set_layer_ticks(ax, "y", st["names_a"], st["labels_a"], st["ticks"])
    x = _base.set_layer_ticks(ax, "x", st["names_b"], st["labels_b"], st["ticks"])
    thinned = y["thinned"] or x["thinned"]
    for line in st.pop("lines", []):
        line.remove()
    lines = st["stage_lines"] if st["stage_lines"] is not None else thinned
    if lines:
        st["lines"] = ([ax.axhline(i - 0.5, color="white", lw=0.5, alpha=0.7) for i in st["stage_a"]]
                       + [ax.axvline(j - 0.5, color="white", lw=0.5, alpha=0.7) for j in st["stage_b"]])
    st["thinned"] = thinned
    plan = (tuple(y.values()), tuple(x.values()))
    changed = st.get("plan") != plan
    st["plan"] = plan
    return changed


def _cell_texts(st: dict[str, Any], i: int, j: int) -> list[str]:
    v = st["matrix"][i, j]
    if not np.isfinite(v):
        return []
    lines = [f"{v:.2f}"]
    err = st["errors"]
    if err is not None and np.isfinite(err[i, j]):
        lines.append(_base.format_stderr(err[i, j]))
    return lines


def annotate_cells(ax: "Axes") -> None:
    st = getattr(ax, _STATE)
    for t in st.pop("texts", []):
        t.remove()
    matrix = st["matrix"]
    la, lb = matrix.shape
    annotate = st["annotate"]
    if annotate is False or (annotate is None and max(la, lb) > 12):
        return
    cells = {(i, j): _cell_texts(st, i, j) for i in range(la) for j in range(lb)}
    chars = max((len(s) for lines in cells.values() for s in lines), default=4)
    n_lines = max((len(lines) for lines in cells.values()), default=1)
    w_pt, h_pt = _base.axes_size_pt(ax)
    fs = min(8.0, (w_pt / lb) / (0.62 * chars + 0.8), (h_pt / la) / (1.15 * n_lines + 0.5))
    if fs < MIN_FONT:
        if annotate:
            _base.warn(f"cell text does not fit a {la} × {lb} grid at ≥ {MIN_FONT:g} pt in this figure; "
                       "left out (draw a larger figure or fewer layers for values in the cells)")
        return
    im = st["image"]
    texts = []
    for (i, j), lines in cells.items():
        if not lines:
            continue
        r, g, b, _ = im.cmap(im.norm(matrix[i, j]))
        dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
        texts.append(ax.text(j, i, "\n".join(lines), ha="center", va="center", fontsize=fs,
                             color="white" if dark else "black", linespacing=0.95))
    st["texts"] = texts


def finish_layout(axes: Sequence["Axes"]) -> None:
    """Lay the figure out, fit every heatmap's ticks to its final size, and write the
    cell text that fits."""
    if not axes:
        return
    fig = axes[0].figure
    fig.tight_layout()
    changed = [_fit_ticks(ax) for ax in axes]
    if any(changed):  # the labels changed size: lay the figure out again around them
        fig.tight_layout()
    for ax in axes:
        annotate_cells(ax)
