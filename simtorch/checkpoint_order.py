"""The order of a training run's checkpoints, and the reference they are compared with:
:func:`checkpoint_order` and :func:`resolve_reference`.

The order is never a guess: it comes from the user (``steps=``, numeric mapping keys,
``order="given"``), from the step each checkpoint stores (Lightning's ``global_step``, a
Trainer directory's ``trainer_state.json``), or from a step the names say unambiguously
(``step=300``, ``epoch=3``, ``step300_fp16``; ``val_loss=0.52`` is no step); anything else
keeps the given order with a warning.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .checkpoint_formats import CheckpointSource, checkpoint_metadata, is_hf_directory, looks_like_state_dict

__all__ = ["checkpoint_label", "checkpoint_order", "resolve_reference"]


#: keys of a name that say what its number is, in the order they are preferred
_NAME_KEYS = ("global_step", "step", "iteration", "iter", "epoch")
#: a key then its integer: ``step=300``, ``step_300``, ``step-300``, ``step300``, ``epoch=3``;
#: the key starts the name or follows a non-alphanumeric character, the number is not
#: followed by more digits or a decimal point (``val_loss=0.52`` is no step)
_NAME_KEY_RE = re.compile(r"(?<![A-Za-z0-9])(global_step|step|iteration|iter|epoch)[=_-]?(\d+)(?![\d.])", re.I)
#: stored entries of a checkpoint that say when it was written, in the order they are preferred
_STORED_KEYS = ("global_step", "step", "iteration", "epoch")


def _name_keys(name: str) -> dict[str, int] | None:
    """``{key: number}`` of the keyed numbers in a name (:data:`_NAME_KEY_RE`); None when a
    key appears twice with different numbers."""
    found: dict[str, int] = {}
    for m in _NAME_KEY_RE.finditer(name):
        key, value = m.group(1).lower(), int(m.group(2))
        if found.get(key, value) != value:
            return None
        found[key] = value
    return found


def _distinct(values: Sequence[Any]) -> bool:
    return None not in values and len(set(values)) == len(values)


def _stored_steps(sources: Sequence[CheckpointSource], trust_checkpoint: bool) -> tuple[str, list[float]] | None:
    """The first of :data:`_STORED_KEYS` every checkpoint stores, with distinct numbers."""
    metas = []
    for s in sources:
        if isinstance(s, (str, os.PathLike)) or (isinstance(s, Mapping) and not looks_like_state_dict(s)):
            metas.append(checkpoint_metadata(s, trust_checkpoint=trust_checkpoint))
        else:
            return None
    for key in _STORED_KEYS:
        values: list[Any] = []
        for meta in metas:
            v = meta.get(key)
            if isinstance(v, str) and re.fullmatch(r"\d+", v.strip()):
                v = int(v)  # .safetensors metadata is text
            values.append(v if isinstance(v, (int, float)) and not isinstance(v, bool) else None)
        if _distinct(values):
            return key, values
    return None


def _named_steps(names: Sequence[str]) -> tuple[str, list[int]] | None:
    """Steps from the names by the documented rules: a key every name carries with distinct
    numbers (``epoch=3``, ``step300``), else the one integer in names that differ only in
    it (``ckpt_9``, ``ckpt_10``)."""
    keyed = [_name_keys(n) for n in names]
    if None not in keyed:
        for key in _NAME_KEYS:
            values = [k.get(key) for k in keyed]  # type: ignore[union-attr]
            if _distinct(values):
                return f"the '{key}' number in the names", values  # type: ignore[return-value]
    runs = [re.findall(r"\d+", n) for n in names]
    templates = {re.sub(r"\d+", "#", n) for n in names}
    if all(len(r) == 1 for r in runs) and len(templates) == 1:
        values = [int(r[0]) for r in runs]
        if _distinct(values):
            return f"the one number in the names ({templates.pop()})", values
    return None


def checkpoint_label(source: Any) -> str:
    """A checkpoint path's name: a directory's name, a file's stem."""
    p = Path(source)
    return p.name if p.is_dir() else p.stem


def checkpoint_order(
    checkpoints: Sequence[CheckpointSource] | Mapping[Any, CheckpointSource],
    steps: Sequence[float] | None = None,
    order: str = "auto",
    *,
    trust_checkpoint: bool = False,
) -> tuple[list[str], list[float], list[CheckpointSource], str]:
    """Names, steps and sources of the checkpoints in the order they are compared, and how
    that order was found. The order is never a guess; it comes from, in this order:

    1. ``steps=`` (the step of each checkpoint, in the given order), or the keys of a
       mapping when they are all numbers;
    2. ``order="given"``: the given order, never sorted (steps: ``steps=`` or 0, 1, 2, …);
    3. the step each checkpoint stores: the first of ``global_step``, ``step``,
       ``iteration``, ``epoch`` that every checkpoint holds with distinct values (Lightning
       ``.ckpt`` files store ``global_step`` and ``epoch``; a Hugging Face Trainer directory
       its ``trainer_state.json``);
    4. the names: a key every name carries with distinct numbers (``step=``, ``step_``,
       ``step``, ``global_step``, ``iteration``/``iter``, ``epoch``, in that order of
       preference, e.g. ``epoch=3-val_loss=0.47`` → epoch 3, ``step300_fp16`` → step 300), or
       else the one integer of names that differ only in it (``ckpt_9``, ``ckpt_10``);
    5. otherwise the given order, with a warning when the names hold numbers (which are
       then deliberately not used): pass ``steps=`` to say the order.

    The description (4th value) is kept in :attr:`CheckpointComparison.order`.
    """
    if order not in ("auto", "given"):
        raise ValueError(f"order must be 'auto' or 'given', got {order!r}")
    if isinstance(checkpoints, Mapping) and not looks_like_state_dict(checkpoints):
        keys = list(checkpoints)
        labels = [str(k) for k in keys]
        sources = [checkpoints[k] for k in keys]
        names = labels
        numeric = all(isinstance(k, (int, float)) and not isinstance(k, bool) for k in keys)
        user: list[float] | None = [k for k in keys] if numeric else None
        user_how = "the mapping's keys"
        named = False  # the caller named and ordered them
    elif isinstance(checkpoints, (str, os.PathLike, nn.Module)) or isinstance(checkpoints, Mapping):
        raise TypeError("checkpoints must be a list of checkpoints (or a mapping name/step → checkpoint), not a single one")
    else:
        sources = list(checkpoints)
        paths = [isinstance(s, (str, os.PathLike)) for s in sources]
        labels = [checkpoint_label(s) if is_path else f"checkpoint {i}" for i, (s, is_path) in enumerate(zip(sources, paths))]
        # names are read only when every checkpoint has one (a file name)
        names = [lab for lab, is_path in zip(labels, paths) if is_path]
        user, user_how = None, ""
        named = any(paths)
    if not sources:
        raise ValueError("checkpoints is empty; pass the paths (or state dicts) to compare")
    if len(set(labels)) != len(labels):
        # two files with the same stem in different folders: fall back to the full paths
        labels = [str(s) if isinstance(s, (str, os.PathLike)) else lab for s, lab in zip(sources, labels)]
        if len(set(labels)) != len(labels):
            labels = [f"{lab} ({i})" for i, lab in enumerate(labels)]
    if steps is not None:
        if isinstance(steps, (str, bytes)) or len(steps) != len(sources):
            raise ValueError(f"got {len(steps)} steps for {len(sources)} checkpoints")
        user, user_how = list(steps), "steps="
    found: tuple[str, Sequence[float]] | None = None
    if order == "given":
        found = ("the given order" + (f" ({user_how})" if user is not None else ""),
                 user if user is not None else list(range(len(sources))))
    elif user is not None:
        found = (user_how, user)
    else:
        stored = _stored_steps(sources, trust_checkpoint)
        from_names = _named_steps(names) if len(names) == len(sources) else None
        if stored is not None:
            found = (f"the '{stored[0]}' stored in each checkpoint", stored[1])
            if from_names is not None and _ranks(from_names[1]) != _ranks(stored[1]):
                warnings.warn(
                    f"compare_checkpoints: {from_names[0]} and the '{stored[0]}' stored in the checkpoints give "
                    f"different orders; used the stored one ({dict(zip(labels, stored[1]))}). Pass steps=[...] "
                    "to choose", UserWarning, stacklevel=3)
        elif from_names is not None:
            found = from_names
    if found is None:
        found = ("the given order", list(range(len(sources))))
        if named and any(re.search(r"\d", n) for n in names):
            warnings.warn(
                f"compare_checkpoints: no step stored in the checkpoints and none that can be read from their names "
                f"without guessing ({', '.join(labels[:4])}{', …' if len(labels) > 4 else ''}: no 'step=' or "
                f"'epoch=' key, and more than one number or differing names); kept the given order, so 'last' is "
                f"{labels[-1]!r}. Pass steps=[...] (command line: --steps) to say the order",
                UserWarning, stacklevel=3)
    how, values = found
    idx = list(range(len(sources))) if order == "given" else sorted(range(len(sources)), key=lambda i: values[i])
    return [labels[i] for i in idx], [values[i] for i in idx], [sources[i] for i in idx], how


def _ranks(values: Sequence[float]) -> list[int]:
    return sorted(range(len(values)), key=lambda i: values[i])


def resolve_reference(
    reference: Any, labels: list[str], steps: list[float]
) -> tuple[int | None, str, CheckpointSource | None]:
    """Which checkpoint ``reference`` names (``"last"``, ``"first"``, a name, a step, another
    file, a state dict or a module): (its position among ``labels`` or None, its name, the
    external source or None)."""
    if isinstance(reference, str):
        if reference == "last":
            return len(labels) - 1, labels[-1], None
        if reference == "first":
            return 0, labels[0], None
        if reference in labels:
            return labels.index(reference), reference, None
        if Path(reference).is_file() or is_hf_directory(reference):
            return None, checkpoint_label(reference), reference
        raise ValueError(
            f"reference {reference!r} is neither 'last', 'first', a checkpoint name ({labels}) nor an existing file"
        )
    if isinstance(reference, (int, float)) and not isinstance(reference, bool):
        if reference in steps:
            i = steps.index(reference)
            return i, labels[i], None
        raise ValueError(f"reference step {reference} is not among the checkpoints' steps {steps}")
    if isinstance(reference, (os.PathLike, Mapping, nn.Module)):
        return None, "reference", reference
    raise TypeError(f"reference must be 'last', 'first', a name, a step, a path or a state dict, got {reference!r}")
