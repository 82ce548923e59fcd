"""Layer selection: which modules of a model an entry of ``layers_to_include`` names
(exact names, path-style globs, module types, 0.2.1 substrings), close-match suggestions,
per-layer option values given by layer name or glob, and the default layers per
architecture (torchvision/timm)."""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

from torch import nn

__all__ = ["LayerSpec", "GLOB_CHARS", "MATCH_MODES", "Exact", "select", "selection_kind", "legacy_extra",
           "glob_to_regex", "suggest", "unwrap_model", "default_layers", "RESNET_LAYERS", "resolve_layers",
           "per_layer", "short_list"]

LayerSpec = Union[str, type]
GLOB_CHARS = set("*?[")
#: how string entries of ``layers_to_include`` match (see :func:`select`)
MATCH_MODES = ("auto", "exact", "substring")


class Exact(str):
    """A ``layers_to_include`` entry that names exactly one module: never a substring,
    never a glob, and no warning about simtorch 0.2.1's substring rule. It is a ``str``
    (it prints, compares and serialises as the name)."""

    __slots__ = ()


#: the ResNet layers of the README's main job (and of ``simtorch compare``'s default);
#: ``conv1`` is the stem only (not ``layer1.0.conv1``…), on purpose
RESNET_LAYERS = [Exact("conv1"), Exact("maxpool"), "layer?.*", Exact("avgpool"), Exact("fc")]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module whose names users see: DataParallel/DDP wrappers are looked through."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def selection_kind(names: list[str], spec: LayerSpec, match: str = "auto") -> str:
    """How one entry selects: ``"type"``, ``"exact"``, ``"glob"`` or ``"substring"``.

    ``match="auto"`` (default): an exact name wins, then a glob, then a substring (0.2.1);
    ``match="exact"``: strings are exact names or globs, never substrings;
    ``match="substring"``: strings without glob characters are substrings even when they
    are also an exact name (simtorch 0.2.1's rule). An :class:`Exact` entry is always exact.
    """
    if match not in MATCH_MODES:
        raise ValueError(f"match must be one of {MATCH_MODES}, got {match!r}")
    if isinstance(spec, type):
        if not issubclass(spec, nn.Module):
            raise TypeError(f"layers_to_include: {spec!r} is a type but not an nn.Module subclass")
        return "type"
    if not isinstance(spec, str):
        raise TypeError(
            f"layers_to_include entries must be str or nn.Module subclasses, got {type(spec).__name__}: {spec!r}"
        )
    if isinstance(spec, Exact):
        return "exact"
    if GLOB_CHARS & set(spec):
        return "exact" if match != "substring" and spec in names else "glob"
    if match == "substring":
        return "substring"
    if match == "exact" or spec in names:
        return "exact"
    return "substring"


def select(named: list[tuple[str, nn.Module]], spec: LayerSpec, match: str = "auto") -> list[str]:
    """Names of the modules one entry of ``layers_to_include`` selects (precedence in the
    :class:`SimilarityModel` docstring and :func:`selection_kind`)."""
    names = [name for name, _ in named]
    kind = selection_kind(names, spec, match)
    if kind == "type":
        return [name for name, mod in named if isinstance(mod, spec)]  # type: ignore[arg-type]
    assert isinstance(spec, str)
    if kind == "exact":
        return [spec] if spec in names else []
    if kind == "glob":
        rx = glob_to_regex(spec)
        return [n for n in names if rx.fullmatch(n)]
    return [n for n in names if spec in n]


def legacy_extra(names: list[str], spec: str) -> tuple[list[str], list[str]]:
    """For an exact-name entry: the further modules simtorch 0.2.1's substring rule would
    have taken (every other name containing it), and those of them outside the named
    module's own subtree (the ones that change what is compared)."""
    more = [n for n in names if spec in n and n != spec]
    outside = [n for n in more if not n.startswith(spec + ".")]
    return more, outside


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


def suggest(spec: LayerSpec, names: list[str]) -> str:
    if not isinstance(spec, str):
        return ""
    close = difflib.get_close_matches(spec, names, n=5, cutoff=0.5)
    if not close:
        # a prefix or component match is often what was meant (e.g. 'layer5' → 'layer4')
        head = spec.split(".")[0].rstrip("0123456789")
        close = [n for n in names if head and n.startswith(head)][:5]
    return f" Close matches: {close}." if close else ""


def short_list(names: Sequence[str], k: int = 5) -> str:
    """The first ``k`` of ``names`` for a message, ``…`` when there are more."""
    names = list(names)
    return f"{names[:k]}{' …' if len(names) > k else ''}"


def resolve_layers(base_model: nn.Module, specs: list[LayerSpec], match: str,
                   model_name: str) -> tuple[dict[str, nn.Module], list[str], dict[str, tuple[LayerSpec, str]]]:
    """The modules ``layers_to_include`` selects (precedence in the :class:`SimilarityModel`
    docstring), in model order: ``({name: module}, names, {name: (entry, kind)})``, the
    last saying which entry selected each layer and how. Raises naming close matches for an
    entry that selects nothing; warns where 0.2.1's substring rule would differ."""
    selected_by: dict[str, tuple[LayerSpec, str]] = {}
    named = [(n, m) for n, m in base_model.named_modules() if n]
    all_names = [n for n, _ in named]
    if not specs:
        top = [n for n in all_names if "." not in n][:12]
        raise ValueError(
            f"{model_name}: layers_to_include is empty; name the layers to compare, "
            f"e.g. {top} (see SimilarityModel.available_layers())"
        )
    chosen: set[str] = set()
    substring_hits: set[str] = set()
    legacy: list[tuple[str, list[str], list[str]]] = []
    for spec in specs:
        kind = selection_kind(all_names, spec, match)
        hit = select(named, spec, match)
        if not hit:
            how = (" (match='exact': strings are exact names or globs)" if match == "exact" and kind == "exact"
                   else "")
            raise ValueError(
                f"{model_name}: layer {spec!r} matches no module of {type(base_model).__name__}{how}."
                f"{suggest(spec, all_names)} Use an exact name, a glob such as 'layer1.*', "
                "or a module type; SimilarityModel.available_layers() lists every name."
            )
        if kind == "substring":
            substring_hits.update(hit)
        if kind == "exact" and match == "auto" and not isinstance(spec, Exact) and isinstance(spec, str):
            more, outside = legacy_extra(all_names, spec)
            if outside:
                legacy.append((spec, more, outside))
        for h in hit:  # which entry selected each layer (a substring entry is remembered first)
            prev = selected_by.get(h)
            if prev is None or (kind == "substring" and prev[1] != "substring"):
                selected_by[h] = (spec, kind)
        chosen.update(hit)
    ordered = [n for n in all_names if n in chosen]
    nested = sorted(
        {p for p in substring_hits for c in substring_hits if c != p and c.startswith(p + ".")}
    )
    if nested:
        warnings.warn(
            f"{model_name}: substring patterns selected containers together with modules "
            f"inside them ({nested[:5]}{'…' if len(nested) > 5 else ''}); use exact names or a glob "
            "if you meant only one level.",
            UserWarning,
            stacklevel=3,
        )
    if legacy:
        parts = [f"{spec!r} (0.2.1 would also have taken {len(more)} more: {short_list(outside, 4)})"
                 for spec, more, outside in legacy]
        spec = legacy[0][0]
        warnings.warn(
            f"{model_name}: {'; '.join(parts)} {'is an exact module name' if len(legacy) == 1 else 'are exact module names'}"
            f", so only {'that module is' if len(legacy) == 1 else 'those modules are'} selected. simtorch 0.2.1 "
            f"matched every entry as a substring and selected other layers. For exactly this module without "
            f"this warning pass match='exact'; for 0.2.1's selection use the glob '**{spec}**' or "
            "match='substring'.",
            UserWarning,
            stacklevel=3,
        )
    modules = dict(named)
    return {n: modules[n] for n in ordered}, ordered, selected_by


def per_layer(model_name: str, layer_names: list[str], what: str, value: Any, default: Any,
              check: Callable[[Any], None]) -> dict[str, Any]:
    """``value`` for every selected layer (``layer_names``): one value, or a mapping
    ``{pattern: value}`` whose exact names win over its globs (the first matching glob in
    order); layers no pattern names get ``default``. ``check`` validates each value.
    ``what`` and ``model_name`` word the errors."""
    selected = set(layer_names)
    if not isinstance(value, Mapping):
        check(value)
        return {n: value for n in layer_names}
    out: dict[str, Any] = {}
    for pattern, v in value.items():
        check(v)
        if not isinstance(pattern, str):
            raise TypeError(f"{what}: keys are layer names or globs, got {pattern!r}")
        if pattern in selected:
            hits = [pattern]
        elif GLOB_CHARS & set(pattern):
            rx = glob_to_regex(pattern)
            hits = [n for n in layer_names if rx.fullmatch(n)]
        else:
            hits = []
        if not hits:
            raise ValueError(
                f"{model_name}: {what} names {pattern!r}, which is none of the selected layers "
                f"{short_list(layer_names, 8)} (keys are exact layer names or globs such as 'decoder.**')"
            )
    exact = {p: v for p, v in value.items() if p in selected}
    globs = [(glob_to_regex(p), v) for p, v in value.items() if p not in selected]
    for n in layer_names:
        if n in exact:
            out[n] = exact[n]
        else:
            out[n] = next((v for rx, v in globs if rx.fullmatch(n)), default)
    return out


def default_layers(model: Any) -> list[str]:
    """The layers ``simtorch compare``/``checkpoints`` use when none are given.

    * ResNet-like models (children ``layer1``, ``layer2``, … and ``fc``, as torchvision's
      ResNet, ResNeXt and Wide ResNet): ``conv1``, ``maxpool``, every residual block
      (``layer?.*``), ``avgpool`` and ``fc``.
    * Models with a ``features`` ``Sequential`` (VGG, MobileNet, EfficientNet, ConvNeXt,
      DenseNet, Swin, SqueezeNet…): each of its children (``features.*``), then the other
      top-level children.
    * Vision Transformers (``encoder.layers``): ``conv_proj``, every encoder block, ``heads``.
    * Anything else: the top-level children.

    Auxiliary classifiers that run only in training mode (``aux*``, ``AuxLogits``) are left
    out. Returns patterns for ``SimilarityModel(layers_to_include=...)``.
    """
    from torch import nn

    base = unwrap_model(model)
    children = {n: m for n, m in base.named_children() if not n.lower().startswith("aux")}
    names = [n for n, _ in base.named_modules() if n]

    def exists(pattern: str) -> bool:
        rx = glob_to_regex(pattern)
        return any(rx.fullmatch(n) for n in names)

    if {"layer1", "layer2", "fc"} <= set(children):
        return [p for p in RESNET_LAYERS if exists(p)]
    features = children.get("features")
    # top-level children are named exactly (a child "norm" must not also take "blocks.0.norm")
    if isinstance(features, nn.Sequential) and len(features) > 1:
        return ["features.*"] + [Exact(n) for n in children if n != "features"]
    encoder = children.get("encoder")
    if encoder is not None and isinstance(getattr(encoder, "layers", None), nn.Module) and exists("encoder.layers.*"):
        return [Exact(n) for n in children if n != "encoder"][:1] + ["encoder.layers.*"] + [
            Exact(n) for n in list(children)[1:] if n != "encoder"
        ]
    if not children:
        raise ValueError(f"{type(base).__name__} has no sub-modules to compare; name the layers to compare")
    return [Exact(n) for n in children]


