"""Mutual k-NN and CKNNA (Huh, Cheung, Wang, Isola, *The Platonic Representation
Hypothesis*, ICML 2024; reference code github.com/minyoungg/platonic-rep, ``metrics.py``)
as streaming metrics on the per-set skeleton :class:`~simtorch.metrics.sets.SetMetric`.

By default each batch is one set: the grid of the batch is computed from the engine's Grams
(raw inner products rebuilt from the centred Gram and ``X_c μ``, ``‖μ‖²``), all layers of a
side at once; ``exact=True`` computes it once from all N samples' buffered features.

kNN values depend on the size of the set the neighbours are drawn from (the k nearest of
127 others are not the k nearest of 9 999 others), so per-batch values are comparable only
at one batch size; a warning says when batches of different sizes (other than the last)
were averaged.

:class:`SetMetric` is re-exported here, where it was first defined.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import functional as F
from .registry import register
from .sets import SetMetric, check_int

__all__ = ["SetMetric", "MutualKNNMetric", "CKNNAMetric"]


# ---------------------------------------------------------------------- shared per-batch work
def batch_scores(batch: Any, side: str, neighbours: str) -> Tensor:
    """``(L, n, n)`` float64 neighbour scores of one side (higher = closer), shared by every
    metric of the pass: "euclidean" from the centred Gram, "linear"/"cosine" from the raw Gram
    ``G + v1ᵀ + 1vᵀ + ‖μ‖²`` (:func:`simtorch.functional.neighbour_scores`)."""
    side = "a" if batch.same else side

    def make() -> Tensor:
        raw = batch.raw(side)
        if neighbours != "euclidean" and raw is None:
            raise RuntimeError(f"neighbours={neighbours!r} needs the raw-product parts from the engine")
        v, mu_sq = (None, None) if raw is None else (raw[0], raw[1])
        return F.neighbour_scores(batch.grams(side), neighbours, v, mu_sq)

    return batch.cached(("neighbour_scores", side, neighbours), make)


def feature_scores(x: Tensor, neighbours: str) -> Tensor:
    """``(N, N)`` float64 neighbour scores of one layer's features (exact mode)."""
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    if neighbours == "euclidean":
        xc = x - x.mean(dim=0, keepdim=True)  # distances ignore centring; less cancellation
        return F.neighbour_scores(xc @ xc.T, "euclidean")
    raw = x @ x.T
    return raw if neighbours == "linear" else F.cosine_gram(raw)


# ---------------------------------------------------------------------- mutual k-NN
_NEIGHBOURS = ("cosine", "linear", "euclidean")


@register
class MutualKNNMetric(SetMetric):
    """Streaming mutual k-NN alignment: per batch, the top-k masks of every layer of each side
    at once (:func:`simtorch.functional.knn_mask` on the ``(L, n, n)`` score stacks) and one
    matrix product of the flattened masks for the whole ``(La, Lb)`` grid
    (:func:`simtorch.functional.mutual_knn_grid`). Options as :class:`simtorch.MutualKNN`."""

    key = "mknn"
    aliases = ("mutual_knn",)
    name = "mutual kNN"
    symmetric = True
    direction = "similarity"
    value_range = (0.0, 1.0)
    #: for the default neighbours="cosine" (and "linear"); "euclidean" adds "translation"
    invariances = frozenset({"orthogonal", "isotropic_scaling"})
    min_reason = "k neighbours per sample need k + 1 samples"

    def __init__(self, k: int = 10, neighbours: str = "cosine", exact: bool = False,
                 projection_dim: int | None = None, seed: int = 0, memory_limit: int | None = None) -> None:
        self.k = check_int("k", k, 1)
        if neighbours not in _NEIGHBOURS:
            raise ValueError(f"neighbours must be one of {_NEIGHBOURS}, got {neighbours!r}")
        self.neighbours = neighbours
        super().__init__(exact, projection_dim, seed, memory_limit)
        if neighbours == "euclidean":
            self.invariances = frozenset({"orthogonal", "isotropic_scaling", "translation"})

    @property
    def min_n(self) -> int:
        return self.k + 1

    @property
    def raw_products(self) -> bool:
        return self.neighbours != "euclidean"

    def too_small(self, n: int) -> str:
        return (f"{self.name}: k={self.k} must be smaller than the number of samples in a set (each sample's k "
                f"nearest neighbours are drawn from the other samples of its batch), so every set needs at least "
                f"{self.min_n} samples; got {n}")

    def fixes(self, n: int) -> str:
        return f", a smaller k (k < {n}), or exact=True (one set of all samples)"

    def settings(self) -> dict[str, Any]:
        return {"k": self.k, "neighbours": self.neighbours, **super().settings()}

    def _mask(self, batch: Any, side: str) -> Tensor:
        side = "a" if batch.same else side
        return batch.cached(("knn_mask", side, self.neighbours, self.k, True),
                            lambda: F.knn_mask(batch_scores(batch, side, self.neighbours), self.k))

    def batch_grid(self, batch: Any) -> Tensor:
        ma = self._mask(batch, "a")
        mb = ma if batch.same else self._mask(batch, "b")
        return F.mutual_knn_grid(ma, mb)

    def work_bytes(self, n: int) -> float:
        # one layer's scores and top-k temporaries at a time (about 40 bytes per entry), then
        # the masks of a block of rows
        return 40.0 * n * n + 8.0 * 2**22

    def feature_grid(self, xa: list[Tensor], xb: list[Tensor]) -> Tensor:
        k = self.k
        ia = torch.stack([F.knn_indices(feature_scores(x, self.neighbours), k) for x in xa])
        ib = ia if xb is xa else torch.stack([F.knn_indices(feature_scores(x, self.neighbours), k) for x in xb])
        n = ia.shape[1]
        la, lb = ia.shape[0], ib.shape[0]
        counts = torch.zeros(la, lb, dtype=torch.float64, device=ia.device)
        # |N_a(i) ∩ N_b(i)| summed over i, a block of rows at a time: the (L, n, n) masks of
        # all N are never held
        step = max(1, 2**22 // max(1, n * max(la, lb)))
        for s in range(0, n, step):
            e = min(n, s + step)
            ma = torch.zeros(la, e - s, n, dtype=torch.float64, device=ia.device).scatter_(-1, ia[:, s:e], 1.0)
            mb = torch.zeros(lb, e - s, n, dtype=torch.float64, device=ib.device).scatter_(-1, ib[:, s:e], 1.0)
            counts += ma.reshape(la, -1) @ mb.reshape(lb, -1).T
        return counts / (n * k)


# ---------------------------------------------------------------------- CKNNA
@register
class CKNNAMetric(SetMetric):
    """Streaming CKNNA: per batch, the kernel stacks of both sides (cosine or linear, rebuilt
    from the Grams) and :func:`simtorch.functional.cknna_grid`, which forms every pair's HSIC
    terms from matrix products of the stacks (no loop over layer pairs). Cell ``[i, j]`` is
    ``cknna(A_i, B_j)``, which differs from ``cknna(B_j, A_i)`` for the unbiased estimator.
    Options as :class:`simtorch.CKNNA`."""

    key = "cknna"
    name = "CKNNA"
    symmetric = False
    direction = "similarity"
    #: |CKNNA| ≤ 1 in practice (not a hard bound: the joint and the self masks differ)
    value_range = (-1.0, 1.0)
    #: for the default kernel="cosine"; kernel="linear" keeps "orthogonal" only (isotropic
    #: scaling changes its value through the +1e-6 of the denominator)
    invariances = frozenset({"orthogonal", "isotropic_scaling"})

    def __init__(self, k: int = 10, kernel: str = "cosine", unbiased: bool = True, exact: bool = False,
                 projection_dim: int | None = None, seed: int = 0, memory_limit: int | None = None) -> None:
        self.k = check_int("k", k, 2)  # platonic-rep refuses topk < 2
        if kernel not in ("cosine", "linear"):
            raise ValueError(f"kernel must be 'cosine' or 'linear', got {kernel!r}")
        self.kernel = kernel
        self.unbiased = bool(unbiased)
        super().__init__(exact, projection_dim, seed, memory_limit)
        if kernel == "linear":
            self.invariances = frozenset({"orthogonal"})

    @property
    def min_n(self) -> int:
        # unbiased: self excluded, k ≤ n − 1, and unbiased HSIC needs n ≥ 4; biased: k ≤ n
        return max(self.k + 1, 4) if self.unbiased else self.k

    @property
    def min_reason(self) -> str:  # type: ignore[override]
        if self.unbiased:
            return f"k={self.k} neighbours besides self (and unbiased HSIC) need {self.min_n} samples"
        return f"k={self.k} neighbours need {self.min_n} samples"

    @property
    def raw_products(self) -> bool:
        return True

    def too_small(self, n: int) -> str:
        need = "smaller than" if self.unbiased else "at most"
        return (f"{self.name}: k={self.k} must be {need} the number of samples in a set (each sample's k "
                f"nearest neighbours are drawn from its batch{'' if self.unbiased else ', self included'}), so "
                f"every set needs at least {self.min_n} samples; got {n}")

    def fixes(self, n: int) -> str:
        return ", a smaller k, or exact=True (one set of all samples)"

    def settings(self) -> dict[str, Any]:
        return {"k": self.k, "kernel": self.kernel, "unbiased": self.unbiased, **super().settings()}

    def batch_grid(self, batch: Any) -> Tensor:
        ka = batch_scores(batch, "a", self.kernel)
        kb = ka if batch.same else batch_scores(batch, "b", self.kernel)
        return F.cknna_grid(ka, kb, self.k, self.unbiased)

    def work_bytes(self, n: int) -> float:
        # the kernel stacks of both sides and cknna_grid's masks and masked copies (about
        # 64 bytes per entry per layer), plus its chunked temporaries
        b = self.binding
        return 64.0 * (b.layers_a + b.layers_b) * n * n + 4 * 8.0 * 2**23

    def feature_grid(self, xa: list[Tensor], xb: list[Tensor]) -> Tensor:
        ka = torch.stack([feature_scores(x, self.kernel) for x in xa])
        kb = ka if xb is xa else torch.stack([feature_scores(x, self.kernel) for x in xb])
        return F.cknna_grid(ka, kb, self.k, self.unbiased)
