"""Loading checkpoints safely, and comparing the checkpoints of one training run.

:func:`compare_checkpoints` answers "when does each layer settle?": every checkpoint's
chosen layers against the same layers of a reference checkpoint (by default the last), with
a jackknife standard error per value, plus the full layer × layer grid of each checkpoint
against the reference.

How it streams: the reference and a group of checkpoints are held as sub-modules of one
container module that runs them all on each batch; the reference's layers are side A of
the engine, every checkpoint's layers side B. So each batch costs one forward pass per
model, the reference's Gram matrices and self-terms are computed once per batch and reused
for every checkpoint of the group, and all cross terms come from one matrix product. When
the checkpoints do not fit in memory together they are split into groups
(``checkpoints_per_pass``), one pass over the data per group.

Loading never unpickles code by default: ``torch.load(weights_only=True)``; nested
``"state_dict"``/``"model"`` entries and ``module.`` (DDP) or ``_orig_mod.``
(``torch.compile``) prefixes are handled; missing or unexpected keys are an error naming
them.
"""

from __future__ import annotations

import copy
import inspect
import os
import pickle
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch
from torch import Tensor, nn

from .engine import Metric, stream
from .model import LayerSpec, SimilarityModel, unwrap_model
from .result import SimilarityResult, _arrays_equal, _csv_number, _versions, read_npz, write_npz

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "CheckpointComparison",
    "compare_checkpoints",
    "load_checkpoint",
    "load_state_dict",
]

#: a checkpoint: a file written by ``torch.save``, a (possibly nested) state dict, or a module
CheckpointSource = Union[str, os.PathLike, Mapping[str, Any], nn.Module]

#: keys under which training scripts commonly nest the model's state dict
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")
#: prefixes added by DistributedDataParallel/DataParallel ("module."), torch.compile
#: ("_orig_mod.") and Lightning-style wrappers ("model."), stripped only when every key has
#: them and the model's own keys do not
_PREFIXES = ("module.", "_orig_mod.", "model.")


# ----------------------------------------------------------------------------- loading
def _source_name(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return repr(str(source))
    if isinstance(source, nn.Module):
        return f"module {type(source).__name__}"
    return "the state dict"


def _torch_load(path: Path, map_location: Any, trust_checkpoint: bool) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        return torch.load(path, map_location=map_location, weights_only=not trust_checkpoint)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found and not trust_checkpoint:
            raise ValueError(
                f"refusing to load checkpoint {str(path)!r}: it holds a pickled Python object "
                f"({found.group(1)}), and unpickling an untrusted file can run arbitrary code. Only if you "
                "trust this file, pass trust_checkpoint=True (command line: --trust-checkpoint)"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:\n\n|$)", text, re.S)
        why = " ".join(detail.group(1).split()) if detail else text.splitlines()[0]
        raise ValueError(
            f"cannot read checkpoint {str(path)!r} ({why}): it is corrupt or not written by torch.save"
            + ("" if trust_checkpoint else "; if it is a trusted full pickle, pass trust_checkpoint=True")
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot read checkpoint {str(path)!r}: {first}") from None


def _unnest(obj: Any, where: str) -> Mapping[str, Any]:
    for _ in range(8):  # nesting deeper than a few levels is not a checkpoint layout
        if isinstance(obj, nn.Module):
            return unwrap_model(obj).state_dict()
        if not isinstance(obj, Mapping):
            raise TypeError(
                f"{where} holds a {type(obj).__name__}, not a state dict (a mapping of parameter names to tensors)"
            )
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            return obj
        for key in _NESTED_KEYS:
            if isinstance(obj.get(key), (Mapping, nn.Module)):
                obj = obj[key]
                break
        else:
            return obj
    raise ValueError(f"{where}: the state dict is nested too deeply under {_NESTED_KEYS} keys")


def _strip_prefixes(state: Mapping[str, Any], expected: Iterable[str] | None = None) -> dict[str, Any]:
    state = dict(state)
    expected = set(expected) if expected is not None else None
    changed = True
    while changed and state:
        changed = False
        if expected is not None and set(state) == expected:
            break
        for p in _PREFIXES:
            if p == "model." and expected is None:
                continue  # "model." is only stripped when the model's own keys show it is a wrapper's
            if all(k.startswith(p) for k in state) and not (expected and all(k.startswith(p) for k in expected)):
                state = {k[len(p):]: v for k, v in state.items()}
                changed = True
                break
    return state


def load_state_dict(
    source: CheckpointSource,
    *,
    map_location: str | torch.device | None = "cpu",
    trust_checkpoint: bool = False,
) -> dict[str, Any]:
    """The model state dict held by a checkpoint file, nested dict or module.

    Parameters
    ----------
    source : path, mapping or nn.Module
        A file written by ``torch.save`` (a state dict, or a training checkpoint with the
        state dict under ``"state_dict"``, ``"model_state_dict"`` or ``"model"``), such a
        mapping itself, or a module (its ``state_dict()``).
    map_location : str or torch.device, optional
        Where tensors are loaded (``torch.load``'s argument). Default ``"cpu"``.
    trust_checkpoint : bool
        Files are read with ``torch.load(weights_only=True)``, which refuses pickled Python
        objects because unpickling an untrusted file can run arbitrary code. Pass ``True``
        only for files you trust, to load such checkpoints (e.g. whole pickled models).

    Returns
    -------
    dict
        Parameter and buffer names to tensors, with ``module.`` (DDP) and ``_orig_mod.``
        (``torch.compile``) prefixes removed when every key carries them.

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    ValueError
        The file holds pickled objects and ``trust_checkpoint`` is False (the message
        names the fix), or it cannot be read.
    """
    return _strip_prefixes(_raw_state(source, map_location, trust_checkpoint))


def _raw_state(source: CheckpointSource, map_location: Any, trust_checkpoint: bool) -> Mapping[str, Any]:
    obj: Any = source
    if isinstance(source, (str, os.PathLike)):
        obj = _torch_load(Path(source), map_location, trust_checkpoint)
    return _unnest(obj, f"checkpoint {_source_name(source)}")


def _fmt_keys(keys: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{f', … ({len(keys) - limit} more)' if len(keys) > limit else ''}]"


def load_checkpoint(
    model: nn.Module,
    source: CheckpointSource,
    *,
    map_location: str | torch.device | None = "cpu",
    trust_checkpoint: bool = False,
) -> nn.Module:
    """Load a checkpoint into ``model`` (in place) after checking that it fits exactly.

    Every parameter and buffer of the model must be in the checkpoint with the same
    shape, and the checkpoint must hold nothing else, so a wrong architecture is an error
    naming the keys, never a silently half-loaded model. See :func:`load_state_dict` for
    the accepted layouts and ``trust_checkpoint``.

    Returns
    -------
    nn.Module
        ``model``, with the checkpoint's weights.

    Raises
    ------
    ValueError
        Missing keys, unexpected keys or shape mismatches (all of them named).
    """
    target = unwrap_model(model)
    own = target.state_dict()
    # prefixes are judged against the model's own keys (a model may have a child "module")
    state = _strip_prefixes(_raw_state(source, map_location, trust_checkpoint), own.keys())
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    problems = []
    if missing:
        problems.append(f"missing keys {_fmt_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_fmt_keys(unexpected)}")
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and isinstance(v, Tensor) and isinstance(own[k], Tensor) and v.shape != own[k].shape
    ]
    if shapes:
        problems.append(f"shape mismatches [{'; '.join(shapes[:5])}{' …' if len(shapes) > 5 else ''}]")
    if problems:
        raise ValueError(
            f"checkpoint {_source_name(source)} does not fit {type(target).__name__}: {'; '.join(problems)}. "
            "Check that the architecture (and e.g. num_classes) is the one the checkpoint was saved from"
        )
    target.load_state_dict(state, strict=True)
    return model


# ----------------------------------------------------------------------------- result
@dataclass(eq=False)
class CheckpointComparison:
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
    versions: dict[str, str] = field(default_factory=_versions)

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

    def __repr__(self) -> str:
        return (
            f"CheckpointComparison({self.metric}: {len(self.labels)} checkpoints of {self.model_name} "
            f"× {len(self.layers)} layers vs {self.reference!r}, n_samples={self.n_samples})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CheckpointComparison):
            return NotImplemented
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if not (_arrays_equal(a, b) if isinstance(a, np.ndarray) else a == b):
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

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
            metric=self.metric, settings=dict(self.settings), n_samples=self.n_samples,
            n_batches=self.n_batches, n_skipped=self.n_skipped, skipped_samples=self.skipped_samples,
            versions=dict(self.versions),
        )

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """One ``.npz`` file (arrays + JSON header, no pickle); :meth:`load` reads it back
        exactly, and ``simtorch plot`` draws it."""
        header = {
            "labels": list(self.labels), "steps": list(self.steps), "layers": list(self.layers),
            "reference": self.reference, "metric": self.metric, "settings": dict(self.settings),
            "model_name": self.model_name, "n_samples": int(self.n_samples), "n_batches": int(self.n_batches),
            "n_skipped": int(self.n_skipped), "skipped_samples": int(self.skipped_samples),
            "versions": dict(self.versions),
        }
        return write_npz(path, "checkpoints", header, {"grids": self.grids, "grids_stderr": self.grids_stderr})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CheckpointComparison":
        """Read a file written by :meth:`save` (never unpickles anything)."""
        h, arrays = read_npz(path, "checkpoints")
        return cls(
            labels=list(h["labels"]), steps=list(h["steps"]), layers=list(h["layers"]), reference=h["reference"],
            grids=arrays["grids"], grids_stderr=arrays["grids_stderr"], metric=h["metric"],
            settings=dict(h.get("settings", {})), model_name=h.get("model_name", "model"),
            n_samples=int(h.get("n_samples", 0)), n_batches=int(h.get("n_batches", 0)),
            n_skipped=int(h.get("n_skipped", 0)), skipped_samples=int(h.get("skipped_samples", 0)),
            versions=dict(h.get("versions", {})),
        )

    def to_csv(self, path: str | os.PathLike, full: bool = False) -> Path:
        """Long form: ``checkpoint, step, layer, value, stderr`` (each layer against the
        same reference layer), or with ``full=True`` every cell of every grid:
        ``checkpoint, step, layer_reference, layer_checkpoint, value, stderr``."""
        import csv

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            if full:
                w.writerow(["checkpoint", "step", "layer_reference", "layer_checkpoint", "value", "stderr"])
            else:
                w.writerow(["checkpoint", "step", "layer", "value", "stderr"])
            for k, (label, step) in enumerate(zip(self.labels, self.steps)):
                for i, li in enumerate(self.layers):
                    for j, lj in enumerate(self.layers):
                        if not full and i != j:
                            continue
                        cells = [li, lj] if full else [li]
                        w.writerow([label, step, *cells, _csv_number(self.grids[k, i, j]),
                                    _csv_number(self.grids_stderr[k, i, j])])
        return path

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


# ----------------------------------------------------------------------------- comparing
class _Stack(nn.Module):
    """Runs several models on the same input; their outputs are discarded (only the
    hooks on their layers matter)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        for i, m in enumerate(members):
            self.add_module(f"m{i}", m)

    def forward(self, *args: Any, **kwargs: Any) -> None:
        for m in self.children():
            m(*args, **kwargs)


def _parse_step(label: str) -> int | None:
    found = re.findall(r"\d+", label)
    return int(found[-1]) if found else None


def _entries(
    checkpoints: Sequence[CheckpointSource] | Mapping[Any, CheckpointSource], steps: Sequence[float] | None
) -> tuple[list[str], list[float], list[CheckpointSource]]:
    """Names, steps and sources, ordered by step."""
    if isinstance(checkpoints, Mapping) and not _looks_like_state_dict(checkpoints):
        keys = list(checkpoints)
        labels = [str(k) for k in keys]
        sources = [checkpoints[k] for k in keys]
        numeric = [k for k in keys if isinstance(k, (int, float)) and not isinstance(k, bool)]
        parsed: list[float] | None = [float(k) if isinstance(k, float) else int(k) for k in keys] if len(numeric) == len(keys) else None
    elif isinstance(checkpoints, (str, os.PathLike, nn.Module)) or isinstance(checkpoints, Mapping):
        raise TypeError("checkpoints must be a list of checkpoints (or a mapping name/step → checkpoint), not a single one")
    else:
        sources = list(checkpoints)
        labels = [
            Path(s).stem if isinstance(s, (str, os.PathLike)) else f"checkpoint {i}" for i, s in enumerate(sources)
        ]
        parsed = None
    if not sources:
        raise ValueError("checkpoints is empty; pass the paths (or state dicts) to compare")
    if len(set(labels)) != len(labels):
        # two files with the same stem in different folders: fall back to the full paths
        labels = [str(s) if isinstance(s, (str, os.PathLike)) else lab for s, lab in zip(sources, labels)]
        if len(set(labels)) != len(labels):
            labels = [f"{lab} ({i})" for i, lab in enumerate(labels)]
    if steps is not None:
        if len(steps) != len(sources):
            raise ValueError(f"got {len(steps)} steps for {len(sources)} checkpoints")
        parsed = list(steps)
    if parsed is None:
        found = [_parse_step(lab) for lab in labels]
        parsed = found if None not in found and len(set(found)) == len(found) else list(range(len(sources)))  # type: ignore[assignment]
    order = sorted(range(len(sources)), key=lambda i: parsed[i])  # type: ignore[index]
    return [labels[i] for i in order], [parsed[i] for i in order], [sources[i] for i in order]  # type: ignore[index]


def _looks_like_state_dict(m: Mapping[Any, Any]) -> bool:
    return bool(m) and all(isinstance(v, Tensor) for v in m.values())


def _resolve_reference(
    reference: Any, labels: list[str], steps: list[float]
) -> tuple[int | None, str, CheckpointSource | None]:
    """(position in the list or None, name, external source or None)."""
    if isinstance(reference, str):
        if reference == "last":
            return len(labels) - 1, labels[-1], None
        if reference == "first":
            return 0, labels[0], None
        if reference in labels:
            return labels.index(reference), reference, None
        if Path(reference).is_file():
            return None, Path(reference).stem, reference
        raise ValueError(
            f"reference {reference!r} is neither 'last', 'first', a checkpoint name ({labels}) nor an existing file"
        )
    if isinstance(reference, (int, float)) and not isinstance(reference, bool):
        if reference in steps:
            i = steps.index(reference)
            return i, labels[i], None
        raise ValueError(f"reference step {reference} is not among the checkpoints' steps {steps}")
    if isinstance(reference, (os.PathLike, Mapping, nn.Module)):
        return None, "reference", reference
    raise TypeError(f"reference must be 'last', 'first', a name, a step, a path or a state dict, got {reference!r}")


def _metric_factory(metric: str | Callable[[], Metric], kwargs: dict[str, Any]) -> Callable[[], Metric]:
    if callable(metric) and not isinstance(metric, str):
        if kwargs:
            raise TypeError(f"metric keyword arguments {sorted(kwargs)} only apply to a metric given by name")
        return metric
    name = str(metric).lower()
    try:
        from .compare import METRICS  # every metric of this installation, with aliases
    except ImportError:  # an installation without the other metrics
        from .similarity.cka import CKAMetric

        METRICS = {"cka": CKAMetric}
    if name not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: use one of {sorted(METRICS)} or a function returning a Metric")
    cls = METRICS[name]
    cls(**kwargs)  # argument errors now, before any checkpoint is loaded
    return lambda: cls(**kwargs)


def _param_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def _prefixed_output_fn(fn: Callable[..., Tensor] | None) -> Callable[..., Tensor] | None:
    """Give a two-argument ``output_fn(name, output)`` the user's layer names, not the
    container's ``m3.layer1``."""
    if fn is None:
        return None
    try:
        params = [
            p for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        ]
    except (TypeError, ValueError):
        return fn
    if len(params) < 2 and not any(p.kind == p.VAR_POSITIONAL for p in params):
        return fn

    def wrapped(name: str, output: Any) -> Tensor:
        return fn(name.split(".", 1)[1], output)

    return wrapped


def _prefixed(call_index: int | Mapping[str, int] | None, names: list[str]) -> int | dict[str, int] | None:
    """A per-layer ``call_index`` keyed by the container's names ``m3.layer1``."""
    if not isinstance(call_index, Mapping):
        return call_index
    return {n: call_index[n.split(".", 1)[1]] for n in names if n.split(".", 1)[1] in call_index}


def compare_checkpoints(
    model: nn.Module | Callable[[], nn.Module],
    checkpoints: Sequence[CheckpointSource] | Mapping[Any, CheckpointSource],
    loader: Iterable,
    metric: str | Callable[[], Metric] = "cka",
    layers: Sequence[LayerSpec] | LayerSpec | None = None,
    reference: str | int | CheckpointSource = "last",
    *,
    steps: Sequence[float] | None = None,
    device: str | torch.device | None = None,
    map_location: str | torch.device | None = "cpu",
    trust_checkpoint: bool = False,
    checkpoints_per_pass: int | None = None,
    model_name: str | None = None,
    output_fn: Callable[..., Tensor] | None = None,
    sequence: str = "flatten",
    call_index: int | Mapping[str, int] | None = None,
    progress: bool = True,
    input_key: str | None = None,
    input_fn: Callable[[Any], Any] | None = None,
    autocast: torch.dtype | None = None,
    **metric_kwargs: Any,
) -> CheckpointComparison:
    """Compare every checkpoint's layers with the same layers of a reference checkpoint.

    For checkpoint ``k`` and layers ``i, j`` the result holds the similarity (CKA by
    default, the minibatch estimator of Nguyen et al. 2021) of the reference's layer ``i``
    and checkpoint ``k``'s layer ``j`` over the whole loader, with a delete-one-batch
    jackknife standard error; ``values[k, i]`` (``i = j``) is how close layer ``i`` is to
    its reference state (Kornblith et al. 2019, Fig. 7 style "convergence over training").

    Parameters
    ----------
    model : nn.Module or callable
        The architecture: a module (deep-copied for each checkpoint; the original is never
        modified) or a function returning a fresh module.
    checkpoints : sequence or mapping
        Paths written by ``torch.save``, state dicts or modules; or a mapping from a name
        or step to each. Checkpoints are ordered by step: numeric mapping keys, else the
        last number in each name (``ckpt_10.pt`` after ``ckpt_9.pt``) when every name has
        a distinct one, else the given order.
    loader : iterable
        The data (a ``DataLoader``). Use one without shuffling, so that every pass sees
        the same batches.
    metric : str or callable
        ``"cka"`` (default), ``"dcka"`` or ``"ii"`` (any name of
        :data:`simtorch.compare.METRICS`), or a function returning a fresh streaming
        :class:`~simtorch.engine.Metric` (one per pass).
    layers : list of patterns, optional
        Layers to compare, as in ``SimilarityModel(layers_to_include=...)``. Default: the
        command line's default for the architecture (ResNet blocks, or top-level children).
    reference : ``"last"``, ``"first"``, name, step, path or state dict
        The checkpoint everything is compared with: one of ``checkpoints`` (by name or
        step; ``"last"`` is the one with the largest step) or another checkpoint.
    steps : sequence of float, optional
        The step of each checkpoint (overrides the parsed ones), in the given order.
    device : str or torch.device, optional
        Where the models run and the sums are computed (default: where the model is).
    map_location, trust_checkpoint
        How checkpoint files are read; see :func:`load_state_dict`. Files are read with
        ``weights_only=True`` unless ``trust_checkpoint=True``.
    checkpoints_per_pass : int, optional
        How many checkpoints are held in memory and streamed together (the reference's
        Grams are computed once per batch and shared by them). Default: all of them, as
        long as their weights stay under 2 GiB and their layers under 1024.
    model_name : str, optional
        Shown in plots and results (default: the model's class name).
    output_fn, sequence, call_index
        As in :class:`~simtorch.model.SimilarityModel`, applied to every checkpoint
        (``output_fn(name, output)`` receives the model's own layer names).
    progress, input_key, input_fn, autocast
        As in :class:`~simtorch.similarity.base.BaseSimilarity`.
    **metric_kwargs
        The metric's settings, e.g. ``kernel="rbf"``, ``unbiased=False`` for CKA.

    Returns
    -------
    CheckpointComparison
        ``values``/``stderr`` ``(K, L)``, full ``grids``/``grids_stderr`` ``(K, L, L)``,
        ``plot()`` (lines over training), ``plot_heatmap()``, ``save``, ``to_csv``.

    Notes
    -----
    Cost: one forward pass per checkpoint per batch, plus one of the reference when it is
    not among the checkpoints (and one more per extra pass when ``checkpoints_per_pass``
    splits them); the full grids come from the same matrix product as the diagonals, so
    they cost nothing extra.
    """
    make_metric = _metric_factory(metric, metric_kwargs)
    labels, step_list, sources = _entries(checkpoints, steps)
    ref_pos, ref_label, ref_external = _resolve_reference(reference, labels, step_list)

    if isinstance(model, nn.Module):
        template = unwrap_model(model)

        def build() -> nn.Module:
            return copy.deepcopy(template)
    elif callable(model):
        template = None

        def build() -> nn.Module:
            m = model()
            if not isinstance(m, nn.Module):
                raise TypeError(f"the model function returned {type(m).__name__}, not an nn.Module")
            return unwrap_model(m)
    else:
        raise TypeError(f"model must be an nn.Module or a function returning one, got {type(model).__name__}")

    first = template if template is not None else build()
    if layers is None:
        from .cli import default_layers

        layers = default_layers(first)
    name = model_name or type(first).__name__
    # pattern (and call_index) errors are raised here, naming the user's model and layers
    layer_names = SimilarityModel(first, name, layers, call_index=call_index).layer_names
    n_layers = len(layer_names)

    def load(source: CheckpointSource) -> nn.Module:
        return load_checkpoint(build(), source, map_location=map_location, trust_checkpoint=trust_checkpoint)

    # check every file before the first (possibly long) pass, so a typo fails fast
    for s in sources + ([ref_external] if ref_external is not None else []):
        if isinstance(s, (str, os.PathLike)) and not Path(s).is_file():
            raise FileNotFoundError(f"checkpoint {str(s)!r} does not exist or is not a file")

    ref_model = load(ref_external if ref_external is not None else sources[ref_pos])  # type: ignore[index]
    others = [k for k in range(len(sources)) if k != ref_pos]
    if checkpoints_per_pass is None:
        by_memory = max(1, (2 << 30) // max(1, _param_bytes(ref_model)))
        checkpoints_per_pass = max(1, min(by_memory, 1024 // max(1, n_layers)))
    if checkpoints_per_pass < 1:
        raise ValueError(f"checkpoints_per_pass must be ≥ 1, got {checkpoints_per_pass}")
    chunks = [others[i : i + checkpoints_per_pass] for i in range(0, len(others), checkpoints_per_pass)] or [[]]

    k_total = len(sources)
    grids = np.full((k_total, n_layers, n_layers), np.nan)
    grids_se = np.full_like(grids, np.nan)
    wrapped_fn = _prefixed_output_fn(output_fn)
    counts: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    metric_name = "CKA"
    for c, chunk in enumerate(chunks):
        # the reference against itself (when it is one of the checkpoints) rides along in
        # the first pass: its hooks are on the same module, so it costs no forward pass
        with_self = c == 0 and ref_pos is not None
        columns = ([ref_pos] if with_self else []) + chunk
        members = [ref_model] + [load(sources[k]) for k in chunk]
        stack = _Stack(members)
        b_members = ([0] if with_self else []) + list(range(1, len(members)))
        a_names = [f"m0.{n}" for n in layer_names]
        b_names = [f"m{i}.{n}" for i in b_members for n in layer_names]
        common = dict(output_fn=wrapped_fn, sequence=sequence)
        sm_a = SimilarityModel(stack, f"{name} @ {ref_label}", a_names, call_index=_prefixed(call_index, a_names), **common)
        sm_b = SimilarityModel(stack, f"{name} checkpoints", b_names, call_index=_prefixed(call_index, b_names), **common)
        if sm_b.layer_names != b_names:  # the container keeps member order; guard the column mapping
            raise RuntimeError("internal error: checkpoint layers came out of order")
        m = make_metric()
        stream(
            sm_a, sm_b, loader, [m], device, progress=progress, input_key=input_key, input_fn=input_fn,
            keep_inputs=getattr(m, "needs_inputs", False),
            desc=f"{getattr(m, 'name', 'metric')} checkpoints {c + 1}/{len(chunks)}", autocast=autocast,
        )
        res: SimilarityResult = m.result()
        metric_name, settings = res.metric, dict(res.settings)
        this = {"n_samples": res.n_samples, "n_batches": res.n_batches, "n_skipped": res.n_skipped,
                "skipped_samples": res.skipped_samples}
        if counts and counts != this:
            warnings.warn(
                f"compare_checkpoints: the passes over the loader saw different data ({counts} vs {this}); "
                "use a deterministic loader (no shuffling) so every checkpoint sees the same batches",
                UserWarning, stacklevel=2,
            )
        counts = counts or this
        for j, k in enumerate(columns):
            grids[k] = res.matrix[:, j * n_layers : (j + 1) * n_layers]
            grids_se[k] = res.stderr[:, j * n_layers : (j + 1) * n_layers]
        del members, stack, sm_a, sm_b  # free this group's models before loading the next

    return CheckpointComparison(
        labels=labels, steps=step_list, layers=list(layer_names), reference=ref_label, grids=grids,
        grids_stderr=grids_se, metric=metric_name, settings=settings, model_name=name, **counts,
    )
