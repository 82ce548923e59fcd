"""Representational similarity analysis (Kriegeskorte, Mur, Bandettini 2008, as rsatoolbox
computes it) as a streaming metric.

Per batch, each layer's RDM comes from the engine's Grams: "euclidean" from the centred
Gram (distances do not see column centring), "correlation" from the raw Gram and the raw
row sums (``Needs(raw_products=True)``). The RDM vectors of all layers of a side are
compared with all of the other side in one product (:func:`simtorch.functional.rsa_grid`).
Like the neighbourhood measures, RSA is a per-set value: averaged over batches weighted by
size, with the standard error over batches, or computed once on all N with ``exact=True``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import functional as F
from .neighbours import SetMetric
from .registry import register

__all__ = ["RSAMetric"]

_COMPARES = ("spearman", "pearson", "cosine")


@register
class RSAMetric(SetMetric):
    """Streaming RSA: ``compare(triu(RDM(A_i)), triu(RDM(B_j)))`` for every layer pair.
    Options as :class:`simtorch.RSA`."""

    key = "rsa"
    name = "RSA"
    symmetric = True
    direction = "similarity"
    value_range = (-1.0, 1.0)
    #: for the default rdm="euclidean"; rdm="correlation" (each sample centred across its
    #: features) keeps "isotropic_scaling" only
    invariances = frozenset({"orthogonal", "isotropic_scaling", "translation"})
    #: the expected Spearman/Pearson of a subset hardly moves with its size: no warning
    size_dependent = False
    min_reason = "an RDM of a set needs at least 3 samples (3 pairs)"

    def __init__(self, rdm: str = "euclidean", compare: str = "spearman", exact: bool = False,
                 projection_dim: int | None = None, seed: int = 0, memory_limit: int | None = None) -> None:
        if rdm not in ("euclidean", "correlation"):
            raise ValueError(f"rdm must be 'euclidean' or 'correlation', got {rdm!r}")
        if compare == "corr":  # rsatoolbox's name for Pearson
            compare = "pearson"
        if compare not in _COMPARES:
            raise ValueError(f"compare must be one of {_COMPARES}, got {compare!r}")
        self.rdm = rdm
        self.compare = compare
        super().__init__(exact, projection_dim, seed, memory_limit)
        if rdm == "correlation":
            self.invariances = frozenset({"isotropic_scaling"})

    @property
    def min_n(self) -> int:
        return 3

    @property
    def raw_products(self) -> bool:
        return self.rdm == "correlation"

    def settings(self) -> dict[str, Any]:
        return {"rdm": self.rdm, "compare": self.compare, **super().settings()}

    def _rdms(self, batch: Any, side: str) -> Tensor:
        side = "a" if batch.same else side

        def make() -> Tensor:
            g = batch.grams(side)
            if self.rdm == "euclidean":
                # every comparison is invariant to a positive scale of each RDM vector, so the
                # 1/d of rsatoolbox's RDM is left out here (it changes values by rounding only)
                return F.rdm_from_gram(g, 1.0, "euclidean")
            v, mu_sq, row_sums, d = batch.raw(side)
            return F.rdm_from_gram(F.raw_gram(g, v, mu_sq), d, "correlation", row_sums)

        return batch.cached(("rdm", side, self.rdm), make)

    def batch_grid(self, batch: Any) -> Tensor:
        ra = self._rdms(batch, "a")
        rb = ra if batch.same else self._rdms(batch, "b")
        return F.rsa_grid(ra, rb, self.compare)

    def work_bytes(self, n: int) -> float:
        # the RDM vectors of every layer (n²/2 float64 each) and, while one side is ranked and
        # standardised, about 60 bytes per entry; one layer's n×n Gram when its RDM is made
        b = self.binding
        m = n * (n - 1) / 2
        return 8.0 * (b.layers_a + b.layers_b) * m + 60.0 * max(b.layers_a, b.layers_b) * m + 40.0 * n * n

    def feature_grid(self, xa: list[Tensor], xb: list[Tensor]) -> Tensor:
        ra = F.rdm_stack([x.to(torch.float64) for x in xa], self.rdm)
        rb = ra if xb is xa else F.rdm_stack([x.to(torch.float64) for x in xb], self.rdm)
        return F.rsa_grid(ra, rb, self.compare)
