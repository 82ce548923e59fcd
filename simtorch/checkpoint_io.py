"""Loading checkpoints safely: the model state dict a checkpoint holds, found in its
nesting, renamed as the user says and checked key by key against the model before it is
loaded. Reading the formats (``torch.save`` files, ``.safetensors``, ``save_pretrained``
directories) is :mod:`simtorch.checkpoint_formats`'s; its public names are re-exported here.

Nesting. A training checkpoint holds the state dict under a key. When exactly one entry
holds a state dict (``{"state_dict": …, "optimizer": …, "epoch": 3}``) it is used. When
several do (``{"model": …, "ema": …}``) the choice is never silent: ``state_key=`` names
it; without it, the first of ``"state_dict"``, ``"model_state_dict"``, ``"model"`` present
is used **with a warning** naming the others, and if none of these is present it is an
error.

Prefixes. ``module.`` (DDP) and ``_orig_mod.`` (``torch.compile``) are removed when every
key carries them; ``model.`` (Lightning) when every key carries it and the model's own keys
do not. Any other prefix is the user's to name: ``strip_prefix="net."`` (keys without it are
dropped: they belong to the wrapper, e.g. a loss module) or ``key_map={"net.": "backbone."}``
(or a function ``key -> new key or None``). When keys fail to match, the error says which
prefix would make them match.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Union

import torch
from torch import Tensor, nn

from .checkpoint_formats import (HF_WEIGHT_FILES, CheckpointSource, checkpoint_metadata, format_keys,
                                 is_hf_directory, looks_like_state_dict, read_checkpoint, require_file, source_name)
from .layers import unwrap_model

__all__ = ["CheckpointSource", "HF_WEIGHT_FILES", "StateKey", "KeyMap", "apply_key_map", "checkpoint_metadata",
           "is_hf_directory", "load_checkpoint", "load_state_dict", "looks_like_state_dict", "require_file",
           "suggest_key_fix"]

#: which entry of a nested checkpoint holds the state dict: a key, or keys one per level
StateKey = Union[str, Sequence[str], None]
#: renaming of checkpoint keys: ``{old prefix: new prefix or None (drop)}``, or a function
KeyMap = Union[Mapping[str, Union[str, None]], Callable[[str], Union[str, None]], None]

#: the entries used when several hold a state dict, in this order (a warning names the choice)
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")
#: prefixes added by DistributedDataParallel/DataParallel ("module."), torch.compile
#: ("_orig_mod.") and Lightning-style wrappers ("model."), stripped only when every key has
#: them and the model's own keys do not
_PREFIXES = ("module.", "_orig_mod.", "model.")


# ----------------------------------------------------------------------------- nesting
def _holds_state(v: Any, depth: int = 0) -> bool:
    if isinstance(v, nn.Module) or looks_like_state_dict(v):
        return True
    if depth < 3 and isinstance(v, Mapping):
        return any(isinstance(v.get(k), (Mapping, nn.Module)) and _holds_state(v[k], depth + 1) for k in _NESTED_KEYS)
    return False


def _unnest(obj: Any, where: str, state_key: StateKey) -> Mapping[str, Any]:
    if state_key is not None:
        path = [state_key] if isinstance(state_key, str) else list(state_key)
        for i, key in enumerate(path):
            if not isinstance(obj, Mapping) or key not in obj:
                keys = list(obj) if isinstance(obj, Mapping) else []
                holders = [k for k in keys if _holds_state(obj[k])]
                at = "" if i == 0 else f" under {path[:i]}"
                raise ValueError(
                    f"{where} has no entry {key!r}{at} (state_key={state_key!r}); "
                    + (f"the entries holding a state dict are {holders}" if holders
                       else f"its entries are {format_keys([str(k) for k in keys])}")
                )
            obj = obj[key]
        where = f"{where}[{state_key!r}]"
    for _ in range(8):  # nesting deeper than a few levels is not a checkpoint layout
        if isinstance(obj, nn.Module):
            return unwrap_model(obj).state_dict()
        if not isinstance(obj, Mapping):
            raise TypeError(
                f"{where} holds a {type(obj).__name__}, not a state dict (a mapping of parameter names to tensors)"
            )
        if looks_like_state_dict(obj):
            return obj
        holders = [k for k, v in obj.items() if _holds_state(v)]
        if not holders:
            return obj  # a state dict with some non-tensor entries: the key check judges it
        if len(holders) == 1:
            key = holders[0]
        else:
            preferred = [k for k in _NESTED_KEYS if k in holders]
            if not preferred:
                raise ValueError(
                    f"{where} holds several state dicts ({', '.join(map(str, holders))}) and none is named "
                    f"{' / '.join(_NESTED_KEYS)}; say which one: state_key={holders[0]!r} "
                    "(command line: --state-key)"
                )
            key = preferred[0]
            others = [k for k in holders if k != key]
            warnings.warn(
                f"{where} holds several state dicts ({', '.join(map(str, holders))}); loaded {key!r} by the rule "
                f"{' > '.join(_NESTED_KEYS)}. Pass state_key={others[0]!r} (command line: --state-key) for another",
                UserWarning, stacklevel=4,
            )
        obj = obj[key]
        where = f"{where}[{key!r}]"
    raise ValueError(f"{where}: the state dict is nested too deeply")


# ----------------------------------------------------------------------------- keys
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


def apply_key_map(state: Mapping[str, Any], strip_prefix: str | Sequence[str] | None = None,
                  key_map: KeyMap = None, where: str = "the checkpoint") -> dict[str, Any]:
    """Rename checkpoint keys as the user said.

    ``strip_prefix`` (a prefix or several): keys with it lose it, keys without any of them
    are dropped (they belong to the wrapper: a loss module, metrics, an EMA copy).
    ``key_map``: ``{old prefix: new prefix}`` (the longest matching prefix wins; ``None``
    drops the key; ``""`` matches every key, so ``{"": "bert."}`` adds a prefix), or a
    function ``key -> new key or None``. ``strip_prefix`` is applied first.
    """
    out = dict(state)
    if strip_prefix is not None:
        prefixes = [strip_prefix] if isinstance(strip_prefix, str) else list(strip_prefix)
        kept: dict[str, Any] = {}
        for k, v in out.items():
            p = next((p for p in prefixes if k.startswith(p)), None)
            if p is not None:
                kept[k[len(p):]] = v
        if not kept:
            raise ValueError(f"no key of {where} starts with strip_prefix={strip_prefix!r}; its keys are "
                             f"{format_keys(list(out))}")
        out = kept
    if key_map is None:
        return out
    if callable(key_map):
        mapped = {}
        for k, v in out.items():
            nk = key_map(k)
            if nk is not None:
                mapped[str(nk)] = v
        return mapped
    if not isinstance(key_map, Mapping):
        raise TypeError(f"key_map must be a mapping of prefixes or a function, got {type(key_map).__name__}")
    order = sorted(key_map, key=len, reverse=True)
    mapped = {}
    for k, v in out.items():
        old = next((p for p in order if k.startswith(p)), None)
        if old is None:
            mapped[k] = v
        elif key_map[old] is not None:
            mapped[key_map[old] + k[len(old):]] = v  # type: ignore[operator]
    return mapped


def _prefixes(keys: Iterable[str], max_depth: int = 3) -> list[str]:
    found: Counter[str] = Counter()
    for k in keys:
        parts = k.split(".")
        for d in range(1, min(max_depth, len(parts) - 1) + 1):
            found[".".join(parts[:d]) + "."] += 1
    return [p for p, _ in found.most_common(64)]


def suggest_key_fix(state_keys: Iterable[str], model_keys: Iterable[str]) -> str | None:
    """The ``strip_prefix=`` or ``key_map=`` that makes a checkpoint's keys the model's
    exactly (as a phrase for an error message), else the one that matches most of them
    (when at least half), or None."""
    state_keys, own = list(state_keys), set(model_keys)
    if not own or not state_keys:
        return None
    ckpt_prefixes = [""] + _prefixes(state_keys)
    own_prefixes = [""] + _prefixes(own)
    best: tuple[int, str] | None = None
    for p in ckpt_prefixes:
        stripped = [k[len(p):] for k in state_keys if k.startswith(p)]
        for q in own_prefixes:
            if not p and not q:
                continue
            renamed = {q + k for k in stripped}
            if own == renamed:
                if not q:
                    exact = "" if len(stripped) == len(state_keys) else " (the keys without it are dropped)"
                    return f"strip_prefix={p!r} would make them match{exact}"
                return f"key_map={{{p!r}: {q!r}}} would make them match" + (
                    " (it adds the prefix to every key)" if not p else "")
            hit = len(own & renamed)
            if hit and (best is None or hit > best[0]):
                best = (hit, f"strip_prefix={p!r}" if not q else f"key_map={{{p!r}: {q!r}}}")
    if best is not None and best[0] >= len(own) // 2:
        return f"with {best[1]}, {best[0]} of the model's {len(own)} keys would match"
    return None


def load_state_dict(
    source: CheckpointSource,
    *,
    map_location: str | torch.device | None = "cpu",
    trust_checkpoint: bool = False,
    state_key: StateKey = None,
    strip_prefix: str | Sequence[str] | None = None,
    key_map: KeyMap = None,
) -> dict[str, Any]:
    """The model state dict held by a checkpoint file, directory, nested dict or module.

    Parameters
    ----------
    source : path, mapping or nn.Module
        A file written by ``torch.save`` (a state dict, or a training checkpoint such as a
        Lightning ``.ckpt`` with the state dict under ``"state_dict"``), a ``.safetensors``
        file, a Hugging Face ``save_pretrained`` directory (single or sharded
        ``model.safetensors`` / ``pytorch_model.bin``), such a mapping itself, or a module.
    map_location : str or torch.device, optional
        Where tensors are loaded (``torch.load``'s argument). Default ``"cpu"``.
    trust_checkpoint : bool
        Files are read with ``torch.load(weights_only=True)``, which refuses pickled Python
        objects because unpickling an untrusted file can run arbitrary code. Pass ``True``
        only for files you trust, to load such checkpoints (e.g. whole pickled models).
    state_key : str or sequence of str, optional
        The entry holding the state dict, e.g. ``"ema"`` in ``{"model": …, "ema": …}``
        (keys one per level for deeper nesting). Without it, a checkpoint holding several
        state dicts uses the first of ``state_dict``, ``model_state_dict``, ``model`` and
        warns; see the module docstring.
    strip_prefix, key_map
        Renaming of the keys (:func:`apply_key_map`), e.g. ``strip_prefix="net."``.

    Returns
    -------
    dict
        Parameter and buffer names to tensors, with ``module.`` (DDP) and ``_orig_mod.``
        (``torch.compile``) prefixes removed when every key carries them.

    Raises
    ------
    FileNotFoundError
        The path does not exist (or is a directory without weights).
    ImportError
        A ``.safetensors`` file without the safetensors package (the message names the pip command).
    ValueError
        The file holds pickled objects and ``trust_checkpoint`` is False (the message
        names the fix), it cannot be read, or several state dicts need ``state_key``.
    """
    return _strip_prefixes(_raw_state(source, map_location, trust_checkpoint, state_key, strip_prefix, key_map))


def _raw_state(source: CheckpointSource, map_location: Any, trust_checkpoint: bool, state_key: StateKey = None,
               strip_prefix: Any = None, key_map: KeyMap = None) -> Mapping[str, Any]:
    where = f"checkpoint {source_name(source)}"
    state = _unnest(read_checkpoint(source, map_location, trust_checkpoint), where, state_key)
    if strip_prefix is not None or key_map is not None:
        state = apply_key_map(state, strip_prefix, key_map, where)
    return state


def load_checkpoint(
    model: nn.Module,
    source: CheckpointSource,
    *,
    map_location: str | torch.device | None = "cpu",
    trust_checkpoint: bool = False,
    state_key: StateKey = None,
    strip_prefix: str | Sequence[str] | None = None,
    key_map: KeyMap = None,
) -> nn.Module:
    """Load a checkpoint into ``model`` (in place) after checking that it fits exactly.

    Every parameter and buffer of the model must be in the checkpoint with the same
    shape, and the checkpoint must hold nothing else, so a wrong architecture is an error
    naming the keys (and the ``strip_prefix=``/``key_map=`` that would make them match,
    when a prefix is all that differs), never a silently half-loaded model. See
    :func:`load_state_dict` for the accepted sources, ``trust_checkpoint``, ``state_key``,
    ``strip_prefix`` and ``key_map``.

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
    state = _strip_prefixes(
        _raw_state(source, map_location, trust_checkpoint, state_key, strip_prefix, key_map), own.keys())
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    problems = []
    if missing:
        problems.append(f"missing keys {format_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {format_keys(unexpected)}")
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and isinstance(v, Tensor) and isinstance(own[k], Tensor) and v.shape != own[k].shape
    ]
    if shapes:
        problems.append(f"shape mismatches [{'; '.join(shapes[:5])}{' …' if len(shapes) > 5 else ''}]")
    if problems:
        fix = suggest_key_fix(list(state), list(own)) if missing else None
        raise ValueError(
            f"checkpoint {source_name(source)} does not fit {type(target).__name__}: {'; '.join(problems)}. "
            + (f"The keys differ by a prefix: {fix}" + (" (command line: --strip-prefix)" if fix.startswith("strip")
                                                         else "") if fix else
               "Check that the architecture (and e.g. num_classes) is the one the checkpoint was saved from")
        )
    target.load_state_dict(state, strict=True)
    return model
