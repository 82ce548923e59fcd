"""SimilarityModel: which layers of a model to compare, and turning their outputs into Grams.

Hooks exist only while a computation runs (:meth:`SimilarityModel.capturing`), so wrapping
a model twice, or constructing a wrapper and never using it, leaves the model untouched.
Each hook reduces the layer's output to one ``(n, d)`` tensor, centres its columns and keeps
only the ``(n, n)`` Gram matrix, so the activation can be freed as soon as the next layer
has consumed it: memory is O(layers · n²), never O(layers · n · d).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator, Literal, Union

import torch
from torch import Tensor, nn

from .. import functional as F

__all__ = ["SimilarityModel", "LayerSpec", "first_tensor", "unwrap_model"]

LayerSpec = Union[str, type]
SequenceMode = Literal["flatten", "mean", "first"]
_GLOB_CHARS = set("*?[")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module whose names users see: DataParallel/DDP wrappers are looked through."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def first_tensor(output: Any) -> Tensor | None:
    """The documented default reduction of a layer output to one tensor.

    A tensor is returned as is (never indexed: ``output[0]`` of a tensor would pick one
    sample). For a tuple/list, the first element that is (or contains) a tensor; for a
    mapping (including Hugging Face ``ModelOutput``), the first value in order; for a
    dataclass, the first field in order. ``None`` if no tensor is found.
    """
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        items: Iterator[Any] = iter(output.values())
    elif isinstance(output, (tuple, list)):
        items = iter(output)
    elif dataclasses.is_dataclass(output) and not isinstance(output, type):
        items = (getattr(output, f.name) for f in dataclasses.fields(output))
    else:
        return None
    for item in items:
        found = first_tensor(item)
        if found is not None:
            return found
    return None


def _select(named: list[tuple[str, nn.Module]], spec: LayerSpec) -> list[str]:
    """Names of the modules one entry of ``layers_to_include`` selects (precedence in the
    :class:`SimilarityModel` docstring)."""
    if isinstance(spec, type):
        if not issubclass(spec, nn.Module):
            raise TypeError(f"layers_to_include: {spec!r} is a type but not an nn.Module subclass")
        return [name for name, mod in named if isinstance(mod, spec)]
    if not isinstance(spec, str):
        raise TypeError(
            f"layers_to_include entries must be str or nn.Module subclasses, got {type(spec).__name__}: {spec!r}"
        )
    names = [name for name, _ in named]
    if spec in names:
        return [spec]
    if _GLOB_CHARS & set(spec):
        rx = glob_to_regex(spec)
        return [n for n in names if rx.fullmatch(n)]
    return [n for n in names if spec in n]


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a glob over dotted module names, path style: ``*`` and ``?`` stay inside one
    name component (``layer?.*`` is every block, not their children), ``**`` crosses dots,
    ``[...]`` is a character class."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append(r"[^.]*")
        elif c == "?":
            out.append(r"[^.]")
        elif c == "[":
            j = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "]") else i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : j]
                body = "^" + body[1:] if body.startswith("!") else body
                out.append(f"[{body}]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


def _takes_two_args(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` can be called as ``fn(name, output)`` (else ``fn(output)``)."""
    try:
        inspect.signature(fn).bind("name", None)
    except TypeError:
        return False
    except ValueError:  # no signature (some builtins): the documented one-argument form
        return False
    return True


def _suggest(spec: LayerSpec, names: list[str]) -> str:
    if not isinstance(spec, str):
        return ""
    close = difflib.get_close_matches(spec, names, n=5, cutoff=0.5)
    if not close:
        # a prefix or component match is often what was meant (e.g. 'layer5' → 'layer4')
        head = spec.split(".")[0].rstrip("0123456789")
        close = [n for n in names if head and n.startswith(head)][:5]
    return f" Close matches: {close}." if close else ""


class SimilarityModel:
    """A model together with the layers whose representations are compared.

    Parameters
    ----------
    model : nn.Module
        Any module. DataParallel/DistributedDataParallel wrappers are looked through for
        layer names (no ``module.`` prefix) and the forward pass still runs the wrapper.
    model_name : str, optional
        Shown in plots and results; defaults to the class name.
    layers_to_include : list of str or nn.Module subclasses
        Each entry selects modules by, in order of precedence:

        1. an ``nn.Module`` subclass: every module of that type (e.g. ``nn.Conv2d``);
        2. a string equal to a qualified module name (``"layer2.1"``): exactly that one;
        3. a string containing ``*``, ``?`` or ``[``: a glob over qualified names, path
           style: ``*``/``?`` stay inside one dotted component and ``**`` crosses dots
           (``"layer?.*"`` picks every block of a ResNet, not the stages nor the convs
           inside the blocks; ``"layer1.**"`` picks everything inside ``layer1``);
        4. any other string: every module whose qualified name contains it, as simtorch
           0.2.1 did (``"conv"``). A warning says when this also picked a container and
           modules inside it.

        The union is ordered as the model defines its modules (``model.named_modules()``)
        and exposed as :attr:`layer_names`. An entry that matches nothing raises a
        ``ValueError`` that lists the closest module names.
    device : str or torch.device, optional
        Where this model runs. If its parameters are elsewhere it is moved there for the
        duration of each computation and moved back afterwards. Default: the device of
        the similarity computation.
    output_fn : callable, optional
        ``output_fn(output) -> Tensor`` (or ``output_fn(name, output)`` if it takes two
        arguments) for layers whose outputs are not tensors. Default: :func:`first_tensor`.
    sequence : {"flatten", "mean", "first"}
        How a 3-D ``(batch, tokens, features)`` output becomes ``(batch, d)``: flatten the
        tokens, average them (padding excluded when the batch carries an
        ``attention_mask``), or keep the first token (CLS).
    call_index : int or dict, optional
        For a module that runs several times in one forward pass (shared blocks), which
        call to keep: ``0`` first, ``-1`` last; an int applies to every layer, a dict maps
        layer names to indices. Without it such a module is an error.
    eval_mode : bool
        Put the model in eval mode while computing (default True; dropout off, batch norm
        uses running statistics). Every module's own train/eval flag is restored after.
    """

    def __init__(
        self,
        model: nn.Module,
        model_name: str | None = None,
        layers_to_include: Sequence[LayerSpec] | LayerSpec | None = None,
        device: str | torch.device | None = None,
        *,
        output_fn: Callable[..., Tensor] | None = None,
        sequence: SequenceMode = "flatten",
        call_index: int | Mapping[str, int] | None = None,
        eval_mode: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if sequence not in ("flatten", "mean", "first"):
            raise ValueError(f"sequence must be 'flatten', 'mean' or 'first', got {sequence!r}")
        self.model = model
        self.base_model = unwrap_model(model)
        self.model_name = model_name if model_name is not None else type(self.base_model).__name__
        if isinstance(layers_to_include, (str, type)):
            layers_to_include = [layers_to_include]
        self.layers_to_include = list(layers_to_include or [])
        self.device = torch.device(device) if device is not None else None
        self.output_fn = output_fn
        self._output_fn_named = output_fn is not None and _takes_two_args(output_fn)
        self.sequence = sequence
        self.eval_mode = eval_mode
        self._modules, self.layer_names = self._resolve(self.layers_to_include)
        self._call_index = self._resolve_call_index(call_index)

    # ------------------------------------------------------------------ selection
    def _resolve(self, specs: list[LayerSpec]) -> tuple[dict[str, nn.Module], list[str]]:
        named = [(n, m) for n, m in self.base_model.named_modules() if n]
        all_names = [n for n, _ in named]
        if not specs:
            top = [n for n in all_names if "." not in n][:12]
            raise ValueError(
                f"{self.model_name}: layers_to_include is empty; name the layers to compare, "
                f"e.g. {top} (see SimilarityModel.available_layers())"
            )
        chosen: set[str] = set()
        substring_hits: set[str] = set()
        for spec in specs:
            hit = _select(named, spec)
            if not hit:
                raise ValueError(
                    f"{self.model_name}: layer {spec!r} matches no module of {type(self.base_model).__name__}."
                    f"{_suggest(spec, all_names)} Use an exact name, a glob such as 'layer1.*', "
                    "or a module type; SimilarityModel.available_layers() lists every name."
                )
            if isinstance(spec, str) and spec not in all_names and not (_GLOB_CHARS & set(spec)):
                substring_hits.update(hit)
            chosen.update(hit)
        ordered = [n for n in all_names if n in chosen]
        nested = sorted(
            {p for p in substring_hits for c in substring_hits if c != p and c.startswith(p + ".")}
        )
        if nested:
            warnings.warn(
                f"{self.model_name}: substring patterns selected containers together with modules "
                f"inside them ({nested[:5]}{'…' if len(nested) > 5 else ''}); use exact names or a glob "
                "if you meant only one level.",
                UserWarning,
                stacklevel=3,
            )
        modules = dict(named)
        return {n: modules[n] for n in ordered}, ordered

    def _resolve_call_index(self, call_index: int | Mapping[str, int] | None) -> dict[str, int | None]:
        if call_index is None or isinstance(call_index, int):
            resolved = {n: call_index for n in self.layer_names}
        else:
            unknown = [k for k in call_index if k not in self._modules]
            if unknown:
                raise ValueError(f"call_index names layers that are not selected: {unknown}; selected: {self.layer_names}")
            resolved = {n: call_index.get(n) for n in self.layer_names}
        # the hooks keep call `i` (i ≥ 0) or the last one (-1); -2, -3… would silently give the last
        bad = {n: i for n, i in resolved.items() if i is not None and (not isinstance(i, int) or i < -1)}
        if bad:
            raise ValueError(
                f"call_index must be an int ≥ 0 (0 = first call) or -1 (last call); got {bad}. "
                "For the k-th call from the end, give its index from the start."
            )
        return resolved

    def available_layers(self) -> list[str]:
        """Every qualified module name that ``layers_to_include`` can select."""
        return [n for n, _ in self.base_model.named_modules() if n]

    @property
    def n_layers(self) -> int:
        """Number of selected layers (simtorch 0.2.1 name)."""
        return len(self.layer_names)

    def __repr__(self) -> str:
        return f"SimilarityModel({self.model_name!r}, {len(self.layer_names)} layers: {self.layer_names})"

    # ------------------------------------------------------------------ capture
    def _reduce(self, name: str, output: Any, n: int, mask: Tensor | None) -> Tensor:
        if self.output_fn is not None:
            # the form is read from the signature (in __init__), never by catching TypeError:
            # that would hide the user's own TypeError behind a misleading 'missing argument'
            t = self.output_fn(name, output) if self._output_fn_named else self.output_fn(output)
        else:
            t = first_tensor(output)
        if not isinstance(t, Tensor):
            raise TypeError(
                f"{self.model_name}: layer {name!r} returned {type(output).__name__} holding no tensor; "
                "pass output_fn=... to SimilarityModel to say which tensor to compare"
            )
        if t.dim() == 0 or t.shape[0] != n:
            shape = tuple(t.shape)
            hint = (
                "nn.DataParallel splits each batch across GPUs, so no hook sees the whole batch: run one "
                "process per GPU with torch.distributed instead (see the README)"
                if isinstance(self.model, nn.DataParallel) and len(self.model.device_ids) > 1
                else "simtorch needs the batch dimension first; for sequence-first modules (e.g. "
                "nn.TransformerEncoderLayer without batch_first=True) pass "
                "output_fn=lambda out: out.transpose(0, 1)"
            )
            raise ValueError(
                f"{self.model_name}: layer {name!r} produced shape {shape} but the batch has {n} samples. {hint}"
            )
        if t.dim() == 3:
            if self.sequence == "mean":
                if mask is not None and mask.shape == t.shape[:2]:
                    w = mask.to(t.dtype).unsqueeze(-1)
                    t = (t * w).sum(1) / w.sum(1).clamp_min(1)
                else:
                    t = t.mean(1)
            elif self.sequence == "first":
                t = t[:, 0]
        return t

    @contextmanager
    def capturing(self, sink: "_GramSink") -> Iterator[None]:
        """Attach hooks that write each selected layer's Gram into ``sink``; on exit the
        hooks are removed and every module's train/eval flag is restored, even on error."""
        modes = {m: m.training for m in self.model.modules()}
        handles = []
        try:
            if self.eval_mode:
                self.model.eval()
            for i, name in enumerate(self.layer_names):
                handles.append(self._modules[name].register_forward_hook(self._make_hook(i, name, sink)))
            yield
        finally:
            for h in handles:
                h.remove()
            for m, mode in modes.items():
                m.training = mode

    def _make_hook(self, i: int, name: str, sink: "_GramSink") -> Callable[..., None]:
        want = self._call_index[name]

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            call = sink.calls[i]
            sink.calls[i] += 1
            if want is None and call > 0:
                raise RuntimeError(
                    f"{self.model_name}: module {name!r} ran more than once in one forward pass "
                    f"(a shared or reused module). Say which call to compare with "
                    f"SimilarityModel(..., call_index={{{name!r}: 0}}) for the first, or -1 for the last."
                )
            if want is not None and want >= 0 and call != want:
                return
            t = self._reduce(name, output, sink.n, sink.mask).detach()
            # under autocast the Gram must still be a float32 product, not a bf16/fp16 one
            with torch.autocast(device_type=t.device.type, enabled=False) if sink.autocast else nullcontext():
                g, e = F.linear_gram(t, scratch=sink.scratch(t), out=sink.slot(i, t))
                if sink.feature_fn is not None:
                    sink.features[i] = sink.feature_fn(F.flatten_samples(t))
            sink.grams[i] = g
            sink.energy[i] = e

        return hook

    def check_sink(self, sink: "_GramSink") -> None:
        """After a forward pass: every layer fired (and often enough for its call_index)."""
        for i, name in enumerate(self.layer_names):
            want = self._call_index[name]
            calls = sink.calls[i]
            if calls == 0:
                raise RuntimeError(
                    f"{self.model_name}: layer {name!r} never ran during the forward pass; it is not "
                    "on the path from the input to the output (check the model's forward and "
                    "SimilarityModel.available_layers())"
                )
            if want is not None and (want >= calls or -want > calls):
                raise RuntimeError(
                    f"{self.model_name}: call_index {want} asked for layer {name!r}, which ran {calls} time(s)"
                )

    @torch.no_grad()
    def activations(self, inputs: Any) -> dict[str, Tensor]:
        """Run one forward pass and return each selected layer's reduced output (for
        inspection and debugging; the similarity computations never keep activations)."""
        out: dict[str, Tensor] = {}
        handles = []
        modes = {m: m.training for m in self.model.modules()}
        n = _batch_size(inputs)
        try:
            if self.eval_mode:
                self.model.eval()
            for name in self.layer_names:
                def hook(mod: nn.Module, args: Any, output: Any, name: str = name) -> None:
                    out[name] = self._reduce(name, output, n, None).detach()
                handles.append(self._modules[name].register_forward_hook(hook))
            call_model(self.model, inputs)
        finally:
            for h in handles:
                h.remove()
            for m, mode in modes.items():
                m.training = mode
        return out


class _GramSink:
    """What the hooks of one SimilarityModel write during a forward pass: each layer's Gram
    (into a slot of a stack reused from batch to batch), its energy and, if a metric asked
    for them, its transformed features. :meth:`reset` before each forward pass."""

    def __init__(
        self,
        n_layers: int,
        feature_fn: Callable[[Tensor], Tensor] | None = None,
        workspace: Any = None,
        autocast: bool = False,
    ) -> None:
        self.n_layers = n_layers
        self.feature_fn = feature_fn
        self.workspace = workspace
        #: hooks only need to leave autocast when the forward pass runs under it
        self.autocast = autocast
        self.reset(0)

    def reset(self, n: int, mask: Tensor | None = None) -> None:
        self.n = n
        self.mask = mask
        self.calls = [0] * self.n_layers
        self.grams: list[Tensor | None] = [None] * self.n_layers
        self.energy: list[Tensor | None] = [None] * self.n_layers
        self.features: list[Tensor | None] = [None] * self.n_layers
        self.stack: Tensor | None = None

    @staticmethod
    def _gram_dtype(t: Tensor) -> torch.dtype:
        return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) or not t.dtype.is_floating_point else t.dtype

    def scratch(self, t: Tensor) -> Tensor | None:
        """A reusable buffer for the centred copy of ``t`` (one per dtype and device: the
        hooks of one forward pass run one after another, DataParallel replicas on
        different devices)."""
        if self.workspace is None:
            return None
        return self.workspace.get(("activation",), (t.numel(),), self._gram_dtype(t), t.device)

    def slot(self, i: int, t: Tensor) -> Tensor | None:
        """Where layer ``i``'s Gram goes: row ``i`` of an ``(L, n, n)`` stack reused across
        batches, so no per-batch ``torch.stack`` copy is needed."""
        if self.workspace is None:
            return None
        if self.stack is None:
            self.stack = self.workspace.get(("grams", id(self)), (self.n_layers, self.n, self.n),
                                            self._gram_dtype(t), t.device)
        return self.stack[i]

    def stacked(self) -> Tensor:
        """The ``(L, n, n)`` Grams of the last forward pass."""
        grams = self.grams
        if self.stack is not None and all(
            g is not None and g.data_ptr() == self.stack[i].data_ptr() for i, g in enumerate(grams)
        ):
            return self.stack
        return torch.stack([g for g in grams])  # type: ignore[misc]  # layers of mixed dtype/device


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(**inputs)`` for a mapping (all keys kept: an attention mask must reach the
    model), ``model(*inputs)`` for a tuple, ``model(inputs)`` otherwise."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def _batch_size(inputs: Any) -> int:
    t = first_tensor(inputs)
    if t is None or t.dim() == 0:
        raise TypeError(f"cannot find the batch size: the model input holds no batched tensor ({type(inputs).__name__})")
    return int(t.shape[0])
