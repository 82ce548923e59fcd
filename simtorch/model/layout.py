"""Layouts of 3-D layer outputs: the names (``"BTD"``, ``"TBD"``, ``"BCT"``), their check,
and the layout a module's own type makes certain (:func:`detect_layout`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from torch import nn

__all__ = ["Layout", "LAYOUTS", "CHANNELS_FIRST", "ELEMENTWISE", "check_layout", "detect_layout",
           "sequential_parents"]

Layout = Literal["BTD", "TBD", "BCT"]
LAYOUTS = ("BTD", "TBD", "BCT")

#: modules whose 3-D output is (batch, channels, length): "mean"/"first" act on the length
CHANNELS_FIRST: tuple[type, ...] = tuple(
    getattr(nn, n) for n in (
        "Conv1d", "ConvTranspose1d", "MaxPool1d", "AvgPool1d", "AdaptiveAvgPool1d", "AdaptiveMaxPool1d",
        "LPPool1d", "BatchNorm1d", "InstanceNorm1d", "GroupNorm", "ConstantPad1d", "ReflectionPad1d",
        "ReplicationPad1d", "CircularPad1d", "ZeroPad1d", "Upsample",
    ) if hasattr(nn, n)
)
#: modules that keep their input's layout (element-wise)
ELEMENTWISE: tuple[type, ...] = tuple(
    getattr(nn, n) for n in (
        "ReLU", "ReLU6", "GELU", "SiLU", "Tanh", "Sigmoid", "LeakyReLU", "ELU", "SELU", "CELU", "Mish",
        "Hardswish", "Hardsigmoid", "Hardtanh", "Softplus", "PReLU", "Dropout", "Identity",
    ) if hasattr(nn, n)
)


def check_layout(value: Any) -> None:
    """Raise unless ``value`` is one of :data:`LAYOUTS` or None."""
    if value is not None and value not in LAYOUTS:
        raise ValueError(f"layout must be 'BTD', 'TBD', 'BCT' or None (or a dict of them), got {value!r}")


def sequential_parents(root: nn.Module) -> dict[int, tuple[nn.Sequential, int]]:
    """For each module that is a child of exactly one ``nn.Sequential`` (and of nothing
    else): that parent and its index there."""
    seen: dict[int, int] = {}
    parent: dict[int, tuple[nn.Sequential, int]] = {}
    for mod in root.modules():
        for i, (_, child) in enumerate(mod.named_children()):
            seen[id(child)] = seen.get(id(child), 0) + 1
            if isinstance(mod, nn.Sequential):
                parent[id(child)] = (mod, i)
    return {k: v for k, v in parent.items() if seen.get(k) == 1}


def detect_layout(module: nn.Module, parents: Mapping[int, tuple[nn.Sequential, int]] | None = None,
                  depth: int = 0) -> str | None:
    """The layout of ``module``'s 3-D output when the module itself says it, else None.

    * ``"BCT"`` (batch, channels, length): ``nn.Conv1d`` and the other ``…1d`` conv, pool,
      pad and norm modules, ``nn.GroupNorm``;
    * ``"TBD"`` / ``"BTD"``: ``nn.RNN``/``LSTM``/``GRU``, ``nn.MultiheadAttention`` and the
      ``nn.Transformer*`` modules, from their ``batch_first`` flag;
    * an ``nn.Sequential``: the layout of its last non-element-wise child; an element-wise
      module (ReLU, GELU, Dropout, Identity…) inside one ``nn.Sequential``: that of the
      child before it.

    Anything else (``nn.Linear``, custom blocks, Hugging Face layers) is not known.
    """
    if depth > 64:
        return None
    parents = parents if parents is not None else {}
    if isinstance(module, CHANNELS_FIRST):
        return "BCT"
    if isinstance(module, (nn.RNNBase, nn.MultiheadAttention, nn.Transformer)):
        return "BTD" if module.batch_first else "TBD"
    if isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
        return "BTD" if module.self_attn.batch_first else "TBD"
    if isinstance(module, (nn.TransformerEncoder, nn.TransformerDecoder)) and len(module.layers):
        return detect_layout(module.layers[0], parents, depth + 1)
    if isinstance(module, nn.Sequential) and len(module):
        for child in reversed(list(module)):
            if not isinstance(child, ELEMENTWISE):
                return detect_layout(child, parents, depth + 1)
        return None
    if isinstance(module, ELEMENTWISE) and id(module) in parents:
        seq, i = parents[id(module)]
        for child in reversed(list(seq)[:i]):
            if not isinstance(child, ELEMENTWISE):
                return detect_layout(child, parents, depth + 1)
    return None
