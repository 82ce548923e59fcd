"""Resumable passes: the metrics' declared sum states and the batch counter, saved to a
state file as the pass goes, and restored by a later call with the same arguments.

The file is an ``.npz`` written without pickle: one float/int array per declared state
(``Metric.state_dict()``) and a JSON header (the batch counter, the integer counters and
the run's fingerprint), read back with ``numpy.load(allow_pickle=False)``. It is written
to a temporary file in the same directory, flushed, fsynced, then renamed over the old
one, so a run killed at any moment leaves either the previous state or the new one.

The fingerprint says which run a state belongs to: the layer names of both sides, a
checksum of each model's weights, the metrics (class, key, settings), the run options
that change the numbers (``input_key``, ``input_fn``, ``autocast``, ``channels_last``),
the dataset and loader lengths, the process's rank and world size, and a hash of the first
batch's model input. A state whose fingerprint differs is refused with the differences named, never
mixed into another run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .batches import dataset_size, first_tensor
from .metrics.base import Metric

__all__ = ["RunState", "parse_save_every", "state_file", "batch_hash", "FORMAT"]

FORMAT = "simtorch-run-state"
VERSION = 1
#: save interval when ``state_path`` is given without ``save_every``
DEFAULT_SAVE_EVERY = "60s"


def parse_save_every(value: int | float | str | None) -> tuple[str, float]:
    """``("batches", k)`` or ``("seconds", s)`` from ``save_every``.

    An int counts batches; a float, or a string ``"30s"``, ``"5m"``, ``"1h"`` (a bare
    number string counts batches), is a time interval. None: :data:`DEFAULT_SAVE_EVERY`.
    """
    if value is None:
        value = DEFAULT_SAVE_EVERY
    if isinstance(value, bool):
        raise TypeError(f"save_every must be a number of batches (int), seconds (float) or a string such as '30s', "
                        f"got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"save_every={value}: save at least every batch (≥ 1)")
        return "batches", float(value)
    if isinstance(value, float):
        if not value > 0 or math.isinf(value):
            raise ValueError(f"save_every={value}: a positive number of seconds")
        return "seconds", value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(s|sec|m|min|h)?\s*", value)
        if m:
            number, unit = float(m.group(1)), m.group(2)
            if unit is None:
                if number != int(number) or number < 1:
                    raise ValueError(f"save_every={value!r}: a whole number of batches ≥ 1, or seconds as '30s'")
                return "batches", number
            if number <= 0:
                raise ValueError(f"save_every={value!r}: a positive interval")
            return "seconds", number * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[unit]
        raise ValueError(f"save_every={value!r}: give batches (100) or an interval ('30s', '5m', '1h')")
    raise TypeError(f"save_every must be an int, float or str, got {type(value).__name__}")


def state_file(path: str | os.PathLike, rank: int = 0, world: int = 1) -> Path:
    """The state file of this process: ``path`` itself, or under torch.distributed
    ``<stem>.rank<r>-of-<w><suffix>`` next to it (each rank keeps its own shard's sums)."""
    p = Path(path)
    if world > 1:
        suffix = p.suffix or ".npz"
        p = p.with_name(f"{p.stem if p.suffix else p.name}.rank{rank}-of-{world}{suffix}")
    return p


def batch_hash(raw: Any) -> str:
    """SHA-256 of every tensor in a model input (shapes, dtypes and bytes), in order."""
    h = hashlib.sha256()

    def visit(obj: Any) -> None:
        if isinstance(obj, Tensor):
            t = obj.detach()
            h.update(f"{tuple(t.shape)}{t.dtype}".encode())
            if t.numel():
                t = t.to("cpu").contiguous().reshape(-1)
                if t.dtype == torch.bool:
                    t = t.to(torch.uint8)
                h.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(obj, Mapping):
            for k in obj:
                h.update(repr(k).encode())
                visit(obj[k])
        elif isinstance(obj, (tuple, list)):
            h.update(f"{type(obj).__name__}{len(obj)}".encode())
            for v in obj:
                visit(v)
        elif isinstance(obj, (int, float, str, bool)) or obj is None:
            h.update(repr(obj).encode())
        else:
            t = first_tensor(obj)
            if t is not None:
                visit(t)
            else:
                h.update(type(obj).__name__.encode())

    visit(raw)
    return h.hexdigest()


def _stable(value: Any) -> Any:
    """``value`` as JSON that is the same from one process to the next (callables by
    their qualified name, never a memory address)."""
    if isinstance(value, Mapping):
        return {str(k): _stable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(str(_stable(v)) for v in value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__name__)}"
    text = repr(value)
    return type(value).__name__ if " at 0x" in text else text


def weights_checksum(model: torch.nn.Module) -> list[float]:
    """Number of values, sum and Euclidean norm of a model's parameters and buffers
    (float64): equal for the same weights, different for another checkpoint."""
    count, total, sq = 0, 0.0, 0.0
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.numel() == 0 or t.is_meta:
                continue
            x = t.detach()
            if not x.dtype.is_floating_point:
                x = x.double()
            count += x.numel()
            total += float(torch.sum(x, dtype=torch.float64))
            sq += float(torch.linalg.vector_norm(x, dtype=torch.float64)) ** 2
    return [float(count), total, math.sqrt(sq)]


def _to_numpy(t: Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        raise TypeError("a bfloat16 state cannot be written to a state file; keep sums in float32/float64")
    return t.numpy()


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9) for x, y in zip(a, b))


class RunState:
    """The state file of one pass (see the module docstring).

    ``fingerprint`` is built by the engine before the first batch; :meth:`load` returns the
    saved state (or None) after checking it against the fingerprint; the first batch's
    hash is checked with :meth:`check_first_batch`; :meth:`due` and :meth:`save` write.
    """

    def __init__(self, path: str | os.PathLike, save_every: int | float | str | None,
                 rank: int = 0, world: int = 1) -> None:
        self.requested = Path(path)
        self.path = state_file(path, rank, world)
        self.unit, self.every = parse_save_every(save_every)
        self.fingerprint: dict[str, Any] = {}
        self.first_batch: str | None = None
        self.saved_batches = 0
        self._last_time = time.monotonic()
        self._last_batches = 0

    # ------------------------------------------------------------------ fingerprint
    def make_fingerprint(self, model_a: Any, model_b: Any, loader: Iterable, metrics: Sequence[Metric],
                         options: Any, rank: int, world: int) -> None:
        try:
            loader_len: int | None = len(loader)  # type: ignore[arg-type]
        except TypeError:
            loader_len = None
        same_module = model_a.model is model_b.model
        self.fingerprint = {
            "layers_a": list(model_a.layer_names),
            "layers_b": list(model_b.layer_names),
            "same": model_a is model_b,
            "weights_a": weights_checksum(model_a.model),
            "weights_b": weights_checksum(model_b.model) if not same_module else "same module",
            "metrics": [{"class": f"{type(m).__module__}.{type(m).__qualname__}", "key": m.key,
                         "settings": _stable(m.settings())} for m in metrics],
            # channels_last only when set, so that states saved before it existed still match
            "run": _stable({"input_key": options.input_key, "input_fn": options.input_fn,
                            "autocast": options.autocast,
                            **({"channels_last": True} if options.channels_last else {})}),
            "reduce": [_stable({"sequence": sm.sequence, "layout": sm.layout, "mask_fn": sm.mask_fn,
                                "output_fn": sm.output_fn, "call_index": sm._call_index})
                       for sm in (model_a, model_b)],
            "dataset_size": dataset_size(loader),
            "loader_batches": loader_len,
            "rank": rank,
            "world_size": world,
        }

    def _mismatch(self, saved: Mapping[str, Any]) -> list[str]:
        out = []
        for key, want in self.fingerprint.items():
            got = saved.get(key)
            if key.startswith("weights_") and isinstance(want, list) and isinstance(got, list):
                if not _close(want, got):
                    out.append(f"{key}: the model's weights differ (checksum {got} saved, {want} now)")
            elif _stable(got) != _stable(want):
                out.append(f"{key}: saved {got!r}, now {want!r}")
        return out

    def _refuse(self, problems: list[str]) -> ValueError:
        return ValueError(
            f"state_path {str(self.path)!r} holds the state of another run, so it cannot be resumed here: "
            + "; ".join(problems)
            + ". Delete the file (or pass another state_path) to start over, or call with the same models, layers, "
              "metrics, options and loader."
        )

    # ------------------------------------------------------------------ reading
    def load(self) -> dict[str, Any] | None:
        """The saved state (``{"batches": k, "metrics": [state_dict, ...], ...}``), None when
        there is no file yet. Raises if the file is not a simtorch state or belongs to
        another run (everything but the first batch is checked here)."""
        if not self.path.exists():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as z:
                header = json.loads(bytes(z["__header__"]).decode("utf-8"))
                arrays = {k: z[k] for k in z.files if k != "__header__"}
        except Exception as exc:
            raise ValueError(
                f"state_path {str(self.path)!r} is not a readable simtorch run state ({type(exc).__name__}: {exc}); "
                "delete it to start over"
            ) from None
        if header.get("format") != FORMAT or header.get("version") != VERSION:
            raise ValueError(f"state_path {str(self.path)!r} is not a simtorch run state (format "
                             f"{header.get('format')!r}, version {header.get('version')!r}); delete it to start over")
        problems = self._mismatch(header.get("fingerprint", {}))
        if problems:
            raise self._refuse(problems)
        states = []
        for i, ints in enumerate(header["ints"]):
            sd: dict[str, Any] = dict(ints)
            prefix = f"m{i}/"
            for k, arr in arrays.items():
                if k.startswith(prefix):
                    sd[k[len(prefix):]] = torch.from_numpy(np.ascontiguousarray(arr))
            states.append(sd)
        self.first_batch = header.get("first_batch")
        self.saved_batches = int(header["batches"])
        self._last_batches = self.saved_batches
        return {"batches": self.saved_batches, "metrics": states, "first_batch": self.first_batch}

    def check_first_batch(self, digest: str) -> None:
        """Refuse when the loader's first batch is not the one the saved run began with."""
        if self.first_batch is not None and self.first_batch != digest:
            raise self._refuse([
                "the loader's first batch differs from the saved run's (a shuffled loader? resuming needs the same "
                "batches in the same order: shuffle=False, or a DataLoader generator with a fixed seed)"
            ])
        self.first_batch = digest

    # ------------------------------------------------------------------ writing
    def due(self, batches: int) -> bool:
        if self.unit == "batches":
            return batches - self._last_batches >= self.every
        return time.monotonic() - self._last_time >= self.every

    def save(self, metrics: Sequence[Metric], batches: int, complete: bool = False) -> Path:
        """Write every metric's declared states and the batch counter, atomically."""
        arrays: dict[str, np.ndarray] = {}
        ints: list[dict[str, int]] = []
        for i, m in enumerate(metrics):
            plain: dict[str, int] = {}
            for k, v in m.state_dict().items():
                if isinstance(v, Tensor):
                    arrays[f"m{i}/{k}"] = _to_numpy(v)
                else:
                    plain[k] = int(v)
            ints.append(plain)
        header = {"format": FORMAT, "version": VERSION, "batches": int(batches), "complete": bool(complete),
                  "first_batch": self.first_batch, "fingerprint": self.fingerprint, "ints": ints,
                  "saved_at": time.time()}
        arrays["__header__"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        try:  # the rename itself survives a power cut once the directory is synced
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
        self.saved_batches = batches
        self._last_batches = batches
        self._last_time = time.monotonic()
        return self.path
