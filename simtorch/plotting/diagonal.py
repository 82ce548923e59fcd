"""Similarity across depth: each layer's corresponding or best-matching layer in the
other model (:func:`diagonal_values`, :func:`plot_diagonal`), and several runs (seeds,
checkpoints) as a mean line with a shaded spread (:func:`plot_trend_with_range`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from . import _base
from ._base import describe_estimator, pyplot
from .lines import finite_span, fit_legend, light_frame, line_styles, value_ylim

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from ..result import SimilarityResult

__all__ = ["diagonal_values", "plot_diagonal", "plot_trend_with_range"]


def diagonal_values(result: "SimilarityResult", mode: str = "diagonal") -> dict[str, np.ndarray]:
    """One value per layer of model A, from a result's grid.

    ``mode="diagonal"``: the corresponding layer of B, ``j = i`` for a square grid and
    otherwise the layer at the same relative depth, ``j = round(i · (Lb − 1)/(La − 1))``.
    ``mode="best"``: B's best match for each A layer (the highest value for a similarity,
    the lowest for a distance such as Information Imbalance).

    Returns ``{"values", "stderr", "index_b", "depth"}``, each of length ``La``;
    ``depth`` is A's relative depth ``i/(La − 1)``.
    """
    if mode not in ("diagonal", "best"):
        raise ValueError(f"mode must be 'diagonal' or 'best', got {mode!r}")
    m = np.asarray(result.matrix, dtype=float)
    se = np.asarray(result.stderr, dtype=float)
    la, lb = m.shape
    rows = np.arange(la)
    if mode == "diagonal":
        cols = rows.copy() if la == lb else np.rint(rows * (lb - 1) / max(la - 1, 1)).astype(int)
    else:
        scored = -m if _base.is_distance(result) else m
        scored = np.where(np.isfinite(scored), scored, -np.inf)
        cols = np.argmax(scored, axis=1)
    vals = m[rows, cols]
    if mode == "best":
        vals = np.where(np.isfinite(m).any(axis=1), vals, np.nan)
    return {"values": vals, "stderr": se[rows, cols], "index_b": cols,
            "depth": rows / max(la - 1, 1)}


def _items(results: Any) -> list[tuple[str | None, Any]]:
    if isinstance(results, Mapping):
        return [(str(k), v) for k, v in results.items()]
    if hasattr(results, "matrix") or isinstance(results, np.ndarray):
        return [(None, results)]
    return [(None, r) for r in results]


def _layer_axis(ax: "Axes", names: Sequence[str], layer_name_depth: int | None,
                label_fn: Callable[[str], str] | None = None, ticks: str = "layers") -> None:
    """Layer names on the x axis, fitted to its size after the layout (laid out twice
    only when the first fit changes the labels)."""
    labels = _base.shorten_labels(names, layer_name_depth, label_fn)
    first = _base.set_layer_ticks(ax, "x", names, labels, ticks)
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.figure.tight_layout()
    if _base.set_layer_ticks(ax, "x", names, labels, ticks) != first:
        ax.figure.tight_layout()


def plot_diagonal(
    results: "SimilarityResult | Sequence[SimilarityResult] | Mapping[str, SimilarityResult]",
    mode: str = "diagonal",
    *,
    labels: Sequence[str] | None = None,
    x: str = "auto",
    show_stderr: bool = True,
    cmap: str = "viridis",
    title: str | None = None,
    ylabel: str | None = None,
    ylim: Any = "auto",
    layer_name_depth: int | None = None,
    label_fn: Callable[[str], str] | None = None,
    ticks: str = "layers",
    ax: "Axes | None" = None,
    save_path: str | os.PathLike | None = None,
    dpi: int = 200,
) -> "Axes":
    """The similarity of corresponding layers (``mode="diagonal"``) or each layer's best
    match in the other model (``mode="best"``) across depth: one line per result.

    Parameters
    ----------
    results : SimilarityResult, sequence or dict name → result
        Several results (seeds, checkpoints, metrics of one family) overlay.
    mode : ``"diagonal"`` or ``"best"``
        See :func:`diagonal_values` (a distance's best match is its lowest value).
    labels : sequence of str, optional
        Legend entries (default: the dict keys, else ``"A vs B"``).
    x : ``"auto"``, ``"layers"`` or ``"depth"``
        ``"layers"``: model A's layer names (thinned to fit); ``"depth"``: relative depth
        0 … 1, so networks of different depths overlay. ``"auto"``: layers when every
        result has the same rows, else depth.
    show_stderr : bool
        A band of ± one standard error (where the result has one).
    ylim : ``"auto"``, ``(low, high)`` or None
        ``"auto"``: the metric's range (``[0, 1]`` for CKA), widened to the data.
    layer_name_depth, label_fn, ticks
        Layer tick labels, as in :func:`plot_heatmap` (``ticks="stages"``: one per stage).

    Returns the Axes.
    """
    plt = pyplot()
    items = _items(results)
    if not items:
        raise ValueError("plot_diagonal needs at least one result")
    if labels is not None and len(labels) != len(items):
        raise ValueError(f"{len(labels)} labels for {len(items)} results")
    if x not in ("auto", "layers", "depth"):
        raise ValueError(f"x must be 'auto', 'layers' or 'depth', got {x!r}")
    same_rows = len({tuple(r.layers_a) for _, r in items}) == 1
    same_pair = len({(r.model_a, r.model_b) for _, r in items}) == 1
    estimators = {describe_estimator(r) for _, r in items}
    use_depth = x == "depth" or (x == "auto" and not same_rows)
    if ax is None:
        la = max(len(r.layers_a) for _, r in items)
        _, ax = plt.subplots(figsize=(min(max(5.5, 0.16 * la + 3.5), 14), 4.2), dpi=100)
    first = items[0][1]
    styles = line_styles(len(items), cmap) if len(items) > 1 else [{"color": "C0", "marker": "o", "linestyle": "-"}]
    spans = []
    for k, ((key, res), style) in enumerate(zip(items, styles)):
        d = diagonal_values(res, mode)
        xs = d["depth"] if use_depth else np.arange(len(d["values"]))
        label = (labels[k] if labels is not None else key if key is not None
                 else describe_estimator(res) if same_pair else f"{res.model_a} vs {res.model_b}")
        ax.plot(xs, d["values"], ms=3.5, lw=1.5, label=label, **style)
        e = d["stderr"] if show_stderr else None
        if e is not None and np.isfinite(e).any():
            e = np.where(np.isfinite(e), e, 0.0)
            ax.fill_between(xs, d["values"] - e, d["values"] + e, color=style["color"], alpha=0.2, lw=0)
        spans.append(finite_span(d["values"], e))
    lows = [s[0] for s in spans if s[0] is not None]
    value_ylim(ax, first, min(lows) if lows else None, max(s[1] for s in spans if s[1] is not None) if lows else None,
                ylim)
    what = "corresponding layer" if mode == "diagonal" else "best-matching layer"
    note = " (lower = more alike)" if _base.is_distance(first) else ""
    one_metric = len({r.metric for _, r in items}) == 1
    ax.set_ylabel(ylabel if ylabel is not None else f"{first.metric if one_metric else 'similarity'} "
                  f"with the {what}{note}")
    if title is None:
        head = f"{estimators.pop()}: " if len(estimators) == 1 else ""
        title = (f"{head}each layer of {first.model_a} and the {what} in {first.model_b}" if same_pair
                 else f"{head}each layer and the {what}")
    ax.set_title(title, fontsize=11)
    light_frame(ax)
    if len(items) > 1:
        fit_legend(ax, len(items), None)
    if use_depth:
        ax.set_xlabel(f"relative depth in {first.model_a}" if same_rows or len(items) == 1 else "relative depth")
        ax.figure.tight_layout()
    else:
        ax.set_xlabel(f"layer of {first.model_a}")
        _layer_axis(ax, first.layers_a, layer_name_depth, label_fn, ticks)
    _base.save_figure(ax.figure, save_path, ax.get_title(), dpi)
    return ax


def _spread(stack: np.ndarray, spread: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = np.nanmean(stack, axis=0)
    if spread == "minmax":
        return mean, np.nanmin(stack, axis=0), np.nanmax(stack, axis=0)
    n = np.sum(np.isfinite(stack), axis=0)
    sd = np.nanstd(stack, axis=0, ddof=1) if stack.shape[0] > 1 else np.zeros_like(mean)
    if spread == "sem":
        sd = sd / np.sqrt(np.maximum(n, 1))
    return mean, mean - sd, mean + sd


def plot_trend_with_range(
    runs: Any,
    *,
    mode: str = "diagonal",
    spread: str = "std",
    x: Sequence[float] | None = None,
    layer_names: Sequence[str] | None = None,
    show_runs: bool = True,
    metric: Any = None,
    cmap: str = "viridis",
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    ylim: Any = "auto",
    layer_name_depth: int | None = None,
    label_fn: Callable[[str], str] | None = None,
    ticks: str = "layers",
    ax: "Axes | None" = None,
    save_path: str | os.PathLike | None = None,
    dpi: int = 200,
) -> "Axes":
    """Several runs of one comparison (seeds, checkpoints) as a mean line with a shaded
    spread, as pytorch-cka's ``plot_cka_trend_with_range``.

    Parameters
    ----------
    runs
        A sequence of :class:`SimilarityResult` (one group), a dict label → sequence of
        results (one line per group), or arrays ``(n_runs, n_points)`` / a dict label →
        array. Results become curves across depth with :func:`diagonal_values` (``mode``).
    spread : ``"std"``, ``"sem"`` or ``"minmax"``
        The band: ± the standard deviation over runs (``ddof=1``), ± the standard error
        of the mean, or the range of the runs.
    x : sequence of float, optional
        x positions of the points (default: layer positions, labelled with
        ``layer_names`` or the results' layers).
    show_runs : bool
        Also draw each run as a thin faint line.
    metric : optional
        The metric of raw arrays (for the y range); results carry their own.
    layer_name_depth, label_fn, ticks
        Layer tick labels, as in :func:`plot_diagonal`.

    Returns the Axes.
    """
    plt = pyplot()
    if spread not in ("std", "sem", "minmax"):
        raise ValueError(f"spread must be 'std', 'sem' or 'minmax', got {spread!r}")
    if isinstance(runs, Mapping):
        groups = [(str(k), v) for k, v in runs.items()]
    else:
        groups = [(None, runs)]
    curves: list[tuple[str | None, np.ndarray]] = []
    names = list(layer_names) if layer_names is not None else None
    for label, group in groups:
        if isinstance(group, np.ndarray) or (len(group) and not hasattr(group[0], "matrix")):
            stack = np.atleast_2d(np.asarray(group, dtype=float))
        else:
            group = list(group)
            if not group:
                raise ValueError(f"group {label!r} has no runs")
            lengths = {len(r.layers_a) for r in group}
            if len(lengths) != 1:
                raise ValueError(f"the runs of {label or 'the group'} have different numbers of layers "
                                 f"{sorted(lengths)}")
            stack = np.stack([diagonal_values(r, mode)["values"] for r in group])
            metric = metric if metric is not None else group[0]
            if names is None:
                names = list(group[0].layers_a)
        curves.append((label, stack))
    n_points = {c.shape[1] for _, c in curves}
    if len(n_points) != 1:
        raise ValueError(f"the groups have different numbers of points {sorted(n_points)}")
    npts = n_points.pop()
    xs = np.arange(npts, dtype=float) if x is None else np.asarray(x, dtype=float)
    if len(xs) != npts:
        raise ValueError(f"{len(xs)} x values for {npts} points")
    if ax is None:
        _, ax = plt.subplots(figsize=(min(max(5.5, 0.16 * npts + 3.5), 14), 4.2), dpi=100)
    styles = line_styles(len(curves), cmap) if len(curves) > 1 else [{"color": "C0", "marker": "o", "linestyle": "-"}]
    lows, highs = [], []
    word = {"std": "± s.d.", "sem": "± s.e.m.", "minmax": "range"}[spread]
    for (label, stack), style in zip(curves, styles):
        mean, lo, hi = _spread(stack, spread)
        if show_runs and stack.shape[0] > 1:
            for run in stack:
                ax.plot(xs, run, color=style["color"], lw=0.6, alpha=0.35)
        text = f"{label + ': ' if label else ''}mean {word} of {stack.shape[0]} runs"
        ax.plot(xs, mean, ms=3.5, lw=1.6, label=text, **style)
        ax.fill_between(xs, lo, hi, color=style["color"], alpha=0.2, lw=0)
        for arr, out in ((lo, lows), (hi, highs)):
            r = _base.finite_range(arr)
            if r:
                out.append(r[0] if out is lows else r[1])
    value_ylim(ax, metric, min(lows) if lows else None, max(highs) if highs else None, ylim)
    what = "corresponding layer" if mode == "diagonal" else "best-matching layer"
    mname = _base.metric_name(metric) or "similarity"
    ax.set_ylabel(ylabel if ylabel is not None else f"{mname} with the {what}")
    if title is None:
        title = f"{describe_estimator(metric) if metric is not None else 'similarity'} over runs"
    ax.set_title(title)
    light_frame(ax)
    ax.legend(loc="best", frameon=False, fontsize=8)
    if x is None and names is not None and len(names) == npts:
        ax.set_xlabel(xlabel if xlabel is not None else "layer")
        _layer_axis(ax, names, layer_name_depth, label_fn, ticks)
    else:
        ax.set_xlabel(xlabel if xlabel is not None else "layer" if x is None else "")
        ax.figure.tight_layout()
    _base.save_figure(ax.figure, save_path, title, dpi)
    return ax
