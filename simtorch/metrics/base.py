"""The metric contract: what a similarity measure declares, and nothing it must know.

A metric is bound to plain facts (:class:`Binding`: layer counts per side, whether both
sides are one stack, the device, the dataset size when known), declares the sums it keeps
(:meth:`Metric.add_state`, :meth:`Metric.add_counter`, :meth:`Metric.add_grouped`) and
what it needs from each batch (:class:`Needs`), is fed one :class:`~simtorch.engine.GramBatch`
per batch, and returns tensors (:class:`Computed`). It never sees models, hooks or layer
names: the engine all-reduces, saves and restores its declared states generically, and the
caller (:func:`simtorch.runner.build_result`) names rows and columns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from .accumulate import GroupedSums

__all__ = ["BatchSizes", "Binding", "Computed", "LayerNote", "Metric", "Needs"]


@dataclass(frozen=True)
class Binding:
    """The facts a metric is bound to before the first batch."""

    layers_a: int
    layers_b: int
    #: both sides are the same stack (a model against itself, one forward pass)
    same: bool
    device: torch.device
    #: samples the loader will yield (this process's share), when knowable up front
    expected_samples: int | None = None


@dataclass(frozen=True)
class Needs:
    """What a metric needs from the engine beyond the per-layer Gram stacks.

    The engine checks every need against the first batch *before* any forward pass, so an
    unmet one fails before other metrics of the pass have spent work.
    """

    #: the batch's model input, moved to the metric device (``GramBatch.inputs``)
    inputs: bool = False
    #: the model input must be a tensor (e.g. dCKA's default confounder); a one-line fix
    #: for other inputs goes in ``tensor_inputs_hint``
    tensor_inputs: bool = False
    tensor_inputs_hint: str = ""
    #: ``fn((n, d) features) -> (n, p)`` applied to each layer's flattened features in the
    #: hook, next to the Gram (``GramBatch.features_*``); None = no features
    features: Callable[[Tensor], Tensor] | None = None
    #: the uncentred parts ``X_c μ`` ``(n,)`` and ``‖μ‖²`` per layer, so raw inner products
    #: ``X Xᵀ`` can be rebuilt from the centred Gram (``GramBatch.raw_*``)
    raw_products: bool = False
    #: smallest batch the metric can use at all (smaller batches are skipped and counted)
    min_batch: int = 1

    def merge(self, other: "Needs") -> "Needs":
        return Needs(
            inputs=self.inputs or other.inputs,
            tensor_inputs=self.tensor_inputs or other.tensor_inputs,
            tensor_inputs_hint=self.tensor_inputs_hint or other.tensor_inputs_hint,
            features=self.features or other.features,
            raw_products=self.raw_products or other.raw_products,
            min_batch=max(self.min_batch, other.min_batch),
        )


@dataclass
class LayerNote:
    """A warning about some layers, worded by the metric, named by the caller.

    ``message`` may use ``{model}`` and ``{layers}``, filled in with the model's name and the
    names of the layers where ``mask`` is True.
    """

    side: str  # "a" or "b"
    mask: list[bool]
    message: str


@dataclass
class Computed:
    """What :meth:`Metric.compute` returns: tensors and counts, no names."""

    matrix: Tensor
    stderr: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    #: settings learnt during the run (e.g. subset sizes), merged over the metric's own
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[LayerNote] = field(default_factory=list)
    #: warnings that name no layer (e.g. skipped batches)
    messages: list[str] = field(default_factory=list)


class BatchSizes:
    """The sizes of the batches (subsets) a metric averaged over: each one it used, and
    whether a batch other than the last had another size than the first (values of
    neighbour-based measures depend on the set size, so such an average is flagged; a
    short last batch is not). Part of the metric's saved state, so a resumed pass reports
    the sizes of the whole pass; per process under torch.distributed (sizes are not sums)."""

    def __init__(self) -> None:
        self.first: int | None = None
        self.prev: int | None = None
        self.used: set[int] = set()
        self.irregular = False

    def track(self, n: int) -> None:
        """A batch of ``n`` samples arrived (used or skipped)."""
        if self.prev is not None and self.prev != self.first:
            self.irregular = True  # a batch of another size was not the last one
        if self.first is None:
            self.first = n
        self.prev = n

    def state_dict(self) -> dict[str, Any]:
        return {"first": -1 if self.first is None else self.first, "prev": -1 if self.prev is None else self.prev,
                "irregular": int(self.irregular), "used": torch.tensor(sorted(self.used), dtype=torch.int64)}

    def load(self, key: str, value: Any) -> None:
        if key == "used":
            self.used = {int(v) for v in torch.as_tensor(value).tolist()}
        elif key in ("first", "prev"):
            setattr(self, key, None if int(value) < 0 else int(value))
        elif key == "irregular":
            self.irregular = bool(int(value))
        else:
            raise KeyError(f"unknown batch-size entry {key!r}")


class Metric(ABC):
    """A streaming similarity measure over declared sum states.

    Subclasses set the class attributes below, declare their states in :meth:`setup`,
    and implement :meth:`update` and :meth:`compute`. Counters ``n_samples``, ``n_used``
    (batches used), ``skipped`` and ``skipped_samples`` exist on every metric.
    """

    #: registry key (``compare(metrics=("cka", ...))``, CLI ``--metric``) and aliases
    key: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    #: display name, in results and plots
    name: ClassVar[str] = "metric"
    #: properties, read by plots and tests (in the manner of ReSi's measures)
    symmetric: ClassVar[bool] = True
    #: "similarity" (higher = more alike) or "distance" (lower = more alike)
    direction: ClassVar[str] = "similarity"
    #: the values a cell can take, e.g. (0, 1); None where unbounded
    value_range: ClassVar[tuple[float, float] | None] = None
    #: transformations of either representation that leave the value unchanged:
    #: "orthogonal", "isotropic_scaling", "translation", "invertible_linear"
    invariances: ClassVar[frozenset[str]] = frozenset()
    #: where ``Computed.stderr`` comes from: "batches" (a jackknife or the spread over
    #: batches, so one batch has none) or None (a whole-data value with no error bar)
    error_bars: ClassVar[str | None] = "batches"

    binding: Binding

    # ------------------------------------------------------------------ declaration
    def needs(self) -> Needs:
        """What this metric needs from each batch (default: the Gram stacks only)."""
        return Needs()

    def settings(self) -> dict[str, Any]:
        """The options that determine the value (saved with the result)."""
        return {}

    def setup(self) -> None:
        """Declare the states (``add_state`` …) once :attr:`binding` is known."""

    # ------------------------------------------------------------------ states
    def bind(self, binding: Binding) -> None:
        """Bind to the facts of a run and (re)create every declared state at zero."""
        self.binding = binding
        self._states: dict[str, Tensor] = {}
        self._counters: list[str] = []
        self._grouped: dict[str, GroupedSums] = {}
        self._batch_sizes: BatchSizes | None = None
        for c in ("n_samples", "n_used", "skipped", "skipped_samples"):
            self.add_counter(c)
        self.setup()

    def add_state(self, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float64) -> Tensor:
        """A sum state (zeros), summed over processes and saved/restored by the engine."""
        t = torch.zeros(shape, dtype=dtype, device=self.binding.device)
        self._states[name] = t
        return t

    def add_counter(self, name: str) -> None:
        """An integer sum over batches, kept as a plain ``int`` attribute."""
        self._counters.append(name)
        setattr(self, name, 0)

    def add_grouped(self, name: str, shapes: Mapping[str, tuple[int, ...]], max_groups: int = 64) -> GroupedSums:
        """Sums kept per group of consecutive batches (for a jackknife standard error)."""
        g = GroupedSums(shapes, self.binding.device, max_groups)
        self._grouped[name] = g
        return g

    def add_batch_sizes(self) -> BatchSizes:
        """Batch-size bookkeeping (:class:`BatchSizes`), saved and restored with the states."""
        self._batch_sizes = BatchSizes()
        return self._batch_sizes

    def state(self, name: str) -> Tensor:
        return self._states[name]

    def count(self, n: int) -> None:
        """Record a used batch of ``n`` samples."""
        self.n_samples += n
        self.n_used += 1

    def skip(self, n: int) -> None:
        """Record a batch of ``n`` samples the metric could not use."""
        self.skipped += 1
        self.skipped_samples += n

    def reduce_tensors(self) -> list[Tensor]:
        """Every tensor summed across processes, in a fixed order."""
        out = [self._states[k] for k in sorted(self._states)]
        for k in sorted(self._grouped):
            out.extend(self._grouped[k].state_tensors())
        return out

    def counters(self) -> dict[str, int]:
        return {c: getattr(self, c) for c in self._counters}

    def set_counters(self, values: Mapping[str, int]) -> None:
        for k, v in values.items():
            if k not in self._counters:
                raise KeyError(f"{type(self).__name__} has no counter {k!r}")
            setattr(self, k, int(v))

    def state_dict(self) -> dict[str, Any]:
        """Every declared state as plain tensors and ints (what a resumed run restores)."""
        # copies, never views: a snapshot must not change when the live sums do
        sd: dict[str, Any] = {f"state.{k}": v.detach().to("cpu", copy=True) for k, v in self._states.items()}
        for k, g in self._grouped.items():
            for term, buf in g.buf.items():
                sd[f"grouped.{k}.{term}"] = buf.detach().to("cpu", copy=True)
            sd[f"grouped.{k}.#block"] = g.block
            sd[f"grouped.{k}.#count"] = g.count
        sd.update({f"counter.{k}": v for k, v in self.counters().items()})
        if self._batch_sizes is not None:
            sd.update({f"sizes.{k}": v for k, v in self._batch_sizes.state_dict().items()})
        return sd

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        for key, value in sd.items():
            kind, _, rest = key.partition(".")
            if kind == "state":
                self._states[rest].copy_(value)
            elif kind == "counter":
                self.set_counters({rest: value})
            elif kind == "grouped":
                name, _, term = rest.partition(".")
                g = self._grouped[name]
                if term == "#block":
                    g.block = int(value)
                elif term == "#count":
                    g.count = int(value)
                else:
                    g.buf[term].copy_(value)
            elif kind == "sizes" and self._batch_sizes is not None:
                self._batch_sizes.load(rest, value)
            else:
                raise KeyError(f"unknown state entry {key!r}")

    # ------------------------------------------------------------------ work
    @abstractmethod
    def update(self, batch: Any) -> None:
        """Add one batch (a :class:`~simtorch.engine.GramBatch`) to the sums."""

    def finish(self) -> None:
        """After the last batch, before any all-reduce (e.g. flush a feature buffer)."""

    @abstractmethod
    def compute(self) -> Computed:
        """The grid (and its standard error, extras, notes) from the sums so far."""
