"""The one streaming loop shared by every metric.

For each batch: unpack the model input, move it to each model's device, run every distinct
model once under ``torch.inference_mode`` with hooks that turn each chosen layer's output
into a centred Gram matrix, stack the Grams per side and hand them to every metric's
``update``. Metrics keep only sums (float64), so memory does not grow with the dataset and
the sums can be all-reduced across processes.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import functional as F
from .model.sim_model import SimilarityModel, _batch_size, _GramSink, call_model

__all__ = ["GramBatch", "Metric", "Workspace", "stream", "unpack_batch", "resolve_device"]


class Workspace:
    """Buffers reused from batch to batch.

    The per-batch temporaries are large (a layer's centred activation, float64 stacks of
    ``L × n × n``) and freshly allocated ones are returned to the OS when freed, so every
    batch would pay page faults on megabytes of memory: measured here, as much as the
    arithmetic itself. Tensors handed out are valid until the same key is asked for again.
    """

    def __init__(self) -> None:
        self._bufs: dict[tuple, Tensor] = {}

    def get(self, key: tuple, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        numel = 1
        for s in shape:
            numel *= s
        k = (key, dtype, device)
        buf = self._bufs.get(k)
        if buf is None or buf.numel() < numel:
            buf = self._bufs[k] = torch.empty(numel, dtype=dtype, device=device)
        return buf[:numel].view(shape)


@dataclass
class GramBatch:
    """Everything a metric sees of one batch: the Gram stacks of both sides and context.

    ``grams_a`` is ``(La, n, n)`` float32 (Grams of column-centred activations),
    ``energy_a`` is ``(La,)`` with each layer's ``‖X‖_F²`` (see :func:`functional.linear_gram`).
    ``same`` is True when both sides are the same stack (a model against itself).
    Derived float64 kernels and centred stacks are cached so several metrics of one
    pass share them.
    """

    index: int
    n: int
    grams_a: Tensor
    energy_a: Tensor
    grams_b: Tensor
    energy_b: Tensor
    same: bool
    inputs: Any = None
    #: buffers that outlive the batch; tensors from :meth:`kernel`/:meth:`centered` may live
    #: in it, so metrics must not keep them beyond ``update``
    workspace: Workspace | None = None
    #: per-layer ``(n, p)`` features, only when a metric set ``feature_transform``
    features_a: list[Tensor] | None = None
    features_b: list[Tensor] | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def grams(self, side: str) -> Tensor:
        return self.grams_a if side == "a" or self.same else self.grams_b

    def energy(self, side: str) -> Tensor:
        return self.energy_a if side == "a" or self.same else self.energy_b

    def cached(self, key: tuple, fn: Callable[[], Tensor]) -> Tensor:
        """``fn()`` once per batch per key, shared by every metric of the pass."""
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def _buffer(self, key: tuple, like: Tensor) -> Tensor | None:
        if self.workspace is None:
            return None
        return self.workspace.get(key, tuple(like.shape), torch.float64, like.device)

    def kernel(self, side: str, kernel: str, sigma_frac: float = 1.0) -> Tensor:
        """Float64 kernel stack ``(L, n, n)`` of one side."""
        side = "a" if self.same else side
        return self.cached(
            ("kernel", side, kernel, sigma_frac),
            lambda: F.kernel_stack(self.grams(side), kernel, sigma_frac,
                                   out=self._buffer(("kernel", side), self.grams(side)) if kernel == "linear" else None),
        )

    def centered(self, side: str, kernel: str, sigma_frac: float, unbiased: bool) -> Tensor:
        """Flattened centred (``HKH``) or U-centred kernel stack ``(L, n²)``, float64."""
        side = "a" if self.same else side

        def make() -> Tensor:
            # the linear kernel is centred straight from the float32 Grams into the float64
            # buffer (one copy, not two)
            src = self.grams(side) if kernel == "linear" else self.kernel(side, kernel, sigma_frac)
            out = self._buffer(("centered", side, kernel, sigma_frac, unbiased), src)
            return F.centered_flat(src if out is not None else src.to(torch.float64), unbiased, out=out)

        return self.cached(("centered", side, kernel, sigma_frac, unbiased), make)


class Metric(ABC):
    """A streaming metric: ``update`` once per batch with sums only, ``result`` at the end."""

    name: str = "metric"
    #: ``fn((n, d) features) -> (n, p)``: set it (in :meth:`bind`) to receive each layer's
    #: flattened, reduced features in ``GramBatch.features_*``, captured by the engine's own
    #: hook next to the Gram (e.g. a random projection); None = Grams only, the default
    feature_transform: Callable[[Tensor], Tensor] | None = None
    #: samples the loader will yield, when known up front (set by :func:`stream` before
    #: the first batch), so a metric that buffers can refuse early
    expected_samples: int | None = None

    def bind(self, model_a: SimilarityModel, model_b: SimilarityModel, device: torch.device) -> None:
        """Called once before the first batch."""
        self.model_a, self.model_b, self.device = model_a, model_b, device

    @abstractmethod
    def update(self, batch: GramBatch) -> None: ...

    @abstractmethod
    def result(self) -> Any:
        """The metric's :class:`~simtorch.result.SimilarityResult` from the sums so far."""

    #: integer attributes that are sums over batches (all-reduced with the tensors)
    counters: tuple[str, ...] = ("n_samples", "_n_used", "skipped", "skipped_samples")

    def state_tensors(self) -> list[Tensor]:
        """The sums to all-reduce across processes (torch.distributed), in a fixed order."""
        return []

    def all_reduce(self) -> None:
        """Sum the state over every process of the default group, so each rank holds the
        statistics of the whole dataset (the accumulators are sums by design)."""
        import torch.distributed as dist

        for t in self.state_tensors():
            dist.all_reduce(t)
        names = [c for c in self.counters if hasattr(self, c)]
        if names:
            counts = torch.tensor([getattr(self, c) for c in names], dtype=torch.float64, device=self.device)
            dist.all_reduce(counts)
            for c, v in zip(names, counts.tolist()):
                setattr(self, c, int(round(v)))

    @property
    def n_batches_used(self) -> int:
        return getattr(self, "_n_used", 0)

    def make_result(self, matrix: Tensor, stderr: Tensor, extras: dict | None = None, **overrides: Any) -> Any:
        """A :class:`~simtorch.result.SimilarityResult` of this metric's grid with the models'
        names, layer names, settings and sample/batch counters filled in."""
        from .result import SimilarityResult
        from .similarity.accumulate import to_numpy

        fields: dict[str, Any] = dict(
            matrix=to_numpy(matrix), stderr=to_numpy(stderr),
            layers_a=list(self.model_a.layer_names), layers_b=list(self.model_b.layer_names),
            model_a=self.model_a.model_name, model_b=self.model_b.model_name,
            metric=self.name, settings=self.settings() if hasattr(self, "settings") else {},
            n_samples=getattr(self, "n_samples", 0), n_batches=self.n_batches_used,
            n_skipped=getattr(self, "skipped", 0), skipped_samples=getattr(self, "skipped_samples", 0),
            extras=extras or {},
        )
        fields.update(overrides)
        return SimilarityResult(**fields)


def dataset_size(loader: Any) -> int | None:
    """Samples a loader will yield (this process's share under a sampler), if knowable."""
    for source in (getattr(loader, "sampler", None), getattr(loader, "dataset", None)):
        if source is not None:
            try:
                return len(source)
            except TypeError:
                continue
    return None


def resolve_device(device: str | torch.device | None, model: torch.nn.Module | None = None) -> torch.device:
    """``device`` as a torch.device; default: where ``model``'s parameters live, else CPU."""
    if device is not None:
        return torch.device(device)
    if model is not None:
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


def unpack_batch(
    batch: Any, input_key: str | None = None, input_fn: Callable[[Any], Any] | None = None
) -> Any:
    """The model input of one loader batch.

    A tensor is the input; a tuple/list's first item is (``(x, y)`` datasets); a mapping is
    passed whole as keyword arguments (so an ``attention_mask`` reaches the model), or
    ``batch[input_key]`` when ``input_key`` is given; ``input_fn(batch)`` overrides all.
    """
    if input_fn is not None:
        return input_fn(batch)
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("the loader yielded an empty tuple/list; pass input_fn=... to build the model input")
        return batch[0]
    if isinstance(batch, Mapping):
        if input_key is not None:
            if input_key not in batch:
                raise KeyError(f"input_key {input_key!r} is not in the batch; its keys are {list(batch)}")
            return batch[input_key]
        return dict(batch)
    raise TypeError(
        f"cannot use a batch of type {type(batch).__name__}: the loader must yield tensors, (input, ...) "
        "tuples/lists or dicts; pass input_fn=lambda batch: ... to build the model input"
    )


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return _move(obj, device)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_to_device(v, device) for v in obj)
    if isinstance(obj, list):
        return [_to_device(v, device) for v in obj]
    return obj


def _model_devices(models: Sequence[SimilarityModel], device: torch.device) -> dict[int, torch.device]:
    return {id(sm): (sm.device if sm.device is not None else device) for sm in models}


class _Placement:
    """Moves models onto their run device for the computation and back afterwards."""

    def __init__(self, models: Sequence[SimilarityModel], run_device: dict[int, torch.device]) -> None:
        self.moves: list[tuple[torch.nn.Module, torch.device]] = []
        seen: set[int] = set()
        try:
            for sm in models:
                if id(sm.model) in seen:
                    continue
                seen.add(id(sm.model))
                where = run_device[id(sm)]
                current = {p.device for p in sm.model.parameters()} | {b.device for b in sm.model.buffers()}
                if current and current != {where} and not _same_device(current, where):
                    if len(current) > 1:
                        if sm.device is not None:
                            continue  # placed by the user: it stays put, its inputs go to sm.device
                        raise ValueError(
                            f"{sm.model_name} is spread over several devices {sorted(map(str, current))}; "
                            "simtorch does not move such a model: give it a single device or place it yourself "
                            "and pass SimilarityModel(..., device=<its input device>)"
                        )
                    if next(iter(current)).type == "meta":
                        raise ValueError(
                            f"{sm.model_name} has its parameters on the 'meta' device (no data); materialise "
                            "it first (e.g. model.to_empty(device=...) then load_state_dict, or "
                            "load_state_dict(..., assign=True))"
                        )
                    self.moves.append((sm.model, next(iter(current))))
                    sm.model.to(where)
        except BaseException:
            self.restore()  # a model moved before the failure goes back where it was
            raise

    def restore(self) -> None:
        for model, where in self.moves:
            model.to(where)


def _same_device(current: set[torch.device], where: torch.device) -> bool:
    # 'cuda' and 'cuda:0' name the same device when 0 is the current one
    if len(current) != 1:
        return False
    (d,) = current
    if d.type != where.type:
        return False
    if where.index is None or d.index is None:
        return True
    return d.index == where.index


class _FiniteGuard:
    """Raises, naming layer and batch, when an activation held NaN/inf. On CPU it checks
    each batch; on an accelerator it keeps device-side flags and looks every 64 batches
    and at the end, so the loop never waits on the device."""

    def __init__(self, device: torch.device) -> None:
        self.sync_every = 1 if device.type == "cpu" else 64
        self.pending: list[tuple[int, str, list[str], Tensor]] = []

    def add(self, index: int, sm: SimilarityModel, energy: Tensor) -> None:
        self.pending.append((index, sm.model_name, sm.layer_names, torch.isfinite(energy)))
        if len(self.pending) >= self.sync_every:
            self.flush()

    def flush(self) -> None:
        for index, name, layers, ok in self.pending:
            if not bool(ok.all()):
                bad = [layer for layer, fine in zip(layers, ok.tolist()) if not fine]
                raise FloatingPointError(
                    f"{name}: an activation in batch {index} holds NaN or inf (layers {bad}); check the "
                    "input data and the model (e.g. fp16 overflow), or drop those layers"
                )
        self.pending.clear()


def stream(
    model_a: SimilarityModel,
    model_b: SimilarityModel,
    loader: Iterable,
    metrics: Sequence[Metric],
    device: str | torch.device | None = None,
    *,
    progress: bool = True,
    input_key: str | None = None,
    input_fn: Callable[[Any], Any] | None = None,
    keep_inputs: bool = False,
    desc: str | None = None,
    autocast: torch.dtype | None = None,
) -> None:
    """Stream ``loader`` through both models once and feed every metric.

    Models that are the same module run once per batch with both sides' hooks. Hooks,
    train/eval flags and model placement are restored in ``finally``; the metrics keep the
    sums of every batch that completed, so a partial result survives an interruption.

    ``autocast`` (``torch.bfloat16``/``torch.float16``) runs the forward passes under
    ``torch.autocast``; the Grams are still computed in float32 and summed in float64.
    When ``torch.distributed`` is initialised, each rank streams its own shard and the
    metrics' sums are all-reduced at the end, so every rank holds the whole-data result.
    """
    device = resolve_device(device, model_a.model)
    run_device = _model_devices((model_a, model_b), device)
    same = model_a is model_b
    for metric in metrics:
        metric.bind(model_a, model_b, device)
        metric.expected_samples = dataset_size(loader)
    transforms = {id(t): t for t in (m.feature_transform for m in metrics) if t is not None}
    if len(transforms) > 1:
        raise ValueError("several metrics of one pass ask for differently transformed features; run them separately")
    feature_fn = next(iter(transforms.values()), None)
    # one forward pass per distinct module; several wrappers of it share that pass
    groups: dict[int, list[SimilarityModel]] = {}
    for sm in (model_a,) if same else (model_a, model_b):
        groups.setdefault(id(sm.model), []).append(sm)

    iterator: Iterable = loader
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(loader, desc=desc or "simtorch", unit="batch", leave=False)

    guard = _FiniteGuard(device)
    workspace = Workspace()
    placement = _Placement((model_a, model_b), run_device)
    n_batches = 0
    try:
        with ExitStack() as capture, torch.inference_mode():
            # hooks attached (and eval mode set) once for the whole pass; each batch only
            # resets the sinks the hooks write into
            sinks: dict[int, _GramSink] = {}
            for members in groups.values():
                for sm in members:
                    sinks[id(sm)] = _GramSink(len(sm.layer_names), feature_fn, workspace, autocast is not None)
                    capture.enter_context(sm.capturing(sinks[id(sm)]))
            for index, batch in enumerate(iterator):
                raw = unpack_batch(batch, input_key, input_fn)
                n = _batch_size(raw)
                mask = raw.get("attention_mask") if isinstance(raw, Mapping) else None
                for members in groups.values():
                    where = run_device[id(members[0])]
                    inputs = _to_device(raw, where)
                    m = _move(mask, where) if isinstance(mask, Tensor) else None
                    for sm in members:
                        sinks[id(sm)].reset(n, m)
                    with torch.autocast(device_type=where.type, dtype=autocast) if autocast is not None else nullcontext():
                        call_model(members[0].model, inputs)
                    for sm in members:
                        sm.check_sink(sinks[id(sm)])
                ga, ea, fa = _stack(sinks[id(model_a)], device)
                gb, eb, fb = (ga, ea, fa) if same else _stack(sinks[id(model_b)], device)
                guard.add(index, model_a, ea)
                if not same:
                    guard.add(index, model_b, eb)
                gram_batch = GramBatch(
                    index=index, n=n, grams_a=ga, energy_a=ea, grams_b=gb, energy_b=eb, same=same,
                    inputs=_to_device(raw, device) if keep_inputs else None,
                    features_a=fa, features_b=fb, workspace=workspace,
                )
                for metric in metrics:
                    metric.update(gram_batch)
                n_batches += 1
        guard.flush()
        if _distributed():
            for metric in metrics:
                metric.all_reduce()
            n_batches = _global_count(n_batches, device)
    finally:
        placement.restore()
        if progress and hasattr(iterator, "close"):
            iterator.close()
    if n_batches == 0:
        raise ValueError("the loader yielded no batches; nothing to compare")


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _global_count(n: int, device: torch.device) -> int:
    import torch.distributed as dist

    t = torch.tensor([n], dtype=torch.int64, device=device)
    dist.all_reduce(t)
    return int(t.item())


def _stack(sink: _GramSink, device: torch.device) -> tuple[Tensor, Tensor, list[Tensor] | None]:
    grams = sink.stacked()
    energy = torch.stack([e for e in sink.energy])  # type: ignore[misc]
    feats = None if sink.feature_fn is None else [_move(f, device) for f in sink.features]  # type: ignore[arg-type]
    return _move(grams, device), _move(energy, device), feats


def _move(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device``; asynchronous only towards an accelerator. A non-blocking copy
    to the host may return before the data has arrived, and the metric would read it at
    once (and the engine reuses the source buffer for the next batch)."""
    return t.to(device, non_blocking=device.type != "cpu")


def warn_skipped(metric_name: str, skipped: int, skipped_samples: int, min_n: int, reason: str) -> None:
    """The one wording for batches a metric could not use."""
    if skipped:
        warnings.warn(
            f"{metric_name}: skipped {skipped} batch(es) holding {skipped_samples} sample(s) with fewer than "
            f"{min_n} samples ({reason}); use a batch size that divides the dataset or drop_last=True",
            UserWarning,
            stacklevel=3,
        )
