"""Streaming CKA (Kornblith et al. 2019) with the minibatch estimator of Nguyen et al. 2021,
and the shared skeleton of every metric built from grouped HSIC sums."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from .. import functional as F
from .accumulate import jackknife
from .base import Computed, LayerNote, Metric
from .permutation import PermutationNull, null_extras, null_settings, null_setup, null_update
from .registry import register

__all__ = ["CKAMetric", "HSICMetric", "degenerate_notes", "skipped_note"]


def skipped_note(metric: str, skipped: int, skipped_samples: int, min_n: int, reason: str, fix: str) -> str | None:
    """The one wording for batches a metric could not use (None when there were none)."""
    if not skipped:
        return None
    return (f"{metric}: skipped {skipped} batch(es) holding {skipped_samples} sample(s) with fewer than "
            f"{min_n} samples ({reason}); {fix}")


def degenerate_notes(metric: str, t: dict[str, Tensor], unbiased: bool, same: bool) -> list[LayerNote]:
    """Notes naming the layers whose self-term makes a row/column of the grid NaN."""
    why = ("constant activations or an unbiased self-HSIC ≤ 0 (too few samples for that layer)"
           if unbiased else "constant activations")
    notes = []
    for side in ("a",) if same else ("a", "b"):
        bad = F.degenerate_mask(t[f"self_{side}"], t[f"scale_{side}"])
        if bool(bad.any()):
            notes.append(LayerNote(side, bad.tolist(),
                                   f"{metric}: {{model}} layers {{layers}} have no usable variance ({why}); their "
                                   "similarities are NaN (0/0), not a made-up number"))
    return notes


class HSICMetric(Metric):
    """Shared skeleton of the metrics built from grouped HSIC sums (CKA, dCKA): batches too
    small for the estimator are skipped and counted, the estimate is a function of the
    totals, and its standard error the delete-one-group jackknife of that function."""

    def __init__(self, unbiased: bool, max_groups: int = 64) -> None:
        if not isinstance(max_groups, int) or max_groups < 2 or max_groups % 2:
            raise ValueError(f"max_groups must be an even number ≥ 2, got {max_groups!r}")
        self.unbiased = bool(unbiased)
        self.max_groups = max_groups
        self.min_n = 4 if self.unbiased else 2

    def setup(self) -> None:
        b = self.binding
        self.sums = self.add_grouped("hsic", self.sum_shapes(b.layers_a, b.layers_b), self.max_groups)
        null_setup(self, confounder="conf_b" in self.sums.buf)  # permutations=K (metrics/permutation.py)

    def sum_shapes(self, la: int, lb: int) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    def estimate(self, t: dict[str, Tensor]) -> Tensor:
        """The grid from (totals of) the sums; broadcasts over a leading group dimension."""
        raise NotImplementedError

    def too_small(self, n: int) -> bool:
        """Count and skip a batch too small for the estimator."""
        if n >= self.min_n:
            return False
        self.skip(n)
        return True

    def add(self, n: int, **terms: Tensor) -> None:
        self.sums.add(**terms)
        self.count(n)

    def notes(self, t: dict[str, Tensor]) -> list[LayerNote]:
        return degenerate_notes(self.name, t, self.unbiased, self.binding.same)

    def extras(self, t: dict[str, Tensor]) -> dict[str, Any]:
        return {**self.sums.extras(), **null_extras(self, t)}

    def skipped_message(self) -> str | None:
        if self.unbiased:
            return skipped_note(self.name, self.skipped, self.skipped_samples, self.min_n,
                                "unbiased HSIC needs n ≥ 4",
                                "use batches of at least 4 samples (batch_size ≥ 4, or drop_last=True "
                                "for a small last batch), or unbiased=False")
        return skipped_note(self.name, self.skipped, self.skipped_samples, self.min_n, "HSIC needs n ≥ 2",
                            "use batches of at least 2 samples, or drop_last=True")

    def compute(self) -> Computed:
        if self.n_used == 0:
            skipped = self.skipped_message()
            if skipped:  # the why goes with the error: every batch was too small
                warnings.warn(skipped, UserWarning, stacklevel=3)
            raise ValueError(f"{self.name}: no batch had at least {self.min_n} samples; nothing was computed")
        t = self.sums.totals()
        skipped = self.skipped_message()
        return Computed(self.estimate(t), jackknife(self.estimate, self.sums), self.extras(t),
                        notes=self.notes(t), messages=[skipped] if skipped else [])


@register
class CKAMetric(HSICMetric):
    """Minibatch CKA accumulator: per-batch HSIC terms summed in float64, ratio at the end.

    Each batch contributes ``HSIC(K_i, L_j)`` for every layer pair (one matrix product of
    the flattened centred stacks), and the self-terms ``HSIC(K_i, K_i)``, ``HSIC(L_j, L_j)``,
    each with its own ``1/(n−1)²`` or ``1/(n(n−3))`` factor so every batch has equal weight.
    Options as :class:`simtorch.CKA`.
    """

    key = "cka"
    name = "CKA"
    symmetric = True
    value_range = (0.0, 1.0)
    invariances = frozenset({"orthogonal", "isotropic_scaling", "translation"})

    def __init__(self, kernel: str = "linear", unbiased: bool = True, sigma_frac: float = 1.0,
                 max_groups: int = 64, permutations: int = 0, seed: int = 0) -> None:
        if kernel not in ("linear", "rbf"):
            raise ValueError(f"kernel must be 'linear' or 'rbf', got {kernel!r}")
        if sigma_frac <= 0:
            raise ValueError(f"sigma_frac must be > 0, got {sigma_frac}")
        super().__init__(unbiased, max_groups)
        self.kernel, self.sigma_frac = kernel, float(sigma_frac)
        self.null = PermutationNull(permutations, seed)

    def settings(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "unbiased": self.unbiased, "sigma_frac": self.sigma_frac, **null_settings(self)}

    def sum_shapes(self, la: int, lb: int) -> dict[str, tuple[int, ...]]:
        return {"cross": (la, lb), "self_a": (la,), "self_b": (lb,), "scale_a": (la,), "scale_b": (lb,)}

    def _side(self, batch: Any, side: str, factor: float) -> tuple[Tensor, Tensor, Tensor]:
        flat = batch.centered(side, self.kernel, self.sigma_frac, self.unbiased)
        k = batch.kernel(side, self.kernel, self.sigma_frac) if self.kernel == "rbf" else None
        scale = F.kernel_scale(batch.grams(side), batch.energy(side), self.kernel, k) * factor
        return flat, torch.linalg.vecdot(flat, flat) * factor, scale

    def update(self, batch: Any) -> None:
        if self.too_small(batch.n):
            return
        c = F.hsic_factor(batch.n, self.unbiased)
        fa, self_a, scale_a = self._side(batch, "a", c)
        fb, self_b, scale_b = (fa, self_a, scale_a) if batch.same else self._side(batch, "b", c)
        null_update(self, batch, fa, fb)
        self.add(batch.n, cross=(fa @ fb.T) * c, self_a=self_a, self_b=self_b, scale_a=scale_a, scale_b=scale_b)

    def estimate(self, t: dict[str, Tensor]) -> Tensor:
        return F.cka_from_hsic(t["cross"], t["self_a"], t["self_b"], t["scale_a"], t["scale_b"])
