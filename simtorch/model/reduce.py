"""Output reduction: how a layer's output becomes one tensor with the batch first.

The rules of :class:`~simtorch.model.SimilarityModel` (``output_fn``, ``sequence``,
``layout``, ``mask_fn``) applied to one output: pick the tensor, put the batch first
(``"TBD"``), refuse a 3-D output whose batch and token dimensions cannot be told apart,
flatten, average (masked) or keep the first token, and warn once per layer where the
result is doubtful (a mask ignored by ``"flatten"``, a feature size that changes between
batches). Whatever does not fit is an error or a warning naming the layer, never a silent
fallback.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from torch import Tensor, nn

from ..batches import first_tensor
from .masks import LayerMasks

if TYPE_CHECKING:
    from .sim_model import SimilarityModel

__all__ = ["SequenceMode", "SEQUENCE_MODES", "OutputReducer", "check_sequence", "takes_two_args"]

SequenceMode = Literal["flatten", "mean", "first"]
SEQUENCE_MODES = ("flatten", "mean", "first")


def check_sequence(value: Any) -> None:
    """Raise unless ``value`` is one of :data:`SEQUENCE_MODES`."""
    if value not in SEQUENCE_MODES:
        raise ValueError(f"sequence must be 'flatten', 'mean' or 'first' (or a dict of them), got {value!r}")


def takes_two_args(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` can be called as ``fn(name, output)`` (else ``fn(output)``)."""
    try:
        inspect.signature(fn).bind("name", None)
    except TypeError:
        return False
    except ValueError:  # no signature (some builtins): the documented one-argument form
        return False
    return True


class OutputReducer:
    """One SimilarityModel's reduction rules, resolved per selected layer.

    ``owner`` is the SimilarityModel (its ``model``, ``model_name`` and ``output_fn``);
    ``sequence`` and ``layout_declared`` map every layer name to its ``sequence`` mode and
    declared layout (None: undeclared), ``layout_detected`` to the layout its module type
    makes certain (:func:`~simtorch.model.layout.detect_layout`), ``mask_specs`` to its
    ``mask_fn`` (:class:`~simtorch.model.masks.LayerMasks`). It remembers, per layer,
    whether an output has shown the batch first, the feature size seen so far, and which
    warnings were given.
    """

    def __init__(self, owner: "SimilarityModel", sequence: Mapping[str, str],
                 layout_declared: Mapping[str, str | None], layout_detected: Mapping[str, str | None],
                 mask_specs: Mapping[str, Any], encoder_decoder: bool) -> None:
        #: the SimilarityModel whose ``model``, ``model_name`` and ``output_fn`` apply
        self.owner = owner
        self.output_fn_named = owner.output_fn is not None and takes_two_args(owner.output_fn)
        self.sequence = dict(sequence)
        self.layout_declared = dict(layout_declared)
        self.layout_detected = dict(layout_detected)
        self.masks = LayerMasks(owner, mask_specs, encoder_decoder, self.warn_once)
        #: layers whose outputs showed the batch first while tokens ≠ batch (so later
        #: tokens = batch outputs of the same module are not ambiguous)
        self.batch_first_seen: set[str] = set()
        self.feature_size: dict[str, int] = {}
        self.warned: set[tuple[str, str]] = set()

    # read from the SimilarityModel on every call, as its own methods did
    @property
    def model(self) -> nn.Module:
        return self.owner.model

    @property
    def model_name(self) -> str:
        return self.owner.model_name

    @property
    def output_fn(self) -> Callable[..., Tensor] | None:
        return self.owner.output_fn

    def layout_of(self, name: str) -> str | None:
        """Declared, else detected, else None (read as ``"BTD"``)."""
        return self.layout_declared[name] or self.layout_detected[name]

    def warn_once(self, kind: str, name: str, message: str) -> None:
        """One warning per layer and kind, attributed as SimilarityModel's own were."""
        if (kind, name) in self.warned:
            return
        self.warned.add((kind, name))
        # one frame deeper than SimilarityModel's own method was (it delegates here)
        warnings.warn(f"{self.model_name}: layer {name!r}: {message}", UserWarning, stacklevel=5)

    def reduce(self, name: str, output: Any, n: int, inputs: Any = None) -> Tensor:
        """Layer ``name``'s output as one tensor with the batch first (``(n, …)``).

        ``inputs`` is the model input of the batch (for the mask of ``sequence="mean"``).
        The rules (layouts, masks) are those of SimilarityModel's docstring; whatever does not fit
        them is an error or a warning naming the layer, never a silent fallback.
        """
        # the common case in one test: a batch-first tensor of the size seen before, nothing
        # to transpose, pool or warn about (inside a forward pass every further line costs:
        # the convolutions have evicted the interpreter's data from the caches)
        size = self.feature_size.get(name)
        if (size is not None and isinstance(output, Tensor) and self.output_fn is None
                and output.dim() != 3 and output.dim() > 0 and output.shape[0] == n and output.numel() == n * size
                and (output.dim() == 2 or self.sequence[name] == "flatten")):
            return output
        if self.output_fn is not None:
            # the form is read from the signature (in __init__), never by catching TypeError:
            # that would hide the user's own TypeError behind a misleading 'missing argument'
            t = self.output_fn(name, output) if self.output_fn_named else self.output_fn(output)
        else:
            t = first_tensor(output)
        if not isinstance(t, Tensor):
            raise TypeError(
                f"{self.model_name}: layer {name!r} returned {type(output).__name__} holding no tensor; "
                "pass output_fn=... to SimilarityModel to say which tensor to compare"
            )
        layout = self.layout_of(name)
        if t.dim() == 3 and layout == "TBD":
            if t.shape[1] != n:
                how = "declared" if self.layout_declared[name] else "detected from its module type"
                raise ValueError(
                    f"{self.model_name}: layer {name!r} has layout 'TBD' ({how}: tokens, batch, features) but produced "
                    f"shape {tuple(t.shape)} for a batch of {n} samples; pass layout='BTD' (or the right layout for "
                    "this layer) to SimilarityModel"
                )
            t = t.transpose(0, 1)
        if t.dim() == 0 or t.shape[0] != n:
            shape = tuple(t.shape)
            hint = (
                "nn.DataParallel splits each batch across GPUs, so no hook sees the whole batch: run one "
                "process per GPU with torch.distributed instead (see the README)"
                if isinstance(self.model, nn.DataParallel) and len(self.model.device_ids) > 1
                else "simtorch needs the batch dimension first; for a sequence-first module (tokens, batch, "
                "features) pass layout='TBD' (or a dict {layer: 'TBD'}) or "
                "output_fn=lambda out: out.transpose(0, 1)"
            )
            raise ValueError(
                f"{self.model_name}: layer {name!r} produced shape {shape} but the batch has {n} samples. {hint}"
            )
        mode = self.sequence[name]
        if t.dim() == 3:
            if layout is None:
                if t.shape[1] != n:
                    self.batch_first_seen.add(name)
                elif name not in self.batch_first_seen:
                    raise ValueError(
                        f"{self.model_name}: layer {name!r} produced shape {tuple(t.shape)}: its first two dimensions "
                        f"both equal the batch size {n}, so simtorch cannot tell (batch, tokens, features) from a "
                        "sequence-first (tokens, batch, features) output. Declare it: SimilarityModel(..., "
                        f"layout='BTD') for batch-first (Hugging Face, batch_first=True) or layout='TBD' for "
                        f"sequence-first (or a dict such as {{{name!r}: 'BTD'}}); a batch size other than the "
                        "number of tokens also settles it."
                    )
            tokens_dim = 2 if layout == "BCT" else 1
            tokens = t.shape[tokens_dim]
            if mode == "flatten":
                self._check_flatten(name, t, n, tokens, inputs)
            else:
                mask = self.masks.mask_for(name, inputs, n, tokens, strict=mode == "mean")
                if mask is not None:
                    mask = mask.to(t.device)
                if mode == "mean":
                    if mask is None:
                        t = t.mean(tokens_dim)
                    else:
                        w = mask.to(t.dtype)
                        w = w.unsqueeze(-1) if tokens_dim == 1 else w.unsqueeze(1)
                        t = (t * w).sum(tokens_dim) / w.sum(tokens_dim).clamp_min(1)
                else:
                    if mask is not None and not bool(mask[:, 0].bool().all()):
                        raise ValueError(
                            f"{self.model_name}: layer {name!r}: sequence='first' keeps token 0, but the batch's mask "
                            "marks token 0 as padding for some samples (a left-padded batch, as GPT-2-style "
                            "tokenizers pad): use sequence='mean', or pad on the right (tokenizer.padding_side="
                            "'right')"
                        )
                    t = t[:, 0] if tokens_dim == 1 else t[:, :, 0]
        elif mode != "flatten" and t.dim() > 3:
            self.warn_once(
                "rank", name,
                f"sequence={mode!r} applies to 3-D (batch, tokens, features) outputs, but this layer's output has "
                f"shape {tuple(t.shape)}; it is flattened. Give 'mean' only to sequence layers (sequence={{'blocks.*': "
                f"'{mode}'}}), or pool it yourself with output_fn (e.g. lambda out: out.mean((2, 3)) for a spatial mean)."
            )
        self._check_feature_size(name, t, n)
        return t

    def _check_feature_size(self, name: str, t: Tensor, n: int) -> None:
        d = 1
        for s in t.shape[1:]:
            d *= int(s)
        prev = self.feature_size.setdefault(name, d)
        if prev != d:
            self.warn_once(
                "size", name,
                f"its features per sample changed from {prev} to {d} between batches (a sequence padded to each "
                "batch's longest, or images of different sizes), so each batch compares a different feature space. "
                "Pad to one fixed length, or use sequence='mean' (masked) for token outputs."
            )
            self.feature_size[name] = d

    def _check_flatten(self, name: str, t: Tensor, n: int, tokens: int, inputs: Any) -> None:
        spec = self.masks.spec(name)
        if spec is None:
            return
        mask = self.masks.mask_for(name, inputs, n, tokens, strict=False)
        if mask is not None:
            self.warn_once(
                "flatten", name,
                "sequence='flatten' ignores the batch's padding mask: padding positions are compared as features, "
                "and the feature size follows each batch's padded length. Use sequence='mean' for a masked mean "
                "over tokens, or mask_fn=None if the padding is meant to be compared."
            )
