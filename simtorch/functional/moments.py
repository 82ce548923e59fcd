"""Exact streaming forms of Procrustes, CCA and SVCCA from additive float64 moments.

For narrow layers the engine need not keep the features: per layer pair it can sum, over
batches and in float64, the sample count ``n``, the feature sums ``Σx``, ``Σy`` and the raw
second moments ``Σxᵀx``, ``Σyᵀy``, ``Σxᵀy`` (a :class:`PairMoments`; sums, so batches and
ranks add). Then, with ``C_xy = Σxᵀy − (Σx)(Σy)ᵀ/n`` the centred cross-product
(``= X_cᵀY_c`` exactly):

- Procrustes, every score and ``alpha``: ``‖X_cᵀY_c‖_* = ‖C_xy‖_*``, ``‖X_c‖_F² = tr C_xx``;
  netrep's whitening is ``Z_x = V diag(α + (1−α)λ^{-1/2}) Vᵀ`` from ``eigh(C_xx)``, so
  ``X_wᵀY_w = c_x c_y Z_x C_xy Z_y`` and ``‖X_w‖² = c_x² Σ λ_i g_i²``.
- Canonical correlations: ``ρ = svdvals(C_xx^{-1/2} C_xy C_yy^{-1/2})`` (pseudo-inverse
  square roots on the covariances' ranges), hence mean CCA.
- SVCCA (both variants): the right singular vectors and values of the uncentred ``X``
  (anatome) are the eigenvectors and square roots of the eigenvalues of ``Σxᵀx``; those
  of ``X_c`` (google) come from ``C_xx``. The projections ``P = X V_k`` then have centred
  moments ``V_kᵀ C_xx V_k`` and ``V_kᵀ C_xy W_k``, and their CCA follows as above.
- **PWCCA is not available**: its weights ``α_j = Σ_i |(x Q)_ij|`` take an absolute value
  per sample, which no finite set of moments determines. Buffer the features instead.

Memory: per layer ``d + d²`` float64 (``Σx``, ``Σxᵀx``), per pair ``d_x·d_y`` (``Σxᵀy``);
Procrustes with ``alpha = 1`` needs of the within-layer moments only ``tr Σxᵀx``.
:class:`GridMoments` holds them for every layer pair of two stacks at once (layers side by
side), and :func:`procrustes_grid_from_moments` / :func:`svcca_grid_from_moments` give the
whole grid from it with one ``eigh`` per layer and batched singular values per pair, as the
feature grids do.

Precision: everything is exact algebra, but the covariances square the condition number:
directions with ``σ_i / σ_max`` below ``√(d·ε₆₄) ≈ 1e-7`` are treated as null by the CCA
forms, and centring by subtraction loses ``ε₆₄ · ‖μ‖² / var`` relative accuracy for
features with a large common offset (accumulating the moments of ``x − x₀`` for a fixed
shift ``x₀``, e.g. the first batch's mean, avoids that; the uncentred ``Σxᵀx`` of anatome's
SVCCA is recovered exactly from the shifted sums).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from .cca import SvccaVariant, _check_keep, svcca_keep_count
from .procrustes import (
    MAX_BLOCK_ELEMS,
    NETREP_EIGVAL_TOL,
    ProcrustesScore,
    ShapeGrid,
    _check_args,
    _finish,
    as_features,
    whitening_scale,
)

__all__ = [
    "PairMoments",
    "procrustes_from_moments",
    "cca_from_moments",
    "svcca_from_moments",
    "GridMoments",
    "procrustes_grid_from_moments",
    "svcca_grid_from_moments",
]

_EPS64 = torch.finfo(torch.float64).eps


@dataclass(frozen=True)
class PairMoments:
    """Additive float64 moments of two representations over the same samples.

    Attributes
    ----------
    n : int
        Number of samples.
    sum_x, sum_y : Tensor ``(d_x,)``, ``(d_y,)``
        ``Σ_i x_i``, ``Σ_i y_i``.
    sxx, syy, sxy : Tensor ``(d_x, d_x)``, ``(d_y, d_y)``, ``(d_x, d_y)``
        Raw (uncentred) ``XᵀX``, ``YᵀY``, ``XᵀY``.
    """

    n: int
    sum_x: Tensor
    sum_y: Tensor
    sxx: Tensor
    syy: Tensor
    sxy: Tensor

    @classmethod
    def of(cls, x: Tensor, y: Tensor) -> "PairMoments":
        """The moments of one batch (``x``, ``y``: ``(b, ...)``), in float64."""
        xf, yf = as_features(x, "x"), as_features(y, "y")
        if xf.shape[0] != yf.shape[0]:
            raise ValueError(f"x and y must hold the same samples, got n={xf.shape[0]} and n={yf.shape[0]}")
        return cls(xf.shape[0], xf.sum(0), yf.sum(0), xf.T @ xf, yf.T @ yf, xf.T @ yf)

    def __add__(self, other: "PairMoments") -> "PairMoments":
        return PairMoments(self.n + other.n, self.sum_x + other.sum_x, self.sum_y + other.sum_y,
                           self.sxx + other.sxx, self.syy + other.syy, self.sxy + other.sxy)

    def centred(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(C_xx, C_yy, C_xy) = (X_cᵀX_c, Y_cᵀY_c, X_cᵀY_c)``, unnormalised like netrep's."""
        if self.n < 2:
            raise ValueError(f"need at least 2 samples, got n={self.n}")
        mx, my = self.sum_x / self.n, self.sum_y / self.n
        cxx = self.sxx - self.n * torch.outer(mx, mx)
        cyy = self.syy - self.n * torch.outer(my, my)
        return (cxx + cxx.T) / 2, (cyy + cyy.T) / 2, self.sxy - self.n * torch.outer(mx, my)


def _constant(c: Tensor, raw: Tensor, n: int) -> bool:
    # centring by subtraction leaves ~ε·tr(raw) of noise in tr(C): anything that small is zero
    return bool(c.diagonal().sum() <= (n + c.shape[0]) * _EPS64 * raw.diagonal().sum())


def _eigh_desc(c: Tensor) -> tuple[Tensor, Tensor]:
    lam, v = torch.linalg.eigh(c)
    return lam.flip(0).clamp_min(0), v.flip(1)


def _whitener(c: Tensor, n: int, eps: float) -> Tensor:
    """``W`` (d × r) with ``Wᵀ C W = I_r`` on the numerical range of ``C``."""
    lam, v = _eigh_desc(c)
    if lam.numel() == 0 or not bool(lam[0] > 0):
        return v[:, :0]
    m = max(n, c.shape[0])
    keep = lam > lam[0] * max((m * eps) ** 2, m * _EPS64)
    return v[:, keep] * lam[keep].rsqrt()


def _ccas(cxx: Tensor, cyy: Tensor, cxy: Tensor, n: int, eps: float) -> Tensor:
    wx, wy = _whitener(cxx, n, eps), _whitener(cyy, n, eps)
    return torch.linalg.svdvals(wx.T @ cxy @ wy)


def procrustes_from_moments(m: PairMoments, score: ProcrustesScore = "angular", alpha: float = 1.0) -> Tensor:
    """:func:`~.procrustes.procrustes` from moments, exactly (netrep ``LinearMetric``).

    ``alpha = 1``: ``cos θ = ‖C_xy‖_* / √(tr C_xx · tr C_yy)``, ``euclidean² = tr C_xx +
    tr C_yy − 2‖C_xy‖_*``. ``alpha < 1``: ``C_xy → Z_x C_xy Z_y`` with netrep's partial
    whitening from ``eigh(C_xx)`` (eigenvalues clipped at 1e-7) and its variance-preserving
    scale over the padded width ``max(d_x, d_y)``.

    Returns
    -------
    Tensor ``()`` float64; angular/cosine NaN with a ``UserWarning`` for a constant side.
    """
    _check_args(score, alpha)
    cxx, cyy, cxy = m.centred()
    const = _constant(cxx, m.sxx, m.n) or _constant(cyy, m.syy, m.n)
    if alpha > 1.0 - NETREP_EIGVAL_TOL:
        nuc = torch.linalg.svdvals(cxy).sum()
        sq_x, sq_y = cxx.diagonal().sum().clamp_min(0), cyy.diagonal().sum().clamp_min(0)
    else:
        width = max(cxx.shape[0], cyy.shape[0])
        zs, sqs, scales = [], [], []
        for c in (cxx, cyy):
            lam, v = _eigh_desc(c)
            gain = alpha + (1 - alpha) * lam.clamp_min(NETREP_EIGVAL_TOL).rsqrt()
            zs.append((v * gain) @ v.T)
            sqs.append((lam * gain * gain).sum())
            scales.append(whitening_scale(lam.sqrt(), width, alpha))
        cx, cy = scales
        nuc = cx * cy * torch.linalg.svdvals(zs[0] @ cxy @ zs[1]).sum()
        sq_x, sq_y = cx * cx * sqs[0], cy * cy * sqs[1]
    value = _finish(nuc, sq_x, sq_y, score)
    if const and score != "euclidean":
        warnings.warn(f"procrustes_from_moments: constant features (zero centred variance) make the {score} "
                      "score 0/0; returning NaN", UserWarning, stacklevel=2)
        return torch.full((), float("nan"), dtype=torch.float64, device=value.device)
    return value


def cca_from_moments(m: PairMoments, eps: float | None = None) -> Tensor:
    """Canonical correlations ``ρ_1 ≥ … ≥ ρ_m`` from moments (``mean()`` gives mean CCA).

    Parameters
    ----------
    m : PairMoments
    eps : float, optional
        Relative precision of the features that were summed; default float64's (the
        values are taken as exact, as in :func:`~.cca.canonical_correlations`). Covariance eigenvalues below ``λ_max · max((n_d·eps)², n_d·ε₆₄)``,
        ``n_d = max(n, d)``, count as null directions.
    """
    cxx, cyy, cxy = m.centred()
    return _ccas(cxx, cyy, cxy, m.n, _EPS64 if eps is None else eps)


def svcca_from_moments(
    m: PairMoments,
    keep: float = 0.99,
    return_distance: bool = False,
    variant: SvccaVariant = "anatome",
    eps: float | None = None,
) -> Tensor:
    """:func:`~.cca.svcca` from moments, exactly.

    ``"anatome"``: ``Σxᵀx = V diag(s²) Vᵀ`` gives the uncentred SVD's ``s`` and ``V``;
    ``"google"``: the same from ``C_xx``. Keep ``k`` directions by
    :func:`~.cca.svcca_keep_count`, then the CCA of ``P = X V_k`` from
    ``(V_kᵀ C_xx V_k, V_kᵀ C_xy W_k, W_kᵀ C_yy W_k)``; similarity ``Σρ / min(k_x, k_y)``.

    Returns
    -------
    Tensor ``()`` float64; NaN with a ``UserWarning`` when a side keeps no direction.
    """
    _check_keep(keep, variant)
    e = _EPS64 if eps is None else eps
    cxx, cyy, cxy = m.centred()
    kept = []
    for raw, c in ((m.sxx, cxx), (m.syy, cyy)):
        lam, v = _eigh_desc(raw if variant == "anatome" else c)
        lam = lam[: min(m.n, lam.numel())]
        # eigenvalues at float noise stand for exact zeros of the SVD
        s = torch.where(lam > lam[:1] * max(m.n, c.shape[0]) * _EPS64, lam, 0.0).sqrt()
        k = svcca_keep_count(s, keep, "google" if variant == "google" else "anatome")
        kept.append(v[:, :k])
    (vx, vy), (kx, ky) = kept, (kept[0].shape[1], kept[1].shape[1])
    const = kx == 0 or ky == 0 or _constant(cxx, m.sxx, m.n) or _constant(cyy, m.syy, m.n)
    if not const:
        rho = _ccas(vx.T @ cxx @ vx, vy.T @ cyy @ vy, vx.T @ cxy @ vy, m.n, e)
        const = rho.numel() == 0
    if const:
        warnings.warn("svcca_from_moments: a side keeps no direction (constant or rank-one features, or "
                      f"keep={keep} too small); returning NaN", UserWarning, stacklevel=2)
        return torch.full((), float("nan"), dtype=torch.float64, device=cxy.device)
    sim = rho.sum() / min(kx, ky)
    return 1 - sim if return_distance else sim


# ------------------------------------------------------------------------ every layer pair


@dataclass(frozen=True)
class GridMoments:
    """Additive float64 moments of two stacks of layers over the same samples: the
    :class:`PairMoments` of every layer pair at once, layers side by side.

    Attributes
    ----------
    n : int
        Number of samples.
    widths_a, widths_b : tuple of int
        Feature width ``d_i`` of each layer; ``D = Σ d_i`` per side.
    sum_a, sum_b : Tensor ``(D_a,)``, ``(D_b,)``
        ``Σ x`` of the layers, concatenated.
    sq_a, sq_b : tuple of Tensor
        Per layer the raw ``Σ xᵀx`` ``(d, d)``, or only its diagonal ``(d,)``
        (``diagonal=True``: all that Procrustes with ``alpha = 1`` needs).
    cross : Tensor ``(D_a, D_b)``
        Raw ``Σ x_aᵀ x_b``; block ``(i, j)`` belongs to layer pair ``(i, j)``.

    Memory (float64 values): ``D_a·D_b + D_a + D_b + Σ d_i² + Σ d_j²`` (``Σ d`` instead of
    ``Σ d²`` when diagonal); see :meth:`floats`.
    """

    n: int
    widths_a: tuple[int, ...]
    widths_b: tuple[int, ...]
    sum_a: Tensor
    sum_b: Tensor
    sq_a: tuple[Tensor, ...]
    sq_b: tuple[Tensor, ...]
    cross: Tensor

    @classmethod
    def of(cls, xs_a, xs_b, diagonal: bool = False) -> "GridMoments":
        """The moments of one batch: ``xs_a``, ``xs_b`` lists of ``(b, ...)`` layers."""
        xa = [as_features(x, f"xs_a[{i}]") for i, x in enumerate(xs_a)]
        xb = [as_features(x, f"xs_b[{j}]") for j, x in enumerate(xs_b)]
        if not xa or not xb:
            raise ValueError("GridMoments.of needs at least one layer on each side")
        if len({x.shape[0] for x in xa + xb}) != 1:
            raise ValueError(f"every layer must hold the same samples, got {sorted({x.shape[0] for x in xa + xb})}")
        ca, cb = torch.cat(xa, dim=1), torch.cat(xb, dim=1)

        def sq(x: Tensor) -> Tensor:
            return (x * x).sum(0) if diagonal else x.T @ x

        return cls(ca.shape[0], tuple(x.shape[1] for x in xa), tuple(x.shape[1] for x in xb), ca.sum(0),
                   cb.sum(0), tuple(sq(x) for x in xa), tuple(sq(x) for x in xb), ca.T @ cb)

    @classmethod
    def from_self(cls, n: int, widths: tuple[int, ...], sums: Tensor, cross: Tensor,
                  diagonal: bool = False) -> "GridMoments":
        """The moments of one stack against itself from its ``Σx`` and ``Σ xᵀx`` ``(D, D)``
        alone (the within-layer blocks are diagonal blocks of ``cross``)."""
        blocks = [cross[s, s] for s in _slices(widths)]
        sq = tuple(b.diagonal().clone() if diagonal else b for b in blocks)
        return cls(n, tuple(widths), tuple(widths), sums, sums, sq, sq, cross)

    @staticmethod
    def floats(widths_a, widths_b, diagonal: bool = False, same: bool = False) -> int:
        """Float64 values the moments of these layers hold (``same``: one stack against
        itself, stored as ``Σx`` and ``Σ xᵀx`` only)."""
        da, db = sum(widths_a), sum(widths_b)
        if same:
            return da * da + da
        within = (da + db) if diagonal else sum(d * d for d in widths_a) + sum(d * d for d in widths_b)
        return da * db + da + db + within

    def __add__(self, other: "GridMoments") -> "GridMoments":
        if (self.widths_a, self.widths_b) != (other.widths_a, other.widths_b):
            raise ValueError("cannot add the moments of layers of different widths")
        return GridMoments(self.n + other.n, self.widths_a, self.widths_b, self.sum_a + other.sum_a,
                           self.sum_b + other.sum_b, tuple(p + q for p, q in zip(self.sq_a, other.sq_a)),
                           tuple(p + q for p, q in zip(self.sq_b, other.sq_b)), self.cross + other.cross)

    def pair(self, i: int, j: int) -> PairMoments:
        """The :class:`PairMoments` of layer pair ``(i, j)`` (a diagonal ``Σ xᵀx`` becomes a
        diagonal matrix: valid for Procrustes with ``alpha = 1`` only)."""
        sa, sb = _slices(self.widths_a)[i], _slices(self.widths_b)[j]
        full = lambda t: torch.diag(t) if t.dim() == 1 else t  # noqa: E731
        return PairMoments(self.n, self.sum_a[sa], self.sum_b[sb], full(self.sq_a[i]), full(self.sq_b[j]),
                           self.cross[sa, sb])


def _slices(widths) -> list[slice]:
    out, start = [], 0
    for d in widths:
        out.append(slice(start, start + d))
        start += d
    return out


class _Side(NamedTuple):
    c: Tensor  # centred Σ (d, d), or its diagonal (d,)
    trace: Tensor
    constant: bool


def _centred_sides(n: int, sums: Tensor, sq: tuple[Tensor, ...], widths) -> list[_Side]:
    out = []
    for s, raw in zip(_slices(widths), sq):
        mu = sums[s] / n
        if raw.dim() == 1:
            c = raw - n * mu * mu
            tr, raw_tr = c.sum(), raw.sum()
        else:
            c = raw - n * torch.outer(mu, mu)
            c = (c + c.T) / 2
            tr, raw_tr = c.diagonal().sum(), raw.diagonal().sum()
        # as _constant: centring by subtraction leaves ~ε·tr(raw) of noise in tr(C)
        out.append(_Side(c, tr, bool(tr <= (n + raw.shape[0]) * _EPS64 * raw_tr)))
    return out


def _transform(m: Tensor, left, widths_a, right, widths_b) -> Tensor:
    """``blockdiag(left)ᵀ · m · blockdiag(right)``, one GEMM per layer (None: identity)."""
    if left is not None:
        m = torch.cat([t.T @ m[s] for t, s in zip(left, _slices(widths_a))], dim=0)
    if right is not None:
        m = torch.cat([m[:, s] @ t for t, s in zip(right, _slices(widths_b))], dim=1)
    return m


def _block_svd_sums(m: Tensor, widths_a, widths_b, max_elems: int = MAX_BLOCK_ELEMS) -> Tensor:
    """``Σ svdvals(block (i, j))`` of ``m`` for every layer pair, batched over the blocks of
    equal shape (0 for an empty block)."""
    out = torch.zeros(len(widths_a), len(widths_b), dtype=m.dtype, device=m.device)
    sa, sb = _slices(widths_a), _slices(widths_b)
    ga, gb = _groups(widths_a), _groups(widths_b)
    for ka, rows in ga.items():
        for kb, cols in gb.items():
            per_pair = ka * kb
            col_step = max(1, min(len(cols), max_elems // per_pair))
            row_step = max(1, max_elems // (per_pair * col_step))
            for c0 in range(0, len(cols), col_step):
                cidx = cols[c0:c0 + col_step]
                ci = torch.cat([torch.arange(sb[j].start, sb[j].stop, device=m.device) for j in cidx])
                for r0 in range(0, len(rows), row_step):
                    ridx = rows[r0:r0 + row_step]
                    ri = torch.cat([torch.arange(sa[i].start, sa[i].stop, device=m.device) for i in ridx])
                    blocks = m[ri][:, ci].reshape(len(ridx), ka, len(cidx), kb).permute(0, 2, 1, 3)
                    out[torch.tensor(ridx, device=m.device)[:, None], torch.tensor(cidx, device=m.device)[None, :]] = (
                        torch.linalg.svdvals(blocks).sum(-1))
    return out


def _groups(widths) -> dict[int, list[int]]:
    g: dict[int, list[int]] = {}
    for i, d in enumerate(widths):
        if d > 0:
            g.setdefault(int(d), []).append(i)
    return g


def _centred_cross(gm: GridMoments) -> Tensor:
    return gm.cross - torch.outer(gm.sum_a, gm.sum_b) / gm.n


def procrustes_grid_from_moments(gm: GridMoments, score: ProcrustesScore = "angular", alpha: float = 1.0) -> ShapeGrid:
    """:func:`procrustes_from_moments` for every layer pair, as :func:`~.procrustes.procrustes_grid`
    gives it from features: per layer the traces (and, for ``alpha < 1``, netrep's whitening
    ``Z`` from one ``eigh``), per pair ``‖Z_i C_ij Z_j‖_*``, batched over blocks of equal widths.

    ``alpha = 1`` needs only the diagonals of the within-layer moments (``GridMoments.of(...,
    diagonal=True)``). Constant layers are flagged in ``bad_a``/``bad_b`` (NaN cells for the
    angular and cosine scores); nothing warns.
    """
    _check_args(score, alpha)
    if gm.n < 2:
        raise ValueError(f"need at least 2 samples, got n={gm.n}")
    whiten = alpha <= 1.0 - NETREP_EIGVAL_TOL
    sides_a = _centred_sides(gm.n, gm.sum_a, gm.sq_a, gm.widths_a)
    sides_b = _centred_sides(gm.n, gm.sum_b, gm.sq_b, gm.widths_b)
    dev = gm.cross.device
    cross = _centred_cross(gm)
    if not whiten:
        sq = [torch.stack([s.trace.clamp_min(0) for s in ss]) for ss in (sides_a, sides_b)]
        nuc = _block_svd_sums(cross, gm.widths_a, gm.widths_b)
    else:
        zs, sqs, lams = [], [], []
        for ss in (sides_a, sides_b):
            z_side, sq_side, lam_side = [], [], []
            for s in ss:
                if s.c.dim() == 1:
                    raise ValueError("alpha < 1 needs the full within-layer moments "
                                     "(GridMoments.of(..., diagonal=False))")
                lam, v = _eigh_desc(s.c)
                gain = alpha + (1 - alpha) * lam.clamp_min(NETREP_EIGVAL_TOL).rsqrt()
                z_side.append((v * gain) @ v.T)
                sq_side.append((lam * gain * gain).sum())
                lam_side.append(lam)
            zs.append(z_side)
            sqs.append(torch.stack(sq_side))
            lams.append(lam_side)
        nuc = _block_svd_sums(_transform(cross, zs[0], gm.widths_a, zs[1], gm.widths_b), gm.widths_a, gm.widths_b)
        sq = sqs
    la, lb = len(sides_a), len(sides_b)
    sq_a = sq[0][:, None].expand(la, lb).clone()
    sq_b = sq[1][None, :].expand(la, lb).clone()
    if whiten and score == "euclidean":
        # netrep's variance-preserving scale over the padded width max(d_i, d_j) of each pair
        cx = torch.stack([torch.stack([whitening_scale(lams[0][i].sqrt(), max(da, db), alpha)
                                       for db in gm.widths_b]) for i, da in enumerate(gm.widths_a)])
        cy = torch.stack([torch.stack([whitening_scale(lams[1][j].sqrt(), max(da, db), alpha)
                                       for j, db in enumerate(gm.widths_b)]) for da in gm.widths_a])
        nuc, sq_a, sq_b = nuc * cx * cy, sq_a * cx * cx, sq_b * cy * cy
    values = _finish(nuc, sq_a, sq_b, score)
    bad_a = torch.tensor([s.constant for s in sides_a], device=dev)
    bad_b = torch.tensor([s.constant for s in sides_b], device=dev)
    invalid = torch.zeros(la, lb, dtype=torch.bool, device=dev)
    if score != "euclidean":
        invalid = bad_a[:, None] | bad_b[None, :]
        values = values.masked_fill(invalid, float("nan"))
    return ShapeGrid(values, invalid, bad_a, bad_b)


def svcca_grid_from_moments(
    gm: GridMoments,
    keep: float = 0.99,
    return_distance: bool = False,
    variant: SvccaVariant = "anatome",
    eps: float | None = None,
) -> ShapeGrid:
    """:func:`svcca_from_moments` for every layer pair, as :func:`~.cca.svcca_grid` gives it
    from features: per layer one ``eigh`` of ``Σxᵀx`` (anatome) or ``C_xx`` (google), the
    kept directions ``V_k`` and the whitener ``W`` of their covariance, so that
    ``T = V_k W``; per pair ``Σ svdvals(T_iᵀ C_ij T_j) / min(k_i, k_j)``, batched over blocks
    of equal ranks. Layers that keep no direction are flagged in ``bad_a``/``bad_b`` (NaN
    cells); nothing warns.
    """
    _check_keep(keep, variant)
    if gm.n < 2:
        raise ValueError(f"need at least 2 samples, got n={gm.n}")
    e = _EPS64 if eps is None else eps
    n = gm.n
    per_side = []
    for sums, sq, widths in ((gm.sum_a, gm.sq_a, gm.widths_a), (gm.sum_b, gm.sq_b, gm.widths_b)):
        ts, ks, ranks, bad = [], [], [], []
        for s, raw in zip(_centred_sides(n, sums, sq, widths), sq):
            if raw.dim() == 1:
                raise ValueError("SVCCA needs the full within-layer moments (GridMoments.of(..., diagonal=False))")
            lam, v = _eigh_desc(raw if variant == "anatome" else s.c)
            lam = lam[: min(n, lam.numel())]
            sv = torch.where(lam > lam[:1] * max(n, s.c.shape[0]) * _EPS64, lam, 0.0).sqrt()
            k = svcca_keep_count(sv, keep, "google" if variant == "google" else "anatome")
            vk = v[:, :k]
            t = vk[:, :0]
            if k > 0 and not s.constant:
                t = vk @ _whitener(vk.T @ s.c @ vk, n, e)
            ts.append(t)
            ks.append(k)
            ranks.append(t.shape[1])
            bad.append(k == 0 or s.constant or t.shape[1] == 0)
        per_side.append((ts, ks, ranks, bad))
    (ta, ka, ra, bad_a_), (tb, kb, rb, bad_b_) = per_side
    dev = gm.cross.device
    m = _transform(_centred_cross(gm), ta, gm.widths_a, tb, gm.widths_b)
    rho_sum = _block_svd_sums(m, ra, rb)
    num_a = torch.tensor(ka, dtype=torch.float64, device=dev)
    num_b = torch.tensor(kb, dtype=torch.float64, device=dev)
    bad_a = torch.tensor(bad_a_, device=dev)
    bad_b = torch.tensor(bad_b_, device=dev)
    invalid = bad_a[:, None] | bad_b[None, :]
    sim = rho_sum / torch.minimum(num_a[:, None], num_b[None, :]).clamp_min(1)
    values = (1 - sim) if return_distance else sim
    return ShapeGrid(values.masked_fill(invalid, float("nan")), invalid, bad_a, bad_b)
