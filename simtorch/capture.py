"""Capture: the engine's hooks that turn each chosen layer's output into a centred Gram.

Per forward pass, each hook reduces its layer's output to one ``(n, d)`` tensor (the
:class:`~simtorch.model.SimilarityModel` says how), takes the ``(n, n)`` Gram of its
column-centred rows (plus, when a metric asked, transformed features or the uncentred parts
of the raw inner products), so the activation can be freed as soon as the next layer has
consumed it: memory is O(layers · n²), never O(layers · n · d).

How the Gram is made (:mod:`~simtorch.functional.linear_grams`): in the hook only the
product, of the rows minus their column mean or, for a large activation whose mean is small
or well estimated from its first rows, of the rows as they are or minus that estimate, with
one fused pass at most (:func:`~simtorch.functional.capture_product`); after the forward
pass the whole stack is double-centred and its energies taken in a few batched operations
(:func:`~simtorch.functional.finish_grams_`). The check that a product of raw or shifted
rows kept its precision (:func:`~simtorch.functional.accept_product`) is made then too, for
all layers at once (:meth:`LayerCapture.verify`): inside the forward pass every small
operation costs several times what it costs after it. A batch with a failed product is run
again through that model with the checks in the hooks, and the failed layer is centred by
its exact mean for the rest of the pass; where a second pass would change the model (a
module in training mode) or other processes wait (torch.distributed), the checks stay in
the hooks. Each Gram depends on its batch alone, except that a layer which failed the check
is centred exactly on the later batches (the same values to float32 rounding, not to the
bit). The raw-product parts (which need the exact mean) and accelerators (no host reads in
the loop) centre by the exact mean.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor, nn

from . import functional as F

if TYPE_CHECKING:
    from .model import SimilarityModel

__all__ = ["Workspace", "LayerCapture"]


class Workspace:
    """Buffers reused from batch to batch.

    The per-batch temporaries are large (a layer's centred activation, float64 stacks of
    ``L × n × n``) and freshly allocated ones are returned to the OS when freed, so every
    batch would pay page faults on megabytes of memory: measured here, as much as the
    arithmetic itself. Tensors handed out are valid until the same key is asked for again.

    Large CPU buffers live in anonymous memory maps of their own (:func:`_mapped`), not on
    the C heap the models allocate their activations from. Held on that heap across the
    forward passes, they split its free space: the models' largest activations then no
    longer fitted in it and glibc mapped and unmapped them afresh on every batch (measured
    on W1-wide: 600 k minor page faults per pass instead of the forward pass's 131 k, and
    +12 % time; see benchmarks/README.md).
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
            buf = self._bufs[k] = _mapped(numel, dtype) if device.type == "cpu" else \
                torch.empty(numel, dtype=dtype, device=device)
        return buf[:numel].view(shape)


#: CPU buffers from this size on get a memory map of their own; below it a page each would
#: waste more than the heap could lose
MAPPED_BYTES = 1 << 16


def _mapped(numel: int, dtype: torch.dtype) -> Tensor:
    """An uninitialised 1-D CPU tensor; from :data:`MAPPED_BYTES` on, in an anonymous memory
    map that the tensor keeps alive and that is unmapped when the last view of it goes."""
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    if nbytes < MAPPED_BYTES:
        return torch.empty(numel, dtype=dtype)
    return torch.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype, count=numel)


def _gram_dtype(t: Tensor) -> torch.dtype:
    return F.gram_dtype(t.dtype)


_NOTHING = torch.empty(0)


class _Plan(NamedTuple):
    """How a layer's float32 CPU output of one shape was captured, kept for the next batches
    (:meth:`LayerCapture._lean`): the reshape, the stack slot, the scratch view and the
    product's form, so that the hook reads two attributes of the output instead of a few
    dozen. Inside the forward pass each attribute read and each line of Python costs
    microseconds (measured: 80 µs per layer for the whole general path, 4.5 ms per W1-many
    batch)."""

    shape: torch.Size
    dtype: torch.dtype
    #: False: outputs of this shape take the general path (small, reduced, not float32…);
    #: kept so that the hook does not ask again on every batch
    lean: bool
    n: int
    d: int
    stack: Tensor
    out: Tensor
    scratch: Tensor
    halves: bool
    #: the features of every output of this shape, when the metrics' transform does not
    #: look at the values (:meth:`LayerCapture._fixed_feature`); None: no features asked for
    feature: Tensor | None = None
    #: how a ``channels_last`` output is read in memory order (:func:`~simtorch.functional.memory_order`)
    perm: tuple[int, ...] | None = None


class LayerCapture:
    """What the hooks on one SimilarityModel's layers write during a forward pass: each
    layer's Gram (into a slot of a stack reused from batch to batch), its energy and, if a
    metric asked, its transformed features and raw-product parts. :meth:`reset` before each
    forward pass, :meth:`check` after it."""

    def __init__(
        self,
        sm: "SimilarityModel",
        workspace: Workspace,
        feature_fn: Callable[[Tensor], Tensor] | None = None,
        raw_products: bool = False,
        autocast: bool = False,
        rerunnable: bool = False,
    ) -> None:
        self.sm = sm
        self.n_layers = len(sm.layer_names)
        self.workspace = workspace
        self.feature_fn = feature_fn
        self.raw_products = raw_products
        #: hooks only need to leave autocast when the forward pass runs under it
        self.autocast = autocast
        #: whether the engine may run a batch again (not under torch.distributed, where the
        #: other ranks would wait)
        self.rerunnable = rerunnable
        #: whether the κ check of the products waits until after the forward pass
        #: (:meth:`verify`): where a batch may be run again and, set in :meth:`attached`,
        #: no module is in training mode (a second pass would update BatchNorm's running
        #: statistics or draw new dropout masks)
        self.defer = False
        #: layers centred by their exact mean from the batch after one failed the deferred
        #: check on, so that a model whose first rows are unrepresentative is run again once,
        #: not on every batch
        self.exact_layers: set[int] = set()
        self._last_scratch: Tensor | None = None
        self._stats: tuple[Tensor, Tensor, Tensor] | None = None
        #: per layer, how outputs of the shape it saw last are captured (None: none seen yet)
        self._plans: list[_Plan | None] = [None] * self.n_layers
        #: the lean path serves plain Grams only: no raw parts or autocast, and features
        #: only where they do not depend on the values (:meth:`_fixed_feature`)
        self._lean_ok = not raw_products and not autocast
        self.reset(0)

    def reset(self, n: int, inputs: Any = None) -> None:
        self.n = n
        self.inputs = inputs
        self.calls = [0] * self.n_layers
        self.grams: list[Tensor | None] = [None] * self.n_layers
        self.extra: list[Tensor | float | None] = [None] * self.n_layers
        self.features: list[Tensor | None] = [None] * self.n_layers
        self.raw: list[tuple[Tensor, Tensor, Tensor, Tensor] | None] = [None] * self.n_layers
        self.stack: Tensor | None = None
        self._stats = None

    # ------------------------------------------------------------------ hooks
    @contextmanager
    def attached(self) -> Iterator[None]:
        """Hooks on every selected layer for the duration of the block, the model in the
        mode the SimilarityModel asks for; both undone on exit, even on error."""
        handles = []
        with self.sm.restoring():
            try:
                for i, name in enumerate(self.sm.layer_names):
                    handles.append(self.sm.module(name).register_forward_hook(self._hook(i, name)))
                self.defer = self.rerunnable and not any(m.training for m in self.sm.model.modules())
                yield
            finally:
                for h in handles:
                    h.remove()

    def _hook(self, i: int, name: str) -> Callable[..., None]:
        want = self.sm.call_index(name)
        sm = self.sm

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            call = self.calls[i]
            self.calls[i] += 1
            if want is None and call > 0:
                raise RuntimeError(
                    f"{sm.model_name}: module {name!r} ran more than once in one forward pass "
                    f"(a shared or reused module). Say which call to compare with "
                    f"SimilarityModel(..., call_index={{{name!r}: 0}}) for the first, or -1 for the last."
                )
            if want is not None and want >= 0 and call != want:
                return
            plan = self._plans[i]
            known = plan is not None and type(output) is Tensor and output.shape == plan.shape \
                and output.dtype is plan.dtype
            if known and plan.lean and self.defer and output.is_cpu and i not in self.exact_layers:  # type: ignore[union-attr]
                self._lean(i, output, plan)  # type: ignore[arg-type]
                return
            r = sm.reduce(name, output, self.n, self.inputs)
            t = r.detach()
            # under autocast the Gram must still be a float32 product, not a bf16/fp16 one
            with torch.autocast(device_type=t.device.type, enabled=False) if self.autocast else nullcontext():
                self._capture(i, t)
            if not known:
                self._plans[i] = self._plan(i, output, t, r is output)

        return hook

    def _plan(self, i: int, output: Any, t: Tensor, plain: bool) -> _Plan | None:
        """How the next outputs of this shape are captured: by the lean path where the
        general one multiplies ``t`` (as it is or shifted; the check deferred): an output
        that needed no reduction (``plain``), a large contiguous float32 CPU activation,
        not one that needs a gradient, in its slot of the stack; a ``channels_last`` one is
        multiplied in its memory order, as the general path does (:func:`~simtorch.functional.product_rows`)."""
        if not isinstance(output, Tensor):
            return None
        n = t.shape[0] if t.dim() > 0 else 0
        d = t.numel() // max(n, 1)
        g = self.grams[i]
        feature = self._fixed_feature(n, d, t.device)
        perm = F.memory_order(t)
        lean = (plain and self._lean_ok and (self.feature_fn is None or feature is not None)
                and t.is_cpu and t.dtype is torch.float32 and (t.is_contiguous() or perm is not None)
                and not t.requires_grad and F.large(n, d)
                and self.stack is not None and g is not None and g.data_ptr() == self.stack[i].data_ptr())
        if not lean:  # holds no tensor: nothing of a batch may outlive it
            return _Plan(output.shape, output.dtype, False, n, d, _NOTHING, _NOTHING, _NOTHING, False)
        scratch = self._scratch(t)[: n * d].view(n, d)
        return _Plan(output.shape, output.dtype, True, n, d, self.stack, self.stack[i], scratch,  # type: ignore[index]
                     F.in_halves(n, d), feature, perm)

    def _fixed_feature(self, n: int, d: int, device: torch.device) -> Tensor | None:
        """What the metrics' feature transform gives for every ``(n, d)`` input, when that
        does not depend on the values: per-batch Information Imbalance asks for the features
        of narrow layers only, and a wide one gets an empty ``(n, 0)`` tensor
        (:class:`~simtorch.metrics.ii.NarrowFeatures`). Such a layer can take the lean path
        (measured on W1: 3 ms per batch, 96 µs per layer, for ``compare`` with II). None
        when the transform must see the output, or there is none."""
        fixed = getattr(self.feature_fn, "fixed", None)
        return fixed(n, d, device) if fixed is not None else None

    def _lean(self, i: int, output: Tensor, plan: _Plan) -> None:
        """:func:`~simtorch.functional.capture_product` with ``defer=True`` on an output the
        plan fits, as few reads of the output as possible: the same products, the same bits."""
        try:
            x = (output if plan.perm is None else output.permute(plan.perm)).view(plan.n, plan.d)
        except RuntimeError:  # another layout this time: the general path reads (or copies) it
            self._plans[i] = None
            self._capture(i, output.detach())
            return
        if self.stack is None:
            self.stack = plan.stack
        shift, mu_sq = F.head_shift(x)
        if shift is not None:
            x = torch.sub(x, shift, out=plan.scratch)
        self.grams[i] = F.product_into(x, plan.out, plan.halves)
        self.extra[i] = F.Unchecked(shift is None, mu_sq)
        if plan.feature is not None:
            self.features[i] = plan.feature

    def _capture(self, i: int, t: Tensor) -> None:
        scratch, out = self._scratch(t), self._slot(i, t)
        exact = self.raw_products or t.device.type != "cpu" or i in self.exact_layers
        g, extra, mu = F.capture_product(t, scratch, out, exact=exact, defer=self.defer)
        self.grams[i] = g
        self.extra[i] = extra
        if self.feature_fn is not None:
            # one column order for every batch: the metrics sum features across batches
            self.features[i] = self.feature_fn(F.flatten_samples(t))
        if self.raw_products:
            assert mu is not None
            x = F.product_rows(t).to(g.dtype)  # μ's column order
            mu = mu[0]
            mu_sq = (mu.to(torch.float64) ** 2).sum()
            # X_c μ = X μ − ‖μ‖² 1: with the centred Gram it rebuilds X Xᵀ exactly
            self.raw[i] = ((x @ mu).to(torch.float64) - mu_sq, mu_sq, x.sum(dim=1).to(torch.float64),
                           torch.tensor(float(x.shape[1]), dtype=torch.float64, device=x.device))

    def _scratch(self, t: Tensor) -> Tensor:
        """A reusable 1-D buffer for the centred copy of ``t`` (one per dtype and device in
        the workspace: the hooks of one forward pass run one after another, DataParallel
        replicas on different devices). The last one is kept at hand: inside a forward pass
        even a dictionary lookup costs tens of microseconds (the convolutions have evicted
        the interpreter's data from the caches), on every hooked layer."""
        buf = self._last_scratch
        if buf is None or buf.numel() < t.numel() or buf.device != t.device or buf.dtype != _gram_dtype(t):
            buf = self._last_scratch = self.workspace.get(("activation",), (t.numel(),), _gram_dtype(t), t.device)
        return buf

    def _slot(self, i: int, t: Tensor) -> Tensor:
        """Where layer ``i``'s Gram goes: row ``i`` of an ``(L, n, n)`` stack reused across
        batches, so no per-batch ``torch.stack`` copy is needed."""
        if self.stack is None:
            self.stack = self.workspace.get(("grams", id(self)), (self.n_layers, self.n, self.n),
                                            _gram_dtype(t), t.device)
        return self.stack[i]

    # ------------------------------------------------------------------ after the pass
    def check(self) -> None:
        """Every layer fired (and often enough for its call_index)."""
        for i, name in enumerate(self.sm.layer_names):
            want = self.sm.call_index(name)
            calls = self.calls[i]
            if calls == 0:
                raise RuntimeError(
                    f"{self.sm.model_name}: layer {name!r} never ran during the forward pass; it is not "
                    "on the path from the input to the output (check the model's forward and "
                    "SimilarityModel.available_layers())"
                )
            if want is not None and (want >= calls or -want > calls):
                raise RuntimeError(
                    f"{self.sm.model_name}: call_index {want} asked for layer {name!r}, which ran {calls} time(s)"
                )

    def verify(self) -> bool:
        """The κ checks the hooks deferred (:func:`~simtorch.functional.accept_product`), for
        all layers at once: a few operations over the whole stack, instead of two small
        operations and two reads per layer inside the forward pass, where each costs several
        times what it costs here (measured: 1.5–2.5 ms per W1-many batch of 128). False when
        a product failed: its layer is then centred by its exact mean from now on
        (:attr:`exact_layers`), and the caller must run the forward pass again for this
        batch (with :attr:`defer` off, so every product is made and checked in its hook)."""
        pending = [(i, e) for i, e in enumerate(self.extra) if isinstance(e, F.Unchecked)]
        if not pending:
            return True
        grams = self.stacked()
        trace, rows = F.gram_stats(grams)
        traces, totals = trace.tolist(), rows.sum(-1).tolist()
        eps = torch.finfo(grams.dtype).eps
        failed = []
        for i, e in pending:
            extra = F.accept_product(traces[i], totals[i], self.n, e, eps)
            if extra is None:
                failed.append(i)
            self.extra[i] = extra
        if failed:
            self.exact_layers.update(failed)
            return False
        self._stats = (grams, trace, rows)
        return True

    def finish(self) -> tuple[Tensor, Tensor]:
        """The ``(L, n, n)`` centred Grams of the last forward pass and their ``(L,)``
        energies ``‖X‖_F²``: the products the hooks left are double-centred here, in place,
        in one go (call once per forward pass)."""
        # the stack and its statistics as verify() read them, or (nothing deferred) afresh
        grams, stats = (self._stats[0], self._stats[1:]) if self._stats is not None else (self.stacked(), None)
        # the hooks' extras: floats where the check read them off the device, else 0-d tensors
        # (two operations for the whole stack, not one per layer)
        held = [i for i, e in enumerate(self.extra) if isinstance(e, Tensor)]
        if len(held) == self.n_layers:  # always so off the CPU: nothing crosses from the host
            extra = torch.stack([e.to(grams.dtype) for e in self.extra])  # type: ignore[union-attr]
        else:
            extra = torch.tensor([0.0 if isinstance(e, Tensor) else e for e in self.extra], dtype=grams.dtype,
                                 device=grams.device)
            if held:
                extra[held] += torch.stack([self.extra[i].to(grams.dtype) for i in held])  # type: ignore[union-attr]
        return grams, F.finish_grams_(grams, extra, stats)

    def stacked(self) -> Tensor:
        """The ``(L, n, n)`` Gram products of the last forward pass (before :meth:`finish`)."""
        grams = self.grams
        if self.stack is not None and all(
            g is not None and g.data_ptr() == self.stack[i].data_ptr() for i, g in enumerate(grams)
        ):
            return self.stack
        return torch.stack([g for g in grams])  # type: ignore[misc]  # layers of mixed dtype/device
