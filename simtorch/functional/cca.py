"""CCA-based similarities: canonical correlations, SVCCA and PWCCA on tensors.

Canonical correlations of column-centred ``X`` (n×d_x) and ``Y`` (n×d_y) are the singular
values of ``U_xᵀU_y``, with ``U`` orthonormal bases of the centred column spaces (the
cosines of the principal angles; Press 2011, *Canonical correlation clarified by singular
value decomposition*; Björck & Golub 1973). Bases come from thin SVDs truncated at the
float64 numerical rank ``σ_i > σ_max · max(n, d) · ε₆₄`` of the values as given (a float16
or bfloat16 input is taken as exact, like every reference implementation does after its
upcast), so exactly constant or collinear features (dead units, duplicated channels) are
dropped rather than divided by zero.

- SVCCA (Raghu et al. 2017, NeurIPS) as anatome's ``svcca_distance``: per side an SVD of
  the *uncentred* features, keep the top ``num = #{i : Σ_{j≤i} s_j / Σ_j s_j < keep}``
  directions (singular values, not variances; strict ``<``; the count itself, not count+1),
  project ``P = X V[:, :num]``, then CCA of the projections; similarity ``Σρ / min(num_x, num_y)``.
- PWCCA (Morcos, Raghu, Bengio 2018, NeurIPS) as anatome's ``pwcca_distance``: CCA of the
  full ``x`` and ``y``; the x-side canonical coefficients ``a = V_x S_x^{-1} P`` are
  re-orthonormalised by QR, ``Q = qr(a)``; weights ``α_j = Σ_i |(x Q)_ij|`` with the
  *uncentred* x, normalised to sum 1; similarity ``Σ_j α_j ρ_j``. Asymmetric (weights from x).

References
----------
- Raghu, Gilmer, Yosinski, Sohl-Dickstein (2017), *SVCCA*, NeurIPS.
- Morcos, Raghu, Bengio (2018), *Insights on representational similarity in neural
  networks with canonical correlation*, NeurIPS.
- anatome (github.com/moskomule/anatome, ``anatome/distance.py``); google/svcca
  (``cca_core.py``, ``pwcca.py``, tutorial 001).
"""

from __future__ import annotations

import warnings
from typing import Literal, NamedTuple, Sequence

import torch
from torch import Tensor

from .procrustes import ShapeGrid, _check_pair, as_features, is_constant, pair_blocks

__all__ = [
    "SvccaVariant",
    "PWCCA_TIE_ATOL",
    "centred_basis",
    "svcca_keep_count",
    "canonical_correlations",
    "svcca",
    "svcca_grid",
    "pwcca",
    "pwcca_grid",
]

SvccaVariant = Literal["anatome", "google"]

#: Consecutive canonical correlations closer than this are tied; inside a tie the canonical
#: directions (hence PWCCA's weights) are an arbitrary rotation. Structural ties (shared
#: subspaces, ρ = 1) come out of float64 within ~1e-14; a real gap of 1e-10 rotates the
#: basis by only ε/gap ≈ 1e-6.
PWCCA_TIE_ATOL = 1e-10

_EPS64 = torch.finfo(torch.float64).eps


class _Basis(NamedTuple):
    u: Tensor  # (n, r) orthonormal basis of the centred column space
    s: Tensor  # (r,) its singular values
    v: Tensor  # (d, r) right singular vectors
    constant: bool


def centred_basis(x: Tensor, eps: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Truncated thin SVD ``X_c ≈ U S Vᵀ`` of the column-centred features.

    Parameters
    ----------
    x : Tensor ``(n, ...)``
    eps : float, optional
        Relative precision of the features (default float64's); singular values
        ``≤ σ_max · max(n, d) · eps`` are dropped (numpy's ``matrix_rank`` rule). Pass a
        larger one (e.g. float32's) to treat near-collinear directions as null.

    Returns
    -------
    u ``(n, r)``, s ``(r,)``, v ``(d, r)`` in float64, ``r`` the numerical rank (0 for
    constant features).
    """
    b = _basis(as_features(x), _EPS64 if eps is None else eps)
    return b.u, b.s, b.v


def _basis(x: Tensor, eps: float) -> _Basis:
    n, d = x.shape
    xc = x - x.mean(dim=0, keepdim=True)
    u, s, vh = torch.linalg.svd(xc, full_matrices=False)
    if s.numel() == 0 or is_constant(s[0], torch.linalg.vector_norm(x), n):
        return _Basis(u[:, :0], s[:0], vh.T[:, :0], True)
    r = int((s > s[0] * max(n, d) * eps).sum())
    return _Basis(u[:, :r], s[:r], vh[:r].T, False)


def canonical_correlations(x: Tensor, y: Tensor) -> Tensor:
    """Canonical correlations ``ρ_1 ≥ … ≥ ρ_m`` of ``x`` and ``y``, ``m = min(rank_x, rank_y)``.

    ``ρ = svdvals(U_xᵀU_y)`` with ``U`` orthonormal bases of the centred column spaces,
    equivalently ``svdvals(C_xx^{-1/2} C_xy C_yy^{-1/2})`` on the ranges of the covariances.
    Needs nothing of ``n`` versus ``d``, but ``rank_x + rank_y ≥ n`` forces ``ρ = 1`` values.
    Float64, on the inputs' device.
    """
    xf, yf = _check_pair(x, y)
    bx, by = _basis(xf, _EPS64), _basis(yf, _EPS64)
    return torch.linalg.svdvals(bx.u.T @ by.u)


def svcca_keep_count(s: Tensor, keep: float, variant: SvccaVariant = "anatome") -> int:
    """How many leading singular directions SVCCA keeps, from descending singular values.

    - ``"anatome"``: ``#{i : cumsum(s)_i / Σs < keep}`` (anatome ``_svd_reduction``) — for
      ``keep = 0.99`` it stops one short of the direction that crosses 99 % of ``Σs``.
    - ``"google"``: the fewest leading directions whose variance reaches ``keep``,
      ``1 + #{i : cumsum(s²)_i / Σs² < keep}`` (google/svcca ``sum_threshold`` applied to the
      variances, as Raghu et al. describe "99 % of the variance").
    """
    total = (s * s).sum() if variant == "google" else s.abs().sum()
    if s.numel() == 0 or not bool(total > 0):
        return 0
    frac = ((s * s) if variant == "google" else s.abs()).cumsum(0) / total
    count = int((frac < keep).sum())
    return min(count + 1, s.numel()) if variant == "google" else count


def _check_keep(keep: float, variant: str) -> None:
    if variant not in ("anatome", "google"):
        raise ValueError(f"variant must be 'anatome' or 'google', got {variant!r}")
    if not 0.0 < float(keep) <= 1.0:
        raise ValueError(f"keep must be in (0, 1] (the kept fraction, e.g. 0.99), got {keep!r}")


def _svcca_layer(x: Tensor, keep: float, variant: str) -> tuple[_Basis, int]:
    if variant == "anatome":
        # the SVD is of the raw features: a common offset is a direction like any other
        _, s, vh = torch.linalg.svd(x, full_matrices=False)
        num = svcca_keep_count(s, keep, "anatome")
        proj = x @ vh[:num].T
    else:
        u, s, _ = torch.linalg.svd(x - x.mean(dim=0, keepdim=True), full_matrices=False)
        num = svcca_keep_count(s, keep, "google")
        proj = u[:, :num] * s[:num]
    return _basis(proj, _EPS64), num


def _layers(xs: Sequence[Tensor], side: str) -> list[Tensor]:
    return [as_features(x, f"xs_{side}[{i}]") for i, x in enumerate(xs)]


def _check_layers(xa: list[Tensor], xb: list[Tensor], what: str) -> None:
    if not xa or not xb:
        raise ValueError(f"{what} needs at least one layer on each side")
    ns = {x.shape[0] for x in xa + xb}
    if len(ns) != 1:
        raise ValueError(f"every layer must hold the same samples, got sample counts {sorted(ns)}")
    if ns.pop() < 2:
        raise ValueError("need at least 2 samples")


def _index(ia: list[int], ib: list[int], dev: torch.device) -> tuple[Tensor, Tensor]:
    return torch.tensor(ia, device=dev)[:, None], torch.tensor(ib, device=dev)[None, :]


def svcca(
    x: Tensor,
    y: Tensor,
    keep: float = 0.99,
    return_distance: bool = False,
    variant: SvccaVariant = "anatome",
) -> Tensor:
    """SVCCA similarity ``Σ_i ρ_i / min(k_x, k_y)`` of the SVD-reduced representations.

    ``variant="anatome"`` (default) reproduces anatome's ``1 − svcca_distance(x, y, 0.99)``:
    the SVD is of the **uncentred** features, ``k = #{i : Σ_{j≤i} s_j / Σ s < keep}``
    (singular values), ``P = X V_k``; the CCA then centres ``P``. Invariant to orthogonal
    maps and isotropic scaling of either side, but not to translations or general
    invertible maps (they change the spectrum, hence the kept subspace).
    ``variant="google"`` follows google/svcca's tutorial and the paper: centre first, keep
    the fewest top directions holding ``keep`` of the variance (squared singular values),
    ``P = U_k S_k``; invariant to translations too. Both then take the canonical
    correlations ``ρ`` of ``P_x``, ``P_y`` and average them over ``min(k_x, k_y)``.

    Parameters
    ----------
    x, y : Tensor ``(n, ...)``
        Representations of the same samples; computed in float64.
    keep : float in (0, 1]
        Kept fraction (``accept_rate`` in anatome).
    return_distance : bool
        Return ``1 − similarity`` (anatome's distance) instead.
    variant : {"anatome", "google"}

    Returns
    -------
    Tensor ``()`` float64; NaN with a ``UserWarning`` when a side keeps no direction
    (constant or rank-one features, or ``keep`` too small).

    Notes
    -----
    A kept projection that is constant after centring (rank lost) has no canonical
    direction here and counts as ``ρ = 0``; anatome would pair it with an arbitrary
    orthonormal completion.
    """
    _check_keep(keep, variant)
    _check_pair(x, y)
    g = svcca_grid([x], [y], keep=keep, return_distance=return_distance, variant=variant)
    if bool(g.invalid[0, 0]):
        side = "x" if bool(g.bad_a[0]) else "y"
        warnings.warn(f"svcca: {side} keeps no direction (constant or rank-one features, or keep={keep} "
                      "too small); returning NaN", UserWarning, stacklevel=2)
    return g.values[0, 0]


def svcca_grid(
    xs_a: Sequence[Tensor],
    xs_b: Sequence[Tensor],
    keep: float = 0.99,
    return_distance: bool = False,
    variant: SvccaVariant = "anatome",
) -> ShapeGrid:
    """:func:`svcca` for every pair: one reduction SVD and one basis SVD per layer, then
    batched singular values of ``U_iᵀU_j`` (``r_i × r_j``) for all pairs of equal ranks.

    Returns a :class:`ShapeGrid`; layers that keep no direction are flagged in
    ``bad_a``/``bad_b`` and their cells are NaN.
    """
    _check_keep(keep, variant)
    xa, xb = _layers(xs_a, "a"), _layers(xs_b, "b")
    _check_layers(xa, xb, "svcca_grid")
    la_ = [_svcca_layer(x, keep, variant) for x in xa]
    lb_ = [_svcca_layer(x, keep, variant) for x in xb]
    dev = xa[0].device
    rho_sum = torch.zeros(len(xa), len(xb), dtype=torch.float64, device=dev)
    for ia, ib, m in pair_blocks([b.u for b, _ in la_], [b.u for b, _ in lb_]):
        rho_sum[_index(ia, ib, dev)] = torch.linalg.svdvals(m).sum(-1)
    num_a = torch.tensor([k for _, k in la_], dtype=torch.float64, device=dev)
    num_b = torch.tensor([k for _, k in lb_], dtype=torch.float64, device=dev)
    bad_a = torch.tensor([k == 0 or b.constant for b, k in la_], device=dev)
    bad_b = torch.tensor([k == 0 or b.constant for b, k in lb_], device=dev)
    invalid = bad_a[:, None] | bad_b[None, :]
    sim = rho_sum / torch.minimum(num_a[:, None], num_b[None, :]).clamp_min(1)
    values = (1 - sim) if return_distance else sim
    return ShapeGrid(values.masked_fill(invalid, float("nan")), invalid, bad_a, bad_b)


def _pwcca_weights(xv: Tensor, s: Tensor, dirs: Tensor) -> Tensor:
    """``α = Σ_i |(x Q)_ij|`` normalised, ``Q = qr(V S^{-1} P)``, batched over pairs.

    ``V`` has orthonormal columns, so ``qr(V S^{-1} P) = V · qr(S^{-1} P)`` (up to column
    signs, which ``|·|`` ignores) and ``x Q = (x V) · qr(S^{-1} P)``: only an ``r × m`` QR
    per pair plus one ``(n × r)·(r × m)`` product against the per-layer ``x V``.
    """
    q = torch.linalg.qr(dirs / s[..., :, None]).Q
    alpha = (xv @ q).abs().sum(dim=-2)
    return alpha / alpha.sum(dim=-1, keepdim=True)


def _ambiguous(rho: Tensor) -> Tensor:
    """A tie between some consecutive ρ while not all of them tie: PWCCA is then undefined
    (the weights inside a tie depend on an arbitrary basis); when every ρ ties, the value
    is that common ρ whatever the weights."""
    if rho.shape[-1] < 2:
        return torch.zeros(rho.shape[:-1], dtype=torch.bool, device=rho.device)
    gaps = rho[..., :-1] - rho[..., 1:]
    return (gaps <= PWCCA_TIE_ATOL).any(-1) & (gaps > PWCCA_TIE_ATOL).any(-1)


def pwcca(x: Tensor, y: Tensor, return_distance: bool = False) -> Tensor:
    """Projection-weighted CCA similarity ``Σ_j α_j ρ_j``, weighted by the first argument.

    As anatome's ``1 − pwcca_distance(x, y, backend="svd")``: CCA of the centred ``x``,
    ``y`` gives ``ρ`` and the x-side coefficients ``a = V_x S_x^{-1} P``
    (``U_xᵀU_y = P diag(ρ) Rᵀ``); ``Q = qr(a)``;
    ``α_j = Σ_i |(x Q)_ij|`` with the **uncentred** ``x``, ``α ← α / Σα``.

    Invariant to orthogonal maps and isotropic scaling of ``x`` and to any invertible
    linear map or translation of ``y`` (only its centred column space enters); not to a
    translation of ``x`` (the weights use the raw ``x``). ``pwcca(x, y) ≠ pwcca(y, x)``.

    Parameters
    ----------
    x, y : Tensor ``(n, ...)``
        Need ``n ≥ d`` on each side, as anatome requires.
    return_distance : bool
        Return ``1 − similarity``.

    Returns
    -------
    Tensor ``()`` float64.

    Raises
    ------
    ValueError
        If ``n < d_x`` or ``n < d_y``.

    Notes
    -----
    - Constant or collinear features (dead units, ``n = d`` after centring) are handled on
      the column space: the coefficients live in the row space of ``X_c``, which for a dead
      unit is the same as dropping it. anatome divides by the zero singular value there.
    - NaN with a ``UserWarning`` when a side is constant, or when canonical correlations
      tie (within :data:`PWCCA_TIE_ATOL`) without all being tied: the weights inside a tie
      are basis-dependent, so no value is defined (all tied, as for ``pwcca(x, x)``, is fine).
    - google/svcca's ``compute_pwcca`` weights differently: it takes the side with fewer
      neurons, forms ``H = coef · (X − μ) + μ`` (canonical directions in the whitened
      basis applied to the unwhitened activations), ``P = qr(Hᵀ)`` (n × k, over samples)
      and ``α_j = Σ_neurons |⟨p_j, x_neuron⟩|``; its values differ from anatome's.
    """
    xf, yf = _check_pair(x, y)
    for name, f in (("x", xf), ("y", yf)):
        if f.shape[1] > f.shape[0]:
            raise ValueError(f"pwcca needs at least as many samples as features: {name} has "
                             f"n={f.shape[0]} < d={f.shape[1]}; use more samples or project "
                             f"{name} to at most {f.shape[0]} dimensions")
    g = pwcca_grid([x], [y], return_distance=return_distance)
    if bool(g.invalid[0, 0]):
        cause = ("x is constant" if bool(g.bad_a[0]) else "y is constant" if bool(g.bad_b[0])
                 else "canonical correlations are tied (the PWCCA weights are basis-dependent)")
        warnings.warn(f"pwcca: {cause}; returning NaN", UserWarning, stacklevel=2)
    return g.values[0, 0]


def pwcca_grid(
    xs_a: Sequence[Tensor],
    xs_b: Sequence[Tensor],
    return_distance: bool = False,
) -> ShapeGrid:
    """:func:`pwcca` for every pair, both directions.

    Per layer: the truncated SVD of the centred features and ``x V`` (uncentred x).
    Per chunk of equal-rank pairs: one GEMM for ``U_iᵀU_j``, one batched SVD, then batched
    QRs and products for the weights of both sides.

    Returns
    -------
    ShapeGrid
        ``values[i, j] = pwcca(A_i, B_j)``, ``reverse[i, j] = pwcca(B_j, A_i)``; ``invalid``
        marks NaN cells of either (constant layers in ``bad_a``/``bad_b``, tied correlations
        otherwise).

    Raises
    ------
    ValueError
        If a layer has more features than samples (``n < d``), naming it.
    """
    xa, xb = _layers(xs_a, "a"), _layers(xs_b, "b")
    _check_layers(xa, xb, "pwcca_grid")
    n = xa[0].shape[0]
    for side, xs in (("xs_a", xa), ("xs_b", xb)):
        for i, x in enumerate(xs):
            if x.shape[1] > n:
                raise ValueError(f"pwcca needs at least as many samples as features: {side}[{i}] has "
                                 f"n={n} < d={x.shape[1]}; use more samples or project the features "
                                 f"to at most {n} dimensions")
    ba = [_basis(x, _EPS64) for x in xa]
    bb = [_basis(x, _EPS64) for x in xb]
    xva = [x @ b.v for x, b in zip(xa, ba)]
    xvb = [x @ b.v for x, b in zip(xb, bb)]
    dev = xa[0].device
    la, lb = len(xa), len(xb)
    fwd = torch.full((la, lb), float("nan"), dtype=torch.float64, device=dev)
    rev = fwd.clone()
    tied = torch.zeros(la, lb, dtype=torch.bool, device=dev)
    cost = lambda ka, kb: ka * kb + 2 * (n + max(ka, kb)) * min(ka, kb)  # noqa: E731
    for ia, ib, m in pair_blocks([b.u for b in ba], [b.u for b in bb], cost=cost):
        p, rho, rh = torch.linalg.svd(m, full_matrices=False)  # (ra, gb, ka, k), (.., k), (.., k, kb)
        sa = torch.stack([ba[i].s for i in ia])[:, None]  # (ra, 1, ka)
        sb = torch.stack([bb[j].s for j in ib])[None, :]  # (1, gb, kb)
        xa_v = torch.stack([xva[i] for i in ia])[:, None]  # (ra, 1, n, ka)
        xb_v = torch.stack([xvb[j] for j in ib])[None, :]  # (1, gb, n, kb)
        idx = _index(ia, ib, dev)
        fwd[idx] = (_pwcca_weights(xa_v, sa, p) * rho).sum(-1)
        rev[idx] = (_pwcca_weights(xb_v, sb, rh.transpose(-1, -2)) * rho).sum(-1)
        tied[idx] = _ambiguous(rho)
    bad_a = torch.tensor([b.constant for b in ba], device=dev)
    bad_b = torch.tensor([b.constant for b in bb], device=dev)
    invalid = tied | bad_a[:, None] | bad_b[None, :]
    if return_distance:
        fwd, rev = 1 - fwd, 1 - rev
    return ShapeGrid(fwd.masked_fill(invalid, float("nan")), invalid, bad_a, bad_b,
                     rev.masked_fill(invalid, float("nan")))
