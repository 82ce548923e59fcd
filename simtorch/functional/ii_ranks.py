"""Information Imbalance's ranking: nearest-neighbour weights and neighbour ranks.

Glielmo, Zeni, Cheng, Csányi, Laio (2022), *Ranking the information content of distance
measures*, PNAS Nexus 1(2): ``Δ(A→B) = (2/n²) Σ_{i, j : r^A_ij = 1} r^B_ij``. This module
gives the ``r^A_ij = 1`` (nearest neighbours, ties sharing the weight) and the ``r^B_ij``
(average ranks, computed by counting so no sort stability enters), densely
(:func:`nearest_neighbour_weights`, :func:`average_ranks`) or sparsely for the rows of a
stack, ranking only the columns a nearest neighbour asks for (:func:`ii_neighbour_rows`,
:func:`ii_rows_sums`). The distances come from :mod:`~simtorch.functional.ii`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["nearest_neighbour_weights", "average_ranks", "NeighbourRows", "ii_neighbour_rows", "ii_rows_sums"]


def _self_mask(m: int, n: int, self_idx: Tensor | None, device: torch.device) -> Tensor:
    """Boolean ``(m, n)``: True at each query row's own column."""
    if self_idx is None:
        return torch.eye(m, n, dtype=torch.bool, device=device)
    mask = torch.zeros(m, n, dtype=torch.bool, device=device)
    mask[torch.arange(m, device=device), self_idx.to(device)] = True
    return mask


def nearest_neighbour_weights(d: Tensor, self_idx: Tensor | None = None) -> Tensor:
    """Weights of each point's nearest neighbours, self excluded; tied nearest neighbours
    share the weight equally (each row sums to 1): ``w_ij = 1/|NN(i)|`` for ``j ∈ NN(i) =
    argmin_{j ≠ i} d_ij``, else 0 (the ``r^A_ij = 1`` of Glielmo et al. 2022, with ties).

    ``d`` is ``(..., m, n)``: distances from ``m`` query points to all ``n`` points;
    ``self_idx`` ``(m,)`` gives each query point's own column (default: the diagonal).
    """
    mask = _self_mask(d.shape[-2], d.shape[-1], self_idx, d.device)
    dd = d.masked_fill(mask, float("inf"))
    nn = dd == dd.amin(dim=-1, keepdim=True)
    w = nn.to(torch.float64)
    return w / w.sum(dim=-1, keepdim=True)


def average_ranks(d: Tensor, self_idx: Tensor | None = None) -> Tensor:
    """Neighbour ranks ``r_ij`` (nearest = 1, self excluded, ties get their average rank).

    Computed by counting, never from argsort, so the result does not depend on sort
    stability or the device: with ``less`` and ``leq`` the numbers of other points strictly
    closer / at most as close as ``j``, ``r_ij = (less + leq + 1) / 2``. ``d`` is
    ``(..., m, n)``; the self column gets rank 0. float64. These are the ``r^B_ij`` of
    Glielmo et al. (2022).
    """
    mask = _self_mask(d.shape[-2], d.shape[-1], self_idx, d.device)
    dd = d.masked_fill(mask, float("-inf")).contiguous()
    s = torch.sort(dd, dim=-1).values  # values only: identical whatever the sort's stability
    left = torch.searchsorted(s, dd, right=False)  # includes self (−inf) when j ≠ i
    right = torch.searchsorted(s, dd, right=True)
    r = (left + right - 1).to(torch.float64) / 2
    return r.masked_fill(mask, 0.0)


class NeighbourRows(NamedTuple):
    """A stack of distance rows prepared once for every pair their layer is in (the sparse
    ranking of :func:`imbalance_sums`)."""

    #: ``(L, m, n)`` float64 distances with each query point's own column at +inf
    rows: Tensor
    #: ``(L, m, n)`` sort keys of those rows, sorted: float32 on the CPU (a monotone
    #: rounding of ``rows``: same order, ties only where values collide, which the ranking
    #: detects and settles in float64), ``rows``' dtype elsewhere
    sorted: Tensor
    #: ``(L, m, k)`` nearest-neighbour columns (``k`` the largest tie count; padding weighs 0)
    nn: Tensor
    #: ``(L, m, k)`` float64 weights: tied nearest neighbours share 1 equally
    weight: Tensor
    #: ``(L, m)`` float64 distance to the nearest other point
    nearest: Tensor

    @property
    def coincident(self) -> Tensor:
        """``(L,)`` bool: the layer has two points at distance 0 (a zero nearest distance)."""
        return (self.nearest == 0).any(-1)


def _sort_rows(dd: Tensor) -> Tensor:
    """Rows sorted (values only). On the CPU numpy sorts these short rows about 10× faster
    than torch does; both give identical values."""
    if dd.device.type == "cpu":
        return torch.from_numpy(np.sort(dd.numpy(), axis=-1))
    return torch.sort(dd, dim=-1).values


def ii_neighbour_rows(rows: Tensor, nearest: tuple[Tensor, Tensor] | None = None) -> NeighbourRows:
    """:class:`NeighbourRows` of distances ``rows`` ``(L, m, n)`` whose self columns hold
    +inf (they sort last).

    ``nearest``: ``rows.min(-1)`` if the caller has it. The nearest neighbours are the
    columns at that value: the argmin, unless a row has a tie there, when the tied columns
    share the weight (one host read sizes them, so this is the CPU path). On the CPU the
    rows are sorted by float32 keys, four times faster than float64 for numpy; rounding
    to float32 keeps the order and can only merge values, so a possible tie (equal keys)
    is checked on the float64 rows, here for the nearest neighbours and in the ranking
    for every rank asked for.
    """
    n = rows.shape[-1]
    if n < 2:
        raise ValueError(f"Information Imbalance needs at least 2 samples, got n={n}")
    vals, idx = rows.min(-1) if nearest is None else nearest
    s = _sort_rows(rows.to(torch.float32) if rows.device.type == "cpu" else rows)
    idx = idx.unsqueeze(-1)
    w = None
    if n > 2 and bool((s[..., 1] == s[..., 0]).any()):
        tie = rows == vals.unsqueeze(-1)  # the self column is +inf, never tied
        count = tie.sum(-1, keepdim=True)
        k = int(count.max())
        if k > 1:  # every tied column has the top value 1, so all are among the k selected
            idx = torch.topk(tie.to(torch.float32), k, dim=-1).indices
            w = tie.gather(-1, idx).to(torch.float64) / count
    if w is None:
        w = torch.ones(idx.shape, dtype=torch.float64, device=rows.device)
    return NeighbourRows(rows, s, idx, w, vals)


def _ranks_at(b: NeighbourRows, idx: Tensor) -> Tensor:
    """Average ranks in each layer of ``b`` ``(Lb, m, n)`` of the columns ``idx``
    ``(La, m, k)``: ``(Lb, m, La, k)`` (one gather and one binary search for every pair).

    The rank of ``j`` in row ``i`` is ``(less + leq + 1) / 2`` with ``less``/``leq`` the
    other points strictly closer / at most as close (self is +inf, never counted). A binary
    search of the key of ``v = rows[i, j]`` among the sorted keys gives ``less``, and
    ``leq = less + 1``, unless another key equals ``v``'s (a tie, or float32 keys that
    collide); those few ranks are counted exactly on the float64 row.
    """
    dd, s = b.rows, b.sorted
    lb, m, n = dd.shape
    la, _, k = idx.shape
    cols = idx.permute(1, 0, 2).reshape(1, m, la * k).expand(lb, m, la * k)
    v = dd.gather(-1, cols)
    key = v.to(s.dtype)
    left1 = torch.searchsorted(s, key, right=False) + 1
    nxt = s.gather(-1, left1.clamp_max(n - 1))
    r = left1.to(torch.float64)
    clash = (nxt == key) & (left1 < n)
    if bool(clash.any()):  # a host read: the sparse path is CPU-only
        bi, ii, qi = clash.nonzero(as_tuple=True)
        row, x = dd[bi, ii], v[bi, ii, qi].unsqueeze(-1)
        r[bi, ii, qi] = ((row < x).sum(-1) + (row <= x).sum(-1) + 1).to(torch.float64) / 2
    return r.reshape(lb, m, la, k)


def ii_rows_sums(pa: NeighbourRows, pb: NeighbourRows | None = None) -> tuple[Tensor, Tensor]:
    """:func:`imbalance_sums` from prepared rows (:func:`ii_neighbour_rows`) of the same
    ``m`` query points: ``(forward (La, Lb), reverse (La, Lb))``; ``pb=None`` means side b
    is side a. Divide by ``n²/2`` for Δ (Glielmo et al. 2022)."""
    if pb is None:
        fwd = torch.einsum("aik,biak->ab", pa.weight, _ranks_at(pa, pa.nn))
        return fwd, fwd.T
    fwd = torch.einsum("aik,biak->ab", pa.weight, _ranks_at(pb, pa.nn))  # Δ(A_a → B_b)
    rev = torch.einsum("bik,aibk->ab", pb.weight, _ranks_at(pa, pb.nn))  # Δ(B_b → A_a)
    return fwd, rev


def _self_inf(d: Tensor, self_idx: Tensor | None) -> Tensor:
    """A copy of ``d`` ``(L, m, n)`` with each query point's own column at +inf."""
    return d.detach().masked_fill(_self_mask(d.shape[-2], d.shape[-1], self_idx, d.device), float("inf"))
