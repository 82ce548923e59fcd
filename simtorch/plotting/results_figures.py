"""Figures of results: one :class:`SimilarityResult` as a heatmap (:func:`plot_result`), or
several in one figure with a shared scale per metric family (:func:`plot_results`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from . import _base
from ._base import color_limits, describe_estimator, family_of, metric_label, pyplot
from .heatmap import annotate_cells, default_size, finish_layout, plot_heatmap

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..result import SimilarityResult

__all__ = ["plot_result", "plot_results"]


def plot_result(
    result: "SimilarityResult",
    *,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    cmap: Any = "magma",
    save_path: str | os.PathLike | None = None,
    show_stderr: bool = False,
    significance: float | None = None,
    **kwargs: Any,
) -> "Axes":
    """Heatmap of a :class:`SimilarityResult` with the layer names on both axes.

    The colour scale defaults to the metric's range (``[0, 1]`` for CKA, dCKA and II)
    and the colour map follows its direction (see :func:`plot_heatmap`); the default title
    names the estimator (``"CKA (linear, unbiased): A vs B"``). ``show_stderr=True``
    writes ``value ± stderr`` into the cells (and turns annotation on). ``save_path`` is a
    file (its suffix picks the format) or a directory; other keyword arguments
    (``vmin``, ``vmax``, ``annotate``, ``layer_name_depth``, ``ax``…) go to
    :func:`plot_heatmap`. ``significance=0.05`` greys out the cells whose permutation p-value
    (``result.pvalue``, from ``permutations=K``) is above 0.05.
    """
    if significance is not None:
        if result.pvalue is None:
            raise ValueError("significance= needs a result computed with a permutation null: pass permutations=K "
                             "(e.g. CKA(..., permutations=100) or cka_kwargs={'permutations': 100})")
        kwargs.setdefault("pvalues", result.pvalue)
        kwargs["significance"] = significance
    if show_stderr:
        kwargs.setdefault("annotate", True)
        kwargs["errors"] = result.stderr
    if title is None:
        title = f"{describe_estimator(result)}: {result.model_a} vs {result.model_b}"
    kwargs.setdefault("metric", result.metric)
    kwargs.setdefault("colorbar_label", metric_label(result, result.model_a, result.model_b))
    return plot_heatmap(
        result.matrix, result.layers_a, result.layers_b,
        title=title,
        xlabel=result.model_b if xlabel is None else xlabel,
        ylabel=result.model_a if ylabel is None else ylabel,
        cmap=cmap, save_path=save_path, **kwargs,
    )


def _as_items(results: Any) -> list[tuple[str | None, "SimilarityResult"]]:
    if isinstance(results, Mapping):
        return [(str(k), v) for k, v in results.items()]
    if hasattr(results, "matrix"):  # one result
        return [(None, results)]
    return [(None, r) for r in results]


def plot_results(
    results: "Mapping[str, SimilarityResult] | Sequence[SimilarityResult]",
    *,
    titles: Sequence[str] | Mapping[str, str] | None = None,
    suptitle: str | None = None,
    ncols: int | None = None,
    share: str = "family",
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: Any = "magma",
    norm: str | Mapping[str, str] | None = None,
    show_stderr: bool = False,
    annotate: bool | None = None,
    layer_name_depth: int | None = None,
    label_fn: Callable[[str], str] | None = None,
    ticks: str = "layers",
    panel_size: tuple[float, float] | None = None,
    save_path: str | os.PathLike | None = None,
    dpi: int = 200,
) -> "Figure":
    """Several results in one figure, one heatmap panel each, e.g. the CKA, dCKA and II
    of one :func:`simtorch.compare` pass.

    Parameters
    ----------
    results : dict name → SimilarityResult, or a sequence of them
        Panels in the given order.
    titles : sequence or dict, optional
        Panel titles; default: the estimator of each, e.g. ``"CKA (linear, unbiased)"``,
        ``"dCKA (biased)"``, ``"Information imbalance (batches of 64)"``.
    suptitle : str, optional
        Figure title; default ``"A vs B"`` when every panel compares the same two models.
    ncols : int, optional
        Panels per row (default: all in one row up to 3, else 3).
    share : ``"family"``, ``"all"`` or ``"none"``
        Panels of one metric family (CKA and dCKA: similarities on [0, 1]; II: a
        distance) share one colour scale: the family's declared range, or for metrics
        without one the range of all their panels' values. ``"all"``: one scale for every
        panel; ``"none"``: each panel its own defaults.
    vmin, vmax : float, optional
        Override every panel's colour limits.
    norm : ``"linear"``, ``"log"``, or a dict from a result's key, metric key (``"ii"``)
        or metric name to one of them
        The colour scale of each panel (see :func:`plot_heatmap`), e.g.
        ``norm={"ii": "log"}`` to spread out small Information Imbalance values.
    cmap, show_stderr, annotate, layer_name_depth, label_fn, ticks
        As in :func:`plot_result` / :func:`plot_heatmap`.
    panel_size : (width, height) inches, optional
        Size of one panel (default: from the number of layers).
    save_path, dpi
        Save the figure (a file whose suffix picks the format, or a directory).

    Returns
    -------
    matplotlib.figure.Figure
        ``fig.axes`` holds the panels (and their colourbars); each panel's Axes is in
        ``fig.simtorch_panels``.
    """
    items = _as_items(results)
    if not items:
        raise ValueError("plot_results needs at least one result")
    if share not in ("family", "all", "none"):
        raise ValueError(f"share must be 'family', 'all' or 'none', got {share!r}")
    n = len(items)
    ncols = min(n, 3) if ncols is None else max(1, int(ncols))
    nrows = -(-n // ncols)
    if titles is None:
        panel_titles = [describe_estimator(r) for _, r in items]
    elif isinstance(titles, Mapping):
        panel_titles = [titles.get(k, describe_estimator(r)) if k is not None else describe_estimator(r)
                        for k, r in items]
    else:
        panel_titles = list(titles)
        if len(panel_titles) != n:
            raise ValueError(f"{len(panel_titles)} titles for {n} results")

    def norm_of(key: str | None, res: "SimilarityResult") -> str | None:
        if not isinstance(norm, Mapping):
            return norm
        cls = _base.metric_class_of(res)
        for k in (key, cls.key if cls is not None else None, res.metric):
            if k is not None and k in norm:
                return norm[k]
        return None

    norms = [norm_of(k, r) for k, r in items]
    # one colour scale per family: the declared range, or the data range of the family
    groups: dict[Any, list[int]] = {}
    for k, (_, r) in enumerate(items):
        group = "all" if share == "all" else (family_of(r), norms[k]) if share == "family" else k
        groups.setdefault(group, []).append(k)
    limits: list[tuple[float | None, float | None]] = [(vmin, vmax)] * n
    if share != "none":
        for members in groups.values():
            values = np.concatenate([items[m][1].matrix.ravel() for m in members])
            classes = [_base.metric_class_of(items[m][1]) for m in members]
            ranges = [c.value_range for c in classes if c is not None and c.value_range is not None]
            lo, hi, _ = color_limits(values, items[members[0]][1] if share == "family" else None, vmin, vmax,
                                     log=norms[members[0]] == "log")
            if share == "all" and len(ranges) == len(members):
                lo = min([r[0] for r in ranges]) if vmin is None and norms[members[0]] != "log" else lo
                hi = max(r[1] for r in ranges) if vmax is None else hi
            for m in members:
                limits[m] = (lo, hi)

    la = max(r.shape[0] for _, r in items)
    lb = max(r.shape[1] for _, r in items)
    pw, ph = panel_size if panel_size is not None else default_size(la, lb)
    if panel_size is None and n > 1:
        pw, ph = min(pw, 6.5), min(ph, 5.5)
    plt = pyplot()
    fig, grid = plt.subplots(nrows, ncols, figsize=(pw * ncols, ph * nrows + 0.4), dpi=100, squeeze=False)
    panels = []
    same_rows = len({tuple(r.layers_a) for _, r in items}) == 1
    for k, ((_, res), title) in enumerate(zip(items, panel_titles)):
        ax = grid[k // ncols][k % ncols]
        lo, hi = limits[k]
        plot_result(res, title=title, ax=ax, cmap=cmap, vmin=lo, vmax=hi, show_stderr=show_stderr,
                    layer_name_depth=layer_name_depth, label_fn=label_fn, ticks=ticks, layout=False,
                    norm=norms[k],
                    **({} if show_stderr and annotate is None else {"annotate": annotate}))
        if same_rows and k % ncols:
            ax.set_ylabel("")
        panels.append(ax)
    for k in range(n, nrows * ncols):
        grid[k // ncols][k % ncols].set_visible(False)
    pairs = {(r.model_a, r.model_b) for _, r in items}
    if suptitle is None and len(pairs) == 1:
        a, b = next(iter(pairs))
        suptitle = f"{a} vs {b}"
    if suptitle:
        fig.suptitle(suptitle, fontsize=12)
    finish_layout(panels)
    if same_rows:  # one row of layer names is enough when every panel has the same rows
        for k, ax in enumerate(panels):
            if k % ncols:
                ax.tick_params(axis="y", which="both", labelleft=False)
        fig.tight_layout()
        for ax in panels:
            annotate_cells(ax)
    fig.simtorch_panels = panels
    _base.save_figure(fig, save_path, suptitle or "similarity", dpi)
    return fig
