"""Run options: how one pass runs (device, progress bar, model input, autocast, resumable
state), validated once and shared by every entry point (classes, ``compare``, checkpoints)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch

from .resume import parse_save_every

__all__ = ["RunOptions"]


@dataclass(frozen=True)
class RunOptions:
    """How a pass runs, shared by every entry point (classes, ``compare``, checkpoints).

    Parameters
    ----------
    device : str or torch.device, optional
        Where the similarity sums are computed, and where models without their own
        ``SimilarityModel(device=...)`` run. Default: the device of model A's parameters.
    progress : bool
        Show a tqdm bar over batches.
    input_key : str, optional
        For loaders yielding dicts: the key of the model input. Without it the whole dict
        is passed as keyword arguments (``model(**batch)``).
    input_fn : callable, optional
        ``input_fn(batch) -> model input``, for any other batch layout.
    autocast : torch.dtype, optional
        Run the forward passes under ``torch.autocast`` with this dtype (``torch.bfloat16``
        or ``torch.float16``). Grams stay float32 and sums float64.
    channels_last : bool
        Give the models every 4-D (5-D) floating input tensor in the ``channels_last``
        (``channels_last_3d``) memory format, a copy of the loader's batch. Convolutions
        then run in that layout, and their outputs stay in it: on CPU (oneDNN) a ResNet's
        forward pass took 0.85–0.88 × the time of the default layout (``benchmarks/peers.py``),
        and on CUDA it is the layout cuDNN's tensor-core convolutions prefer. The Grams are
        read in that layout without a copy (:func:`simtorch.functional.product_rows`).
        The activations differ from the default layout's by float rounding only (another
        order of the same sums), so every similarity agrees to about 1e-6. Off by default:
        a model whose ``forward`` calls ``.view`` on a spatial activation (older CIFAR and
        VGG code) raises on a channels_last input, and a custom kernel that ignores strides
        would read it wrong.
    desc : str, optional
        Label of the progress bar.
    state_path : str or path, optional
        Make the pass resumable: the metrics' declared sums and the batch counter are saved
        to this file (``.npz``, no pickle, written atomically) every ``save_every``, when
        the pass is interrupted and when it ends. A later call with the same arguments and
        the same ``state_path`` skips the batches already counted (the loader still yields
        them, the models do not run) and continues; a state from another run (other
        layers, weights, metrics or settings, loader length or first batch) is refused.
        Under ``torch.distributed`` each rank keeps its own file (``<stem>.rank<r>-of-<w>
        .npz``). A finished run's file stays: calling again returns the same result
        without running the models; delete it to start over.
    save_every : int, float or str, optional
        How often the state is saved: an int counts batches, a float (or ``"30s"``,
        ``"5m"``, ``"1h"``) is an interval in seconds. Default ``"60s"``. Only with
        ``state_path``.
    """

    device: str | torch.device | None = None
    progress: bool = True
    input_key: str | None = None
    input_fn: Callable[[Any], Any] | None = None
    autocast: torch.dtype | None = None
    channels_last: bool = False
    desc: str | None = None
    state_path: str | os.PathLike | None = None
    save_every: int | float | str | None = None

    def __post_init__(self) -> None:
        if self.state_path is not None and not isinstance(self.state_path, (str, os.PathLike)):
            raise TypeError(f"state_path must be a str or path, got {type(self.state_path).__name__}")
        if self.save_every is not None:
            if self.state_path is None:
                raise ValueError(f"save_every={self.save_every!r} needs state_path=... (the file the state is saved to)")
            parse_save_every(self.save_every)
        if self.autocast not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"autocast must be torch.bfloat16, torch.float16 or None, got {self.autocast!r}")
        if not isinstance(self.channels_last, bool):
            raise TypeError(f"channels_last must be True or False, got {self.channels_last!r}")
        if self.input_fn is not None and not callable(self.input_fn):
            raise TypeError(f"input_fn must be a callable batch -> model input, got {type(self.input_fn).__name__}")
        if self.input_key is not None and not isinstance(self.input_key, str):
            raise TypeError(f"input_key must be a str, got {type(self.input_key).__name__}")
        if self.device is not None and not isinstance(self.device, (str, torch.device)):
            raise TypeError(f"device must be a str or torch.device, got {type(self.device).__name__}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def split(cls, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``kwargs`` divided into run options and everything else."""
        names = cls.names()
        run = {k: v for k, v in kwargs.items() if k in names}
        return run, {k: v for k, v in kwargs.items() if k not in names}
