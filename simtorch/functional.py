"""Pure tensor math behind every simtorch metric.

Everything here is a function of tensors, with no state and no hooks, so that the tests
can check it against formulas written independently. The streaming classes in
:mod:`simtorch.similarity` call these functions; they never carry copies of the math.

Conventions
-----------
``n`` is the number of samples. A *stack* is a tensor of shape ``(L, n, n)`` holding one
Gram (kernel) matrix per layer. HSIC sums are done in float64 (DESIGN §4): Gram matrices
of column-centred features may be float32, but the centring of kernels and every inner
product that feeds an HSIC value is promoted to float64.

References
----------
- Gretton et al. (2005), *Measuring statistical dependence with Hilbert-Schmidt norms*
  (biased HSIC, HSIC₀).
- Song et al. (2012), *Feature selection via dependence maximization*, JMLR 13 (unbiased
  HSIC, HSIC₁).
- Kornblith et al. (2019), *Similarity of neural network representations revisited*, ICML
  (CKA, the RBF median heuristic).
- Nguyen, Raghu, Kornblith (2021), *Do wide and deep networks learn the same things?*, ICLR
  (minibatch CKA: sum HSIC terms over batches, take the ratio once).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "flatten_samples",
    "center_columns",
    "linear_gram",
    "sq_distances",
    "median_sq_distance",
    "rbf_gram",
    "kernel_stack",
    "center_gram",
    "u_center_gram",
    "hsic_factor",
    "hsic_cross",
    "hsic",
    "cka",
    "cka_from_hsic",
    "centered_flat",
    "degenerate_mask",
    "kernel_scale",
    "DEGENERATE_RTOL",
]

Kernel = Literal["linear", "rbf"]

#: A self-term HSIC(K, K) at or below this fraction of its scale (the squared energy of the
#: raw, uncentred kernel) is treated as zero: float32 centring leaves a residue of about
#: (1e-7)² of the raw energy, so anything this small is noise, never signal.
DEGENERATE_RTOL = 1e-10


def flatten_samples(x: Tensor) -> Tensor:
    """Reshape ``(n, ...)`` to ``(n, d)``; a 1-D tensor becomes ``(n, 1)``."""
    if x.dim() == 0:
        raise ValueError("expected a tensor with a leading sample dimension, got a scalar")
    return x.reshape(x.shape[0], -1)


def center_columns(x: Tensor) -> Tensor:
    """Subtract each column's mean over the samples (dim 0)."""
    return x - x.mean(dim=0, keepdim=True)


def linear_gram(x: Tensor, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """Gram matrix of column-centred features, and the raw energy of the features.

    Parameters
    ----------
    x : Tensor ``(n, ...)``
        Activations or inputs; flattened to ``(n, d)``.
    dtype : torch.dtype, optional
        Compute type. Defaults to float32 for half/bfloat16 inputs and to ``x.dtype``
        otherwise (float32 is enough once the features are centred, DESIGN §4).

    Returns
    -------
    gram : Tensor ``(n, n)``
        ``X_c X_cᵀ`` with ``X_c = X − 1 μᵀ``.
    energy : Tensor ``()``
        ``‖X‖_F² = tr(X_c X_cᵀ) + n‖μ‖²``, the scale that decides whether the centred
        part is real signal or float noise (constant features).
    """
    x = flatten_samples(x)
    if dtype is None:
        dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        if not dtype.is_floating_point:
            dtype = torch.float32
    x = x.to(dtype)
    mu = x.mean(dim=0, keepdim=True)
    xc = x - mu
    gram = xc @ xc.T
    energy = gram.diagonal().sum() + x.shape[0] * (mu * mu).sum()
    return gram, energy


def sq_distances(gram: Tensor) -> Tensor:
    """Squared Euclidean distances from a Gram stack: ``D = diag(G) + diag(G)ᵀ − 2G``.

    Works on ``(n, n)`` or ``(..., n, n)``; clamped at 0 (float rounding can make tiny
    negatives) and exactly 0 on the diagonal.
    """
    diag = gram.diagonal(dim1=-2, dim2=-1)
    d = diag.unsqueeze(-1) + diag.unsqueeze(-2) - 2 * gram
    d = d.clamp_min(0)
    d.diagonal(dim1=-2, dim2=-1).zero_()
    return d


def median_sq_distance(d: Tensor) -> Tensor:
    """Median of all ``n²`` entries of each squared-distance matrix (zero diagonal included).

    For an even count this is the mean of the two middle values, as ``numpy.median`` in
    Kornblith et al.'s reference code (``torch.median`` would return the lower one).
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
    layer), Kornblith et al. (2019). When more than half of the pairs coincide the median
    is 0; the kernel is then its σ→0 limit (1 for coincident points, 0 otherwise).
    """
    if sigma_frac <= 0:
        raise ValueError(f"sigma_frac must be > 0, got {sigma_frac}")
    d = sq_distances(gram.to(torch.float64))
    sigma2 = (sigma_frac**2) * median_sq_distance(d)
    sigma2 = sigma2[..., None, None]
    safe = torch.where(sigma2 > 0, sigma2, torch.ones_like(sigma2))
    k = torch.exp(-d / (2 * safe))
    return torch.where(sigma2 > 0, k, (d == 0).to(k.dtype))


def kernel_stack(gram: Tensor, kernel: Kernel = "linear", sigma_frac: float = 1.0) -> Tensor:
    """Kernel matrices (float64) from linear Grams of centred features."""
    if kernel == "linear":
        return gram.to(torch.float64)
    if kernel == "rbf":
        return rbf_gram(gram, sigma_frac)
    raise ValueError(f"kernel must be 'linear' or 'rbf', got {kernel!r}")


def center_gram(k: Tensor) -> Tensor:
    """Double centring ``H K H`` with ``H = I − 11ᵀ/n`` (batched over leading dims)."""
    row = k.mean(dim=-1, keepdim=True)
    col = k.mean(dim=-2, keepdim=True)
    total = k.mean(dim=(-2, -1), keepdim=True)
    return k - row - col + total


def u_center_gram(k: Tensor) -> Tensor:
    """U-centring (Székely & Rizzo 2014), the unbiased counterpart of ``H K H``.

    With ``K̃`` the kernel with zeroed diagonal, ``rᵢ = Σⱼ K̃ᵢⱼ`` and ``t = Σᵢⱼ K̃ᵢⱼ``:
    ``Uᵢⱼ = K̃ᵢⱼ − (rᵢ + rⱼ)/(n−2) + t/((n−1)(n−2))`` off the diagonal and 0 on it. Then
    ``⟨U(K), U(L)⟩_F / (n(n−3))`` is exactly HSIC₁ of Song et al. (2012), so the
    unbiased all-pairs grid is one matrix product of flattened U-centred stacks.
    Requires ``n ≥ 4``.
    """
    n = k.shape[-1]
    if n < 4:
        raise ValueError(f"unbiased HSIC needs at least 4 samples, got n={n}")
    eye = torch.eye(n, dtype=torch.bool, device=k.device)
    kt = k.masked_fill(eye, 0)
    r = kt.sum(dim=-1, keepdim=True)
    t = r.sum(dim=-2, keepdim=True)
    u = kt - (r + r.transpose(-2, -1)) / (n - 2) + t / ((n - 1) * (n - 2))
    return u.masked_fill(eye, 0)


def hsic_factor(n: int, unbiased: bool) -> float:
    """Normaliser of one batch's HSIC: ``1/(n(n−3))`` (HSIC₁) or ``1/(n−1)²`` (HSIC₀)."""
    if unbiased:
        if n < 4:
            raise ValueError(f"unbiased HSIC needs at least 4 samples, got n={n}")
        return 1.0 / (n * (n - 3))
    if n < 2:
        raise ValueError(f"HSIC needs at least 2 samples, got n={n}")
    return 1.0 / ((n - 1) ** 2)


def centered_flat(k: Tensor, unbiased: bool) -> Tensor:
    """Centre (``H K H`` or U-centring) a float64 stack and flatten to ``(L, n²)``."""
    c = u_center_gram(k) if unbiased else center_gram(k)
    return c.reshape(*c.shape[:-2], -1)


def hsic_cross(ka: Tensor, kb: Tensor, unbiased: bool = True) -> Tensor:
    """HSIC between every pair of two kernel stacks: ``(La, n, n) × (Lb, n, n) → (La, Lb)``.

    One matrix product of the flattened centred stacks, in float64; never a loop over
    pairs. ``unbiased=True`` gives HSIC₁ (Song et al. 2012), ``False`` HSIC₀.
    """
    n = ka.shape[-1]
    fa = centered_flat(ka.to(torch.float64), unbiased)
    fb = fa if kb is ka else centered_flat(kb.to(torch.float64), unbiased)
    return (fa @ fb.T) * hsic_factor(n, unbiased)


def hsic(k: Tensor, l: Tensor, unbiased: bool = False) -> Tensor:
    """HSIC of two ``(n, n)`` kernel matrices.

    HSIC₀ (``unbiased=False``): ``tr(K H L H) / (n−1)²``.
    HSIC₁ (``unbiased=True``, Song et al. 2012, ``n ≥ 4``):
    ``[tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n−1)(n−2)) − 2/(n−2)·1ᵀK̃L̃1] / (n(n−3))``.
    """
    return hsic_cross(k.unsqueeze(0), l.unsqueeze(0), unbiased)[0, 0]


def cka_from_hsic(
    cross: Tensor,
    self_a: Tensor,
    self_b: Tensor,
    scale_a: Tensor | None = None,
    scale_b: Tensor | None = None,
) -> Tensor:
    """``CKA = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))`` for every pair.

    ``cross`` is ``(..., La, Lb)``, ``self_a``/``self_b`` are ``(..., La)``/``(..., Lb)``.
    With scales given, a self-term ``≤ DEGENERATE_RTOL · scale`` (constant features, or a
    non-positive unbiased estimate) becomes NaN, so its row/column is NaN rather than a
    number made of float noise. No clamping: the unbiased estimator can be slightly
    negative or above 1 on finite samples.
    """
    if scale_a is not None:
        self_a = self_a.masked_fill(degenerate_mask(self_a, scale_a), float("nan"))
    if scale_b is not None:
        self_b = self_b.masked_fill(degenerate_mask(self_b, scale_b), float("nan"))
    return cross / torch.sqrt(self_a.unsqueeze(-1) * self_b.unsqueeze(-2))


def degenerate_mask(self_terms: Tensor, scale: Tensor) -> Tensor:
    """True where ``HSIC(K, K) ≤ DEGENERATE_RTOL · scale`` (constant features, or an
    unbiased estimate that is not positive): such a self-term carries no signal."""
    return ~(self_terms > DEGENERATE_RTOL * scale)


def kernel_scale(gram: Tensor, energy: Tensor, kernel: Kernel, k: Tensor | None = None) -> Tensor:
    """Scale a self-term is judged against, before the HSIC normaliser: ``‖X‖_F⁴`` for the
    linear kernel (an upper bound of ``‖X Xᵀ‖_F²`` that centring cannot shrink, so constant
    features are caught), ``‖K‖_F²`` for RBF."""
    if kernel == "linear":
        return energy.to(torch.float64) ** 2
    assert k is not None
    return (k * k).sum(dim=(-2, -1))


def cka(
    x: Tensor,
    y: Tensor,
    kernel: Kernel = "linear",
    unbiased: bool = False,
    sigma_frac: float = 1.0,
) -> Tensor:
    """Centered Kernel Alignment of two representations of the same ``n`` samples.

    ``CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))`` (Kornblith et al., ICML
    2019), with HSIC₀ (``unbiased=False``, the paper's default) or HSIC₁ (Song et al.
    2012). Features are column-centred before the Gram; the HSIC terms are in float64.

    Parameters
    ----------
    x, y : Tensor ``(n, ...)``
        Two representations; flattened to ``(n, d₁)`` and ``(n, d₂)``.
    kernel : ``"linear"`` or ``"rbf"``
        ``rbf`` uses ``σ = sigma_frac · sqrt(median squared distance)``.
    unbiased : bool
        HSIC₁ instead of HSIC₀ (needs ``n ≥ 4``).

    Returns
    -------
    Tensor ``()`` (float64); NaN when either representation is constant (0/0).
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same samples: got n={x.shape[0]} and n={y.shape[0]}")
    gx, ex = linear_gram(x)
    gy, ey = linear_gram(y)
    kx = kernel_stack(gx, kernel, sigma_frac)
    ky = kernel_stack(gy, kernel, sigma_frac)
    h = hsic_cross(torch.stack([kx, ky]), torch.stack([kx, ky]), unbiased)
    scale = torch.stack([kernel_scale(gx, ex, kernel, kx), kernel_scale(gy, ey, kernel, ky)])
    scale = scale * hsic_factor(x.shape[0], unbiased)
    self_terms = h.diagonal()
    grid = cka_from_hsic(h[:1, 1:], self_terms[:1], self_terms[1:], scale[:1], scale[1:])
    return grid[0, 0]
