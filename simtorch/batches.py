"""Batch handling, in one place: what the model input of a loader batch is, its size,
moving it to a device and calling a model on it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["unpack_batch", "batch_size", "to_device", "move", "call_model", "dataset_size", "first_tensor"]


def first_tensor(output: Any) -> Tensor | None:
    """The documented default reduction of a layer output (or an input) to one tensor.

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


def batch_size(inputs: Any) -> int:
    """Samples in a model input: the leading size of its first tensor."""
    t = first_tensor(inputs)
    if t is None or t.dim() == 0:
        raise TypeError(f"cannot find the batch size: the model input holds no batched tensor ({type(inputs).__name__})")
    return int(t.shape[0])


def move(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device``; asynchronous only towards an accelerator. A non-blocking copy
    to the host may return before the data has arrived, and the metric would read it at
    once (and the engine reuses the source buffer for the next batch)."""
    return t.to(device, non_blocking=device.type != "cpu")


def to_device(obj: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Every tensor inside ``obj`` (mappings, tuples, lists) moved to ``device``; with
    ``channels_last``, every 4-D (5-D) floating tensor also laid out ``channels_last``
    (``channels_last_3d``), in a copy: the caller's tensors keep their layout."""
    if isinstance(obj, Tensor):
        t = move(obj, device)
        if channels_last and t.is_floating_point() and t.dim() in (4, 5):
            t = t.contiguous(memory_format=torch.channels_last if t.dim() == 4 else torch.channels_last_3d)
        return t
    if isinstance(obj, Mapping):
        return {k: to_device(v, device, channels_last) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(to_device(v, device, channels_last) for v in obj)
    if isinstance(obj, list):
        return [to_device(v, device, channels_last) for v in obj]
    return obj


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(**inputs)`` for a mapping (all keys kept: an attention mask must reach the
    model), ``model(*inputs)`` for a tuple, ``model(inputs)`` otherwise.

    A dict whose keys the model's ``forward`` does not take (``labels``, ``idx``…) is a
    ``TypeError`` naming those keys and the fix (``input_key=``/``input_fn=``)."""
    if isinstance(inputs, Mapping):
        try:
            return model(**inputs)
        except TypeError as exc:
            unknown = _unknown_keywords(model, inputs)
            if unknown:
                keys = list(inputs)
                raise TypeError(
                    f"the loader's dict batch is passed as model(**batch) with keys {keys}, but "
                    f"{type(model).__name__}.forward does not take {unknown}: pass input_key=<the input's key> "
                    f"(e.g. input_key={keys[0]!r}) or input_fn=lambda batch: {{...}} to build the model input "
                    f"({exc})"
                ) from exc
            raise
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def _unknown_keywords(model: nn.Module, inputs: Mapping) -> list[str]:
    """Keys of ``inputs`` that ``model.forward`` cannot take as keywords ([] when it takes
    ``**kwargs`` or its signature is not readable)."""
    import inspect

    forward = getattr(model, "module", model).forward if isinstance(
        model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model.forward
    try:
        params = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    ok = {n for n, p in params.items() if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                      inspect.Parameter.KEYWORD_ONLY)}
    return [k for k in inputs if k not in ok]


def dataset_size(loader: Any) -> int | None:
    """Samples a loader will yield (this process's share under a sampler), if knowable."""
    for source in (getattr(loader, "sampler", None), getattr(loader, "dataset", None)):
        if source is not None:
            try:
                return len(source)
            except TypeError:
                continue
    return None
