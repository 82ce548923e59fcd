"""Permutation null of HSIC-based grids, from the Grams a pass already has.

Under "no correspondence between the samples of model A and model B", the samples of B may
be shuffled. For a permutation ``p`` of a batch (``B'[i] = B[p[i]]``) B's kernel becomes
``L' = P L Pᵀ`` (``L'[i, j] = L[p[i], p[j]]``) and, since centring commutes with a
permutation (``H P = P H``; U-centring likewise), its centred or U-centred form is the
permuted centred one: no new Gram, no second forward pass. Self-terms ``HSIC(L, L)`` do not
change; only the terms that pair B with another set of samples do: ``HSIC(K, L')`` (and, for
dCKA, ``HSIC(L', K⁰)``). Because ``⟨K, P L Pᵀ⟩ = ⟨Pᵀ K P, L⟩`` the side with fewer layers is
the one gathered.

The p-value of a cell is the Monte-Carlo permutation p-value
``(1 + #{k: null_k ≥ observed}) / (1 + K)`` (Phipson & Smyth 2010, *Permutation p-values
should never be zero*), one-sided towards "more similar".
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "PERMUTATION_CHUNK_BYTES",
    "batch_permutations",
    "permuted_cross",
    "permuted_conf",
    "permutation_pvalue",
]

#: at most this many bytes of gathered (permuted) float64 stacks at once in :func:`permuted_cross`
PERMUTATION_CHUNK_BYTES = 128 * 2**20

_SEED_MIX = 0x9E3779B97F4A7C15  # 2⁶⁴/φ: spreads (seed, batch, rank) over the generator's seeds


def batch_permutations(k: int, n: int, seed: int, index: int, rank: int = 0) -> Tensor:
    """``k`` permutations of ``range(n)`` for batch ``index``, as a ``(k, n)`` int64 CPU tensor.

    Drawn from a CPU :class:`torch.Generator` seeded by ``(seed, index, rank)`` only, so a run
    gets the same permutations on any device, whatever the other metrics of the pass do, and
    a resumed pass draws, for each later batch, what the uninterrupted one would have.
    """
    mixed = (int(seed) * _SEED_MIX + int(index) * 1_000_003 + int(rank) * 7_919) % (2**63 - 1)
    g = torch.Generator(device="cpu").manual_seed(mixed)
    return torch.stack([torch.randperm(n, generator=g) for _ in range(k)]) if k else torch.empty(0, n, dtype=torch.int64)


def _flat_index(perms: Tensor) -> Tensor:
    """Indices into a row-major flattened ``(n, n)`` matrix giving ``M[p[i], p[j]]``: ``(k, n²)``."""
    n = perms.shape[-1]
    return (perms[:, :, None] * n + perms[:, None, :]).reshape(perms.shape[0], n * n)


def permuted_cross(fa: Tensor, fb: Tensor, perms: Tensor, chunk_bytes: int = PERMUTATION_CHUNK_BYTES) -> Tensor:
    """``⟨fa_i, P_k fb_j P_kᵀ⟩`` for every permutation and layer pair: ``(K, La, Lb)``.

    ``fa`` ``(La, n²)`` and ``fb`` ``(Lb, n²)`` are flattened (U-)centred kernel stacks (rows of
    an ``(n, n)`` matrix, row-major); ``perms`` ``(K, n)`` permute B's samples. No HSIC
    normaliser is applied (the caller's ``c``). One GEMM per chunk of permutations; the side
    with fewer layers is gathered (by ``p`` for B, by ``p⁻¹`` for A), at most ``chunk_bytes``
    of it at a time. Cost: ``K · La · Lb · n²`` multiply-adds.
    """
    k = perms.shape[0]
    la, m = fa.shape
    lb = fb.shape[0]
    out = torch.empty(k, la, lb, dtype=fa.dtype, device=fa.device)
    if k == 0:
        return out
    perms = perms.to(fa.device)
    gather_a = la < lb
    if gather_a:  # ⟨K, P L Pᵀ⟩ = ⟨Pᵀ K P, L⟩: permute A by p⁻¹
        perms = torch.argsort(perms, dim=-1)
    rows = la if gather_a else lb
    step = max(1, int(chunk_bytes // max(1, rows * m * fa.element_size())))
    for s in range(0, k, step):
        idx = _flat_index(perms[s:s + step])  # (c, n²)
        c = idx.shape[0]
        if gather_a:
            g = fa[:, idx]  # (La, c, n²)
            out[s:s + c] = (g.reshape(la * c, m) @ fb.T).reshape(la, c, lb).transpose(0, 1)
        else:
            g = fb[:, idx]  # (Lb, c, n²)
            out[s:s + c] = (fa @ g.reshape(lb * c, m).T).reshape(la, lb, c).permute(2, 0, 1)
    return out


def permuted_conf(fb: Tensor, f0: Tensor, perms: Tensor) -> Tensor:
    """``⟨P_k fb_j P_kᵀ, f0⟩ = ⟨fb_j, P_kᵀ f0 P_k⟩`` for every permutation: ``(K, Lb)``
    (dCKA's ``HSIC(L', K⁰)`` before the normaliser; the confounder, one ``n²`` vector, is the
    side gathered)."""
    if perms.shape[0] == 0:
        return torch.empty(0, fb.shape[0], dtype=fb.dtype, device=fb.device)
    inv = torch.argsort(perms.to(fb.device), dim=-1)
    return f0[_flat_index(inv)] @ fb.T


def permutation_pvalue(observed: Tensor, null: Tensor, rtol: float = 1e-12) -> Tensor:
    """``(1 + #{k: null_k ≥ observed}) / (1 + K)`` per cell (``null`` is ``(K, ...)``).

    A null value within ``rtol · |observed|`` below the observed one counts as ``≥`` (the same
    statistic summed in another order must not look significant). NaN where the observed
    value is NaN; a NaN null value never counts as ``≥``. Smallest value: ``1/(K + 1)``.
    """
    k = null.shape[0]
    tol = rtol * observed.abs()
    hits = (null >= (observed - tol).unsqueeze(0)).sum(0).to(torch.float64)
    p = (1.0 + hits) / (1.0 + k)
    return p.masked_fill(torch.isnan(observed), math.nan)
