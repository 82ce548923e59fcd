"""GramBatch: everything a metric sees of one batch (the Gram stacks of both sides, their
energies, optional inputs, features and raw-product parts), with the float64 kernels and
centred stacks cached so the metrics of one pass share them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import functional as F
from .capture import Workspace

__all__ = ["GramBatch"]


@dataclass
class GramBatch:
    """Everything a metric sees of one batch: the Gram stacks of both sides and context.

    ``grams_a`` is ``(La, n, n)`` float32 (Grams of column-centred activations),
    ``energy_a`` is ``(La,)`` with each layer's ``‖X‖_F²`` (see :func:`functional.linear_gram`).
    ``same`` is True when both sides are the same stack (a model against itself).
    Derived float64 kernels and centred stacks are cached so several metrics of one
    pass share them.
    """

    index: int
    n: int
    grams_a: Tensor
    energy_a: Tensor
    grams_b: Tensor
    energy_b: Tensor
    same: bool
    inputs: Any = None
    #: buffers that outlive the batch; tensors from :meth:`kernel`/:meth:`centered` may live
    #: in it, so metrics must not keep them beyond ``update``
    workspace: Workspace | None = None
    #: per-layer ``(n, p)`` features, only when a metric's needs asked for them
    features_a: list[Tensor] | None = None
    features_b: list[Tensor] | None = None
    #: ``(X_c μ (L, n), ‖μ‖² (L,), row sums X 1 (L, n), feature count d (L,))`` float64, only
    #: when a metric asked for raw products: ``X Xᵀ = G + v1ᵀ + 1vᵀ + ‖μ‖² 11ᵀ`` with ``v = X_c μ``
    raw_a: tuple[Tensor, ...] | None = None
    raw_b: tuple[Tensor, ...] | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def grams(self, side: str) -> Tensor:
        return self.grams_a if side == "a" or self.same else self.grams_b

    def energy(self, side: str) -> Tensor:
        return self.energy_a if side == "a" or self.same else self.energy_b

    def features(self, side: str) -> list[Tensor] | None:
        return self.features_a if side == "a" or self.same else self.features_b

    def raw(self, side: str) -> tuple[Tensor, ...] | None:
        return self.raw_a if side == "a" or self.same else self.raw_b

    def cached(self, key: tuple, fn: Callable[[], Any]) -> Any:
        """``fn()`` once per batch per key, shared by every metric of the pass."""
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def _buffer(self, key: tuple, like: Tensor) -> Tensor | None:
        if self.workspace is None:
            return None
        return self.workspace.get(key, tuple(like.shape), torch.float64, like.device)

    def kernel(self, side: str, kernel: str, sigma_frac: float = 1.0) -> Tensor:
        """Float64 kernel stack ``(L, n, n)`` of one side."""
        side = "a" if self.same else side
        return self.cached(
            ("kernel", side, kernel, sigma_frac),
            lambda: F.kernel_stack(self.grams(side), kernel, sigma_frac,
                                   out=self._buffer(("kernel", side), self.grams(side)) if kernel == "linear" else None),
        )

    def centered(self, side: str, kernel: str, sigma_frac: float, unbiased: bool) -> Tensor:
        """Flattened centred (``HKH``) or U-centred kernel stack ``(L, n²)``, float64."""
        side = "a" if self.same else side

        def make() -> Tensor:
            # the linear kernel is centred straight from the float32 Grams into the float64
            # buffer (one copy, not two)
            src = self.grams(side) if kernel == "linear" else self.kernel(side, kernel, sigma_frac)
            out = self._buffer(("centered", side, kernel, sigma_frac, unbiased), src)
            return F.centered_flat(src if out is not None else src.to(torch.float64), unbiased, out=out)

        return self.cached(("centered", side, kernel, sigma_frac, unbiased), make)
