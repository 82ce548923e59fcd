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

__all__ = [
    "plot_heatmap",
    "plot_result",
    "plot_checkpoint_trend",
    "plot_checkpoint_heatmap",
    "resolve_save_path",
]

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
    errors: np.ndarray | None = None,
) -> "Axes":
    """Draw ``matrix[i, j]`` with ``labels_a`` on the y axis (row 0 at the bottom, as in
    Kornblith et al.'s figures) and ``labels_b`` on the x axis, with a colorbar.

    NaN cells (undefined similarity) are drawn grey. ``annotate`` writes values in the cells
    (default: when the grid is at most 12 × 12); with ``errors`` (same shape, e.g. standard
    errors) each annotation reads ``value ± error``. Saves to ``save_path`` if given.
    """
    plt = _pyplot()
    matrix = np.asarray(matrix, dtype=float)
    la, lb = matrix.shape
    if ax is None:
        w = min(max(4.5, 0.32 * lb + 3.0), 20)
        h = min(max(4.0, 0.3 * la + 2.5), 20)
        _, ax = plt.subplots(figsize=(w, h), dpi=100)
    cm = plt.get_cmap(cmap).with_extremes(bad="lightgrey")  # NaN (undefined) cells in grey
    im = ax.imshow(np.ma.masked_invalid(matrix), origin="lower", aspect="auto", cmap=cm, vmin=vmin, vmax=vmax,
                   interpolation="nearest")
    fs = 8 if max(la, lb) <= 24 else 6 if max(la, lb) <= 48 else 4
    short = all(len(str(t)) <= 4 for t in labels_b)  # step numbers read better upright
    ax.set_xticks(range(lb), labels=list(labels_b), rotation=0 if short else 90, fontsize=fs)
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
        err = None if errors is None else np.asarray(errors, dtype=float)
        if err is not None and err.shape != matrix.shape:
            raise ValueError(f"errors has shape {err.shape}, the matrix {matrix.shape}")
        for i in range(la):
            for j in range(lb):
                v = matrix[i, j]
                if np.isfinite(v):
                    dark = (v - lo) / ((hi - lo) or 1.0) < 0.6
                    text = f"{v:.2f}"
                    if err is not None and np.isfinite(err[i, j]):
                        text += f"\n±{err[i, j]:.2f}"
                    ax.text(j, i, text, ha="center", va="center", fontsize=fs - 1 if err is None else fs - 2,
                            color="white" if dark else "black", linespacing=0.9)
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
    show_stderr: bool = False,
    **kwargs: Any,
) -> "Axes":
    """Heatmap of a :class:`SimilarityResult` with the layer names on both axes.

    ``show_stderr=True`` writes ``value ± stderr`` into the cells (and turns annotation
    on). ``save_path`` is a file (its suffix picks the format) or a directory; other
    keyword arguments go to :func:`plot_heatmap`.
    """
    if show_stderr:
        kwargs.setdefault("annotate", True)
        kwargs["errors"] = result.stderr
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


# ------------------------------------------------------------------ checkpoints over training
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
    xscale : ``"auto"``, ``"linear"``, ``"symlog"`` or ``"log"``
        ``"auto"`` picks a symmetric-log axis when the steps span orders of magnitude.
    cmap : str
        Line colours run along this colormap in layer order (input → output).
    ax, save_path, dpi
        Draw into ``ax``; save to ``save_path`` (a file, or a directory as in
        :func:`resolve_save_path`).

    Returns
    -------
    matplotlib.axes.Axes
    """
    plt = _pyplot()
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
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4 if len(layers) <= 12 else 7.4, 4.0), dpi=100)
    colors = plt.get_cmap(cmap)(np.linspace(0.0, 0.88, max(len(layers), 2)))
    for i, name in enumerate(layers):
        y = values[:, i]
        e = None if err is None else np.where(np.isfinite(err[:, i]), err[:, i], 0.0)
        if e is not None and errorbars == "bars":
            ax.errorbar(x, y, yerr=e, color=colors[i], marker="o", ms=3.5, lw=1.6, capsize=2.5,
                        elinewidth=1.0, label=name)
        else:
            ax.plot(x, y, color=colors[i], marker="o", ms=3.5, lw=1.6, label=name)
            if e is not None:
                ax.fill_between(x, y - e, y + e, color=colors[i], alpha=0.18, lw=0)
    scale, opts = _auto_xscale(x) if xscale == "auto" else (xscale, {})
    ax.set_xscale(scale, **opts)
    ax.minorticks_off()
    if labels is not None and np.array_equal(np.asarray(steps, dtype=float), np.arange(len(x))):
        ax.set_xticks(x, labels=[list(labels)[k] for k in order], rotation=45, ha="right")
    elif len(x) <= 16:  # few checkpoints: a tick at each step that has room for its label
        ax.set_xticks(*_spaced_ticks(ax, x))
    ref = _reference_text(reference)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel if ylabel is not None else f"{metric} with {ref}")
    if title is None:
        title = f"Layer {metric} with the checkpoint at {ref} over training"
    ax.set_title(title)
    ax.grid(True, alpha=0.3, lw=0.6)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ncol = 1 if len(layers) <= 16 else 2
    ax.legend(title="layer", loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False,
              fontsize=8 if len(layers) <= 16 else 6, title_fontsize=9, ncol=ncol)
    ax.figure.tight_layout()
    if save_path is not None:
        ax.figure.savefig(resolve_save_path(save_path, title), dpi=dpi, bbox_inches="tight")
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
    ax: "Axes | None" = None,
    save_path: str | os.PathLike | None = None,
    dpi: int = 200,
) -> "Axes":
    """Layers × checkpoints heatmap: cell ``(layer i, checkpoint k)`` is ``values[k, i]``.

    Checkpoints run left to right in step order (``steps``, default: as given), layers
    bottom (input) to top (output). ``stderr`` adds ``± error`` to the annotations.
    Other arguments as in :func:`plot_heatmap`.
    """
    values = np.asarray(values, dtype=float)
    if values.shape != (len(labels), len(layers)):
        raise ValueError(f"values must have shape (checkpoints, layers) = {(len(labels), len(layers))}, got {values.shape}")
    order = _step_order(steps) if steps is not None else np.arange(len(labels))
    ref = _reference_text(reference)
    if title is None:
        title = f"Layer {metric} with the checkpoint at {ref}"
    path = resolve_save_path(save_path, title) if save_path is not None else None
    return plot_heatmap(
        values[order].T, list(layers), [list(labels)[k] for k in order],
        title=title, xlabel=xlabel, ylabel="layer", cmap=cmap, vmin=vmin, vmax=vmax,
        colorbar_label=f"{metric} with {ref}", annotate=annotate, ax=ax,
        save_path=path, dpi=dpi, errors=None if stderr is None else np.asarray(stderr, dtype=float)[order].T,
    )
