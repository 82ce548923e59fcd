"""SimilarityModel: which layers of a model to compare, and how each layer's output becomes
one ``(n, d)`` tensor.

This module holds the class itself: its options, the names of its layers, ``call_index``
and the train/eval flags a pass changes and restores. The pieces it delegates to have
their own modules: layer selection and per-layer option values (:mod:`simtorch.layers`),
output reduction (:mod:`.reduce`), padding masks (:mod:`.masks`) and layouts
(:mod:`.layout`). The hooks that capture outputs belong to the engine
(:mod:`simtorch.capture`) and exist only while a computation runs, so wrapping a model
twice, or constructing a wrapper and never using it, leaves the model untouched.

The names this module exported in simtorch 0.2.1 (and the mask/layout helpers added
since) stay importable from here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from ..batches import batch_size, call_model, first_tensor
from ..layers import MATCH_MODES, LayerSpec, glob_to_regex, per_layer, resolve_layers, unwrap_model
from .layout import LAYOUTS, Layout, check_layout, detect_layout, sequential_parents
from .masks import MASK_AUTO, check_mask
from .reduce import SEQUENCE_MODES, OutputReducer, SequenceMode, check_sequence

__all__ = ["SimilarityModel", "LayerSpec", "first_tensor", "unwrap_model", "glob_to_regex", "call_model",
           "detect_layout", "SequenceMode", "Layout", "SEQUENCE_MODES", "LAYOUTS", "MASK_AUTO"]


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

        simtorch 0.2.1 matched every string as a substring. Where an exact name (rule 2)
        is also part of other module names outside its own subtree (``"conv1"`` and
        ``"layer1.0.conv1"``), one warning says how many more modules 0.2.1 would have
        taken; ``match="exact"`` keeps the exact name without the warning,
        ``"**conv1**"`` or ``match="substring"`` gives 0.2.1's selection.

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
    sequence : {"flatten", "mean", "first"} or dict
        How a 3-D output becomes ``(batch, d)``: flatten it, average over its tokens
        (masked, see ``mask_fn``), or keep the first token (CLS). A dict ``{layer pattern:
        mode}`` (exact names or globs over the selected layers) sets it per layer; layers it
        does not name get ``"flatten"``. ``"mean"``/``"first"`` on an output that is not
        3-D (a 4-D conv map) leave it flattened, with a warning naming the layer.
    layout : {"BTD", "TBD", "BCT"} or dict, optional
        The dimensions of a layer's 3-D output: ``"BTD"`` (batch, tokens, features; Hugging
        Face, ``batch_first=True``), ``"TBD"`` (sequence-first: transposed to batch-first)
        or ``"BCT"`` (batch, channels, length, as ``nn.Conv1d``: tokens are the last
        dimension). A dict sets it per layer. Undeclared, the module's own type decides where
        it is certain (:func:`detect_layout`: the ``…1d`` conv/pool/norm modules are
        ``"BCT"``, RNNs, attention and ``nn.Transformer*`` follow their ``batch_first``);
        any other 3-D output is read as ``"BTD"``, except that an output whose first two
        dimensions both equal the batch size (tokens = batch) is refused until a batch has
        shown which dimension is the batch, or ``layout`` says so.
    mask_fn : "auto", str, callable, None or dict
        The padding mask of ``sequence="mean"`` (1/True = a token to keep), as a
        ``(batch, tokens)`` tensor. A callable gets the model input of the batch (a dict for
        dict batches, on the model's device) and returns the mask (or None); a str is the
        key of the mask in a dict input; None pools every token. A dict ``{layer pattern:
        any of these}`` sets it per layer (e.g. ``{"encoder.**": "attention_mask",
        "decoder.**": "decoder_attention_mask"}``). ``"auto"`` (default) uses a mask only
        where that is unambiguous: the model input is a dict holding exactly one attention
        mask (a key ``attention_mask`` or ending in ``_attention_mask``), no second sequence
        (no ``decoder_*`` key, no encoder–decoder ``config``), and the layer's token count
        equals the mask's length; an input without any such mask pools every token. Any
        other case (several masks, a decoder, a mask over another length, such as a
        Wav2Vec2 mask over audio samples on frame outputs) is an error naming the layer.
        Masks under other names (``padding_mask``: which value marks padding differs between
        libraries) are never used by ``"auto"``; a warning names them.
        ``sequence="flatten"`` ignores masks: when the batch carries one that fits a
        layer, a warning says the padding positions are compared as features.
    match : {"auto", "exact", "substring"}
        How string entries match: ``"auto"`` as above; ``"exact"``: exact names and globs
        only; ``"substring"``: every string without glob characters is a substring
        (simtorch 0.2.1), even when it is also an exact name.
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
        sequence: SequenceMode | Mapping[str, SequenceMode] = "flatten",
        layout: Layout | Mapping[str, Layout] | None = None,
        mask_fn: Any = MASK_AUTO,
        match: str = "auto",
        call_index: int | Mapping[str, int] | None = None,
        eval_mode: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if match not in MATCH_MODES:
            raise ValueError(f"match must be one of {MATCH_MODES}, got {match!r}")
        self.model = model
        self.base_model = unwrap_model(model)
        self.model_name = model_name if model_name is not None else type(self.base_model).__name__
        if isinstance(layers_to_include, (str, type)):
            layers_to_include = [layers_to_include]
        self.layers_to_include = list(layers_to_include or [])
        self.device = torch.device(device) if device is not None else None
        self.output_fn = output_fn
        self.match = match
        self.eval_mode = eval_mode
        self._modules, self.layer_names, self._selected_by = resolve_layers(
            self.base_model, self.layers_to_include, match, self.model_name)
        self._call_index = self._resolve_call_index(call_index)
        self.sequence = sequence
        self.layout = layout
        self.mask_fn = mask_fn
        parents = sequential_parents(self.base_model)
        self._reducer = OutputReducer(
            self,
            sequence=self._per_layer("sequence", sequence, "flatten", check_sequence),
            layout_declared=self._per_layer("layout", layout, None, check_layout),
            layout_detected={n: detect_layout(m, parents) for n, m in self._modules.items()},
            mask_specs=self._per_layer("mask_fn", mask_fn, MASK_AUTO, check_mask),
            encoder_decoder=bool(getattr(getattr(self.base_model, "config", None), "is_encoder_decoder", False)),
        )

    def _per_layer(self, what: str, value: Any, default: Any, check: Callable[[Any], None]) -> dict[str, Any]:
        return per_layer(self.model_name, self.layer_names, what, value, default, check)

    # ------------------------------------------------------------------ selection
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

    def module(self, name: str) -> nn.Module:
        """The selected module called ``name``."""
        return self._modules[name]

    def call_index(self, name: str) -> int | None:
        """Which call of layer ``name`` to keep (None: it must run exactly once)."""
        return self._call_index[name]

    def selected_by(self, name: str) -> tuple[LayerSpec, str]:
        """The ``layers_to_include`` entry that selected layer ``name`` and how (``"type"``,
        ``"exact"``, ``"glob"`` or ``"substring"``)."""
        return self._selected_by[name]

    def reuse_hint(self, name: str) -> str:
        """What to say when layer ``name`` ran more than once in one forward pass, beyond
        the call_index fix: the simtorch 0.2.1 difference when a substring selected it."""
        spec, kind = self._selected_by.get(name, (None, ""))
        if kind != "substring":
            return ""
        return (
            f"It was selected by the substring entry {spec!r}, as in simtorch 0.2.1, whose hooks silently kept the "
            f"last call of a reused module (e.g. the relu a torchvision BasicBlock applies twice): "
            f"call_index={{{name!r}: -1}} (or call_index=-1 for every layer) reproduces 0.2.1's choice; or select "
            "fewer modules with exact names or globs (e.g. 'layer?.*' for whole blocks)."
        )

    def layout_of(self, name: str) -> str | None:
        """The layout of layer ``name``'s 3-D output: declared, else detected from the
        module's type (:func:`detect_layout`), else None (read as ``"BTD"``)."""
        return self._reducer.layout_of(name)

    def sequence_of(self, name: str) -> str:
        """The ``sequence`` mode of layer ``name``."""
        return self._reducer.sequence[name]

    # ------------------------------------------------------------------ reduction
    def reduce(self, name: str, output: Any, n: int, inputs: Any = None) -> Tensor:
        """Layer ``name``'s output as one tensor with the batch first (``(n, …)``).

        ``inputs`` is the model input of the batch (for the mask of ``sequence="mean"``).
        The rules (layouts, masks) are those of the class docstring; whatever does not fit
        them is an error or a warning naming the layer, never a silent fallback
        (:class:`~simtorch.model.reduce.OutputReducer`).
        """
        return self._reducer.reduce(name, output, n, inputs)

    @contextmanager
    def restoring(self) -> Iterator[None]:
        """The model in eval mode (if ``eval_mode``) for the block; every module's own
        train/eval flag restored on exit, even on error."""
        modes = {m: m.training for m in self.model.modules()}
        try:
            if self.eval_mode:
                self.model.eval()
            yield
        finally:
            for m, mode in modes.items():
                m.training = mode

    @torch.no_grad()
    def activations(self, inputs: Any) -> dict[str, Tensor]:
        """Run one forward pass and return each selected layer's reduced output (for
        inspection and debugging; the similarity computations never keep activations).
        A module that runs several times is handled as in a computation: ``call_index``
        picks the call, and without it a second call is an error."""
        out: dict[str, Tensor] = {}
        calls: dict[str, int] = {}
        handles = []
        n = batch_size(inputs)
        with self.restoring():
            try:
                for name in self.layer_names:
                    def hook(mod: nn.Module, args: Any, output: Any, name: str = name) -> None:
                        call = calls.get(name, 0)
                        calls[name] = call + 1
                        want = self._call_index[name]
                        if want is None and call > 0:
                            raise RuntimeError(
                                f"{self.model_name}: module {name!r} ran more than once in one forward pass (a shared "
                                f"or reused module). Say which call to compare with SimilarityModel(..., "
                                f"call_index={{{name!r}: 0}}) for the first, or -1 for the last. {self.reuse_hint(name)}"
                                .rstrip()
                            )
                        if want is not None and want >= 0 and call != want:
                            return
                        out[name] = self.reduce(name, output, n, inputs).detach()
                    handles.append(self._modules[name].register_forward_hook(hook))
                call_model(self.model, inputs)
            finally:
                for h in handles:
                    h.remove()
        for name in self.layer_names:
            want = self._call_index[name]
            if calls.get(name, 0) == 0:
                raise RuntimeError(f"{self.model_name}: layer {name!r} never ran during the forward pass")
            if want is not None and want >= calls[name]:
                raise RuntimeError(f"{self.model_name}: call_index {want} asked for layer {name!r}, which ran "
                                   f"{calls[name]} time(s)")
        return out
