"""The information imbalance plane (Glielmo et al. 2022) and the reverse-direction grid
of an Information Imbalance result."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from . import _base
from ._base import pyplot

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from ..result import SimilarityResult

__all__ = ["plot_information_plane", "reverse_result", "repel_labels"]


def reverse_result(res: "SimilarityResult") -> "SimilarityResult":
    """The Δ(B_j → A_i) grid of an Information Imbalance result as its own result (same
    orientation: rows are model A's layers)."""
    from ..result import SimilarityResult

    return SimilarityResult(
        matrix=res.extras["reverse"], stderr=res.extras.get("reverse_stderr"),
        layers_a=res.layers_a, layers_b=res.layers_b, model_a=res.model_a, model_b=res.model_b,
        metric="II (reverse)", settings=dict(res.settings), n_samples=res.n_samples, n_batches=res.n_batches,
        n_skipped=res.n_skipped, skipped_samples=res.skipped_samples,
    )


def repel_labels(ax: "Axes", annotations: Sequence[Any], points: np.ndarray, margin: float = 1.5) -> None:
    """Place annotation texts (``ax.annotate(..., textcoords="offset points")``) so that no
    two overlap and none covers a data point, inside the axes: each label in turn takes the
    first free spot on rings of growing radius around its point (up-right first), and a
    leader line ties it to its point when it had to move away."""
    if not annotations:
        return
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    scale = fig.dpi / 72.0
    pts = ax.transData.transform(np.asarray(points, dtype=float))
    box = ax.get_window_extent(renderer)
    dot = 4.0 * scale  # half a scatter marker, in pixels
    placed: list[tuple[np.ndarray, np.ndarray]] = []  # (centre, half size)

    def clash(c: np.ndarray, half: np.ndarray) -> float:
        """How badly a label at ``c`` collides: overlap area with labels and dots, plus
        how far it sticks out of the axes."""
        bad = 0.0
        for oc, oh in placed:
            over = half + oh - np.abs(c - oc)
            if (over > 0).all():
                bad += float(over[0] * over[1])
        for p in pts:
            over = half + dot - np.abs(c - p)
            if (over > 0).all():
                bad += float(over[0] * over[1])
        out = np.maximum(0, [box.x0 - (c[0] - half[0]), (c[0] + half[0]) - box.x1,
                             box.y0 - (c[1] - half[1]), (c[1] + half[1]) - box.y1])
        return bad + 1e3 * float(out.sum())

    angles = np.deg2rad([45, 135, -45, -135, 90, -90, 0, 180, 22.5, 67.5, 112.5, 157.5, -22.5, -67.5, -112.5, -157.5])
    for a, p in zip(annotations, pts):
        bb = a.get_window_extent(renderer)
        half = np.array([bb.width, bb.height]) / 2 + margin
        best, best_bad = p + half + dot, np.inf
        for radius in (0.1, 0.5, 1.0, 1.6, 2.4, 3.4, 4.6, 6.0, 8.0, 10.5, 13.5):
            for ang in angles:
                unit = np.array([np.cos(ang), np.sin(ang)])
                # the label's near corner sits ``radius`` half-heights from the dot
                c = p + unit * (dot + radius * half[1]) + np.sign(np.round(unit, 6)) * half
                bad = clash(c, half)
                if bad < best_bad:
                    best, best_bad = c, bad
                if bad == 0.0:
                    break
            if best_bad == 0.0:
                break
        placed.append((best, half))
        a.set_position(tuple((best - p) / scale))  # offset points of the text's centre
        a.set_ha("center")
        a.set_va("center")
        if a.arrow_patch is not None:  # a leader line only for a label pushed away from its dot
            gap = np.abs(best - p) - half
            a.arrow_patch.set_visible(bool(gap.max() > dot + 3.0 * scale))


def plot_information_plane(
    result: "SimilarityResult",
    pairs: Sequence[tuple[Any, Any]] | None = None,
    *,
    ax: "Axes | None" = None,
    title: str | None = None,
    annotate: bool = True,
    numbered: bool | None = None,
    limits: Any = "auto",
    save_path: str | os.PathLike | None = None,
    dpi: int = 150,
) -> "Axes":
    """Scatter Δ(A→B) (x) against Δ(B→A) (y) for chosen layer pairs (Glielmo et al. 2022).

    Near (0, 0): equivalent information; low x, high y: A carries B's information and
    more; near (1, 1): unrelated. ``pairs`` are ``(layer_a, layer_b)`` by name or index;
    default: the diagonal pairs ``(i, i)`` of the grid (every pair if it is not square
    is too many to read, so the diagonal up to the shorter side).

    Labels never overprint: they are pushed apart (with a leader line to their point).
    With ``numbered`` (default: more than 6 pairs) the points carry numbers and a legend
    beside the plot names each pair. ``limits``: ``"full"`` draws the plane on
    ``[0, 1.05]``; ``"auto"`` (default) does too unless every point lies below 0.35, then it
    zooms to ``[0, a bit above the largest Δ]`` (origin and diagonal kept, the axes say
    the range); or ``(low, high)``.
    """
    if "reverse" not in result.extras:
        raise ValueError("plot_information_plane needs an Information Imbalance result (with extras['reverse'])")

    def index(names: list[str], key: Any) -> int:
        if isinstance(key, (int, np.integer)):
            return int(key)
        if key not in names:
            raise ValueError(f"unknown layer {key!r}; layers are {names}")
        return names.index(key)

    if pairs is None:
        pairs = [(i, i) for i in range(min(len(result.layers_a), len(result.layers_b)))]
    idx = [(index(result.layers_a, a), index(result.layers_b, b)) for a, b in pairs]
    x = np.array([result.matrix[i, j] for i, j in idx])
    y = np.array([result.extras["reverse"][i, j] for i, j in idx])
    plt = pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(5.2, 5.0))
    if numbered is None:
        numbered = len(idx) > 6
    top = 1.05
    if limits == "auto":
        big = np.nanmax(np.r_[x, y]) if np.isfinite(np.r_[x, y]).any() else 1.0
        if big < 0.35:
            top = float(np.ceil(big * 1.25 / 0.02) * 0.02)
    elif limits != "full":
        lo_hi = tuple(float(v) for v in limits)
    lo_hi = (0.0, top) if limits in ("auto", "full") else lo_hi
    ax.plot(lo_hi, lo_hi, color="0.7", lw=1, ls="--")
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(len(idx), 2)))[: len(idx)]
    ax.scatter(x, y, c=colors, zorder=3, s=22)
    ax.set_xlim(*lo_hi)
    ax.set_ylim(*lo_hi)
    ax.set_aspect("equal")
    ax.set_xlabel(f"Δ({result.model_a} → {result.model_b})")
    ax.set_ylabel(f"Δ({result.model_b} → {result.model_a})")
    ax.set_title(title or f"Information imbalance plane:\n{result.model_a} vs {result.model_b}", fontsize=11)
    names = [f"{result.layers_a[i]} | {result.layers_b[j]}" for i, j in idx]
    if numbered:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], ls="", marker="o", color=c, ms=5) for c in colors]
        fs = 8 if len(idx) <= 20 else 7 if len(idx) <= 30 else _base.MIN_FONT
        ax.legend(handles, [f"{k + 1}: {n}" for k, n in enumerate(names)], loc="center left",
                  bbox_to_anchor=(1.02, 0.5), frameon=False, fontsize=fs, title="layer pair", title_fontsize=fs + 1,
                  ncol=1 if len(idx) <= 30 else 2, handletextpad=0.3)
    ax.figure.tight_layout()
    if annotate:
        texts = [str(k + 1) for k in range(len(idx))] if numbered else names
        notes = [ax.annotate(t, (xi, yi), xytext=(4, 4), textcoords="offset points", fontsize=7, zorder=4,
                             arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.45", "shrinkA": 0, "shrinkB": 2})
                 for t, xi, yi in zip(texts, x, y) if np.isfinite(xi) and np.isfinite(yi)]
        finite = np.isfinite(x) & np.isfinite(y)
        repel_labels(ax, notes, np.c_[x[finite], y[finite]])
    _base.save_figure(ax.figure, save_path, ax.get_title(), dpi)
    return ax
