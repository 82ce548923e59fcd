"""Procrustes shape metrics (Williams et al. 2021) as pure functions on tensors.

Following netrep's ``LinearMetric(alpha, center_columns=True, zero_pad=True)`` fitted and
scored on the same data. With ``X_c``, ``Y_c`` the column-centred features, zero-padded to
a common width ``D = max(d_x, d_y)`` and partially whitened (``alpha < 1``) into ``X_w``,
``Y_w``, the best orthogonal alignment ``min_Q ‖X_w Q − Y_w‖_F`` gives

- ``angular   = arccos(‖X_wᵀY_w‖_* / (‖X_w‖_F ‖Y_w‖_F))`` in ``[0, π/2]`` (a metric),
- ``euclidean = sqrt(‖X_w‖_F² + ‖Y_w‖_F² − 2‖X_wᵀY_w‖_*)`` (not squared, not normalised),
- ``cosine    = cos(angular)``, a similarity in ``[0, 1]``; anatome's
  ``orthogonal_procrustes_distance`` is ``1 − cosine`` and Ding et al.'s (2021) squared
  Procrustes distance of unit-norm features is ``2 − 2·cosine``.

Every score is computed from the thin SVD ``X_c = U S Vᵀ`` of each side alone:
``‖X_cᵀY_c‖_* = ‖(U_x S_x)ᵀ(U_y S_y)‖_*`` because ``V_x``, ``V_y`` have orthonormal columns,
so a grid of layers needs one SVD per layer and one small ``r_x × r_y`` singular-value
problem per pair (batched over pairs of equal widths).

This module also holds the helpers shared with :mod:`.cca` and :mod:`.moments`; it imports
nothing from the rest of simtorch.

References
----------
- Williams, Kunz, Kornblith, Linderman (2021), *Generalized shape metrics on neural
  representations*, NeurIPS; code: github.com/ahwillia/netrep (``netrep/metrics/linear.py``,
  ``netrep/utils.py: whiten``).
- Ding, Denain, Steinhardt (2021), *Grounding representation similarity through
  statistical testing*, NeurIPS (orthogonal Procrustes distance).
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Iterator, Literal, NamedTuple, Sequence

import torch
from torch import Tensor

__all__ = [
    "ProcrustesScore",
    "ShapeGrid",
    "NETREP_EIGVAL_TOL",
    "as_features",
    "is_constant",
    "pair_blocks",
    "whitening_scale",
    "procrustes",
    "procrustes_grid",
]

ProcrustesScore = Literal["angular", "euclidean", "cosine"]

#: netrep's ``whiten(..., eigval_tol=1e-7)``: eigenvalues of ``X_cᵀX_c`` (a sum over samples,
#: not a covariance) are clipped to this absolute floor, and ``alpha > 1 − 1e-7`` means no
#: whitening at all. Kept as netrep has it so that ``alpha < 1`` reproduces its numbers.
NETREP_EIGVAL_TOL = 1e-7

#: Upper bound on the float64 elements of one batch of pair blocks (128 MiB).
MAX_BLOCK_ELEMS = 2**24


class ShapeGrid(NamedTuple):
    """All-pairs result of a shape metric.

    Attributes
    ----------
    values : Tensor ``(La, Lb)`` float64
        The score of every pair; NaN where it is undefined.
    invalid : Tensor ``(La, Lb)`` bool
        True exactly where ``values`` (or ``reverse``) is NaN.
    bad_a, bad_b : Tensor ``(La,)``, ``(Lb,)`` bool
        Layers that make every cell of their row/column undefined (constant features, or
        no direction kept by SVCCA); an invalid cell
        whose layers are both good is a property of the pair (PWCCA's tied correlations).
        (Procrustes' euclidean score stays defined for a constant layer: ``invalid`` is
        then False although the layer is flagged.)
    reverse : Tensor ``(La, Lb)`` or None
        For asymmetric scores (PWCCA): ``reverse[i, j] = score(B_j, A_i)``.
    """

    values: Tensor
    invalid: Tensor
    bad_a: Tensor
    bad_b: Tensor
    reverse: Tensor | None = None


def as_features(x: Tensor, name: str = "x") -> Tensor:
    """Flatten ``(n, ...)`` to ``(n, d)`` and promote to float64 (every sum here is float64)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_complex():
        raise TypeError(f"{name} must be real, got dtype {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"{name} must have shape (n, d) or (n, ...), got {tuple(x.shape)}; "
                         "use x.reshape(-1, 1) for a single feature")
    return x.reshape(x.shape[0], -1).to(torch.float64)


def is_constant(centred_top: Tensor, raw_norm: Tensor, n: int) -> bool:
    """Whether centred features are float noise: ``σ_max(X_c) ≤ n·ε₆₄·‖X‖_F``.

    Compared with the energy of the *uncentred* features only at float64 rounding level
    (the mean of ``n`` values is exact to about ``n·ε``), so healthy features riding on a
    large common offset stay valid (DESIGN §7).
    """
    return bool(centred_top <= n * torch.finfo(torch.float64).eps * raw_norm)


def _check_pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    xf, yf = as_features(x, "x"), as_features(y, "y")
    if xf.shape[0] != yf.shape[0]:
        raise ValueError(f"x and y must hold the same samples: x has n={xf.shape[0]}, y has "
                         f"n={yf.shape[0]} (shapes {tuple(x.shape)} and {tuple(y.shape)})")
    if xf.shape[0] < 2:
        raise ValueError(f"need at least 2 samples, got n={xf.shape[0]}")
    return xf, yf


def _group_by_width(mats: Sequence[Tensor | None]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for i, m in enumerate(mats):
        if m is not None and m.shape[-1] > 0:
            groups.setdefault(int(m.shape[-1]), []).append(i)
    return groups


def pair_blocks(
    fa: Sequence[Tensor | None],
    fb: Sequence[Tensor | None],
    cost: Callable[[int, int], int] | None = None,
    max_elems: int = MAX_BLOCK_ELEMS,
) -> Iterator[tuple[list[int], list[int], Tensor]]:
    """Every cross product ``fa[i]ᵀ fb[j]``, batched over layers of equal widths.

    Parameters
    ----------
    fa, fb : sequences of Tensor ``(n, k_i)`` (or None / width 0: skipped)
        Per-layer factors sharing the sample dimension.
    cost : callable ``(ka, kb) -> int``, optional
        Float64 elements one pair needs downstream (default ``ka·kb``), to size chunks.
    max_elems : int
        Bound on ``len(ia)·len(ib)·cost`` for one yielded chunk.

    Yields
    ------
    ia, ib : list of int
        Layer indices of the chunk's rows and columns.
    blocks : Tensor ``(len(ia), len(ib), ka, kb)``
        ``blocks[p, q] = fa[ia[p]]ᵀ fb[ib[q]]``, from one GEMM per chunk.
    """
    ga, gb = _group_by_width(fa), _group_by_width(fb)
    for ka, rows in ga.items():
        for kb, cols in gb.items():
            per_pair = max(1, cost(ka, kb) if cost is not None else ka * kb)
            col_step = max(1, min(len(cols), max_elems // per_pair))
            row_step = max(1, max_elems // (per_pair * col_step))
            for c0 in range(0, len(cols), col_step):
                cidx = cols[c0:c0 + col_step]
                # (n, gb·kb): the layers side by side, so the chunk is a single GEMM
                b_cat = torch.cat([fb[j] for j in cidx], dim=1)
                for r0 in range(0, len(rows), row_step):
                    ridx = rows[r0:r0 + row_step]
                    a_cat = torch.cat([fa[i] for i in ridx], dim=1)
                    m = (a_cat.T @ b_cat).reshape(len(ridx), ka, len(cidx), kb)
                    yield ridx, cidx, m.permute(0, 2, 1, 3)


def _netrep_dvec(s: Tensor, alpha: float) -> Tensor:
    """netrep's partial-whitening gains ``α + (1−α)·λ^{-1/2}``, ``λ = max(s², tol)``."""
    lam = (s * s).clamp_min(NETREP_EIGVAL_TOL)
    return alpha + (1.0 - alpha) * lam.rsqrt()


def whitening_scale(s: Tensor, width: int, alpha: float) -> Tensor:
    """netrep's ``preserve_variance`` factor for a side zero-padded to ``width`` columns.

    ``c² = Σλ / Σ(α²λ + 2α(1−α)√λ + (1−α)²)`` over the ``width`` eigenvalues of
    ``X_cᵀX_c`` (each clipped at ``tol``): the singular values ``s`` and ``width − len(s)``
    zeros (missing rank and zero padding), so that ``‖X_w‖²`` matches the (clipped) trace.
    Only the euclidean score depends on it.
    """
    if alpha > 1.0 - NETREP_EIGVAL_TOL:
        return torch.ones((), dtype=torch.float64, device=s.device)
    tol = NETREP_EIGVAL_TOL
    lam = (s * s).clamp_min(tol)
    pad = width - s.numel()
    new_var = (alpha**2 * lam + 2 * alpha * (1 - alpha) * lam.sqrt() + (1 - alpha) ** 2).sum()
    new_var = new_var + pad * (alpha**2 * tol + 2 * alpha * (1 - alpha) * math.sqrt(tol) + (1 - alpha) ** 2)
    return ((lam.sum() + pad * tol) / new_var).sqrt()


class _Factor(NamedTuple):
    f: Tensor | None  # (n, r) U·S·dvec: X_w = f Vᵀ, so X_wᵀY_w and f_xᵀf_y share singular values
    s: Tensor  # singular values of X_c (r,)
    sq_norm: Tensor  # ‖X_w‖² before the preserve-variance scale
    width: int
    constant: bool


def _factor(x: Tensor, alpha: float) -> _Factor:
    n, d = x.shape
    xc = x - x.mean(dim=0, keepdim=True)
    u, s, _ = torch.linalg.svd(xc, full_matrices=False)
    constant = s.numel() == 0 or is_constant(s[0], torch.linalg.vector_norm(x), n)
    # columns with σ below float64 noise add nothing to either norm; dropping them only
    # shrinks the pair blocks (centred data with n ≤ d always has one)
    keep = int((s > s[0] * max(n, d) * torch.finfo(torch.float64).eps).sum()) if s.numel() else 0
    u, s = u[:, :keep], s[:keep]
    g = s if alpha > 1.0 - NETREP_EIGVAL_TOL else s * _netrep_dvec(s, alpha)
    return _Factor(None if constant else u * g, s, (g * g).sum(), d, constant)


def _check_args(score: str, alpha: float) -> None:
    if score not in ("angular", "euclidean", "cosine"):
        raise ValueError(f"score must be 'angular', 'euclidean' or 'cosine', got {score!r}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (1: rotations only, 0: CCA), got {alpha!r}")


def _finish(nuc: Tensor, sq_x: Tensor, sq_y: Tensor, score: str) -> Tensor:
    """Scores from the aligned inner product ``‖X_wᵀY_w‖_*`` and the squared norms."""
    if score == "euclidean":
        # the formula cancels for near-identical inputs: absolute error ≈ √ε₆₄·‖X_w‖
        return (sq_x + sq_y - 2 * nuc).clamp_min(0).sqrt()
    cos = (nuc / (sq_x * sq_y).sqrt()).clamp(-1.0, 1.0)
    return cos if score == "cosine" else torch.arccos(cos)


def shape_grid(nuc: Tensor, sq_a: Tensor, sq_b: Tensor, score: str, constant_a: Sequence[bool],
               constant_b: Sequence[bool], device: torch.device) -> ShapeGrid:
    """The :class:`ShapeGrid` of ``score`` from the ``(la, lb)`` nuclear norms and squared
    norms; the angular and cosine cells of a constant layer (``constant_a``/``constant_b``,
    one flag per layer) are NaN and marked invalid."""
    values = _finish(nuc, sq_a, sq_b, score)
    bad_a = torch.tensor(list(constant_a), device=device)
    bad_b = torch.tensor(list(constant_b), device=device)
    invalid = torch.zeros(len(constant_a), len(constant_b), dtype=torch.bool, device=device)
    if score != "euclidean":
        invalid = bad_a[:, None] | bad_b[None, :]
        values = values.masked_fill(invalid, float("nan"))
    return ShapeGrid(values, invalid, bad_a, bad_b)


def procrustes(x: Tensor, y: Tensor, score: ProcrustesScore = "angular", alpha: float = 1.0) -> Tensor:
    """Procrustes shape distance (or cosine similarity) between two representations.

    As netrep's ``LinearMetric(alpha, center_columns=True, zero_pad=True).fit_score(x, y)``:
    centre the columns, zero-pad the narrower side to ``D = max(d_x, d_y)`` columns,
    partially whiten each side, align with the best orthogonal map (``U, _, Vᵀ = svd(X_wᵀY_w)``)
    and score ``X_w U`` against ``Y_w V``.

    Partial whitening (netrep ``whiten(X_c, alpha, preserve_variance=True)``): with
    ``X_cᵀX_c = V diag(λ) Vᵀ`` (eigenvalues clipped at ``1e-7``),
    ``X_w = c · X_c V diag(α + (1−α)λ^{-1/2}) Vᵀ``, ``c`` chosen so that ``‖X_w‖_F² = Σλ``.
    ``alpha = 1`` is plain orthogonal Procrustes (Williams et al.'s rotation-invariant
    metric); ``alpha = 0`` whitens fully, and then ``cosine = Σρ_i / √(d_x d_y)`` with ``ρ``
    the canonical correlations (the mean CCA for equal widths).

    Parameters
    ----------
    x, y : Tensor ``(n, ...)``
        Two representations of the same ``n`` samples, any real dtype; flattened and
        computed in float64.
    score : {"angular", "euclidean", "cosine"}
        ``arccos(‖X_wᵀY_w‖_* / (‖X_w‖‖Y_w‖))`` in ``[0, π/2]``;
        ``sqrt(‖X_w‖² + ‖Y_w‖² − 2‖X_wᵀY_w‖_*)``; or the cosine of the angle (a similarity).
    alpha : float in [0, 1]
        netrep's regularisation between CCA (0) and rotations only (1).

    Returns
    -------
    Tensor ``()`` float64. Angular and cosine are NaN (with a ``UserWarning``) when either
    side is constant (0/0); euclidean stays defined.

    Notes
    -----
    Distances come from the nuclear norm, not from the aligned residual, so for
    near-identical inputs both the euclidean and the angular score carry an absolute error
    of about ``√ε₆₄ ≈ 1.5e-8`` (relative to ``‖X_w‖`` and to 1): netrep's ``arccos`` has the
    same floor for the angular score.
    """
    _check_args(score, alpha)
    xf, yf = _check_pair(x, y)
    grid = procrustes_grid([xf], [yf], score=score, alpha=alpha)
    if bool(grid.invalid[0, 0]):
        side = "x" if bool(grid.bad_a[0]) else "y"
        warnings.warn(f"procrustes: {side} has constant features (zero variance after centring), "
                      f"so the {score} score is 0/0; returning NaN", UserWarning, stacklevel=2)
    return grid.values[0, 0]


def procrustes_grid(
    xs_a: Sequence[Tensor],
    xs_b: Sequence[Tensor],
    score: ProcrustesScore = "angular",
    alpha: float = 1.0,
) -> ShapeGrid:
    """:func:`procrustes` for every pair ``(xs_a[i], xs_b[j])``, with one SVD per layer.

    Per layer: the thin SVD of the centred features gives ``F = U·S·g`` (``g`` the
    whitening gains, 1 for ``alpha = 1``), ``n × rank``. Per pair: the singular values of
    ``F_aᵀF_b`` (``r_a × r_b``), batched over every pair of equal ranks after one GEMM per
    chunk; the zero padding only enters through netrep's variance-preserving scale.

    Parameters
    ----------
    xs_a, xs_b : sequences of Tensor ``(N, ...)``
        The layers of each side over the same ``N`` samples (widths may differ).
    score, alpha
        As in :func:`procrustes`.

    Returns
    -------
    ShapeGrid
        ``values[i, j] = procrustes(xs_a[i], xs_b[j], score, alpha)``; constant layers are
        flagged in ``bad_a``/``bad_b`` and their cells are NaN for angular and cosine.
    """
    _check_args(score, alpha)
    if len(xs_a) == 0 or len(xs_b) == 0:
        raise ValueError("procrustes_grid needs at least one layer on each side")
    xa = [as_features(x, f"xs_a[{i}]") for i, x in enumerate(xs_a)]
    xb = [as_features(x, f"xs_b[{j}]") for j, x in enumerate(xs_b)]
    ns = {x.shape[0] for x in xa + xb}
    if len(ns) != 1:
        raise ValueError(f"every layer must hold the same samples, got sample counts {sorted(ns)}")
    if ns.pop() < 2:
        raise ValueError("need at least 2 samples")
    fa = [_factor(x, alpha) for x in xa]
    fb = [_factor(x, alpha) for x in xb]
    dev = xa[0].device
    la, lb = len(fa), len(fb)
    nuc = torch.zeros(la, lb, dtype=torch.float64, device=dev)
    for ia, ib, m in pair_blocks([f.f for f in fa], [f.f for f in fb]):
        nuc[torch.tensor(ia, device=dev)[:, None], torch.tensor(ib, device=dev)[None, :]] = (
            torch.linalg.svdvals(m).sum(-1))
    sq_a = torch.stack([f.sq_norm for f in fa])[:, None].expand(la, lb).clone()
    sq_b = torch.stack([f.sq_norm for f in fb])[None, :].expand(la, lb).clone()
    if alpha <= 1.0 - NETREP_EIGVAL_TOL and score == "euclidean":
        # the scale depends on the padded width D = max(d_a, d_b) of each pair: one scalar
        # per (layer, distinct width), gathered onto the grid
        widths = sorted({f.width for f in fa + fb})
        col = {w: k for k, w in enumerate(widths)}
        ca = torch.stack([torch.stack([whitening_scale(f.s, w, alpha) for w in widths]) for f in fa])
        cb = torch.stack([torch.stack([whitening_scale(f.s, w, alpha) for w in widths]) for f in fb])
        k = torch.tensor([[col[max(f.width, h.width)] for h in fb] for f in fa], device=dev)
        cx = ca.gather(1, k)
        cy = cb.gather(1, k.T).T
        nuc, sq_a, sq_b = nuc * cx * cy, sq_a * cx * cx, sq_b * cy * cy
    return shape_grid(nuc, sq_a, sq_b, score, [f.constant for f in fa], [f.constant for f in fb], dev)
