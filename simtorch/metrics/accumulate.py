"""Grouped float64 sums over batches, and the delete-one-group jackknife they allow.

Every streaming metric accumulates sums of per-batch terms. Keeping them per group of
consecutive batches (at most ``max_groups`` groups, so memory does not grow with the
dataset) gives both the totals and a jackknife standard error for any estimator that is a
smooth function of the totals (CKA, dCKA): θ₋g = f(total − sum_g).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import Tensor

__all__ = ["GroupedSums", "jackknife"]


class GroupedSums:
    """Sums of named float64 terms per contiguous group of batches.

    Batch ``k`` goes to group ``k // block``. When ``max_groups`` groups are full, adjacent
    groups are merged pairwise and ``block`` doubles, so groups stay contiguous and equal
    in size (but for the last) and there are never more than ``max_groups``. While there
    are at most ``max_groups`` batches each group is one batch: the jackknife is then the
    exact delete-one-batch jackknife.
    """

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], device: torch.device, max_groups: int = 64) -> None:
        if max_groups < 2 or max_groups % 2:
            raise ValueError(f"max_groups must be an even number ≥ 2, got {max_groups}")
        self.max_groups = max_groups
        self.buf = {k: torch.zeros((max_groups, *s), dtype=torch.float64, device=device) for k, s in shapes.items()}
        self.block = 1
        self.count = 0

    @property
    def n_groups(self) -> int:
        return -(-self.count // self.block)

    def add(self, **terms: Tensor) -> None:
        g = self.count // self.block
        if g == self.max_groups:
            half = self.max_groups // 2
            for b in self.buf.values():
                b[:half] = b[0::2] + b[1::2]
                b[half:] = 0
            self.block *= 2
            g = self.count // self.block
        for k, v in terms.items():
            self.buf[k][g] += v
        self.count += 1

    def groups(self, key: str) -> Tensor:
        return self.buf[key][: self.n_groups]

    def total(self, key: str) -> Tensor:
        return self.groups(key).sum(0)

    def totals(self) -> dict[str, Tensor]:
        return {k: self.total(k) for k in self.buf}

    def leave_one_out(self) -> dict[str, Tensor]:
        """For each group g: the totals without it, stacked on dim 0."""
        return {k: self.total(k).unsqueeze(0) - self.groups(k) for k in self.buf}

    def extras(self, prefix: str = "hsic") -> dict[str, np.ndarray]:
        """Totals and per-group sums as numpy arrays for a result (``<prefix>_<term>`` and
        ``<prefix>_groups_<term>`` with groups on axis 0), so a saved result keeps what its
        uncertainty was computed from."""
        out = {f"{prefix}_{k}": to_numpy(v) for k, v in self.totals().items()}
        out.update({f"{prefix}_groups_{k}": to_numpy(self.groups(k)) for k in self.buf})
        out[f"{prefix}_group_batches"] = np.array([min(self.block, self.count - g * self.block)
                                                   for g in range(self.n_groups)], dtype=np.int64)
        return out

    def state_tensors(self) -> list[Tensor]:
        return [self.buf[k] for k in sorted(self.buf)]


def jackknife(estimator: Callable[[dict[str, Tensor]], Tensor], sums: GroupedSums) -> Tensor:
    """Delete-one-group jackknife standard error of ``estimator(totals)``.

    ``se = sqrt((G−1)/G · Σ_g (θ₋g − θ̄)²)`` over the ``G`` groups; NaN when ``G < 2``.
    The estimator must broadcast over a leading group dimension.
    """
    g = sums.n_groups
    full = estimator(sums.totals())
    if g < 2:
        return torch.full_like(full, float("nan"))
    loo = estimator(sums.leave_one_out())
    mean = loo.mean(0, keepdim=True)
    return torch.sqrt((g - 1) / g * ((loo - mean) ** 2).sum(0))


def to_numpy(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()
