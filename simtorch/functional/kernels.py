"""Gram (kernel) matrices, their centring, and the scale that tells signal from float noise.

Everything here works on one ``(n, n)`` matrix or on a stack ``(L, n, n)`` (one matrix per
layer). The centring itself is the double centring ``H K H`` of Gretton et al. (2005) or the
U-centring of Székely & Rizzo (2014); the RBF bandwidth is Kornblith et al.'s (2019) median
heuristic. Linear Grams of column-centred features come from
:mod:`~simtorch.functional.linear_grams`; they are as precise as the bound
:data:`GRAM_KAPPA` says, which is what the noise floor :func:`kernel_scale` is derived from.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "Kernel",
    "DEGENERATE_RTOL",
    "GRAM_KAPPA",
    "GRAM_ULPS",
    "DATA_ULPS",
    "COINCIDENT_ULPS",
    "coincident_rtol",
    "flatten_samples",
    "product_rows",
    "memory_order",
    "gram_dtype",
    "sq_distances",
    "median_sq_distance",
    "rbf_gram",
    "kernel_stack",
    "center_gram",
    "u_center_gram",
    "centered_flat",
    "degenerate_mask",
    "kernel_scale",
]

Kernel = Literal["linear", "rbf"]

#: A self-term HSIC(K, K) at or below ``DEGENERATE_RTOL`` times its noise floor
#: (:func:`kernel_scale`: the squared rounding error a Gram of these features can carry,
#: times the HSIC normaliser) is treated as zero: it cannot be told from the rounding of
#: constant features, so it is never signal. The floor itself follows the dtype and the
#: product actually computed; this factor is 1.
DEGENERATE_RTOL = 1.0

#: Largest ratio ``κ = tr(X̃ X̃ᵀ) / tr(G_c)`` accepted for a Gram product, with ``X̃`` the
#: rows actually multiplied (the features, or the features minus a shift close to their
#: mean) and ``G_c`` the Gram of the exactly centred features. A product's rounding error
#: scales with ``tr(X̃ X̃ᵀ)``, the signal with ``tr(G_c)``: at ratio κ the centred Gram keeps
#: about ``log2 κ`` bits fewer than a product of centred rows. Float32 features already carry
#: ``ε|x|`` of rounding, an error of order ``ε √κ tr(G_c)`` in ``G_c``, so at ``κ ≤ 16`` the
#: product adds at most four times the uncertainty the features bring. Measured on the
#: benchmark workloads (ResNet-18/34 activations, float32): CKA grids within 3e-7 of float64
#: math at κ ≤ 16 (5e-8 at κ ≤ 4, 1.4e-6 with no bound), while a subtraction pass to centre
#: the layers between 4 and 16 cost a few percent of the forward pass, as much as the Gram
#: products themselves. The engine's hooks multiply features without centring only below it
#: (:func:`~simtorch.functional.capture_product`), and :func:`kernel_scale` and Information Imbalance's
#: resolution rely on the bound.
GRAM_KAPPA = 16.0

#: Rounding of one Gram product and its double centring, in units of ``eps`` of the Gram
#: dtype times ``tr(X̃ X̃ᵀ)``: a generous bound on ``‖fl(G) − G‖_F`` (blocked GEMMs with
#: fused multiply-adds measure well under 1; the factor also covers the centring).
GRAM_ULPS = 64

#: Features are known only to ``DATA_ULPS · eps · |x|``: values produced by float
#: arithmetic at magnitude ``|x|`` carry rounding of that order, so a spread within a few
#: ulps of the magnitude (a large offset plus noise in the last bits) is not signal.
DATA_ULPS = 8

#: A squared distance at or below ``COINCIDENT_ULPS · eps · (‖xᵢ‖² + ‖xⱼ‖²)``, with
#: ``eps`` the machine epsilon of the Gram's dtype, counts as 0 (coincident points): a
#: Gram of two equal rows can miss exact equality by a few ulps of their norm (the norm of
#: the rows actually multiplied: :func:`~simtorch.functional.ii_gram_rows` accounts for
#: a product of uncentred rows). For float32 Grams the threshold is about 1e-6 of the
#: squared norms, for float64 2e-15.
COINCIDENT_ULPS = 8


def coincident_rtol(dtype: torch.dtype) -> float:
    """Relative threshold below which a squared distance computed from a Gram of ``dtype``
    counts as 0: ``COINCIDENT_ULPS · eps(dtype)`` (about 1e-6 for float32, 2e-15 for float64),
    so that duplicated samples tie exactly (Information Imbalance's tie rules, Glielmo et
    al. 2022; the RBF kernel's coincident points)."""
    return COINCIDENT_ULPS * torch.finfo(dtype if dtype.is_floating_point else torch.float32).eps


def flatten_samples(x: Tensor) -> Tensor:
    """Reshape ``(n, ...)`` to ``(n, d)``; a 1-D tensor becomes ``(n, 1)``.

    ``X ∈ ℝ^{n×d}`` with ``d = ∏`` of the trailing dimensions: each sample is one row, the
    layout every kernel of Kornblith et al. (2019) assumes.
    """
    if x.dim() == 0:
        raise ValueError("expected a tensor with a leading sample dimension, got a scalar")
    return x.reshape(x.shape[0], -1)


def memory_order(x: Tensor) -> tuple[int, ...] | None:
    """The permutation of ``x``'s dimensions that lists it in memory order, for a
    ``channels_last`` (4-D) or ``channels_last_3d`` (5-D) tensor that is not also plainly
    contiguous; None for any other layout."""
    if x.dim() not in (4, 5) or x.is_contiguous():
        return None
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return (0, 2, 3, 1)
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return (0, 2, 3, 4, 1)
    return None


def product_rows(x: Tensor) -> Tensor:
    """``(n, d)`` rows of ``x`` for a Gram or a distance: :func:`flatten_samples`, except that
    a ``channels_last`` tensor is read in its memory order ``(h, w, c)`` without a copy.

    Its columns are then a permutation of :func:`flatten_samples`' columns. Each row is the
    same sample, so ``X Xᵀ``, every distance and every measure of one batch's Gram is
    unchanged, but the columns of two batches in different layouts do not line up: features
    summed over batches (cross moments ``XᵀY``) must use :func:`flatten_samples`.
    """
    perm = memory_order(x)
    if perm is None:
        return flatten_samples(x)
    return x.permute(perm).reshape(x.shape[0], -1)


def gram_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a Gram of features of ``dtype`` is computed in: float32 for half, bfloat16
    and non-float features (their products must not round at 8–11 bits), else ``dtype``."""
    if dtype in (torch.float16, torch.bfloat16) or not dtype.is_floating_point:
        return torch.float32
    return dtype


def sq_distances(gram: Tensor) -> Tensor:
    """Squared Euclidean distances from a Gram stack: ``D = diag(G) + diag(G)ᵀ − 2G``.

    ``D_ij = ‖xᵢ − xⱼ‖² = G_ii + G_jj − 2G_ij``. Works on ``(n, n)`` or ``(..., n, n)``;
    clamped at 0 (float rounding can make tiny negatives) and exactly 0 on the diagonal.
    """
    diag = gram.diagonal(dim1=-2, dim2=-1)
    d = diag.unsqueeze(-1) + diag.unsqueeze(-2) - 2 * gram
    d = d.clamp_min(0)
    d.diagonal(dim1=-2, dim2=-1).zero_()
    return d


def median_sq_distance(d: Tensor) -> Tensor:
    """Median of all ``n²`` entries of each squared-distance matrix (zero diagonal included).

    For an even count this is the mean of the two middle values, as ``numpy.median`` in
    Kornblith et al.'s (2019) reference code (``torch.median`` would return the lower one).
    ``d`` is ``(n, n)`` or ``(L, n, n)``; the result has the leading shape.
    """
    flat = d.reshape(*d.shape[:-2], -1)
    m = flat.shape[-1]
    lo = torch.kthvalue(flat, (m + 1) // 2, dim=-1).values
    if m % 2:
        return lo
    hi = torch.kthvalue(flat, m // 2 + 1, dim=-1).values
    return (lo + hi) / 2


def rbf_gram(gram: Tensor, sigma_frac: float = 1.0) -> Tensor:
    """RBF kernel ``exp(−‖xᵢ−xⱼ‖² / (2σ²))`` from a linear Gram (stack), in float64.

    ``σ = sigma_frac · sqrt(median of squared distances)``, per matrix (per batch and per
    layer), Kornblith et al. (2019). Squared distances at or below the Gram's resolution,
    ``coincident_rtol(gram.dtype) · (G_ii + G_jj)``, count as 0: they are rounding, and a
    median of rounding would give constant features a kernel that looks like signal. When
    more than half of the pairs coincide the median is 0; the kernel is then its σ→0 limit
    (1 for coincident points, 0 otherwise).
    """
    if sigma_frac <= 0:
        raise ValueError(f"sigma_frac must be > 0, got {sigma_frac}")
    rtol = coincident_rtol(gram.dtype)
    d = sq_distances(gram.to(torch.float64))
    diag = gram.diagonal(dim1=-2, dim2=-1).to(torch.float64).clamp_min(0)
    d.masked_fill_(d <= rtol * (diag.unsqueeze(-1) + diag.unsqueeze(-2)), 0.0)
    sigma2 = (sigma_frac**2) * median_sq_distance(d)
    sigma2 = sigma2[..., None, None]
    safe = torch.where(sigma2 > 0, sigma2, torch.ones_like(sigma2))
    k = torch.exp(-d / (2 * safe))
    return torch.where(sigma2 > 0, k, (d == 0).to(k.dtype))


def kernel_stack(gram: Tensor, kernel: Kernel = "linear", sigma_frac: float = 1.0, out: Tensor | None = None) -> Tensor:
    """Kernel matrices (float64) from linear Grams of centred features.

    ``"linear"``: ``K = X_c X_cᵀ`` itself; ``"rbf"``: :func:`rbf_gram`,
    ``K_ij = exp(−D_ij / (2σ²))`` (Kornblith et al. 2019). ``out``: an optional float64
    buffer of the same shape for the linear kernel.
    """
    if kernel == "linear":
        return out.copy_(gram) if out is not None else gram.to(torch.float64)
    if kernel == "rbf":
        return rbf_gram(gram, sigma_frac)
    raise ValueError(f"kernel must be 'linear' or 'rbf', got {kernel!r}")


def center_gram(k: Tensor, out: Tensor | None = None) -> Tensor:
    """Double centring ``H K H`` with ``H = I − 11ᵀ/n`` (batched over leading dims).

    ``(HKH)_ij = K_ij − K̄_i· − K̄_·j + K̄_··``, the centring of biased HSIC₀
    (Gretton et al. 2005): ``tr(KHLH) = ⟨HKH, HLH⟩_F``. ``out`` (same shape, may be ``k``
    itself, may be float64 for a float32 ``k``) receives the result; the means are taken in
    ``out``'s precision."""
    c = k.clone() if out is None else (out if out is k else out.copy_(k))
    row = c.mean(dim=-1, keepdim=True)
    col = c.mean(dim=-2, keepdim=True)
    total = row.mean(dim=-2, keepdim=True)
    # in place on the one copy: these stacks are large and sit on the per-batch path of
    # every layer grid
    return c.sub_(row).sub_(col).add_(total)


def u_center_gram(k: Tensor, out: Tensor | None = None) -> Tensor:
    """U-centring (Székely & Rizzo 2014), the unbiased counterpart of ``H K H``.

    With ``K̃`` the kernel with zeroed diagonal, ``rᵢ = Σⱼ K̃ᵢⱼ`` and ``t = Σᵢⱼ K̃ᵢⱼ``:
    ``Uᵢⱼ = K̃ᵢⱼ − (rᵢ + rⱼ)/(n−2) + t/((n−1)(n−2))`` off the diagonal and 0 on it. Then
    ``⟨U(K), U(L)⟩_F / (n(n−3))`` is exactly HSIC₁ of Song et al. (2012), so the
    unbiased all-pairs grid is one matrix product of flattened U-centred stacks.
    Requires ``n ≥ 4``. ``out`` (same shape, may be ``k`` itself, may be float64 for a
    float32 ``k``) receives the result.
    """
    n = k.shape[-1]
    if n < 4:
        raise ValueError(f"unbiased HSIC needs at least 4 samples, got n={n}")
    u = k.clone() if out is None else (out if out is k else out.copy_(k))
    u.diagonal(dim1=-2, dim2=-1).zero_()
    r = u.sum(dim=-1, keepdim=True)
    t = r.sum(dim=-2, keepdim=True)
    # in place on the one copy (as in center_gram)
    u.sub_(r / (n - 2)).sub_(r.transpose(-2, -1) / (n - 2)).add_(t / ((n - 1) * (n - 2)))
    u.diagonal(dim1=-2, dim2=-1).zero_()
    return u


def centered_flat(k: Tensor, unbiased: bool, out: Tensor | None = None) -> Tensor:
    """Centre a float64 stack and flatten it to ``(L, n²)``.

    ``unbiased=True``: U-centring (:func:`u_center_gram`, HSIC₁ of Song et al. 2012);
    ``False``: ``H K H`` (:func:`center_gram`, HSIC₀ of Gretton et al. 2005). The inner
    product of two such rows, times :func:`~simtorch.functional.hsic_factor`, is their HSIC.
    No default: every caller states its estimator.
    """
    c = u_center_gram(k, out) if unbiased else center_gram(k, out)
    return c.reshape(*c.shape[:-2], -1)


def degenerate_mask(self_terms: Tensor, scale: Tensor) -> Tensor:
    """True where ``HSIC(K, K) ≤ DEGENERATE_RTOL · scale`` (constant features, or an
    unbiased estimate that is not positive): such a self-term carries no signal.

    A relative test, never against exact zero (DESIGN §4): ``scale`` is
    :func:`kernel_scale`, the squared noise floor of the Gram, times the same HSIC
    normaliser as the self-term (summed over the same batches).
    """
    return ~(self_terms > DEGENERATE_RTOL * scale)


def kernel_scale(gram: Tensor, energy: Tensor, kernel: Kernel, k: Tensor | None = None) -> Tensor:
    """Squared noise floor ``ν²`` a self-term is judged against, before the HSIC normaliser.

    ``gram`` is the centred Gram (stack, ``(..., n, n)``) in the dtype it was computed in,
    ``energy`` the features' ``‖X‖_F²`` (:func:`linear_gram`). For the linear kernel, with
    ``ε`` the machine epsilon of ``gram.dtype``, ``T = tr(G_c)`` and ``E = ‖X‖_F²``::

        ν = GRAM_ULPS · ε · min(E, GRAM_KAPPA · T)  +  (DATA_ULPS · ε)² · E

    Why. The computed centred Gram differs from the exact one by

    1. the rounding of the product: a float GEMM of the rows actually multiplied, ``X̃``
       (the features minus whatever shift was subtracted), errs by about
       ``ε ‖x̃ᵢ‖ ‖x̃ⱼ‖`` per entry, so ``‖E‖_F ≲ ε · tr(X̃X̃ᵀ)``; the double centring in
       the same dtype adds the same order (``GRAM_ULPS`` bounds both generously). Nothing
       subtracted gives ``tr(X̃X̃ᵀ) = E``; the engine subtracts the mean, or a shift close
       to it, whenever that ratio would exceed :data:`GRAM_KAPPA`, so
       ``tr(X̃X̃ᵀ) ≤ min(E, GRAM_KAPPA · T)``. This is the test against the *centred*
       energy the computation really had: a large common offset no longer inflates it.
    2. the features themselves: values of magnitude ``|x|`` made by float arithmetic carry
       ``ε|x|`` of rounding, energy ``ε² E``. A centred energy at that level can be the
       rounding of constant features (an offset plus noise in the last bits), which no
       centring can tell from signal. Since ``E = T + n‖μ‖²``, this is the centring error
       of the mean: ``(DATA_ULPS ε)² n‖μ‖²`` relative to ``T``.

    An error ``E`` of the Gram moves ``‖C(K)‖_F`` (``C`` the double or U-centring) by at
    most about ``‖E‖_F``, so a self-term ``⟨C(K), C(K)⟩ ≤ ν²`` (both times the HSIC
    normaliser) cannot be told from that of constant features: it is noise, never
    signal. Real signal is never caught: a biased self-term is at least ``T²/(n−1)`` (the
    centred Gram has rank ≤ n − 1), so it is flagged only when the spread is within about
    ``n^¼ · DATA_ULPS`` ulps of the features' magnitude (relative spread ≈ 3e-6 in
    float32, 6e-15 in float64 at n = 128), or when ``T`` is rounding itself. An unbiased
    self-term can be legitimately ≈ 0 (one-hot rows give exactly 0); at rounding level it
    is flagged, as it should be. Example: ``z + 300`` with ``z ~ N(0, 1)`` in float64 has
    ``T/E ≈ 1e-5`` and a floor ``ν/T ≈ 2e-13``; the old test against ``1e-10 · E²``
    called it constant. ``ε`` is that of the Gram's dtype, so features computed in half
    precision (autocast) are judged as float32 ones: variation within bfloat16's own
    rounding is not recognised as noise.

    For the RBF kernel (``k`` the float64 kernel stack, built from distances of the same
    Gram): ``(GRAM_ULPS · ε)² · ‖K‖_F²``, the rounding those distances pass on; and +inf
    (nothing passes) when ``T ≤ ν``: features that are rounding have an RBF kernel that
    looks like signal, since σ comes from the median of the same rounding.
    """
    eps = torch.finfo(gram.dtype if gram.dtype.is_floating_point else torch.float32).eps
    t = gram.diagonal(dim1=-2, dim2=-1).sum(-1).to(torch.float64).clamp_min(0)
    e = energy.to(torch.float64)
    nu = GRAM_ULPS * eps * torch.minimum(e, GRAM_KAPPA * t) + (DATA_ULPS * eps) ** 2 * e
    if kernel == "linear":
        return nu * nu
    assert k is not None
    # features whose centred energy is itself within the floor are rounding: their RBF
    # kernel (σ from the median of rounding) would look like signal, so nothing passes
    scale = (GRAM_ULPS * eps) ** 2 * (k * k).sum(dim=(-2, -1))
    return torch.where(t <= nu, torch.full_like(scale, float("inf")), scale)
