"""What every figure shares: the headless pyplot, save paths, the metric behind a result
(direction, value range, estimator wording), colour scales and ``±`` error text.

Layer tick labels live in :mod:`.layer_ticks`; their names are re-exported here, where the
figure modules have always found them."""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .layer_ticks import (  # noqa: F401  (re-exported: the figure modules import them from here)
    axes_size_pt,
    set_layer_ticks,
    shorten_labels,
    stage_boundaries,
    stage_runs,
    stages,
    tick_plan,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from ..metrics.base import Metric

__all__ = [
    "pyplot", "resolve_save_path", "supported_suffixes", "metric_class_of", "describe_estimator",
    "metric_label", "metric_name", "color_limits", "shorten_labels", "format_stderr", "MIN_FONT",
]

#: the smallest font size any figure writes (points at the saved size)
MIN_FONT = 6.0


def pyplot() -> Any:
    """``matplotlib.pyplot``, with the headless Agg backend where there is no display."""
    import matplotlib

    if not os.environ.get("DISPLAY") and not os.environ.get("MPLBACKEND"):
        # no screen: never let matplotlib try an interactive backend
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


# ------------------------------------------------------------------------------ saving
def supported_suffixes() -> list[str]:
    """The file suffixes matplotlib can write here (``.png``, ``.pdf``, ``.svg``, ``.jpg``…)."""
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(f".{s}" for s in FigureCanvasBase.get_supported_filetypes())


def resolve_save_path(save_path: str | os.PathLike, title: str) -> Path:
    """Where a figure goes.

    * a path with a figure suffix (``.png``, ``.pdf``, ``.svg``, ``.jpg``, … any format
      matplotlib writes): that file, its folder created;
    * a path without a suffix, or an existing directory (simtorch 0.2.1 behaviour):
      ``<dir>/<title with spaces as underscores>.png``, the directory created;
    * any other suffix (``grid.jpgg``): a ``ValueError`` naming the supported suffixes,
      never a directory called ``grid.jpgg``.
    """
    path = Path(save_path)
    suffix = path.suffix.lower()
    if path.is_dir() or not suffix:
        path.mkdir(parents=True, exist_ok=True)
        stem = re.sub(r"[^\w.+-]+", "_", title).strip("_") or "similarity"
        return path / f"{stem}.png"
    supported = supported_suffixes()
    if suffix not in supported:
        raise ValueError(
            f"cannot save a figure as {str(path)!r}: unknown file suffix {path.suffix!r}; use one of "
            f"{', '.join(supported)} (or a path without a suffix for a directory)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def save_figure(fig: Any, save_path: str | os.PathLike | None, title: str, dpi: int) -> Path | None:
    """Save ``fig`` under :func:`resolve_save_path` (nothing when ``save_path`` is None)."""
    if save_path is None:
        return None
    path = resolve_save_path(save_path, title)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


# ------------------------------------------------------------------------------ metrics
def metric_name(metric: Any) -> str:
    """The metric's name as written on a figure: a string as is, a result's ``.metric``,
    a class's ``name``; ``""`` for None."""
    if metric is None:
        return ""
    if isinstance(metric, str):
        return metric
    name = getattr(metric, "metric", None)  # a SimilarityResult / CheckpointComparison
    if isinstance(name, str):
        return name
    return str(getattr(metric, "name", metric))


_metric_name = metric_name  # the name this module used before it was public


def metric_class_of(metric: Any) -> "type[Metric] | None":
    """The registered metric class behind a result, a class or a display name.

    ``metric`` is a :class:`SimilarityResult` (its ``.metric``), a checkpoint comparison,
    a :class:`~simtorch.metrics.Metric` class, or a name: the class's display ``name``
    (``"CKA"``, ``"dCKA"``, ``"II"``), a registry key or alias (``"cka"``,
    ``"information_imbalance"``), or a display name with a qualifier (``"II (reverse)"``).
    None when no registered metric matches (a label the user made up).
    """
    from ..metrics import REGISTRY
    from ..metrics.base import Metric

    if isinstance(metric, type) and issubclass(metric, Metric):
        return metric
    name = metric_name(metric).strip()
    if not name:
        return None
    classes = list(dict.fromkeys(REGISTRY.values()))
    for cls in classes:  # the display name first: "CKA", "dCKA", "II"
        if cls.name == name:
            return cls
    for cls in classes:
        if cls.name.lower() == name.lower():
            return cls
    if name.lower() in REGISTRY:
        return REGISTRY[name.lower()]
    bare = re.sub(r"\s*[(\[].*$", "", name).strip()  # "Procrustes euclidean (reverse)"
    if bare and bare != name:
        return metric_class_of(bare)
    head = re.split(r"[\s(\[:,]", name, maxsplit=1)[0]  # "II (reverse)", "CKA mean of 3"
    if head and head != name:
        return metric_class_of(head)
    return None


def _is_reverse(metric: Any) -> bool:
    return "reverse" in metric_name(metric).lower()


def _settings(obj: Any) -> dict[str, Any]:
    s = getattr(obj, "settings", None)
    return dict(s) if isinstance(s, dict) else {}


def describe_estimator(result: Any, settings: dict[str, Any] | None = None) -> str:
    """The estimator in words, for a panel title: ``"CKA (linear, unbiased)"``,
    ``"dCKA (biased)"``, ``"Information imbalance (batches of 64)"``.

    ``result`` is a :class:`SimilarityResult` (or anything with ``.metric`` and
    ``.settings``) or a metric name with ``settings`` given separately.
    """
    name = metric_name(result)
    s = _settings(result) if settings is None else dict(settings)
    cls = metric_class_of(result)
    key = cls.key if cls is not None else ""
    parts: list[str] = []
    if key in ("cka", "dcka") or "kernel" in s or "unbiased" in s:
        kernel = s.get("kernel")
        if kernel == "rbf":
            frac = s.get("sigma_frac", 1.0)
            parts.append("RBF" if frac in (None, 1, 1.0) else f"RBF σ={float(frac):g}·median")
        elif kernel is not None and key != "dcka":
            parts.append(str(kernel))
        if "unbiased" in s:
            parts.append("unbiased" if s["unbiased"] else "biased")
        if s.get("remove_negative_eig"):
            parts.append("PSD-projected")
        conf = s.get("confounder")
        if conf not in (None, "inputs"):
            parts.append(f"confounder {conf}")
    if key == "ii":
        title = "Information imbalance" + (", reverse" if _is_reverse(result) else "")
        if s.get("exact"):
            parts.append("all samples")
        elif s.get("subset_size"):
            parts.append(f"subsets of {s['subset_size']}")
        elif s.get("subset_sizes"):
            sizes = list(s["subset_sizes"])
            parts.append(f"batches of {max(sizes)}" if len(sizes) <= 2 else f"batches of {min(sizes)}–{max(sizes)}")
        if s.get("projection_dim"):
            parts.append(f"projected to {s['projection_dim']}")
    else:
        title = name or "similarity"
    return f"{title} ({', '.join(parts)})" if parts else title


def metric_label(metric: Any, model_a: str | None = None, model_b: str | None = None) -> str:
    """A colourbar / axis label for a metric, written out: ``"CKA"``, ``"dCKA"``, and for
    Information Imbalance ``"Information imbalance Δ(A → B)"`` with the model names."""
    cls = metric_class_of(metric)
    name = metric_name(metric)
    if cls is not None and cls.key == "ii":
        a, b = model_a or "A", model_b or "B"
        if _is_reverse(metric):
            a, b = b, a
        return f"Information imbalance\nΔ({a} → {b})"
    return name or (cls.name if cls is not None else "similarity")


def is_distance(metric: Any) -> bool:
    """True when low values mean "more alike" (the metric class's ``direction``)."""
    cls = metric_class_of(metric)
    return cls is not None and getattr(cls, "direction", "similarity") == "distance"


def family_of(metric: Any) -> tuple:
    """Results whose colours should share one scale: CKA and dCKA (similarities on
    ``[0, 1]``) are one family, Information Imbalance (a distance) another; an unknown
    metric is its own family."""
    cls = metric_class_of(metric)
    if cls is None or cls.value_range is None:
        return ("name", metric_name(metric))
    return (getattr(cls, "direction", "similarity"), tuple(float(v) for v in cls.value_range))


def orient_cmap(cmap: Any, metric: Any) -> Any:
    """``cmap`` (named for similarities: bright = alike) for ``metric``: reversed for a
    distance, so that brighter means "more alike" in every figure."""
    plt = pyplot()
    cm = plt.get_cmap(cmap) if not hasattr(cmap, "reversed") else cmap
    return cm.reversed() if is_distance(metric) else cm


# ------------------------------------------------------------------------------ colours
def finite_range(values: Any) -> tuple[float, float] | None:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return (float(v.min()), float(v.max())) if v.size else None


def color_limits(values: Any, metric: Any = None, vmin: float | None = None, vmax: float | None = None,
                 log: bool = False) -> tuple[float, float, str]:
    """``(vmin, vmax, extend)`` for a grid of ``metric`` values.

    Unset limits default to the metric's declared ``value_range`` (``[0, 1]`` for CKA,
    dCKA and Information Imbalance), so two figures of one metric share a scale; for a
    metric without a range, the data's finite range. On a ``log`` scale an unset lower
    limit is the decade below the smallest positive value (0.01 for Δ = 0.03). ``extend``
    (for the colourbar) is ``"min"``, ``"max"`` or ``"both"`` when values fall outside,
    e.g. the small negatives of the unbiased CKA estimator below 0.
    """
    cls = metric_class_of(metric)
    rng = cls.value_range if cls is not None else None
    data = finite_range(values)
    lo = vmin if vmin is not None else rng[0] if rng is not None else data[0] if data else 0.0
    hi = vmax if vmax is not None else rng[1] if rng is not None else data[1] if data else 1.0
    if log:
        if vmin is None:
            v = np.asarray(values, dtype=float)
            pos = v[np.isfinite(v) & (v > 0)]
            lo = 10.0 ** math.floor(math.log10(pos.min())) if pos.size else 1e-3
            if lo >= hi:
                lo = hi / 10.0
        if lo <= 0 or hi <= 0:
            raise ValueError(f"a log colour scale needs positive limits, got vmin={lo}, vmax={hi}")
    lo, hi = float(lo), float(hi)
    if hi < lo:
        raise ValueError(f"vmin {lo} is above vmax {hi}")
    if hi == lo:
        lo, hi = (lo / 2, hi * 2) if log else (lo - 0.5, hi + 0.5)
    tol = 1e-9 * max(1.0, abs(hi - lo))
    below = data is not None and data[0] < lo - tol
    above = data is not None and data[1] > hi + tol
    extend = "both" if below and above else "min" if below else "max" if above else "neither"
    return lo, hi, extend


# ------------------------------------------------------------------------------ text
def format_stderr(err: float) -> str:
    """``±`` and two significant digits (``±0.012``, ``±0.00034``); never ``±0.00``.
    Below 0.0001: ``±<0.0001``; exactly 0: ``±0``."""
    if not np.isfinite(err):
        return ""
    err = abs(float(err))
    if err == 0.0:
        return "±0"
    if err < 1e-4:
        return "±<0.0001"
    decimals = max(0, 1 - int(math.floor(math.log10(err))))
    text = f"{err:.{decimals}f}"
    if float(text) >= 10 ** (2 - decimals) and decimals > 0:  # 0.0995 → "0.10": keep 2 significant digits
        text = f"{err:.{decimals - 1}f}"
    return f"±{text}"


def warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)
