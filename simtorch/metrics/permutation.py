"""A permutation null for CKA and dCKA from the same pass (``permutations=K``, ``seed=``).

For ``K`` random within-batch permutations ``P`` of model B's samples, each batch adds the
HSIC terms that pair B's *permuted* samples with another set: ``HSIC(K_i, P L_j Pᵀ)`` for
every layer pair and, for dCKA, ``HSIC(P L_j Pᵀ, K⁰)`` (B against the confounder). They come
from the (U-)centred stacks the metric already has (centring commutes with a permutation:
``C(P L Pᵀ) = P C(L) Pᵀ``); the self-terms ``HSIC(K, K)``, ``HSIC(L, L)``, ``HSIC(K, K⁰)``
and ``HSIC(K⁰, K⁰)`` do not change under ``P`` and are the observed ones. The permuted terms
are summed over batches exactly like the observed ones (declared states, so they are
all-reduced under ``torch.distributed``, saved by a resumable pass and rolled back with the
rest), and the ``k``-th null grid is the metric's own estimate of the totals with the
permuted terms in place of the observed ones: null CKA ``= S_KL'/sqrt(S_KK S_LL)``, null
dCKA the closed form with ``S_KL'`` and ``S_L'0``.

The p-value of each cell is ``(1 + #{k: null_k ≥ observed}) / (1 + K)``: one-sided (more
similar than chance), never 0, smallest ``1/(K + 1)``. It tests "no sample-to-sample
correspondence between A and B *within* batches" (permutations never cross batches).

Permutations are drawn per batch from a CPU ``torch.Generator`` seeded by ``(seed, batch
index, process rank)`` (:func:`simtorch.functional.batch_permutations`): the same on every
device, the same after resuming.

Cost. Memory: ``K · La · Lb`` float64 sums (``K · Lb`` more for dCKA), plus a transient
gather of at most :data:`~simtorch.functional.PERMUTATION_CHUNK_BYTES` per batch. Time:
``K`` extra ``(La × n²)·(n² × Lb)`` products per batch (chunked into a few GEMMs), i.e. about
``K`` times the observed cross-term product, which is small next to the forward passes and
the centring for moderate ``K``. dCKA's PSD projection (``remove_negative_eig=True``) would
need one eigendecomposition per permutation and batch and is not supported with a null.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor

from .. import functional as F
from ..functional.permutation import batch_permutations, permutation_pvalue, permuted_conf, permuted_cross
from .accumulate import to_numpy

__all__ = ["NULL_EXTRAS_MAX", "PermutationNull", "null_extras", "null_settings", "null_setup", "null_update"]

#: the null grids ``(K, La, Lb)`` go into ``result.extras["null"]`` up to this many values
NULL_EXTRAS_MAX = 2_000_000


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class PermutationNull:
    """The options of a metric's permutation null (``permutations=0``: none, no cost)."""

    def __init__(self, permutations: int = 0, seed: int = 0, *, remove_negative_eig: bool = False) -> None:
        if isinstance(permutations, bool) or not isinstance(permutations, (int, np.integer)) or permutations < 0:
            raise ValueError(f"permutations must be an integer ≥ 0 (0: no null), got {permutations!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if permutations and remove_negative_eig:
            raise ValueError("permutations are not supported with remove_negative_eig=True (the PSD projection of "
                             "each permuted residual would need one eigendecomposition per permutation and batch); "
                             "use remove_negative_eig=False for a permutation null")
        self.k = int(permutations)
        self.seed = int(seed)

    def __bool__(self) -> bool:
        return self.k > 0


def _null(metric: Any) -> PermutationNull | None:
    null = getattr(metric, "null", None)
    return null if null else None


def null_settings(metric: Any) -> dict[str, Any]:
    """``{"permutations": K, "seed": s}`` when the metric has a null, else ``{}``."""
    null = _null(metric)
    return {"permutations": null.k, "seed": null.seed} if null else {}


def null_setup(metric: Any, confounder: bool = False) -> None:
    """Declare the permuted sums: ``null_cross`` ``(K, La, Lb)`` (and ``null_conf_b`` ``(K, Lb)``
    for dCKA). Call from ``setup`` after the binding is known."""
    null = _null(metric)
    if null is None:
        return
    b = metric.binding
    metric.add_state("null_cross", (null.k, b.layers_a, b.layers_b))
    if confounder:
        metric.add_state("null_conf_b", (null.k, b.layers_b))


def null_update(metric: Any, batch: Any, fa: Tensor, fb: Tensor, f0: Tensor | None = None) -> None:
    """Add one (used) batch's permuted terms, with the batch's HSIC normaliser.

    ``fa``, ``fb``: the flattened (U-)centred float64 stacks the metric's observed cross term
    is made of; ``f0``: dCKA's flattened confounder (then ``null_conf_b`` is summed too)."""
    null = _null(metric)
    if null is None:
        return
    c = F.hsic_factor(batch.n, metric.unbiased)
    perms = batch_permutations(null.k, batch.n, null.seed, batch.index, _rank())
    metric.state("null_cross").add_(permuted_cross(fa, fb, perms), alpha=c)
    if f0 is not None:
        metric.state("null_conf_b").add_(permuted_conf(fb, f0, perms), alpha=c)


def null_grids(metric: Any, t: dict[str, Tensor]) -> Tensor:
    """``(K, La, Lb)``: the metric's estimate with the permuted totals in place of the observed."""
    perm = dict(t)
    perm["cross"] = metric.state("null_cross")
    if "null_conf_b" in metric._states:
        perm["conf_b"] = metric.state("null_conf_b")
    return metric.estimate(perm)


def null_extras(metric: Any, t: dict[str, Tensor]) -> dict[str, np.ndarray]:
    """``{"pvalue": (La, Lb), "null": (K, La, Lb)}`` (the null only up to
    :data:`NULL_EXTRAS_MAX` values); ``{}`` without a null."""
    null = _null(metric)
    if null is None:
        return {}
    grids = null_grids(metric, t)
    out = {"pvalue": to_numpy(permutation_pvalue(metric.estimate(t), grids))}
    if grids.numel() <= NULL_EXTRAS_MAX:
        out["null"] = to_numpy(grids)
    return out
