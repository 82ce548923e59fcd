"""Padding masks of token outputs: which ``(batch, tokens)`` mask goes with a layer for a
batch, from the layer's ``mask_fn`` (a key of the dict input, a callable, None) or, for
``"auto"``, inferred only where that is unambiguous (the rules of ``mask_fn`` in
:class:`~simtorch.model.SimilarityModel`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    from .sim_model import SimilarityModel

__all__ = ["MASK_AUTO", "LayerMasks", "check_mask", "is_attention_mask_key", "is_other_mask_key"]

#: ``mask_fn`` default: infer the mask only where the rule in :class:`SimilarityModel` allows
MASK_AUTO = "auto"


def is_attention_mask_key(key: Any) -> bool:
    """``attention_mask`` or a key ending in ``_attention_mask``."""
    return isinstance(key, str) and (key == "attention_mask" or key.endswith("_attention_mask"))


def is_other_mask_key(key: Any) -> bool:
    """``mask`` or a key ending in ``_mask`` that is not an attention mask (``padding_mask``…)."""
    return isinstance(key, str) and not is_attention_mask_key(key) and (key == "mask" or key.endswith("_mask"))


def check_mask(value: Any) -> None:
    """Raise unless ``value`` is one ``mask_fn`` value: ``"auto"``, a key, a callable or None."""
    if value is not None and not isinstance(value, str) and not callable(value):
        raise TypeError(
            f"mask_fn must be 'auto', a key of the dict input, a callable inputs -> (batch, tokens) mask, None, "
            f"or a dict {{layer pattern: one of these}}; got {type(value).__name__}"
        )


class LayerMasks:
    """Every selected layer's ``mask_fn`` and the mask it gives for a batch.

    ``owner`` is the SimilarityModel (its ``model_name`` names errors); ``specs`` maps
    each layer name to its ``mask_fn`` value; ``encoder_decoder`` says the model is an
    encoder–decoder (so ``"auto"`` never guesses a mask); ``warn(kind, name, message)``
    warns once per layer and kind.
    """

    def __init__(self, owner: "SimilarityModel", specs: Mapping[str, Any], encoder_decoder: bool,
                 warn: Callable[[str, str, str], None]) -> None:
        self.owner = owner
        self.specs = dict(specs)
        self.encoder_decoder = encoder_decoder
        self.warn = warn

    @property
    def model_name(self) -> str:
        return self.owner.model_name

    def spec(self, name: str) -> Any:
        """Layer ``name``'s ``mask_fn`` value."""
        return self.specs[name]

    def mask_for(self, name: str, inputs: Any, n: int, tokens: int, strict: bool) -> Tensor | None:
        """The ``(n, tokens)`` mask of layer ``name`` for this batch, or None (the rules of
        ``mask_fn`` in the class docstring). ``strict``: an ambiguous case raises (for
        ``"mean"``) rather than returning None."""
        spec = self.specs[name]
        if spec is None:
            return None
        if isinstance(spec, str) and spec == MASK_AUTO:
            return self._infer(name, inputs, n, tokens, strict)
        if isinstance(spec, str):
            if not isinstance(inputs, Mapping) or spec not in inputs:
                keys = list(inputs) if isinstance(inputs, Mapping) else f"a {type(inputs).__name__}, not a dict"
                raise ValueError(
                    f"{self.model_name}: layer {name!r}: mask_fn names the key {spec!r}, but the model input holds "
                    f"{keys}; pass the right key or a callable inputs -> mask"
                )
            mask, source = inputs[spec], f"the key {spec!r}"
        else:
            mask, source = spec(inputs), "mask_fn"
        if mask is None:
            return None
        if not isinstance(mask, Tensor) or tuple(mask.shape) != (n, tokens):
            got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(
                f"{self.model_name}: layer {name!r}: the mask from {source} is {got}, but this layer needs a "
                f"(batch, tokens) = ({n}, {tokens}) mask (1/True = keep the token)"
            )
        return mask

    def _infer(self, name: str, inputs: Any, n: int, tokens: int, strict: bool) -> Tensor | None:
        if not isinstance(inputs, Mapping):
            return None

        def batched_2d(v: Any) -> bool:
            return isinstance(v, Tensor) and v.dim() == 2 and v.shape[0] == n

        masks = [k for k, v in inputs.items() if is_attention_mask_key(k) and batched_2d(v)]
        if not masks:
            if strict:
                others = [k for k, v in inputs.items()
                          if is_other_mask_key(k) and batched_2d(v) and v.shape[1] == tokens]
                if others:
                    self.warn(
                        "other-mask", name,
                        f"the batch holds {others}, of this layer's token length, which simtorch does not read as a "
                        "padding mask (libraries differ on which value marks padding), so every token is averaged. "
                        f"Pass mask_fn=lambda inputs: ~inputs[{others[0]!r}].bool() (if True marks padding) or "
                        f"mask_fn={others[0]!r} (if 1 marks tokens to keep); mask_fn=None pools every token "
                        "without this warning."
                    )
            return None
        second = [k for k in inputs if isinstance(k, str) and k.startswith("decoder_")]
        if len(masks) > 1 or second or self.encoder_decoder:
            if not strict:
                return None
            why = (f"the batch holds several masks {masks}" if len(masks) > 1
                   else f"the batch holds a second sequence ({second})" if second
                   else "the model is an encoder–decoder (config.is_encoder_decoder)")
            raise ValueError(
                f"{self.model_name}: layer {name!r}: {why}, so which mask goes with this layer is not known and "
                "simtorch does not guess (an encoder mask applied to a decoder layer gives a wrong number). Say it "
                "per layer: mask_fn={'encoder.**': 'attention_mask', 'decoder.**': 'decoder_attention_mask'} "
                "(keys or callables inputs -> mask, by exact name or glob), or mask_fn=None to average every token."
            )
        key = masks[0]
        mask = inputs[key]
        if mask.shape[1] != tokens:
            if not strict:
                return None
            raise ValueError(
                f"{self.model_name}: layer {name!r} has {tokens} tokens, but the batch's {key!r} covers "
                f"{mask.shape[1]} positions (a mask of another sequence, or over raw samples, as a Wav2Vec2 audio "
                f"mask on frame outputs), so it does not fit this layer. Pass mask_fn={{{name!r}: fn}} with fn(inputs) "
                f"giving a ({n}, {tokens}) mask for it, or mask_fn=None (or {{{name!r}: None}}) to average every token."
            )
        return mask
