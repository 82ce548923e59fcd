"""Representational similarity analysis (RSA) of two representations.

Kriegeskorte, Mur & Bandettini (2008), *Representational similarity analysis — connecting
the branches of systems neuroscience*, Front. Syst. Neurosci. 2:4. Definitions follow
rsatoolbox (github.com/rsagroup/rsatoolbox: ``calc_rdm_euclidean``,
``calc_rdm_correlation``, ``compare_spearman``, ``compare_correlation``,
``compare_cosine``).

An RDM is kept as its upper-triangle vector (diagonal excluded, row-major as
``torch.triu_indices(n, n, 1)``), ``m = n(n−1)/2`` entries:

- "euclidean": ``D_ij = ‖x_i − x_j‖² / d`` (squared, divided by the number of features,
  no mean removal: rsatoolbox's default);
- "correlation": ``D_ij = 1 − corr(x_i, x_j)``, each row centred across its d features.

Two RDM vectors u, w are compared with "spearman" (average ranks for ties, then Pearson),
"pearson" (alias "corr": centre, then cosine) or "cosine" (uncentred). A constant RDM
gives 0/0 = NaN (rsatoolbox returns 0 there); :func:`rsa` warns.

Everything is computed in float64. This module imports only torch and the standard
library.
"""

from __future__ import annotations

import warnings
from typing import Literal, Sequence

import torch
from torch import Tensor

from .neighbours import float_samples

__all__ = ["rsa", "rdm_vector", "rdm_stack", "rdm_from_gram", "rsa_grid", "average_ranks"]

Rdm = Literal["euclidean", "correlation"]
Compare = Literal["spearman", "pearson", "corr", "cosine"]
_COMPARES = ("spearman", "pearson", "corr", "cosine")


def _flat(x: Tensor, name: str) -> Tensor:
    xf = float_samples(x, name)
    if xf.shape[0] < 3:
        raise ValueError(f"{name}: RSA needs at least 3 samples (an RDM of >= 3 entries), got n={xf.shape[0]}")
    return xf.double()


def _check_rdm(rdm: str) -> None:
    if rdm not in ("euclidean", "correlation"):
        raise ValueError(f"rdm={rdm!r} is unknown; use 'euclidean' or 'correlation'")


def _check_compare(compare: str) -> None:
    if compare not in _COMPARES:
        raise ValueError(f"compare={compare!r} is unknown; use one of {', '.join(_COMPARES)}")


def _triu(mat: Tensor) -> Tensor:
    n = mat.shape[-1]
    iu = torch.triu_indices(n, n, 1, device=mat.device)
    return mat[..., iu[0], iu[1]]


def rdm_vector(x: Tensor, rdm: Rdm = "euclidean") -> Tensor:
    """Upper-triangle RDM vector of one representation, (m,) float64, m = n(n−1)/2.

    Parameters
    ----------
    x : Tensor, shape (n, ...)
        Features, flattened to (n, d); any float dtype.
    rdm : {"euclidean", "correlation"}
        ``‖x_i − x_j‖² / d``, or ``1 − Pearson(x_i, x_j)`` across features.
    """
    _check_rdm(rdm)
    xf = _flat(x, "x")
    d = xf.shape[1]
    if rdm == "euclidean":
        # Column centring leaves distances unchanged and keeps the Gram formula from
        # cancelling a large common offset.
        xc = xf - xf.mean(dim=0, keepdim=True)
        sq = (xc * xc).sum(dim=1)
        return _triu(sq[:, None] + sq[None, :] - 2.0 * (xc @ xc.T)) / d
    xr = xf - xf.mean(dim=1, keepdim=True)
    xr = xr / xr.norm(dim=1, keepdim=True)
    return _triu(1.0 - xr @ xr.T)


def rdm_stack(feats: Tensor | Sequence[Tensor], rdm: Rdm = "euclidean") -> Tensor:
    """RDM vectors of several layers, (L, m) float64.

    ``feats`` is a tensor (L, n, ...) or a sequence of L tensors (n, ...) with the same n
    (their feature sizes may differ). Cost per layer: one n×n Gram of (n, d) float64.
    """
    layers = list(feats.unbind(0)) if isinstance(feats, Tensor) else list(feats)
    if not layers:
        raise ValueError("rdm_stack needs at least one layer")
    out = [rdm_vector(f, rdm) for f in layers]
    if any(o.shape != out[0].shape for o in out):
        raise ValueError(f"every layer must hold the same samples; got RDM sizes {[o.shape[0] for o in out]}")
    return torch.stack(out)


def rdm_from_gram(
    gram: Tensor, d: int | Tensor, rdm: Rdm = "euclidean", row_sums: Tensor | None = None
) -> Tensor:
    """RDM vectors from what a streaming engine keeps per batch, (..., m) float64.

    "euclidean": ``D_ij = (G_ii + G_jj − 2 G_ij) / d`` from any Gram of the features, the
    engine's column-centred ``G = X_c X_cᵀ`` included (distances ignore column centring).

    "correlation": needs the *raw* Gram ``R = X Xᵀ`` (from the centred one by
    :func:`simtorch.functional.neighbours.raw_gram`, i.e. ``G + v1ᵀ + 1vᵀ + ‖μ‖²11ᵀ``) and
    the raw row sums ``s_i = Σ_f x_if`` (an n-vector per layer the engine must keep)::

        cov_ij = R_ij − s_i s_j / d,   D_ij = 1 − cov_ij / sqrt(cov_ii cov_jj)

    Parameters
    ----------
    gram : Tensor, shape (..., n, n)
    d : int or Tensor of shape (...)
        Number of features per layer.
    rdm : {"euclidean", "correlation"}
    row_sums : Tensor, shape (..., n)
        Required for "correlation".

    Notes
    -----
    Precision is that of the Gram: from float32 Grams expect ~1e-7 relative to the
    features' energy; the formulas themselves run in float64.
    """
    _check_rdm(rdm)
    if gram.dim() < 2 or gram.shape[-1] != gram.shape[-2]:
        raise ValueError(f"gram must have shape (..., n, n), got {tuple(gram.shape)}")
    g = gram.double()
    dd = torch.as_tensor(d, dtype=torch.float64, device=g.device)[..., None, None]
    diag = g.diagonal(dim1=-2, dim2=-1)
    if rdm == "euclidean":
        return _triu((diag[..., :, None] + diag[..., None, :] - 2.0 * g) / dd)
    if row_sums is None:
        raise ValueError("rdm='correlation' needs row_sums (the raw features' row sums s = X 1) and the raw Gram")
    s = row_sums.double()
    cov = g - s[..., :, None] * s[..., None, :] / dd
    var = cov.diagonal(dim1=-2, dim2=-1)
    return _triu(1.0 - cov / torch.sqrt(var[..., :, None] * var[..., None, :]))


def average_ranks(v: Tensor) -> Tensor:
    """Ranks 1..m along the last dim, ties sharing their average rank (scipy's
    ``rankdata(method="average")``), float64, batched over leading dims."""
    m = v.shape[-1]
    vs, order = torch.sort(v, dim=-1)
    pos = torch.arange(m, device=v.device).expand_as(vs)
    starts = torch.ones_like(vs, dtype=torch.bool)
    starts[..., 1:] = vs[..., 1:] != vs[..., :-1]
    ends = torch.ones_like(starts)
    ends[..., :-1] = starts[..., 1:]
    # First and last sorted position of each run of equal values, spread over the run.
    first = torch.cummax(torch.where(starts, pos, 0), dim=-1).values
    last = torch.cummin(torch.where(ends, pos, m).flip(-1), dim=-1).values.flip(-1)
    avg = (first + last).double() / 2.0 + 1.0
    return torch.empty_like(avg).scatter_(-1, order, avg)


def _standardise(v: Tensor, compare: str) -> Tensor:
    v = v.double()
    if compare == "spearman":
        v = average_ranks(v)
    if compare != "cosine":
        v = v - v.mean(dim=-1, keepdim=True)
    return v / v.norm(dim=-1, keepdim=True)


def rsa_grid(rdms_a: Tensor, rdms_b: Tensor, compare: Compare = "spearman") -> Tensor:
    """RSA of every pair of layers from RDM vectors, (La, Lb) float64.

    Each vector is ranked (spearman), centred (spearman, pearson) and scaled to unit norm,
    then all pairs are one matmul: ``grid = Ũ_a Ũ_bᵀ``.

    Parameters
    ----------
    rdms_a, rdms_b : Tensor, shape (La, m), (Lb, m)
        From :func:`rdm_stack` or :func:`rdm_from_gram`, same m.
    compare : {"spearman", "pearson", "corr", "cosine"}

    Notes
    -----
    Cost: a sort of each vector (spearman) and La·Lb·m multiply-adds; memory a few float64
    (L, m) copies. A constant vector gives a NaN row/column.
    """
    _check_compare(compare)
    if rdms_a.dim() != 2 or rdms_b.dim() != 2 or rdms_a.shape[1] != rdms_b.shape[1]:
        shapes = f"{tuple(rdms_a.shape)} and {tuple(rdms_b.shape)}"
        raise ValueError(f"rdms_a and rdms_b must be (L, m) with the same m, got {shapes}")
    return _standardise(rdms_a, compare) @ _standardise(rdms_b, compare).T


def rsa(x: Tensor, y: Tensor, rdm: Rdm = "euclidean", compare: Compare = "spearman") -> Tensor:
    """Representational similarity analysis of two representations (Kriegeskorte et al. 2008).

    ``RSA(X, Y) = compare(triu(RDM(X)), triu(RDM(Y)))``; with the defaults, the Spearman
    correlation of the squared-Euclidean RDMs (both as in rsatoolbox).

    Parameters
    ----------
    x, y : Tensor, shape (n, ...)
        Features of the same n >= 3 samples, flattened; float32 or float64.
    rdm : {"euclidean", "correlation"}
        See :func:`rdm_vector`.
    compare : {"spearman", "pearson", "corr", "cosine"}
        Spearman (average ranks for ties), Pearson (= rsatoolbox's "corr") or cosine.

    Returns
    -------
    Tensor
        0-dim float64 in [−1, 1]; 1 for rsa(x, x). NaN, with a warning, if an RDM is
        constant (e.g. all samples equal) and the comparison is 0/0.
    """
    _check_compare(compare)
    u, w = rdm_vector(x, rdm), rdm_vector(y, rdm)
    if u.shape != w.shape:
        raise ValueError(f"x and y must hold the same samples: RDM sizes {u.shape[0]} and {w.shape[0]}")
    if compare == "spearman":
        u, w = average_ranks(u), average_ranks(w)
    if compare != "cosine":
        u, w = u - u.mean(), w - w.mean()
    out = (u * w).sum() / torch.sqrt((u * u).sum() * (w * w).sum())
    if bool(torch.isnan(out)):
        warnings.warn(
            f"rsa: an RDM is constant or undefined (rdm={rdm!r}, compare={compare!r}: e.g. identical samples, "
            "or a constant sample under 'correlation'); the result is NaN.",
            UserWarning,
            stacklevel=2,
        )
    return out
