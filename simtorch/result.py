"""SimilarityResult: a computed grid with its provenance and uncertainty.

Results are durable: :meth:`SimilarityResult.save` writes one NumPy ``.npz`` file (the
arrays plus a JSON header, no pickle, so ``np.load(path, allow_pickle=False)`` reads it and
loading a file from someone else cannot run code) and :meth:`SimilarityResult.load` gives
back an equal object; :meth:`SimilarityResult.to_csv` writes the long form that pandas and
R read directly, :meth:`SimilarityResult.to_pandas` / :meth:`SimilarityResult.from_pandas`
the same long form as a DataFrame; :meth:`SimilarityResult.plot` redraws the heatmap without
the models. Several results of one pass (one per metric) go into one archive with
:func:`save_results` and come back with :func:`load_results` (or
``SimilarityResult.load(path, metric="cka")``). The file format is :mod:`simtorch.record`'s,
shared with checkpoint comparisons.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .record import (SET_KIND, RecordMixin, csv_number, read_record_set, require_pandas, write_csv,
                     write_record_set)
from .record import file_kind, read_npz, versions as current_versions, write_npz  # noqa: F401  (0.3.0 paths)

__all__ = ["SimilarityResult", "load_results", "save_results"]

_EXTRA_PREFIX = "extra__"
#: the long form's columns (``to_csv``, ``to_pandas``)
LONG_COLUMNS = ["layer_a", "layer_b", "value", "stderr"]


# ---------------------------------------------------------------------------- the result
@dataclass(eq=False)
class SimilarityResult(RecordMixin):
    """The layer-by-layer grid of one metric, and what it was computed from.

    Attributes
    ----------
    matrix : ndarray ``(La, Lb)``
        ``matrix[i, j]`` = similarity of layer ``layers_a[i]`` of model A and layer
        ``layers_b[j]`` of model B. NaN where the value is undefined (constant features).
    stderr : ndarray ``(La, Lb)``
        Standard error of each cell: a delete-one-group jackknife over batches for
        CKA/dCKA, the standard error over batches for Information Imbalance. NaN when it
        cannot be estimated (a single batch).
    layers_a, layers_b : list of str
        The compared layers (rows and columns).
    model_a, model_b : str
        The models' names.
    metric : str
        ``"CKA"``, ``"dCKA"`` or ``"II"``.
    settings : dict
        The estimator's settings (kernel, unbiased, ...).
    n_samples, n_batches, n_skipped, skipped_samples : int
        Samples and batches that entered the sums, and batches (samples) skipped.
    extras : dict of ndarray
        Metric-specific arrays (e.g. ``"reverse"`` for Information Imbalance, ``"pve_a"``
        for dCKA, the summed HSIC terms ``"hsic_*"`` behind CKA).
    versions : dict of str
        simtorch, torch and numpy versions that computed the result.

    Examples
    --------
    >>> res = sim.result                       # after sim.compute(loader)
    >>> res.save("resnet18_vs_34.npz")
    >>> res.to_csv("resnet18_vs_34.csv")       # layer_a, layer_b, value, stderr
    >>> SimilarityResult.load("resnet18_vs_34.npz").plot(save_path="grid.png")
    """

    matrix: np.ndarray
    layers_a: list[str]
    layers_b: list[str]
    model_a: str
    model_b: str
    metric: str
    stderr: np.ndarray | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    n_samples: int = 0
    n_batches: int = 0
    n_skipped: int = 0
    skipped_samples: int = 0
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=current_versions)

    record_kind = "similarity"

    def __post_init__(self) -> None:
        self.matrix = np.asarray(self.matrix, dtype=np.float64)
        if self.stderr is None:
            self.stderr = np.full_like(self.matrix, np.nan)
        else:
            self.stderr = np.asarray(self.stderr, dtype=np.float64)
        self.layers_a = [str(n) for n in self.layers_a]
        self.layers_b = [str(n) for n in self.layers_b]
        expected = (len(self.layers_a), len(self.layers_b))
        if self.matrix.shape != expected:
            raise ValueError(f"matrix shape {self.matrix.shape} does not match the layer lists {expected}")
        if self.stderr.shape != expected:
            raise ValueError(f"stderr shape {self.stderr.shape} does not match the matrix {expected}")

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape  # type: ignore[return-value]

    @property
    def pvalue(self) -> np.ndarray | None:
        """Permutation p-value of each cell ``(La, Lb)``, or None when the run drew no null.

        ``(1 + #{k: null_k ≥ observed}) / (1 + K)`` over ``K = settings["permutations"]``
        within-batch permutations of model B's samples (``permutations=K`` on CKA/dCKA; see
        :mod:`simtorch.metrics.permutation`); the null grids are ``extras["null"]`` when small.
        Saved and loaded with the result (it is ``extras["pvalue"]``).
        """
        p = self.extras.get("pvalue")
        return None if p is None else np.asarray(p, dtype=np.float64)

    def __repr__(self) -> str:
        return (
            f"SimilarityResult({self.metric}: {self.model_a} [{len(self.layers_a)} layers] vs "
            f"{self.model_b} [{len(self.layers_b)} layers], n_samples={self.n_samples}, "
            f"n_batches={self.n_batches}, skipped={self.n_skipped})"
        )

    # ------------------------------------------------------------------ persistence
    def _record_header(self) -> dict[str, Any]:
        return {"model_a": self.model_a, "model_b": self.model_b, "metric": self.metric,
                "layers_a": list(self.layers_a), "layers_b": list(self.layers_b), **self.provenance(),
                "extras": list(self.extras)}

    def _record_arrays(self) -> dict[str, np.ndarray]:
        return {"matrix": self.matrix, "stderr": self.stderr,  # type: ignore[dict-item]
                **{_EXTRA_PREFIX + k: v for k, v in self.extras.items()}}

    @classmethod
    def _from_record(cls, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> "SimilarityResult":
        return cls(
            matrix=arrays["matrix"], stderr=arrays["stderr"],
            layers_a=list(header["layers_a"]), layers_b=list(header["layers_b"]),
            model_a=header["model_a"], model_b=header["model_b"], metric=header["metric"],
            extras={k: arrays[_EXTRA_PREFIX + k] for k in header.get("extras", [])},
            **cls.provenance_of(header),
        )

    @classmethod
    def load(cls, path: str | os.PathLike, metric: str | None = None) -> "SimilarityResult":
        """Read a file written by :meth:`save` (never unpickles anything).

        An archive of several results (:func:`save_results`, the command line's ``--save``
        with several metrics) needs ``metric=`` (its key, e.g. ``"cka"``, or the metric's
        name) unless it holds one result. ``versions`` are those that computed the result,
        not the current ones. A file of another kind, or from a newer simtorch, is a
        ``ValueError``.
        """
        if file_kind(path) != SET_KIND:
            res = super().load(path)
            if metric is not None and metric.lower() != res.metric.lower():
                raise ValueError(f"{str(path)!r} holds a {res.metric} result, not {metric!r}")
            return res
        results = load_results(path)
        if metric is None:
            if len(results) == 1:
                return next(iter(results.values()))
            raise ValueError(f"{str(path)!r} holds {len(results)} results ({', '.join(results)}); "
                             f"choose one: SimilarityResult.load(path, metric={next(iter(results))!r}), "
                             "or load_results(path) for all")
        for key, res in results.items():
            if metric.lower() in (key.lower(), res.metric.lower()):
                return res
        raise ValueError(f"{str(path)!r} has no {metric!r} result; it holds {', '.join(results)}")

    def _long_rows(self) -> Any:
        return ((la, lb, float(self.matrix[i, j]), float(self.stderr[i, j]))  # type: ignore[index]
                for i, la in enumerate(self.layers_a) for j, lb in enumerate(self.layers_b))

    def to_pandas(self) -> Any:
        """The grid in long form as a ``pandas.DataFrame`` (``pip install pandas``): one row
        per cell, columns ``layer_a``, ``layer_b``, ``value``, ``stderr``, in the order of
        :meth:`to_csv` (undefined values are NaN). The metadata (models, metric, settings,
        counts, versions) is in ``df.attrs["simtorch"]``, which :meth:`from_pandas` reads;
        ``extras`` are not part of the long form."""
        pd = require_pandas("SimilarityResult.to_pandas")
        df = pd.DataFrame(list(self._long_rows()), columns=LONG_COLUMNS)
        header = self._record_header()
        header.pop("extras", None)
        df.attrs["simtorch"] = {"kind": self.record_kind, **header}
        return df

    @classmethod
    def from_pandas(cls, df: Any, **meta: Any) -> "SimilarityResult":
        """A result from a long-form DataFrame (:meth:`to_pandas`, or ``pd.read_csv`` of
        :meth:`to_csv`): columns ``layer_a``, ``layer_b``, ``value`` and optionally
        ``stderr``, one row per cell of the full grid.

        Layers keep their order of first appearance. ``meta`` gives the other fields
        (``model_a``, ``model_b``, ``metric``, ``settings``, ``n_samples``, …); missing ones
        come from ``df.attrs["simtorch"]`` when the frame has them (a frame from
        :meth:`to_pandas`), else ``model_a="A"``, ``model_b="B"``, ``metric="CKA"``.
        A repeated or missing cell is an error.
        """
        require_pandas("SimilarityResult.from_pandas")
        missing = [c for c in ("layer_a", "layer_b", "value") if c not in df.columns]
        if missing:
            raise ValueError(f"the frame lacks the columns {missing}; it has {list(df.columns)} (long form: "
                             "layer_a, layer_b, value, stderr)")
        layers_a = [str(v) for v in dict.fromkeys(df["layer_a"].astype(str))]
        layers_b = [str(v) for v in dict.fromkeys(df["layer_b"].astype(str))]
        ia = {n: i for i, n in enumerate(layers_a)}
        ib = {n: j for j, n in enumerate(layers_b)}
        matrix = np.full((len(layers_a), len(layers_b)), np.nan)
        stderr = np.full_like(matrix, np.nan)
        seen = np.zeros(matrix.shape, dtype=bool)
        values = df["value"].to_numpy(dtype=np.float64)
        errors = df["stderr"].to_numpy(dtype=np.float64) if "stderr" in df.columns else None
        for r, (a, b) in enumerate(zip(df["layer_a"].astype(str), df["layer_b"].astype(str))):
            i, j = ia[a], ib[b]
            if seen[i, j]:
                raise ValueError(f"the frame has cell ({a!r}, {b!r}) twice; one row per cell (filter it first, "
                                 "e.g. by metric)")
            seen[i, j] = True
            matrix[i, j] = values[r]
            if errors is not None:
                stderr[i, j] = errors[r]
        if not seen.all():
            raise ValueError(f"the frame lacks {int((~seen).sum())} of the {seen.size} cells of the "
                             f"{len(layers_a)} × {len(layers_b)} grid; one row per cell")
        stored = dict(getattr(df, "attrs", {}).get("simtorch", {}) or {})
        fields_ = {"model_a": "A", "model_b": "B", "metric": "CKA"}
        kwargs: dict[str, Any] = {k: stored.get(k, v) for k, v in fields_.items()}
        prov = cls.provenance_of(stored) if stored else {}
        kwargs.update(prov)
        kwargs.update(meta)
        return cls(matrix=matrix, stderr=stderr, layers_a=layers_a, layers_b=layers_b, **kwargs)

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the grid in long form: one row per cell with columns ``layer_a``,
        ``layer_b``, ``value``, ``stderr`` (rows in ``layers_a`` order, then ``layers_b``).

        Numbers are written with full precision; undefined values as ``NaN``, which
        ``pandas.read_csv`` and R's ``read.csv`` read as missing. Returns the path.
        """
        rows = ([la, lb, csv_number(self.matrix[i, j]), csv_number(self.stderr[i, j])]  # type: ignore[index]
                for i, la in enumerate(self.layers_a) for j, lb in enumerate(self.layers_b))
        return write_csv(path, ["layer_a", "layer_b", "value", "stderr"], rows)

    def plot(self, **kwargs: Any) -> Any:
        """Draw the grid as a heatmap with the layer names on both axes.

        Works on a loaded result, without the models. Keyword arguments go to
        :func:`simtorch.plotting.plot_result` (``title``, ``save_path``, ``cmap``,
        ``show_stderr``, ``annotate``, ``vmin``, ``vmax``, ``ax``...). Returns the
        matplotlib Axes.
        """
        from .plotting import plot_result

        return plot_result(self, **kwargs)


def save_results(results: Mapping[str, SimilarityResult], path: str | os.PathLike) -> Path:
    """Several results in one ``.npz`` archive at ``path`` (keys such as the metric keys of
    one :func:`simtorch.compare` pass); the command line's ``simtorch plot`` draws every
    one of them as a panel. Same no-pickle format as :meth:`SimilarityResult.save`."""
    for key, res in results.items():
        if not isinstance(res, SimilarityResult):
            raise TypeError(f"results[{key!r}] is a {type(res).__name__}, not a SimilarityResult")
    return write_record_set(path, results)


def load_results(path: str | os.PathLike) -> dict[str, SimilarityResult]:
    """Every result of an archive written by :func:`save_results` (``{key: result}``, in
    the saved order); a single-result file gives ``{metric key: result}``."""
    out = {}
    for key, (kind, header, arrays) in read_record_set(path).items():
        if kind != SimilarityResult.record_kind:
            raise ValueError(f"{str(path)!r}: member {key!r} is a {kind!r} result, not a similarity grid")
        out[key] = SimilarityResult._from_record(header, arrays)
    return out
