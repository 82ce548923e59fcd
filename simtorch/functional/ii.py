"""Information Imbalance.

Glielmo, Zeni, Cheng, Csányi, Laio (2022), *Ranking the information content of distance
measures*, PNAS Nexus 1(2): ``Δ(A→B) = (2/n²) Σ_{i, j : r^A_ij = 1} r^B_ij``, with
``r^B_ij`` the rank of ``j`` among ``i``'s neighbours in B (self excluded, nearest = 1).
Ties are deterministic: tied nearest neighbours share the weight equally, tied distances get
their average rank. Every grid is computed in row blocks (:func:`ii_row_block`) by one loop,
:func:`_block_sums`, whether the distances come from Gram stacks
(:func:`information_imbalance_distances`) or from raw features (:func:`ii_feature_sums`).
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import Tensor

from .kernels import COINCIDENT_ULPS, GRAM_KAPPA, coincident_rtol, flatten_samples
from .ii_ranks import (NeighbourRows, _self_inf, average_ranks, ii_neighbour_rows, ii_rows_sums,
                       nearest_neighbour_weights)
from .linear_grams import linear_gram

__all__ = [
    "COINCIDENT_ULPS",
    "II_EXACT_DIM",
    "coincident_rtol",
    "ii_distances",
    "ii_exact_distances",
    "ii_distance_rows",
    "imbalance_sums",
    "ii_gram_rows",
    "ii_row_block",
    "information_imbalance_distances",
    "ii_feature_sums",
    "information_imbalance",
]

#: Layers at most this wide get their Information Imbalance distances in float64 from the
#: features, not from the float32 Gram. A distance from a Gram,
#: ``G_ii + G_jj − 2G_ij``, cannot resolve less than ``coincident_rtol · (‖x_i‖² + ‖x_j‖²)``
#: (about 1e-6 of the squared norms in float32), and in few dimensions nearest neighbours
#: are that close: n points on a line lie about ``1/n`` of the spread apart, a squared
#: distance of ``1/n²`` of the squared norms (4e-6 at n = 500), so float32 Grams snap
#: distinct 1-D points together and shift Δ by up to 0.015. In many dimensions distances
#: concentrate near the norms and float32 resolves them; a float64 Gram of ``d ≤ 32``
#: features costs less than the float32 Gram of one wide layer.
II_EXACT_DIM = 32


def ii_distances(gram: Tensor) -> Tensor:
    """Squared distances (float64) from a Gram (stack), with coincident points snapped to 0.

    ``D = diag(G) + diag(G)ᵀ − 2G``, clamped at 0, 0 on the diagonal, and 0 wherever
    ``D_ij ≤ coincident_rtol(G.dtype) · (G_ii + G_jj)``, so duplicated samples tie exactly.
    Other ties are exact equalities of the computed values: distances that are equal in
    exact arithmetic but computed with different rounding (e.g. through the column mean of
    the centring) are ordered by that rounding. These are the distances whose ranks define
    Information Imbalance (Glielmo et al. 2022).
    """
    rtol = coincident_rtol(gram.dtype)
    g = gram.detach().to(torch.float64)
    diag = g.diagonal(dim1=-2, dim2=-1)
    norms = diag.unsqueeze(-1) + diag.unsqueeze(-2)
    d = norms - 2 * g
    d.masked_fill_(d <= rtol * norms, 0.0)  # in place: this runs on every batch
    d.diagonal(dim1=-2, dim2=-1).zero_()
    return d


def ii_exact_distances(x: Tensor) -> Tensor:
    """Squared distances ``(n, n)`` (float64) between the rows of ``x`` ``(n, ...)``, from a
    float64 Gram of the column-centred features: :func:`ii_distances` at float64
    resolution (``coincident_rtol(float64) ≈ 2e-15`` of the squared norms), for layers no
    wider than :data:`II_EXACT_DIM`."""
    g, _ = linear_gram(x, dtype=torch.float64)
    return ii_distances(g)


def ii_distance_rows(xc: Tensor, sq_norms: Tensor, rows: Tensor) -> Tensor:
    """Squared distances (float64) from the points ``rows`` to all points of one
    representation, ``(m, N)``, as :func:`ii_distances` would give them from the full Gram.

    ``xc`` ``(N, d)`` are column-centred features, ``sq_norms`` ``(N,)`` their float64
    squared norms. The cross products use ``xc``'s dtype (float32 is enough for centred
    features, DESIGN §4), so memory is ``O(m · N)``, never ``O(N²)``:
    ``D_ij = ‖x_i‖² + ‖x_j‖² − 2 x_i·x_j``, snapped to 0 below ``coincident_rtol · (‖x_i‖² +
    ‖x_j‖²)`` and 0 at ``j = rows[i]`` (Glielmo et al. 2022's distances, row by row).
    """
    g = (xc[rows] @ xc.T).to(torch.float64)
    norms = sq_norms[rows].unsqueeze(-1) + sq_norms.unsqueeze(-2)
    d = norms - 2 * g
    d.masked_fill_(d <= coincident_rtol(xc.dtype) * norms, 0.0)
    d[torch.arange(rows.shape[0], device=d.device), rows] = 0
    return d


def ii_gram_rows(grams: Tensor, exact: dict[int, Tensor] | None = None,
                 energy: Tensor | None = None) -> NeighbourRows:
    """:class:`NeighbourRows` of a Gram stack ``(L, n, n)``: the distances of
    :func:`ii_distances`, built in a few passes for the per-batch CPU path.

    ``exact`` maps layer indices to features whose float64 distances
    (:func:`ii_exact_distances`) replace the Gram's. The coincidence snap of
    :func:`ii_distances` can only touch a row whose smallest distance is at most
    ``coincident_rtol · (G_ii + max_j G_jj)``; it is applied to those rows alone (duplicates
    and near-duplicates, rare), which gives the same distances without two more passes
    over the stack.

    ``energy`` ``(L,)``: each layer's ``‖X‖²``. The engine may multiply rows that are not
    centred (up to :data:`~simtorch.functional.GRAM_KAPPA` times the centred energy,
    :func:`~simtorch.functional.capture_product`), and a product rounds relative to the
    norms of the rows it multiplied; with the energy, the snap threshold uses
    ``G_ii + G_jj`` plus twice the mean excess ``(min(‖X‖², κ tr G_c) − tr G_c)/n``, so
    duplicated samples still tie exactly. Without it, as :func:`ii_distances`.
    """
    rtol = coincident_rtol(grams.dtype)
    diag = grams.detach().diagonal(dim1=-2, dim2=-1).to(torch.float64)
    d = diag.unsqueeze(-1) + diag.unsqueeze(-2)
    d.add_(grams.detach(), alpha=-2)  # ‖x_i‖² + ‖x_j‖² − 2 x_i·x_j, as ii_distances computes it
    scale = diag  # the squared norms the snap threshold is relative to
    if energy is not None:
        n = grams.shape[-1]
        t = diag.sum(-1, keepdim=True)
        e = energy.detach().to(torch.float64).reshape(-1, 1)
        scale = diag + (torch.minimum(e, GRAM_KAPPA * t) - t).clamp_min(0) / n
    exact = exact or {}
    for i, f in exact.items():
        d[i] = ii_exact_distances(f)
    d.diagonal(dim1=-2, dim2=-1).fill_(float("inf"))
    vals, idx = d.min(-1)
    need = vals <= rtol * (scale + scale.amax(-1, keepdim=True))
    for i in exact:
        need[i] = False  # already snapped at float64 resolution
    if bool(need.any()):
        li, ri = need.nonzero(as_tuple=True)
        rows = d[li, ri]
        thr = rtol * (scale[li, ri].unsqueeze(-1) + scale[li])
        d[li, ri] = rows.masked_fill(rows <= thr, 0.0)
        vals, idx = d.min(-1)
    return ii_neighbour_rows(d, (vals, idx))


def imbalance_sums(
    da: Tensor, db: Tensor | None, self_idx: Tensor | None = None, method: str = "auto"
) -> tuple[Tensor, Tensor]:
    """``Σ_i Σ_{j ∈ NN_A(i)} w_ij r^B_ij`` for every layer pair, both directions.

    ``da`` ``(La, m, n)`` and ``db`` ``(Lb, m, n)`` are distances from the same ``m``
    query points (rows of the data) to all ``n`` points; ``db=None`` means ``db is da``.
    ``self_idx`` ``(m,)``: each query point's own column (default: the diagonal).
    Returns ``(forward (La, Lb), reverse (La, Lb))``: divide by ``n²/2`` (summed over every
    row block) for Δ(A→B) and Δ(B→A) of Glielmo et al. (2022). No loop over layer pairs.

    ``method``: ``"sparse"`` ranks only the nearest-neighbour columns (sort the rows once,
    :func:`ii_neighbour_rows`; one gather and a binary search for every pair at once; a
    host read for ties), ``"dense"``
    builds full weight and rank matrices and takes two matrix products (no host sync, for
    accelerators). ``"auto"``: sparse on the CPU, dense elsewhere. Both give the same
    numbers.
    """
    if method == "auto":
        method = "sparse" if da.device.type == "cpu" else "dense"
    if method == "dense":
        wa = nearest_neighbour_weights(da, self_idx).flatten(-2)
        ra = average_ranks(da, self_idx).flatten(-2)
        if db is None:
            fwd = wa @ ra.T
            return fwd, fwd.T
        wb = nearest_neighbour_weights(db, self_idx).flatten(-2)
        rb = average_ranks(db, self_idx).flatten(-2)
        return wa @ rb.T, ra @ wb.T
    if method != "sparse":
        raise ValueError(f"method must be 'auto', 'sparse' or 'dense', got {method!r}")
    if da.shape[-1] < 2:
        raise ValueError(f"Information Imbalance needs at least 2 samples, got n={da.shape[-1]}")
    pa = ii_neighbour_rows(_self_inf(da, self_idx))
    pb = None if db is None else ii_neighbour_rows(_self_inf(db, self_idx))
    return ii_rows_sums(pa, pb)


#: row-block size target (elements of one float64 stack) for Information Imbalance
_II_BLOCK_ELEMENTS = 1 << 22


def ii_row_block(n_points: int, n_layers: int) -> int:
    """Rows per block so one float64 ``(n_layers, rows, n_points)`` stack stays near 2²²
    values (32 MiB; the ranking keeps a few such stacks alive)."""
    return max(1, min(n_points, _II_BLOCK_ELEMENTS // max(1, n_layers * n_points)))


#: rows → (distances of side a ``(La, m, n)``, of side b ``(Lb, m, n)`` or None)
_RowDistances = Callable[[Tensor], "tuple[Tensor, Tensor | None]"]


def _block_sums(
    n: int, n_layers: int, device: torch.device, distances: _RowDistances, count_duplicates: bool = False
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """The one row-block loop of Information Imbalance (Glielmo et al. 2022).

    For each block of rows (:func:`ii_row_block` of ``n`` points and ``n_layers`` layers
    in all), ``distances(rows)`` gives the float64 squared distances from those rows to all
    ``n`` points, and :func:`imbalance_sums` their weighted ranks; the sums over blocks,
    times ``2/n²``, are the Δ grids ``(La, Lb)`` (forward, reverse). With
    ``count_duplicates`` also the number of ordered pairs ``(i, j)``, ``i ≠ j``, at distance
    exactly 0 (after the coincidence snap), per layer of side a and of side b (``None`` when
    side b is side a), float64, counted on the device (no host sync).
    """
    if n < 2:
        raise ValueError(f"Information Imbalance needs at least 2 samples, got n={n}")
    block = ii_row_block(n, n_layers)
    fwd = rev = dup_a = dup_b = None
    for start in range(0, n, block):
        rows = torch.arange(start, min(n, start + block), device=device)
        da, db = distances(rows)
        f, r = imbalance_sums(da, db, rows)
        fwd, rev = (f, r) if fwd is None else (fwd + f, rev + r)
        if count_duplicates:
            # every row has its own zero (self); any further zero is a coincident pair
            m = rows.shape[0]
            ca = ((da == 0).sum((-2, -1)) - m).to(torch.float64)
            dup_a = ca if dup_a is None else dup_a + ca
            if db is not None:
                cb = ((db == 0).sum((-2, -1)) - m).to(torch.float64)
                dup_b = cb if dup_b is None else dup_b + cb
    # one rounding (the sums are exact integers or halves when there are no ties): Δ(X, X) is
    # exactly the float nearest 2/n
    return fwd * 2.0 / (n * n), rev * 2.0 / (n * n), dup_a, dup_b  # type: ignore[operator]


def information_imbalance_distances(da: Tensor, db: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Δ(A_i→B_j) and Δ(B_j→A_i) for every pair of two squared-distance stacks
    ``(La, n, n)``, ``(Lb, n, n)`` of the same ``n`` points (``db=None``: the same stack).

    ``Δ(A→B) = (2/n²) Σ_{i, j : r^A_ij = 1} r^B_ij`` (Glielmo et al. 2022), tied nearest
    neighbours sharing the weight. Returns two ``(La, Lb)`` float64 grids;
    ``rev[i, j] = Δ(B_j → A_i)``. Rows are processed in blocks (:func:`ii_row_block`) to
    bound the working memory.
    """
    n = da.shape[-1]

    def distances(rows: Tensor) -> tuple[Tensor, Tensor | None]:
        return da[:, rows], None if db is None else db[:, rows]

    fwd, rev, _, _ = _block_sums(n, da.shape[0] + (0 if db is None else db.shape[0]), da.device, distances)
    return fwd, rev


def _centred_with_norms(xs: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
    """Each ``(n, p)`` feature tensor column-centred (in its dtype, or in float64 when
    ``p ≤ II_EXACT_DIM``), with its float64 squared row norms: the inputs of
    :func:`ii_distance_rows`."""
    out = []
    for x in xs:
        if x.shape[1] <= II_EXACT_DIM:  # narrow: cross products in float64 (II_EXACT_DIM)
            x = x.to(torch.float64)
        xc = x - x.mean(dim=0, keepdim=True)
        out.append((xc, (xc.to(torch.float64) ** 2).sum(-1)))
    return out


def ii_feature_sums(
    xa: list[Tensor], xb: list[Tensor] | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Information Imbalance grids of one set of ``n`` samples from raw features, in row
    blocks: memory ``O(L · m · n)`` for ``m`` rows at a time, never an ``(L, n, n)`` stack.

    ``Δ(A→B) = (2/n²) Σ_{i, j : r^A_ij = 1} r^B_ij`` (Glielmo et al. 2022) for every layer
    pair, with Euclidean distances between column-centred features
    (:func:`ii_distance_rows`: cross products in the features' dtype, float64 norms,
    coincident points snapped to 0).

    Parameters
    ----------
    xa : list of Tensor ``(n, p_i)``
        One feature matrix per layer of side a (any widths, same ``n``, one device).
    xb : list of Tensor ``(n, q_j)``, optional
        Side b; ``None`` means side b is side a (a model against itself).

    Returns
    -------
    fwd : Tensor ``(La, Lb)`` float64
        ``fwd[i, j] = Δ(A_i → B_j)``.
    rev : Tensor ``(La, Lb)`` float64
        ``rev[i, j] = Δ(B_j → A_i)``.
    dup_a : Tensor ``(La,)`` float64
        Per layer of side a, the number of ordered pairs ``(i, j)``, ``i ≠ j``, at squared
        distance 0 (coincident samples); ``> 0`` means the layer has duplicates.
    dup_b : Tensor ``(Lb,)`` float64 or None
        The same for side b; ``None`` when ``xb`` is ``None`` (use ``dup_a``).
    """
    if not xa:
        raise ValueError("ii_feature_sums needs at least one layer on side a")
    n = xa[0].shape[0]
    bad = [x.shape[0] for x in xa + ([] if xb is None else xb) if x.shape[0] != n]
    if bad:
        raise ValueError(f"every feature tensor must hold the same n={n} samples, got n={bad[0]}")
    pa = _centred_with_norms(xa)
    pb = None if xb is None else _centred_with_norms(xb)

    def distances(rows: Tensor) -> tuple[Tensor, Tensor | None]:
        da = torch.stack([ii_distance_rows(xc, sq, rows) for xc, sq in pa])
        db = None if pb is None else torch.stack([ii_distance_rows(xc, sq, rows) for xc, sq in pb])
        return da, db

    n_layers = len(pa) + (0 if pb is None else len(pb))
    fwd, rev, dup_a, dup_b = _block_sums(n, n_layers, xa[0].device, distances, count_duplicates=True)
    return fwd, rev, dup_a, dup_b  # type: ignore[return-value]


def _distances_of(x: Tensor) -> Tensor:
    """Distances of one representation: float64 from the features when narrow, else from
    its Gram in the features' dtype."""
    if flatten_samples(x).shape[1] <= II_EXACT_DIM:
        return ii_exact_distances(x)
    return ii_distances(linear_gram(x)[0])


def information_imbalance(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Information Imbalance of two representations of the same ``n`` samples.

    Glielmo, Zeni, Cheng, Csányi, Laio, *Ranking the information content of distance
    measures*, PNAS Nexus 2022: ``Δ(X→Y) = (2/n²) Σ_{i, j : r^X_ij = 1} r^Y_ij``, with
    ``r^Y_ij`` the rank of ``j`` among ``i``'s neighbours by Euclidean distance in Y (self
    excluded, nearest = 1). Δ ≈ 0 (exactly 2/n) when X's nearest neighbours are Y's,
    ≈ 1 when X says nothing about Y.

    Ties, deterministic: several equally near neighbours in X share the weight of
    ``i``'s term; tied distances in Y get their average rank. Squared distances below
    ``coincident_rtol(dtype) · (‖xᵢ‖² + ‖xⱼ‖²)`` (after column centring; about 1e-6 for
    float32, 2e-15 for float64) count as 0, and coincident samples give a warning. A
    representation no wider than :data:`II_EXACT_DIM` has its distances computed in
    float64 whatever its dtype (:func:`ii_exact_distances`), so float32 and float64 inputs
    give the same Δ there.

    Returns
    -------
    (Δ(X→Y), Δ(Y→X)) : tuple of float64 Tensors ``()``
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same samples: got n={x.shape[0]} and n={y.shape[0]}")
    dx, dy = (_distances_of(t)[None] for t in (x, y))
    n = x.shape[0]
    dup = [name for name, d in (("x", dx), ("y", dy)) if int((d == 0).sum()) > n]
    if dup:
        warnings.warn(
            f"information_imbalance: {' and '.join(dup)} have coincident samples (zero distances); tied nearest "
            "neighbours share the weight and tied distances get their average rank",
            UserWarning,
            stacklevel=2,
        )
    fwd, rev = information_imbalance_distances(dx, dy)
    return fwd[0, 0], rev[0, 0]
