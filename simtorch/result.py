"""SimilarityResult: a computed grid with its provenance and uncertainty.

Results are durable: :meth:`SimilarityResult.save` writes one NumPy ``.npz`` file (the
arrays plus a JSON header, no pickle, so ``np.load(path, allow_pickle=False)`` reads it and
loading a file from someone else cannot run code) and :meth:`SimilarityResult.load` gives
back an equal object; :meth:`SimilarityResult.to_csv` writes the long form that pandas and
R read directly; :meth:`SimilarityResult.plot` redraws the heatmap without the models.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SimilarityResult"]

#: written into every file's header; ``load`` refuses other kinds and newer versions
_FORMAT = "simtorch"
_FORMAT_VERSION = 1
_HEADER_KEY = "__header__"
_EXTRA_PREFIX = "extra__"


def _versions() -> dict[str, str]:
    import torch

    from . import __version__

    return {"simtorch": __version__, "torch": torch.__version__, "numpy": np.__version__}


# ---------------------------------------------------------------------------- file format
# JSON keeps only dicts with str keys, lists, str, numbers, bools and None. Tuples are
# tagged so that settings such as ``(3, 3)`` come back as tuples (exact round trip); numpy
# scalars become Python numbers. Python's float repr is exact, NaN/inf are written as the
# (widely accepted) JSON extensions NaN/Infinity.
_TUPLE_TAG = "__tuple__"


def _encode(obj: Any, where: str) -> Any:
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {_TUPLE_TAG: [_encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"cannot save {where}: key {k!r} is not a string (JSON header); use str keys")
            out[k] = _encode(v, f"{where}[{k!r}]")
        return out
    if type(obj).__module__ == "torch" and type(obj).__name__ in ("dtype", "device"):
        return str(obj)  # e.g. an autocast dtype among the settings
    raise TypeError(
        f"cannot save {where} of type {type(obj).__name__} in the JSON header; settings may hold "
        "str, numbers, bools, None, lists, tuples and dicts (put arrays into extras)"
    )


def _decode(obj: Any) -> Any:
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    if isinstance(obj, dict):
        if set(obj) == {_TUPLE_TAG}:
            return tuple(_decode(v) for v in obj[_TUPLE_TAG])
        return {k: _decode(v) for k, v in obj.items()}
    return obj


def _check_array(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.hasobject:
        raise TypeError(f"cannot save array {name!r}: dtype object would need pickle; use a numeric array")
    return arr


def write_npz(path: str | os.PathLike, kind: str, header: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``arrays`` and a JSON ``header`` into one ``.npz`` file at exactly ``path``.

    The file is written next to its destination and renamed into place, so an interrupted
    save never leaves a truncated result behind. Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = {"format": _FORMAT, "format_version": _FORMAT_VERSION, "kind": kind, **header}
    text = json.dumps(_encode(head, "header"), allow_nan=True)
    payload = {_HEADER_KEY: np.array(text)}
    for k, v in arrays.items():
        payload[k] = _check_array(k, v)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **payload)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_npz(path: str | os.PathLike, kind: str | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a file written by :func:`write_npz`: ``(header, arrays)``. Never unpickles.

    Raises ``ValueError`` when the file is not a simtorch file, is of another ``kind``, or
    comes from a newer simtorch.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such result file: {str(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile.BadZipFile, ValueError (a pickled member), OSError, EOFError...
        raise ValueError(f"{str(path)!r} is not a simtorch result (.npz) file: {exc}") from None
    if _HEADER_KEY not in arrays:
        raise ValueError(f"{str(path)!r} is an .npz file but not a simtorch result (no header)")
    header = _decode(json.loads(str(arrays.pop(_HEADER_KEY))))
    if header.get("format") != _FORMAT:
        raise ValueError(f"{str(path)!r} is not a simtorch result file")
    if int(header.get("format_version", 0)) > _FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r} was written by a newer simtorch (format {header['format_version']}); upgrade simtorch"
        )
    if kind is not None and header.get("kind") != kind:
        raise ValueError(f"{str(path)!r} holds a {header.get('kind')!r} result, not a {kind!r} one")
    return header, arrays


def file_kind(path: str | os.PathLike) -> str:
    """The ``kind`` recorded in a simtorch ``.npz`` file (``"similarity"``, ``"checkpoints"``)."""
    return str(read_npz(path)[0].get("kind"))


def _csv_number(v: float) -> str:
    # repr is the shortest string that reads back to the same double; "NaN" is what both
    # pandas and R's read.csv parse as a missing number
    v = float(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Inf" if v > 0 else "-Inf"
    return repr(v)


def _arrays_equal(a: Any, b: Any) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind in "fc":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


# ---------------------------------------------------------------------------- the result
@dataclass(eq=False)
class SimilarityResult:
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
    versions: dict[str, str] = field(default_factory=_versions)

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

    def __repr__(self) -> str:
        return (
            f"SimilarityResult({self.metric}: {self.model_a} [{len(self.layers_a)} layers] vs "
            f"{self.model_b} [{len(self.layers_b)} layers], n_samples={self.n_samples}, "
            f"n_batches={self.n_batches}, skipped={self.n_skipped})"
        )

    def __eq__(self, other: object) -> bool:
        """Field-by-field equality; arrays must match exactly (NaN equal to NaN)."""
        if not isinstance(other, SimilarityResult):
            return NotImplemented
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name in ("matrix", "stderr"):
                if not _arrays_equal(a, b):
                    return False
            elif f.name == "extras":
                if list(a) != list(b) or not all(_arrays_equal(a[k], b[k]) for k in a):
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    # ------------------------------------------------------------------ persistence
    def _header(self) -> dict[str, Any]:
        return {
            "model_a": self.model_a, "model_b": self.model_b, "metric": self.metric,
            "layers_a": list(self.layers_a), "layers_b": list(self.layers_b),
            "settings": dict(self.settings), "n_samples": int(self.n_samples),
            "n_batches": int(self.n_batches), "n_skipped": int(self.n_skipped),
            "skipped_samples": int(self.skipped_samples), "versions": dict(self.versions),
            "extras": list(self.extras),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result to one ``.npz`` file at ``path`` (the name is used as given).

        The arrays (``matrix``, ``stderr``, every extra) are stored as ``.npy`` members and
        everything else in a JSON header, so the file needs no pickle:
        ``np.load(path, allow_pickle=False)`` opens it, and :meth:`load` round-trips it
        exactly (arrays bit for bit, dtypes included).

        Returns
        -------
        pathlib.Path
            The written file.
        """
        arrays = {"matrix": self.matrix, "stderr": self.stderr}
        arrays.update({_EXTRA_PREFIX + k: v for k, v in self.extras.items()})
        return write_npz(path, "similarity", self._header(), arrays)

    @classmethod
    def _from_parts(cls, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> "SimilarityResult":
        return cls(
            matrix=arrays["matrix"], stderr=arrays["stderr"],
            layers_a=list(header["layers_a"]), layers_b=list(header["layers_b"]),
            model_a=header["model_a"], model_b=header["model_b"], metric=header["metric"],
            settings=dict(header.get("settings", {})), n_samples=int(header.get("n_samples", 0)),
            n_batches=int(header.get("n_batches", 0)), n_skipped=int(header.get("n_skipped", 0)),
            skipped_samples=int(header.get("skipped_samples", 0)),
            extras={k: arrays[_EXTRA_PREFIX + k] for k in header.get("extras", [])},
            versions=dict(header.get("versions", {})),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SimilarityResult":
        """Read a result written by :meth:`save` (never unpickles anything).

        ``versions`` are those that computed the result, not the current ones.
        """
        header, arrays = read_npz(path, "similarity")
        return cls._from_parts(header, arrays)

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the grid in long form: one row per cell with columns ``layer_a``,
        ``layer_b``, ``value``, ``stderr`` (rows in ``layers_a`` order, then ``layers_b``).

        Numbers are written with full precision; undefined values as ``NaN``, which
        ``pandas.read_csv`` and R's ``read.csv`` read as missing. Returns the path.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["layer_a", "layer_b", "value", "stderr"])
            for i, la in enumerate(self.layers_a):
                for j, lb in enumerate(self.layers_b):
                    w.writerow([la, lb, _csv_number(self.matrix[i, j]), _csv_number(self.stderr[i, j])])
        return path

    def plot(self, **kwargs: Any) -> Any:
        """Draw the grid as a heatmap with the layer names on both axes.

        Works on a loaded result, without the models. Keyword arguments go to
        :func:`simtorch.plotting.plot_result` (``title``, ``save_path``, ``cmap``,
        ``show_stderr``, ``annotate``, ``vmin``, ``vmax``, ``ax``...). Returns the
        matplotlib Axes.
        """
        from .plotting import plot_result

        return plot_result(self, **kwargs)
