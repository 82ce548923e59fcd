"""The whole grid of Procrustes and SVCCA from additive float64 moments of two layer stacks.

:class:`GridMoments` holds the moments of every layer pair at once (layers side by side),
and :func:`procrustes_grid_from_moments` / :func:`svcca_grid_from_moments` give the grid with
one ``eigh`` per layer and batched singular values per pair, as the feature grids do. The
per-pair forms and the formulas are in :mod:`simtorch.functional.moments`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from .cca import SvccaVariant, _check_keep, svcca_keep_count
from .moments import PairMoments, eigh_desc, whitener
from .procrustes import (
    MAX_BLOCK_ELEMS,
    NETREP_EIGVAL_TOL,
    ProcrustesScore,
    ShapeGrid,
    _check_args,
    as_features,
    shape_grid,
    whitening_scale,
)

__all__ = ["GridMoments", "procrustes_grid_from_moments", "svcca_grid_from_moments"]

_EPS64 = torch.finfo(torch.float64).eps


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
                lam, v = eigh_desc(s.c)
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
    return shape_grid(nuc, sq_a, sq_b, score, [s.constant for s in sides_a], [s.constant for s in sides_b], dev)


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
            lam, v = eigh_desc(raw if variant == "anatome" else s.c)
            lam = lam[: min(n, lam.numel())]
            sv = torch.where(lam > lam[:1] * max(n, s.c.shape[0]) * _EPS64, lam, 0.0).sqrt()
            k = svcca_keep_count(sv, keep, "google" if variant == "google" else "anatome")
            vk = v[:, :k]
            t = vk[:, :0]
            if k > 0 and not s.constant:
                t = vk @ whitener(vk.T @ s.c @ vk, n, e)
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
