"""What the line plots share: the colour, marker and dash of each line
(:func:`line_styles`), a legend beside the axes that fits its height (:func:`fit_legend`),
and the y range from the metric's declared ``value_range`` (:func:`value_ylim`,
:func:`finite_span`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from . import _base
from ._base import pyplot
from .layer_ticks import axes_size_pt

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["line_styles", "fit_legend", "value_ylim", "finite_span", "light_frame"]

_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def line_styles(n: int, cmap: Any = "viridis") -> list[dict[str, Any]]:
    """Colour, marker and dash of ``n`` lines in order (input → output): colours along
    ``cmap``; past 8 lines neighbours also differ in marker and dash, so 20 layers stay
    distinguishable in the plot and in the legend."""
    plt = pyplot()
    colors = plt.get_cmap(cmap)(np.linspace(0.0, 0.88, max(n, 2)))
    many = n > 8
    return [{"color": colors[i], "marker": _MARKERS[i % len(_MARKERS)] if many else "o",
             "linestyle": "--" if many and (i // len(_MARKERS)) % 2 else "-"} for i in range(n)]


def fit_legend(ax: "Axes", n: int, title: str | None) -> bool:
    """A legend right of the axes, in as many columns as its height needs (≥ 6 pt).
    True when it was (re)drawn with a new number of columns."""
    fs = 8.0 if n <= 12 else 7.0 if n <= 24 else _base.MIN_FONT
    _, h_pt = axes_size_pt(ax)
    per_col = max(int((h_pt - 2.5 * fs) // (fs * 1.75)), 1)
    ncol = -(-n // per_col)
    old = ax.get_legend()
    if old is not None and getattr(old, "_simtorch_ncol", None) == ncol:
        return False
    ax.legend(title=title, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=fs,
              title_fontsize=fs + 1, ncol=ncol, handlelength=2.6, columnspacing=1.0)
    ax.get_legend()._simtorch_ncol = ncol
    return True


def value_ylim(ax: "Axes", metric: Any, lo: float | None, hi: float | None, ylim: Any) -> None:
    """Set the y range: ``ylim`` as given, nothing with None, and with ``"auto"`` the
    metric's ``value_range`` widened to the data's ``[lo, hi]`` (a 3 % margin)."""
    if ylim is None:
        return
    if ylim != "auto":
        ax.set_ylim(*ylim)
        return
    cls = _base.metric_class_of(metric)
    if cls is None or cls.value_range is None:
        return
    a, b = (float(v) for v in cls.value_range)
    if lo is not None:
        a, b = min(a, lo), max(b, hi)
    pad = 0.03 * (b - a)
    ax.set_ylim(a - pad, b + pad)


def finite_span(values: np.ndarray, err: np.ndarray | None) -> tuple[float | None, float | None]:
    """The lowest and highest finite ``values ∓ err`` (None where there are none)."""
    lo_v, hi_v = values, values
    if err is not None:
        e = np.where(np.isfinite(err), err, 0.0)
        lo_v, hi_v = values - e, values + e
    lo, hi = _base.finite_range(lo_v), _base.finite_range(hi_v)
    return (lo[0] if lo else None), (hi[1] if hi else None)


def light_frame(ax: "Axes") -> None:
    """The line plots' frame: a faint grid, no top or right spine."""
    ax.grid(True, alpha=0.3, lw=0.6)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
