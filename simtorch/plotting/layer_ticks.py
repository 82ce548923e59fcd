"""Layer names as axis labels: shortened names (:func:`shorten_labels`), the stages of a
network (:func:`stages`, :func:`stage_runs`, :func:`stage_boundaries`), and which tick
labels fit along an axis at a legible size (:func:`tick_plan`, :func:`set_layer_ticks`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["shorten_labels", "stages", "stage_runs", "stage_boundaries", "set_layer_ticks", "tick_plan",
           "axes_size_pt"]


def shorten_labels(labels: Sequence[str], layer_name_depth: int | None = None,
                   label_fn: Callable[[str], str] | None = None) -> list[str]:
    """Layer names as tick labels: the last ``layer_name_depth`` dotted parts of each name
    (``"encoder.block.layer1"`` → ``"layer1"`` with depth 1, as in pytorch-cka); all of it
    with ``None``. ``label_fn`` (name → label) is applied after that."""
    labels = [str(t) for t in labels]
    if layer_name_depth is not None:
        if int(layer_name_depth) < 1:
            raise ValueError(f"layer_name_depth must be ≥ 1 or None, got {layer_name_depth}")
        labels = [".".join(t.split(".")[-int(layer_name_depth):]) for t in labels]
    if label_fn is not None:
        labels = [str(label_fn(t)) for t in labels]
    return labels


def stages(labels: Sequence[str]) -> list[str]:
    """The stage of each layer name: its first dotted part after the parts every name
    shares (``features.denseblock1.…`` → ``denseblock1``; ``layer2.0.conv1`` → ``layer2``)."""
    parts = [str(t).split(".") for t in labels]
    common = 0
    while parts and all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return [p[common] if len(p) > common else ".".join(p) for p in parts]


def stage_runs(labels: Sequence[str]) -> list[tuple[int, int, str]]:
    """Consecutive layers of one stage as ``(first, last, stage)``, in order."""
    runs: list[tuple[int, int, str]] = []
    for i, name in enumerate(stages(labels)):
        if runs and runs[-1][2] == name:
            runs[-1] = (runs[-1][0], i, name)
        else:
            runs.append((i, i, name))
    return runs


def set_layer_ticks(ax: "Axes", axis: str, names: Sequence[str], labels: Sequence[str], ticks: str = "layers",
                    length_pt: float | None = None, rotate: bool | None = None) -> dict[str, Any]:
    """Label one axis of layer positions ``0 … n−1`` with what fits at ≥ 6 pt.

    ``ticks="layers"``: every layer's label, or every k-th one (minor ticks still mark
    each layer); ``"stages"``: one label per stage (``layer1``, ``denseblock2``…) at its
    middle, minor ticks at the layers. Returns ``{"thinned", "fontsize", "shown"}``.
    """
    if ticks not in ("layers", "stages"):
        raise ValueError(f"ticks must be 'layers' or 'stages', got {ticks!r}")
    n = len(names)
    w_pt, h_pt = axes_size_pt(ax)
    length = length_pt if length_pt is not None else (w_pt if axis == "x" else h_pt)
    if ticks == "stages":
        runs = stage_runs(names)
        pos = [(a + b) / 2 for a, b, _ in runs]
        text = [name for _, _, name in runs]
        fs = 8.0
        # stages sit unevenly: label the longest stages first, then every other whose label
        # does not run into one already kept
        at = [(p + 0.5) / max(n, 1) * length for p in pos]
        sizes = [b - a + 1 for a, b, _ in runs]

        def spaced(extent: Callable[[str], float]) -> list[int]:
            keep: list[int] = []
            for i in sorted(range(len(text)), key=lambda i: (-sizes[i], i)):
                lo, hi = at[i] - extent(text[i]) / 2, at[i] + extent(text[i]) / 2
                if all(hi <= at[k] - extent(text[k]) / 2 or lo >= at[k] + extent(text[k]) / 2 for k in keep):
                    keep.append(i)
            return sorted(keep)

        height = lambda t: fs * 1.45  # noqa: E731
        width = lambda t: 0.62 * fs * len(t) + 0.8 * fs  # noqa: E731
        upright = axis == "x" and rotate is not True
        keep = spaced(width if upright else height)
        if upright and rotate is None:
            turned = spaced(height)
            if len(turned) > len(keep):
                upright, keep = False, turned
    else:
        pos, text = list(range(n)), list(labels)
        upright = axis == "x" and (rotate is False or (rotate is None and all(len(t) <= 4 for t in text)))
        fs, keep = tick_plan(len(text), length, max((len(t) for t in text), default=1), upright=upright)
    setter = ax.set_xticks if axis == "x" else ax.set_yticks
    kw: dict[str, Any] = {"rotation": 0 if upright else 90} if axis == "x" else {}
    setter([pos[i] for i in keep], labels=[text[i] for i in keep], fontsize=fs, **kw)
    thinned = ticks == "stages" or len(keep) < len(text)
    setter(range(n) if thinned else [], minor=True)
    ax.tick_params(axis=axis, which="minor", length=1.5, width=0.4)
    return {"thinned": thinned, "fontsize": fs, "shown": len(keep)}


def stage_boundaries(labels: Sequence[str]) -> list[int]:
    """Indices ``i`` where layer ``i`` starts a new stage (never 0)."""
    st = stages(labels)
    return [i for i in range(1, len(st)) if st[i] != st[i - 1]]


def tick_plan(n: int, length_pt: float, label_len: int = 0, upright: bool = False,
              fonts: Sequence[float] = (8.0, 7.0, 6.0)) -> tuple[float, list[int]]:
    """A font size and the indices of the labels that fit along an axis ``length_pt``
    points long: every label at the largest font that fits, else every k-th label at the
    smallest font (``MIN_FONT``). ``upright`` labels sit side by side (their width counts);
    rotated or y labels need one line height each."""
    if n <= 0:
        return fonts[0], []

    def capacity(fs: float) -> int:
        per = fs * 1.45 if not upright else max(fs * 1.45, 0.62 * fs * max(label_len, 1) + 0.8 * fs)
        return max(int(length_pt // per), 1)

    for fs in fonts:
        if n <= capacity(fs):
            return fs, list(range(n))
    cap = capacity(fonts[-1])
    step = math.ceil(n / cap)
    keep = list(range(0, n, step))
    if keep[-1] != n - 1 and (n - 1 - keep[-1]) >= 0.75 * step and len(keep) < cap:
        keep.append(n - 1)  # the last layer is worth a label when there is room
    return fonts[-1], keep


def axes_size_pt(ax: "Axes") -> tuple[float, float]:
    """The axes' width and height in points at the figure's size."""
    fig = ax.figure
    pos = ax.get_position()
    return pos.width * fig.get_figwidth() * 72.0, pos.height * fig.get_figheight() * 72.0
