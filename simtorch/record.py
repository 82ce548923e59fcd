"""The one file codec of simtorch's results: a ``.npz`` of arrays plus a JSON header, and
the long-form CSV.

Both result types (:class:`~simtorch.result.SimilarityResult` and
:class:`~simtorch.checkpoint_result.CheckpointComparison`) store themselves through
:class:`RecordMixin`: value equality, ``save``/``load`` and the shared provenance fields
(settings, sample counts, versions). Files need no pickle, so
``np.load(path, allow_pickle=False)`` opens them and loading a file from someone else
cannot run code.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from ._version import __version__

__all__ = ["COUNTS", "SET_KIND", "RecordMixin", "arrays_equal", "csv_number", "decode", "encode", "file_kind",
           "read_npz", "read_record_set", "require_pandas", "values_equal", "versions", "write_csv", "write_npz",
           "write_record_set"]

#: written into every file's header; ``read_npz`` refuses other kinds and newer versions
FORMAT = "simtorch"
FORMAT_VERSION = 1
HEADER_KEY = "__header__"
#: the ``kind`` of an archive holding several results (e.g. one per metric of one pass)
SET_KIND = "set"
#: the sample and batch counters every result carries
COUNTS = ("n_samples", "n_batches", "n_skipped", "skipped_samples")


def versions() -> dict[str, str]:
    """simtorch, torch and numpy versions, as recorded in every result."""
    import torch

    return {"simtorch": __version__, "torch": torch.__version__, "numpy": np.__version__}


# ---------------------------------------------------------------------------- JSON header
# JSON keeps only dicts with str keys, lists, str, numbers, bools and None. Tuples are
# tagged so that settings such as ``(3, 3)`` come back as tuples (exact round trip); numpy
# scalars become Python numbers. Python's float repr is exact, NaN/inf are written as the
# (widely accepted) JSON extensions NaN/Infinity.
_TUPLE_TAG = "__tuple__"


def encode(obj: Any, where: str) -> Any:
    """``obj`` as JSON-ready values (tuples tagged); ``where`` names it in errors."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {_TUPLE_TAG: [encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"cannot save {where}: key {k!r} is not a string (JSON header); use str keys")
            out[k] = encode(v, f"{where}[{k!r}]")
        return out
    if type(obj).__module__ == "torch" and type(obj).__name__ in ("dtype", "device"):
        return str(obj)  # e.g. an autocast dtype among the settings
    raise TypeError(
        f"cannot save {where} of type {type(obj).__name__} in the JSON header; settings may hold "
        "str, numbers, bools, None, lists, tuples and dicts (put arrays into extras)"
    )


def decode(obj: Any) -> Any:
    """The inverse of :func:`encode` (tagged tuples come back as tuples)."""
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    if isinstance(obj, dict):
        if set(obj) == {_TUPLE_TAG}:
            return tuple(decode(v) for v in obj[_TUPLE_TAG])
        return {k: decode(v) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------------------- npz files
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
    head = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, **header}
    text = json.dumps(encode(head, "header"), allow_nan=True)
    payload = {HEADER_KEY: np.array(text)}
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
            if not hasattr(z, "files"):  # a bare .npy array, not an archive
                raise ValueError("a single .npy array")
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile.BadZipFile, ValueError (a pickled member), OSError, EOFError...
        # numpy's own message for a non-zip file advises unpickling it (allow_pickle=True):
        # wrong advice for a file that is simply not a result; say what it is instead
        text = " ".join(str(exc).split())
        why = ("not an .npz archive: corrupt, truncated or another format" if "pickle" in text.lower() or not text
               else f"unreadable as .npz: {text[:120]}")
        raise ValueError(f"{str(path)!r} is not a simtorch result file ({why}); simtorch writes results with "
                         "result.save(path) or the command line's --save") from None
    if HEADER_KEY not in arrays:
        raise ValueError(f"{str(path)!r} is an .npz file but not a simtorch result (no header)")
    try:
        header = decode(json.loads(str(arrays.pop(HEADER_KEY))))
    except ValueError:
        raise ValueError(f"{str(path)!r} is not a simtorch result file (its header is not valid JSON)") from None
    if not isinstance(header, dict):
        raise ValueError(f"{str(path)!r} is not a simtorch result file (its header is not a mapping)")
    if header.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a simtorch result file")
    if int(header.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r} was written by a newer simtorch (format {header['format_version']}); upgrade simtorch"
        )
    if kind is not None and header.get("kind") != kind:
        raise ValueError(f"{str(path)!r} holds a {header.get('kind')!r} result, not a {kind!r} one")
    return header, arrays


def file_kind(path: str | os.PathLike) -> str:
    """The ``kind`` recorded in a simtorch ``.npz`` file (``"similarity"``, ``"checkpoints"``,
    or :data:`SET_KIND` for an archive of several results)."""
    return str(read_npz(path)[0].get("kind"))


def write_record_set(path: str | os.PathLike, records: Mapping[str, "RecordMixin"]) -> Path:
    """Several results in one ``.npz`` archive, each under its key (e.g. the metric keys of
    one pass: ``cka``, ``dcka``, ``ii``): the same no-pickle format, the members' arrays
    named ``key/array``. :func:`read_record_set` reads it back."""
    if not records:
        raise ValueError("nothing to save: the set of results is empty")
    headers, kinds, arrays = {}, {}, {}
    for key, rec in records.items():
        if not isinstance(key, str) or not key or "/" in key:
            raise ValueError(f"result keys of an archive must be non-empty strings without '/', got {key!r}")
        headers[key] = rec._record_header()
        kinds[key] = rec.record_kind
        for name, arr in rec._record_arrays().items():
            arrays[f"{key}/{name}"] = arr
    return write_npz(path, SET_KIND, {"members": list(records), "member_kinds": kinds, "headers": headers}, arrays)


def read_record_set(path: str | os.PathLike) -> dict[str, tuple[str, dict[str, Any], dict[str, np.ndarray]]]:
    """``{key: (kind, header, arrays)}`` of an archive written by :func:`write_record_set`;
    a single-result file comes back as one member keyed by its lower-cased metric."""
    header, arrays = read_npz(path)
    if header.get("kind") != SET_KIND:
        key = str(header.get("metric", header.get("kind", "result"))).lower()
        return {key: (str(header.get("kind")), header, arrays)}
    out = {}
    for key in header["members"]:
        member = dict(header["headers"][key])
        member.setdefault("kind", header["member_kinds"][key])
        prefix = f"{key}/"
        out[key] = (header["member_kinds"][key], member,
                    {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})
    return out


# ---------------------------------------------------------------------------- CSV
def require_pandas(what: str) -> Any:
    """The ``pandas`` module; without it an ``ImportError`` saying that ``what`` needs it
    and the pip command (pandas is optional)."""
    try:
        import pandas
    except ImportError:
        raise ImportError(f"{what} needs pandas: pip install pandas") from None
    return pandas


def csv_number(v: float) -> str:
    """A number as CSV text: the shortest string that reads back to the same double;
    ``NaN``/``Inf``/``-Inf``, which both pandas and R's ``read.csv`` parse."""
    v = float(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Inf" if v > 0 else "-Inf"
    return repr(v)


def write_csv(path: str | os.PathLike, columns: list[str], rows: Iterable[list[Any]]) -> Path:
    """Write a header row and ``rows`` (UTF-8, ``csv`` module quoting). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        w.writerows(rows)
    return path


# ---------------------------------------------------------------------------- equality
def arrays_equal(a: Any, b: Any) -> bool:
    """Same shape, dtype and values (NaN equal to NaN)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind in "fc":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


def values_equal(a: Any, b: Any) -> bool:
    """Equality of record fields: arrays exactly (:func:`arrays_equal`), mappings holding
    arrays key by key in the same order, anything else with ``==``."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return arrays_equal(a, b)
    if isinstance(a, Mapping) and isinstance(b, Mapping) and any(
            isinstance(v, np.ndarray) for v in (*a.values(), *b.values())):
        return list(a) == list(b) and all(values_equal(a[k], b[k]) for k in a)
    return bool(a == b)


R = TypeVar("R", bound="RecordMixin")


class RecordMixin:
    """Value equality and ``.npz`` persistence for a result dataclass.

    A subclass sets :attr:`record_kind` and implements ``_record_header`` (JSON-able
    fields), ``_record_arrays`` (name → array) and ``_from_record`` (the inverse). It has
    the fields ``settings``, ``versions`` and :data:`COUNTS`, which :meth:`provenance`
    writes and :meth:`provenance_of` reads back.
    """

    #: the ``kind`` of the file; ``load`` refuses files of another kind
    record_kind: ClassVar[str] = ""

    def _record_header(self) -> dict[str, Any]:
        raise NotImplementedError

    def _record_arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @classmethod
    def _from_record(cls: type[R], header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> R:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        """Field-by-field equality; arrays must match exactly (NaN equal to NaN)."""
        if not isinstance(other, type(self)):
            return NotImplemented
        return all(values_equal(getattr(self, f.name), getattr(other, f.name)) for f in fields(self))  # type: ignore[arg-type]

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def counts(self) -> dict[str, int]:
        """The sample and batch counters (:data:`COUNTS`) as plain ints."""
        return {k: int(getattr(self, k)) for k in COUNTS}

    def provenance(self) -> dict[str, Any]:
        """``settings``, the counters and ``versions``: the header fields every result has."""
        return {"settings": dict(getattr(self, "settings")), **self.counts(),
                "versions": dict(getattr(self, "versions"))}

    @staticmethod
    def provenance_of(header: Mapping[str, Any]) -> dict[str, Any]:
        """The :meth:`provenance` fields of a header (missing ones at their defaults)."""
        return {"settings": dict(header.get("settings", {})), **{k: int(header.get(k, 0)) for k in COUNTS},
                "versions": dict(header.get("versions", {}))}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result to one ``.npz`` file at ``path`` (the name is used as given).

        The arrays are stored as ``.npy`` members and everything else in a JSON header, so
        the file needs no pickle: ``np.load(path, allow_pickle=False)`` opens it, and
        :meth:`load` round-trips it exactly (arrays bit for bit, dtypes included). The file
        is renamed into place, so an interrupted save leaves no truncated file behind.

        Returns
        -------
        pathlib.Path
            The written file.
        """
        return write_npz(path, self.record_kind, self._record_header(), self._record_arrays())

    @classmethod
    def load(cls: type[R], path: str | os.PathLike) -> R:
        """Read a file written by :meth:`save` (never unpickles anything).

        ``versions`` are those that computed the result, not the current ones. A file of
        another kind, or from a newer simtorch, is a ``ValueError``.
        """
        header, arrays = read_npz(path, cls.record_kind)
        return cls._from_record(header, arrays)
