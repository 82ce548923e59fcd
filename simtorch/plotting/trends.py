"""Layer similarity over training: each layer over checkpoints
(:func:`plot_checkpoint_trend`) and a layers × checkpoints heatmap
(:func:`plot_checkpoint_heatmap`).

The figures across depth (:func:`plot_diagonal`, :func:`diagonal_values`,
:func:`plot_trend_with_range`) live in :mod:`.diagonal` and :func:`line_styles` in
:mod:`.lines`; they are re-exported here, where they were first defined."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from . import _base
from ._base import pyplot
from .diagonal import diagonal_values, plot_diagonal, plot_trend_with_range
from .heatmap import plot_heatmap
from .lines import finite_span, fit_legend, light_frame, line_styles, value_ylim

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["plot_checkpoint_trend", "plot_checkpoint_heatmap", "plot_diagonal", "plot_trend_with_range",
           "diagonal_values", "line_styles"]


def _step_order(steps: Sequence[float]) -> np.ndarray:
    return np.argsort(np.asarray(steps, dtype=float), kind="stable")


def _auto_xscale(x: np.ndarray) -> tuple[str, dict[str, Any]]:
    pos = x[x > 0]
    # steps spread over orders of magnitude (0, 10, 100, 1000...) read better on a
    # symmetric-log axis, which also keeps a step 0 (the initialisation) on the plot
    if x.min() >= 0 and pos.size >= 2 and pos.max() / pos.min() >= 20:
        return "symlog", {"linthresh": float(pos.min()), "linscale": 0.5}
    return "linear", {}


def _reference_text(reference: str | None) -> str:
    if reference is None:
        return "reference"
    return f"step {reference}" if re.fullmatch(r"-?\d+(\.\d+)?", str(reference)) else str(reference)


def _spaced_ticks(ax: "Axes", x: np.ndarray, min_gap: float = 0.07) -> tuple[list[float], list[str]]:
    """Ticks at the steps, dropping those that would sit closer than ``min_gap`` (axes
    fraction) to a kept one; the last step is always labelled."""
    ax.get_xlim()  # brings the lazily autoscaled limits up to date before transforming
    frac = ax.transAxes.inverted().transform(ax.transData.transform(np.c_[x, np.zeros_like(x)]))[:, 0]
    keep: list[int] = []
    for i in range(len(x)):
        if keep and frac[i] - frac[keep[-1]] < min_gap:
            if i == len(x) - 1:
                keep[-1] = i
            continue
        keep.append(i)
    return [float(x[i]) for i in keep], [f"{x[i]:g}" for i in keep]



def plot_checkpoint_trend(
    steps: Sequence[float],
    values: np.ndarray,
    layers: Sequence[str],
    stderr: np.ndarray | None = None,
    *,
    labels: Sequence[str] | None = None,
    reference: str | None = None,
    metric: str = "CKA",
    title: str | None = None,
    xlabel: str = "training step",
    ylabel: str | None = None,
    xscale: str = "auto",
    errorbars: str = "bars",
    cmap: str = "viridis",
    ylim: Any = "auto",
    layer_name_depth: int | None = None,
    ax: "Axes | None" = None,
    save_path: str | os.PathLike | None = None,
    dpi: int = 200,
) -> "Axes":
    """Layer similarity over training: one line per layer, x = checkpoint step.

    Parameters
    ----------
    steps : sequence of float, length K
        The x position of each checkpoint (points are drawn in step order).
    values : ndarray ``(K, L)``
        ``values[k, i]`` = similarity of layer ``layers[i]`` at checkpoint ``k`` with the
        same layer of the reference checkpoint.
    layers : sequence of str, length L
    stderr : ndarray ``(K, L)``, optional
        Standard errors, drawn as error bars (``errorbars="bars"``) or as a shaded band
        (``"band"``); NaN entries are left out.
    labels : sequence of str, optional
        Checkpoint names; used as tick labels when the steps are just positions.
    reference : str, optional
        Name of the reference checkpoint, for the y label.
    metric : str
        The metric's name; a registered one (``"CKA"``…) fixes the y range to its
        ``value_range`` (``ylim="auto"``), so runs plot on the same axis.
    xscale : ``"auto"``, ``"linear"``, ``"symlog"`` or ``"log"``
        ``"auto"`` picks a symmetric-log axis when the steps span orders of magnitude.
    cmap : str
        Line colours run along this colormap in layer order (input → output); past 8
        layers, neighbouring lines also differ in marker and dash (:func:`line_styles`),
        and the legend takes as many columns as it needs to fit beside the plot.
    ylim : ``"auto"``, ``(low, high)`` or None
        ``"auto"``: the metric's range (widened to the data); None: matplotlib's.
    layer_name_depth : int, optional
        Legend entries keep the last ``k`` dotted parts of each layer name.
    ax, save_path, dpi
        Draw into ``ax``; save to ``save_path`` (a file, or a directory as in
        :func:`resolve_save_path`).

    Returns
    -------
    matplotlib.axes.Axes
    """
    plt = pyplot()
    values = np.asarray(values, dtype=float)
    x = np.asarray(steps, dtype=float)
    if values.ndim != 2 or values.shape != (len(x), len(layers)):
        raise ValueError(f"values must have shape (checkpoints, layers) = {(len(x), len(layers))}, got {values.shape}")
    err = None if stderr is None else np.asarray(stderr, dtype=float)
    if err is not None and err.shape != values.shape:
        raise ValueError(f"stderr has shape {err.shape}, values {values.shape}")
    if errorbars not in ("bars", "band"):
        raise ValueError(f"errorbars must be 'bars' or 'band', got {errorbars!r}")
    order = _step_order(x)
    x, values = x[order], values[order]
    err = None if err is None else err[order]
    n = len(layers)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4 if n <= 12 else 7.6, 4.0 if n <= 12 else max(4.0, 0.2 * n + 1.2)),
                             dpi=100)
    names = _base.shorten_labels(layers, layer_name_depth)
    for i, (name, style) in enumerate(zip(names, line_styles(n, cmap))):
        y = values[:, i]
        e = None if err is None else np.where(np.isfinite(err[:, i]), err[:, i], 0.0)
        if e is not None and errorbars == "bars":
            ax.errorbar(x, y, yerr=e, ms=3.5, lw=1.4, capsize=2.5, elinewidth=0.9, label=name, **style)
        else:
            ax.plot(x, y, ms=3.5, lw=1.4, label=name, **style)
            if e is not None:
                ax.fill_between(x, y - e, y + e, color=style["color"], alpha=0.15, lw=0)
    scale, opts = _auto_xscale(x) if xscale == "auto" else (xscale, {})
    ax.set_xscale(scale, **opts)
    ax.minorticks_off()
    if labels is not None and np.array_equal(np.asarray(steps, dtype=float), np.arange(len(x))):
        ax.set_xticks(x, labels=[list(labels)[k] for k in order], rotation=45, ha="right")
    elif len(x) <= 16:  # few checkpoints: a tick at each step that has room for its label
        ax.set_xticks(*_spaced_ticks(ax, x))
    value_ylim(ax, metric, *finite_span(values, err), ylim)
    ref = _reference_text(reference)
    ax.set_xlabel(xlabel)
    note = " (lower = more alike)" if _base.is_distance(metric) else ""
    ax.set_ylabel(ylabel if ylabel is not None else f"{metric} with {ref}{note}")
    if title is None:
        title = f"Layer {metric} with the checkpoint at {ref} over training"
    ax.set_title(title)
    light_frame(ax)
    fit_legend(ax, n, "layer")
    ax.figure.tight_layout()
    if fit_legend(ax, n, "layer"):  # columns for the final height
        ax.figure.tight_layout()
    _base.save_figure(ax.figure, save_path, title, dpi)
    return ax


def plot_checkpoint_heatmap(
    values: np.ndarray,
    layers: Sequence[str],
    labels: Sequence[str],
    *,
    steps: Sequence[float] | None = None,
    stderr: np.ndarray | None = None,
    reference: str | None = None,
    metric: str = "CKA",
    title: str | None = None,
    xlabel: str = "checkpoint",
    cmap: str = "magma",
    vmin: float | None = None,
    vmax: float | None = None,
    annotate: bool | None = None,
    layer_name_depth: int | None = None,
    ax: "Axes | None" = None,
    save_path: str | os.PathLike | None = None,
    dpi: int = 200,
) -> "Axes":
    """Layers × checkpoints heatmap: cell ``(layer i, checkpoint k)`` is ``values[k, i]``.

    Checkpoints run left to right in step order (``steps``, default: as given), layers
    bottom (input) to top (output). The colour scale defaults to the metric's range
    (``[0, 1]`` for CKA); ``stderr`` adds ``± error`` to the annotations. Other arguments
    as in :func:`plot_heatmap`.
    """
    values = np.asarray(values, dtype=float)
    if values.shape != (len(labels), len(layers)):
        raise ValueError(f"values must have shape (checkpoints, layers) = {(len(labels), len(layers))}, got {values.shape}")
    order = _step_order(steps) if steps is not None else np.arange(len(labels))
    ref = _reference_text(reference)
    if title is None:
        title = f"Layer {metric} with the checkpoint at {ref}"
    return plot_heatmap(
        values[order].T, list(layers), [list(labels)[k] for k in order],
        title=title, xlabel=xlabel, ylabel="layer", cmap=cmap, vmin=vmin, vmax=vmax,
        colorbar_label=f"{metric} with {ref}", annotate=annotate, ax=ax, metric=metric,
        layer_name_depth=layer_name_depth, save_path=save_path, dpi=dpi,
        errors=None if stderr is None else np.asarray(stderr, dtype=float)[order].T,
    )

