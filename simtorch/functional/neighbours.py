"""Neighbourhood similarity of two representations: mutual k-NN and CKNNA.

Both measures reproduce the reference code of Huh, Cheung, Wang & Isola (2024), *The
Platonic Representation Hypothesis*, ICML (github.com/minyoungg/platonic-rep,
``metrics.py``: ``compute_nearest_neighbors``, ``mutual_knn``, ``cknna``,
``hsic_unbiased``, ``hsic_biased``).

Neighbour sets and the tie rule
-------------------------------
``N_k(i)``: the ``k`` columns ``j`` of highest score ``S[i, j]`` (inner product, cosine,
or minus a squared distance). Self is excluded *by index*, never by value, so an exact
duplicate of row ``i`` is a neighbour of ``i``. Ties on the k-th score: **the lower column
index wins**, resolved exactly (k-th value, then a count of the tied columns in index
order), so it depends on neither ``topk``'s nor a sort's tie order. platonic-rep's
``argsort``/``topk`` leave such ties unspecified, and it excludes self by writing -1e8 on
the diagonal (the same unless inner products fall below -1e8).

Precision: :func:`mutual_knn` and :func:`cknna` promote the inputs to float64 before any
inner product, so the neighbour sets are those of the exact input values (platonic-rep
ranks in the input dtype; the two differ only where two scores agree to float32
precision). The stacked forms rank the scores they are given (e.g. the engine's float32
Grams) as they are, and do every sum in float64. Imports: torch and the stdlib only.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "mutual_knn", "cknna", "knn_mask", "knn_indices", "mutual_knn_grid", "cknna_grid",
    "raw_gram", "cosine_gram", "neighbour_scores",
]

Neighbours = Literal["cosine", "linear", "euclidean"]
KnnKernel = Literal["cosine", "linear"]

#: Added to the CKNNA denominator exactly as in platonic-rep, so cknna(x, x) < 1.
CKNNA_EPS = 1e-6
#: Row norms below this are treated as this (``torch.nn.functional.normalize``'s eps), so a
#: zero row has cosine 0 with everything instead of NaN.
NORM_EPS = 1e-12


def float_samples(x: Tensor, name: str) -> Tensor:
    """Check that ``x`` is a floating-point tensor of shape ``(n, ...)`` and flatten it to ``(n, d)``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}; cast it with .float()")
    if x.dim() < 2:
        raise ValueError(f"{name} must have shape (n, d) or (n, ...), got {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1)


def _pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    xf, yf = float_samples(x, "x"), float_samples(y, "y")
    if xf.shape[0] != yf.shape[0]:
        raise ValueError(f"x and y must hold the same samples: x has {xf.shape[0]} rows, y has {yf.shape[0]}")
    return xf.double(), yf.double()


def _check_k(k: int, n: int, low: int, high: int, who: str) -> None:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {k!r}")
    if not low <= k <= high:
        raise ValueError(
            f"{who}: k={k} is out of range for n={n} samples; it needs {low} <= k <= {high}. "
            "Pass a smaller k or more samples."
        )


def _check_square(s: Tensor, name: str) -> int:
    if s.dim() < 2 or s.shape[-1] != s.shape[-2]:
        raise ValueError(f"{name} must have shape (..., n, n), got {tuple(s.shape)}")
    return s.shape[-1]


def _features_scores(x: Tensor, neighbours: str) -> Tensor:
    """(n, n) float64 scores of float64 features, higher = closer."""
    if neighbours == "linear":
        return x @ x.T
    if neighbours == "cosine":
        xn = x / x.norm(dim=1, keepdim=True).clamp_min(NORM_EPS)
        return xn @ xn.T
    if neighbours == "euclidean":
        # Distances do not change under column centring, and the Gram formula loses less to
        # cancellation on centred features.
        xc = x - x.mean(dim=0, keepdim=True)
        sq = (xc * xc).sum(dim=1)
        return 2.0 * (xc @ xc.T) - sq[:, None] - sq[None, :]
    raise ValueError(f"neighbours={neighbours!r} is unknown; use 'cosine', 'linear' or 'euclidean'")


def knn_mask(scores: Tensor, k: int, exclude_self: bool = True) -> Tensor:
    """Boolean k-NN mask, (..., n, n): ``mask[..., i, j]`` iff ``j ∈ N_k(i)``.

    ``N_k(i)``: the k columns of highest ``scores[..., i, j]``, ties on the k-th score to the
    lower column index (module notes). With ``exclude_self`` (mutual k-NN, unbiased CKNNA)
    the diagonal never counts, and ``1 <= k <= n − 1``; without it self competes by its
    score, ``1 <= k <= n``. ``scores`` (..., n, n) float: higher = closer.

    Cost: one ``topk`` and O(n²) elementwise work per matrix; memory a few (..., n, n)
    temporaries (one int64 count).
    """
    n = _check_square(scores, "scores")
    if not scores.is_floating_point():
        raise TypeError(f"scores must be floating point, got {scores.dtype}")
    _check_k(k, n, 1, n - 1 if exclude_self else n, "knn_mask")
    s = scores
    eye = torch.eye(n, dtype=torch.bool, device=s.device)
    if exclude_self:
        s = s.masked_fill(eye, float("-inf"))
    kth = torch.topk(s, k, dim=-1, sorted=True).values[..., -1:]
    above = s > kth
    tied = s == kth
    if exclude_self:
        tied &= ~eye  # a -inf k-th score must not let self back in
    free = k - above.sum(dim=-1, keepdim=True)
    # Counting the tied columns left to right hands the free slots to the lowest indices.
    return above | (tied & (torch.cumsum(tied, dim=-1) <= free))


def knn_indices(scores: Tensor, k: int, exclude_self: bool = True) -> Tensor:
    """Indices of :func:`knn_mask`'s neighbours, shape (..., n, k), ascending per row.

    The order inside a row is by index, not by score: the measures here only use the set.
    """
    mask = knn_mask(scores, k, exclude_self)
    return mask.nonzero()[:, -1].reshape(*mask.shape[:-1], k)


def _as_mask(nbrs: Tensor, n: int | None, name: str) -> tuple[Tensor, int]:
    if nbrs.dtype == torch.bool:
        _check_square(nbrs, name)
        counts = nbrs.sum(dim=-1)
        k = int(counts.flatten()[0]) if counts.numel() else -1
        if not bool((counts == k).all()):
            raise ValueError(f"{name}: every row of a neighbour mask must hold the same number k of neighbours")
        return nbrs, k
    if nbrs.is_floating_point() or nbrs.dim() < 2:
        raise TypeError(f"{name} must be a bool mask (L, n, n) or integer indices (L, n, k), got {nbrs.dtype}")
    mask = torch.zeros(*nbrs.shape[:-1], n or nbrs.shape[-2], dtype=torch.bool, device=nbrs.device)
    return mask.scatter_(-1, nbrs.long(), True), nbrs.shape[-1]


def mutual_knn_grid(nbrs_a: Tensor, nbrs_b: Tensor) -> Tensor:
    """Mutual k-NN score of every pair of layers, (La, Lb) float64.

    ``grid[a, b] = (1/(n k)) Σ_i |N_a(i) ∩ N_b(i)| = ⟨mask_a, mask_b⟩ / (n k)``: one matmul of
    the flattened masks, no loop over pairs.

    ``nbrs_a``, ``nbrs_b``: bool masks (L, n, n) from :func:`knn_mask` or integer indices
    (L, n, k) from :func:`knn_indices`, with the same n and k. Cost La·Lb·n² multiply-adds
    in float64 (exact counts under any autocast); memory two float64 (L, n²) mask copies.
    """
    ma, ka = _as_mask(nbrs_a, None, "nbrs_a")
    mb, kb = _as_mask(nbrs_b, ma.shape[-1], "nbrs_b")
    if ma.dim() != 3 or mb.dim() != 3 or ma.shape[1:] != mb.shape[1:] or ka != kb:
        raise ValueError(
            f"nbrs_a and nbrs_b must be stacks (L, n, ·) with the same n and k; "
            f"got masks {tuple(ma.shape)} (k={ka}) and {tuple(mb.shape)} (k={kb})"
        )
    counts = ma.reshape(ma.shape[0], -1).double() @ mb.reshape(mb.shape[0], -1).double().T
    return counts / (ma.shape[-1] * ka)


def mutual_knn(x: Tensor, y: Tensor, k: int = 10, neighbours: Neighbours = "cosine") -> Tensor:
    """Mutual k-nearest-neighbour alignment (Huh et al. 2024).

    ``m_kNN(X, Y) = (1/n) Σ_i |N_X(i) ∩ N_Y(i)| / k``, with ``N_X(i)`` the k nearest
    neighbours of sample i among the other samples of X (self excluded by index, ties to the
    lower index, see the module notes).

    Parameters
    ----------
    x, y : Tensor, shape (n, ...)
        Features of the same n samples, flattened to (n, d); float32 or float64.
    k : int
        ``1 <= k < n``.
    neighbours : {"cosine", "linear", "euclidean"}
        "cosine" (default): inner products of L2-normalised rows (platonic-rep normalises
        its features first); "linear": raw inner products ``X Xᵀ``; "euclidean": the k
        smallest ``‖x_i − x_j‖²``.

    Returns
    -------
    Tensor
        0-dim float64 in [0, 1]; 1 when both sides have the same neighbour sets.
    """
    xf, yf = _pair(x, y)
    n = xf.shape[0]
    _check_k(k, n, 1, n - 1, "mutual_knn")
    mx = knn_mask(_features_scores(xf, neighbours), k)
    my = knn_mask(_features_scores(yf, neighbours), k)
    return (mx & my).sum(dtype=torch.float64) / (n * k)


def _check_cknna(k: int, n: int, unbiased: bool) -> None:
    if unbiased and n < 4:
        raise ValueError(f"cknna with unbiased=True needs n >= 4 samples (unbiased HSIC), got n={n}")
    # platonic-rep refuses topk < 2; only the biased variant may take every sample (k = n).
    _check_k(k, n, 2, n - 1 if unbiased else n, "cknna")


def _masked_hsic(ma: Tensor, ka: Tensor, mb: Tensor, kb: Tensor, unbiased: bool) -> Tensor:
    """platonic-rep's HSIC of ``A = ma∘ka`` and ``B = mb∘kb`` (not symmetric), batched.

    unbiased: ``[Σ_ij Ã_ij B̃_ji + (1ᵀÃ1)(1ᵀB̃1)/((n−1)(n−2)) − 2·1ᵀÃB̃1/(n−2)] / (n(n−3))``
    (Ã, B̃ with zero diagonal; the transpose sits on B); biased: ``tr(A H B H)`` with no
    1/(n−1)² factor.
    """
    n = ka.shape[-1]
    a = ma.double() * ka.double()
    b = mb.double() * kb.double()
    if unbiased:
        eye = torch.eye(n, dtype=torch.bool, device=a.device)
        a, b = a.masked_fill(eye, 0.0), b.masked_fill(eye, 0.0)
        t1 = (a * b.transpose(-1, -2)).sum(dim=(-2, -1))
        cross = (a.sum(dim=-2) * b.sum(dim=-1)).sum(dim=-1)  # 1ᵀAB1 = colsums(A)·rowsums(B)
        prod = a.sum(dim=(-2, -1)) * b.sum(dim=(-2, -1))
        return (t1 + prod / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)) / (n * (n - 3))
    # tr(A H B H) = Σ_ij (HAH)_ij B_ji, HAH the double-centred A.
    hah = a - a.mean(dim=-1, keepdim=True) - a.mean(dim=-2, keepdim=True) + a.mean(dim=(-2, -1), keepdim=True)
    return (hah * b.transpose(-1, -2)).sum(dim=(-2, -1))


def _kernel(x: Tensor, kernel: str) -> Tensor:
    if kernel not in ("cosine", "linear"):
        raise ValueError(f"kernel={kernel!r} is unknown; use 'cosine' or 'linear'")
    return _features_scores(x, kernel)


def cknna(x: Tensor, y: Tensor, k: int = 10, kernel: KnnKernel = "cosine", unbiased: bool = True) -> Tensor:
    """Centered Kernel Nearest-Neighbour Alignment, CKNNA (Huh et al. 2024, platonic-rep).

    With ``K = X Xᵀ``, ``L = Y Yᵀ`` and ``M_K[i, j] = 1`` iff ``j ∈ N_k(i)`` ranked by ``K[i]``::

        sim(K, L) = HSIC(M∘K, M∘L),  M = M_K ∘ M_L
        CKNNA     = sim(K, L) / (sqrt(sim_KK · sim_LL) + 1e-6)

    where, as in platonic-rep (``similarity(K, K, topk)``), ``sim_KK = HSIC(M_K∘K, M_K∘K)``
    uses K's own mask (``M_K ∘ M_K = M_K``), not the joint M; likewise sim_LL uses M_L.
    HSIC is platonic-rep's ``hsic_unbiased`` (Song et al. 2012, Eq. 5, with the transpose
    on the second argument: ``Σ_ij Ã_ij B̃_ji``, and ``1ᵀÃB̃1``) for ``unbiased=True``, or
    ``hsic_biased`` = ``tr(A H B H)`` without a 1/(n−1)² factor. Since ``M∘K`` is not
    symmetric, ``1ᵀÃB̃1 ≠ 1ᵀB̃Ã1`` and the unbiased cknna(x, y) ≠ cknna(y, x) in general (the
    biased one is symmetric, by cyclicity of the trace).

    Parameters
    ----------
    x, y : Tensor, shape (n, ...)
        Features of the same n samples, flattened; float32 or float64 (computed in float64).
    k : int
        Neighbours per sample: ``2 <= k <= n − 1`` (platonic-rep refuses k < 2); with
        ``unbiased=False`` also k = n.
    kernel : {"cosine", "linear"}
        "cosine" (default): K on L2-normalised rows (platonic-rep normalises its features
        first); "linear": on the raw features.
    unbiased : bool
        True (default): the diagonal is excluded from the neighbour choice and HSIC is
        unbiased (n ≥ 4); False: self competes for a neighbour slot and HSIC is biased.

    Returns
    -------
    Tensor
        0-dim float64. Because of the +1e-6, cknna(x, x) = s/(s + 1e-6) is slightly below 1
        (by about 1e-6/s). NaN, with a warning, where ``sim_KK·sim_LL < 0``; as in
        platonic-rep the root is of the product, so two negative self-terms pass.
    """
    xf, yf = _pair(x, y)
    n = xf.shape[0]
    _check_cknna(k, n, unbiased)
    kx, ky = _kernel(xf, kernel), _kernel(yf, kernel)
    mx, my = knn_mask(kx, k, exclude_self=unbiased), knn_mask(ky, k, exclude_self=unbiased)
    m = mx & my
    kl = _masked_hsic(m, kx, m, ky, unbiased)
    kk = _masked_hsic(mx, kx, mx, kx, unbiased)
    ll = _masked_hsic(my, ky, my, ky, unbiased)
    if bool(kk * ll < 0):
        msg = f"cknna: self-terms of opposite signs (sim_KK={float(kk):.3g}, sim_LL={float(ll):.3g}) give NaN"
        warnings.warn(msg + "; try a larger k or unbiased=False.", UserWarning, stacklevel=2)
    return kl / (torch.sqrt(kk * ll) + CKNNA_EPS)


def cknna_grid(ka: Tensor, kb: Tensor, k: int, unbiased: bool = True, max_elements: int = 2**23) -> Tensor:
    """CKNNA of every pair of layers from kernel stacks, (La, Lb) float64.

    Equal to :func:`cknna` on each pair (same masks, same HSIC, same +1e-6). For a pair
    (a, b) with masks Ma, Mb (:func:`knn_mask` of each kernel), ``P = Ma∘K̃a``, ``Q = Mb∘K̃b``
    (K̃ with zero diagonal when unbiased, K otherwise) and ``A = P∘Mb``, ``B = Ma∘Q``::

        Σ_ij A_ij B_ji = ⟨Ma∘Maᵀ∘K̃a, (Mb∘Mbᵀ∘K̃b)ᵀ⟩        1ᵀA1 = ⟨P, Mb⟩   1ᵀB1 = ⟨Ma, Q⟩
        colsum(A)_j = Σ_i P_ij Mb_ij     rowsum(B)_j = Σ_l Ma_jl Q_jl   (and vice versa)

    so every pair term is a matmul of flattened stacks or a matmul batched over the
    column/row index j, never a loop over pairs and never an (La, Lb, n, n) tensor.

    ``ka`` (La, n, n), ``kb`` (Lb, n, n): kernels ``K = X Xᵀ`` per layer (cosine: of
    L2-normalised rows, see :func:`cosine_gram`, :func:`raw_gram`), any float dtype; ``k``
    and ``unbiased`` as in :func:`cknna`. The a-side runs in chunks of
    ``max(1, max_elements // (n·Lb))`` layers, bounding each (n, chunk, Lb) temporary.

    Cost: 5 (unbiased) or 7 (biased) products of La·Lb·n² multiply-adds in float64, plus
    O((La + Lb)·n²) elementwise work. Memory: about 4 float64 (L, n, n) stacks per side,
    plus 2 (unbiased) or 4 (biased) (n, chunk, Lb) float64 temporaries (64 MiB each at
    the default ``max_elements``).
    """
    if ka.dim() != 3 or kb.dim() != 3 or ka.shape[1:] != kb.shape[1:]:
        shapes = f"{tuple(ka.shape)} and {tuple(kb.shape)}"
        raise ValueError(f"ka and kb must be stacks (L, n, n) of the same n, got {shapes}")
    n = _check_square(ka, "ka")
    _check_cknna(k, n, unbiased)
    eye = torch.eye(n, dtype=torch.bool, device=ka.device)

    def side(kern: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        mask = knn_mask(kern, k, exclude_self=unbiased)
        kk = kern.double().masked_fill(eye, 0.0) if unbiased else kern.double()
        mf = mask.double()
        p = mf * kk
        sym = p * mf.transpose(-1, -2)
        self_term = _masked_hsic(mask, kern, mask, kern, unbiased)
        return mf, p, sym, self_term

    ma, pa, sa, self_a = side(ka)
    mb, pb, sb, self_b = side(kb)
    la, lb = ka.shape[0], kb.shape[0]
    t1 = sa.reshape(la, -1) @ sb.transpose(-1, -2).reshape(lb, -1).T
    sum_a = pa.reshape(la, -1) @ mb.reshape(lb, -1).T
    sum_b = ma.reshape(la, -1) @ pb.reshape(lb, -1).T
    cross_ab = torch.empty(la, lb, dtype=torch.float64, device=ka.device)  # 1ᵀAB1
    cross_ba = torch.empty_like(cross_ab)  # 1ᵀBA1, biased only
    step = max(1, max_elements // max(1, n * lb))
    for s in range(0, la, step):
        e = min(la, s + step)
        col_a = torch.einsum("aij,bij->jab", pa[s:e], mb)
        row_b = torch.einsum("ajl,bjl->jab", ma[s:e], pb)
        cross_ab[s:e] = (col_a * row_b).sum(dim=0)
        if not unbiased:
            row_a = torch.einsum("ajl,bjl->jab", pa[s:e], mb)
            col_b = torch.einsum("aij,bij->jab", ma[s:e], pb)
            cross_ba[s:e] = (row_a * col_b).sum(dim=0)
    if unbiased:
        sim = (t1 + sum_a * sum_b / ((n - 1) * (n - 2)) - 2.0 * cross_ab / (n - 2)) / (n * (n - 3))
    else:
        sim = t1 - (cross_ab + cross_ba) / n + sum_a * sum_b / n**2
    return sim / (torch.sqrt(self_a[:, None] * self_b[None, :]) + CKNNA_EPS)


def raw_gram(gram: Tensor, v: Tensor, mu_sq: Tensor | float) -> Tensor:
    """Raw inner products ``X Xᵀ`` from the Gram of column-centred features, float64.

    With ``X = X_c + 1μᵀ`` (μ the column mean), ``G = X_c X_cᵀ`` and ``v = X_c μ``::

        X Xᵀ = G + v 1ᵀ + 1 vᵀ + ‖μ‖² 11ᵀ

    ``gram`` (..., n, n), ``v`` (..., n), ``mu_sq`` (...) or a float.
    """
    _check_square(gram, "gram")
    g = gram.double()
    v = v.double()
    mu = torch.as_tensor(mu_sq, dtype=torch.float64, device=g.device)
    return g + v[..., :, None] + v[..., None, :] + mu[..., None, None]


def cosine_gram(gram: Tensor) -> Tensor:
    """Cosine similarities ``R_ij / (‖x_i‖ ‖x_j‖)`` from a raw Gram R, float64.

    Norms below 1e-12 count as 1e-12, as in ``torch.nn.functional.normalize``.
    """
    _check_square(gram, "gram")
    r = gram.double()
    norms = r.diagonal(dim1=-2, dim2=-1).clamp_min(0.0).sqrt().clamp_min(NORM_EPS)
    return r / (norms[..., :, None] * norms[..., None, :])


def neighbour_scores(
    gram: Tensor, neighbours: Neighbours = "cosine", v: Tensor | None = None, mu_sq: Tensor | float | None = None
) -> Tensor:
    """Scores (higher = closer) for :func:`knn_mask` from the engine's centred Gram, float64.

    "euclidean": ``−(G_ii + G_jj − 2 G_ij)`` (the centred Gram suffices); "linear":
    :func:`raw_gram`; "cosine": :func:`cosine_gram` of the raw Gram. The last two need
    ``v = X_c μ`` and ``mu_sq = ‖μ‖²``.
    """
    _check_square(gram, "gram")
    if neighbours == "euclidean":
        g = gram.double()
        sq = g.diagonal(dim1=-2, dim2=-1)
        return 2.0 * g - sq[..., :, None] - sq[..., None, :]
    if neighbours not in ("linear", "cosine"):
        raise ValueError(f"neighbours={neighbours!r} is unknown; use 'cosine', 'linear' or 'euclidean'")
    if v is None or mu_sq is None:
        raise ValueError(f"neighbours={neighbours!r} needs the raw Gram: pass v = X_c μ and mu_sq = ‖μ‖²")
    r = raw_gram(gram, v, mu_sq)
    return r if neighbours == "linear" else cosine_gram(r)

