"""CheckpointComparison: every checkpoint of a training run against a reference, layer by
layer, with standard errors; saved, loaded and written as CSV through :mod:`simtorch.record`,
and redrawn without the models."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .record import RecordMixin, csv_number, require_pandas, versions as current_versions, write_csv
from .result import SimilarityResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["CheckpointComparison"]


@dataclass(eq=False)
class CheckpointComparison(RecordMixin):
    """Each checkpoint's layers compared with the same layers of a reference checkpoint.

    Attributes
    ----------
    labels : list of str
        Checkpoint names, in step order.
    steps : list of float
        The x position of each checkpoint (training step/epoch; positions if unknown).
    layers : list of str
        The compared layers, in model order.
    reference : str
        Name of the reference checkpoint.
    grids : ndarray ``(K, L, L)``
        ``grids[k, i, j]`` = similarity of reference layer ``layers[i]`` and layer
        ``layers[j]`` of checkpoint ``k``.
    grids_stderr : ndarray ``(K, L, L)``
        Jackknife standard errors of ``grids`` (see :class:`SimilarityResult`).
    metric, settings, model_name
        The metric's name and settings, and the architecture's name.
    n_samples, n_batches, n_skipped, skipped_samples : int
        As in :class:`SimilarityResult` (each pass over the data sees the same loader).
    versions : dict of str
        simtorch, torch and numpy versions that computed it.
    partial : bool (property)
        True for the checkpoints an interrupted comparison finished (``settings["partial"]``).
    order : str
        How the checkpoints were ordered (:func:`simtorch.checkpoints.checkpoint_order`):
        ``"steps="``, ``"the 'global_step' stored in each checkpoint"``, ``"the 'epoch'
        number in the names"``, ``"the given order"``, …

    ``values``/``stderr`` (``(K, L)``) are the diagonals: each layer with itself.
    """

    labels: list[str]
    steps: list[float]
    layers: list[str]
    reference: str
    grids: np.ndarray
    grids_stderr: np.ndarray
    metric: str = "CKA"
    settings: dict[str, Any] = field(default_factory=dict)
    model_name: str = "model"
    n_samples: int = 0
    n_batches: int = 0
    n_skipped: int = 0
    skipped_samples: int = 0
    versions: dict[str, str] = field(default_factory=current_versions)
    order: str = "the given order"

    record_kind = "checkpoints"

    def __post_init__(self) -> None:
        self.grids = np.asarray(self.grids, dtype=np.float64)
        self.grids_stderr = np.asarray(self.grids_stderr, dtype=np.float64)
        k, l = len(self.labels), len(self.layers)
        for name in ("grids", "grids_stderr"):
            if getattr(self, name).shape != (k, l, l):
                raise ValueError(f"{name} must have shape (checkpoints, layers, layers) = {(k, l, l)}")
        if len(self.steps) != k:
            raise ValueError(f"{len(self.steps)} steps for {k} checkpoints")

    @property
    def values(self) -> np.ndarray:
        """``(K, L)``: each layer of each checkpoint against the same reference layer."""
        return np.diagonal(self.grids, axis1=1, axis2=2).copy()

    @property
    def stderr(self) -> np.ndarray:
        """``(K, L)`` jackknife standard errors of :attr:`values`."""
        return np.diagonal(self.grids_stderr, axis1=1, axis2=2).copy()

    @property
    def partial(self) -> bool:
        """Whether this is what an interrupted :func:`~simtorch.checkpoints.compare_checkpoints`
        kept (``settings["partial"]``; ``settings["missing_checkpoints"]`` names the others)."""
        return bool(self.settings.get("partial"))

    def __repr__(self) -> str:
        return (
            f"CheckpointComparison({self.metric}: {len(self.labels)} checkpoints of {self.model_name} "
            f"× {len(self.layers)} layers vs {self.reference!r}, n_samples={self.n_samples}"
            + (", PARTIAL)" if self.partial else ")")
        )

    def _index(self, checkpoint: int | str) -> int:
        if isinstance(checkpoint, str):
            if checkpoint not in self.labels:
                raise KeyError(f"no checkpoint named {checkpoint!r}; the names are {self.labels}")
            return self.labels.index(checkpoint)
        return range(len(self.labels))[checkpoint]

    def result(self, checkpoint: int | str) -> SimilarityResult:
        """The full grid of one checkpoint (by position or name) against the reference,
        as a :class:`SimilarityResult` (rows: reference layers, columns: its layers)."""
        k = self._index(checkpoint)
        return SimilarityResult(
            matrix=self.grids[k].copy(), stderr=self.grids_stderr[k].copy(),
            layers_a=list(self.layers), layers_b=list(self.layers),
            model_a=f"{self.model_name} @ {self.reference}", model_b=f"{self.model_name} @ {self.labels[k]}",
            metric=self.metric, **self.provenance(),
        )

    # ------------------------------------------------------------------ persistence
    def _record_header(self) -> dict[str, Any]:
        return {"labels": list(self.labels), "steps": list(self.steps), "layers": list(self.layers),
                "reference": self.reference, "metric": self.metric, "model_name": self.model_name,
                "order": self.order, **self.provenance()}

    def _record_arrays(self) -> dict[str, np.ndarray]:
        return {"grids": self.grids, "grids_stderr": self.grids_stderr}

    @classmethod
    def _from_record(cls, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> "CheckpointComparison":
        return cls(
            labels=list(header["labels"]), steps=list(header["steps"]), layers=list(header["layers"]),
            reference=header["reference"], grids=arrays["grids"], grids_stderr=arrays["grids_stderr"],
            metric=header["metric"], model_name=header.get("model_name", "model"),
            order=header.get("order", "unknown (saved before simtorch recorded it)"), **cls.provenance_of(header),
        )

    def _long_rows(self, full: bool) -> tuple[list[str], Any]:
        columns = ["checkpoint", "step", *(["layer_reference", "layer_checkpoint"] if full else ["layer"]),
                   "value", "stderr"]
        rows = ((label, step, *((li, lj) if full else (li,)), float(self.grids[k, i, j]),
                 float(self.grids_stderr[k, i, j]))
                for k, (label, step) in enumerate(zip(self.labels, self.steps))
                for i, li in enumerate(self.layers) for j, lj in enumerate(self.layers) if full or i == j)
        return columns, rows

    def to_pandas(self, full: bool = False) -> Any:
        """The long form of :meth:`to_csv` as a ``pandas.DataFrame`` (``pip install pandas``);
        the metadata is in ``df.attrs["simtorch"]``."""
        pd = require_pandas("CheckpointComparison.to_pandas")
        columns, rows = self._long_rows(full)
        df = pd.DataFrame(list(rows), columns=columns)
        df.attrs["simtorch"] = {"kind": self.record_kind, **self._record_header()}
        return df

    def to_csv(self, path: str | os.PathLike, full: bool = False) -> Path:
        """Long form: ``checkpoint, step, layer, value, stderr`` (each layer against the
        same reference layer), or with ``full=True`` every cell of every grid:
        ``checkpoint, step, layer_reference, layer_checkpoint, value, stderr``."""
        columns = ["checkpoint", "step", *(["layer_reference", "layer_checkpoint"] if full else ["layer"]),
                   "value", "stderr"]
        rows = ([label, step, *([li, lj] if full else [li]), csv_number(self.grids[k, i, j]),
                 csv_number(self.grids_stderr[k, i, j])]
                for k, (label, step) in enumerate(zip(self.labels, self.steps))
                for i, li in enumerate(self.layers) for j, lj in enumerate(self.layers) if full or i == j)
        return write_csv(path, columns, rows)

    # ------------------------------------------------------------------ plots
    def plot(self, **kwargs: Any) -> "Axes":
        """Layer similarity over training, one line per layer with error bars
        (:func:`simtorch.plotting.plot_checkpoint_trend`; keyword arguments go there)."""
        from .plotting import plot_checkpoint_trend

        kwargs.setdefault("metric", self.metric)
        kwargs.setdefault("reference", self.reference)
        kwargs.setdefault("labels", self.labels)
        return plot_checkpoint_trend(self.steps, self.values, self.layers, self.stderr, **kwargs)

    def plot_heatmap(self, **kwargs: Any) -> "Axes":
        """Layers × checkpoints heatmap (:func:`simtorch.plotting.plot_checkpoint_heatmap`)."""
        from .plotting import plot_checkpoint_heatmap

        kwargs.setdefault("metric", self.metric)
        kwargs.setdefault("reference", self.reference)
        kwargs.setdefault("steps", self.steps)
        return plot_checkpoint_heatmap(self.values, self.layers, self.labels, **kwargs)
