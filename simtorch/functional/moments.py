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

import torch
from torch import Tensor

from .cca import SvccaVariant, _check_keep, svcca_keep_count
from .procrustes import (
    NETREP_EIGVAL_TOL,
    ProcrustesScore,
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
    "eigh_desc",
    "whitener",
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


def eigh_desc(c: Tensor) -> tuple[Tensor, Tensor]:
    lam, v = torch.linalg.eigh(c)
    return lam.flip(0).clamp_min(0), v.flip(1)


def whitener(c: Tensor, n: int, eps: float) -> Tensor:
    """``W`` (d × r) with ``Wᵀ C W = I_r`` on the numerical range of ``C``."""
    lam, v = eigh_desc(c)
    if lam.numel() == 0 or not bool(lam[0] > 0):
        return v[:, :0]
    m = max(n, c.shape[0])
    keep = lam > lam[0] * max((m * eps) ** 2, m * _EPS64)
    return v[:, keep] * lam[keep].rsqrt()


def _ccas(cxx: Tensor, cyy: Tensor, cxy: Tensor, n: int, eps: float) -> Tensor:
    wx, wy = whitener(cxx, n, eps), whitener(cyy, n, eps)
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
            lam, v = eigh_desc(c)
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
        lam, v = eigh_desc(raw if variant == "anatome" else c)
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
