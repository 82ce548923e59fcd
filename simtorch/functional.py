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
    "DCKA_RESIDUAL_RTOL",
    "COINCIDENT_ULPS",
    "psd_project",
    "dcka_batch_terms",
    "dcka_residual_self",
    "dcka_masks",
    "dcka_from_terms",
    "dcka_pve",
    "dcka",
    "ii_distances",
    "coincident_rtol",
    "nearest_neighbour_weights",
    "average_ranks",
    "imbalance_sums",
    "information_imbalance_grams",
    "information_imbalance_distances",
    "ii_distance_rows",
    "ii_row_block",
    "information_imbalance",
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


def linear_gram(
    x: Tensor, dtype: torch.dtype | None = None, scratch: Tensor | None = None, out: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Gram matrix of column-centred features, and the raw energy of the features.

    Parameters
    ----------
    x : Tensor ``(n, ...)``
        Activations or inputs; flattened to ``(n, d)``.
    dtype : torch.dtype, optional
        Compute type. Defaults to float32 for half/bfloat16 inputs and to ``x.dtype``
        otherwise (float32 is enough once the features are centred, DESIGN §4).
    scratch : Tensor, optional
        A 1-D buffer of that dtype and device with at least ``n·d`` elements to hold the
        centred copy (the streaming engine reuses one across layers and batches: a fresh
        multi-MB allocation per layer costs page faults comparable to the product itself).
    out : Tensor, optional
        An ``(n, n)`` tensor of that dtype and device to write the Gram into (a slot of the
        engine's reused layer stack); ignored if it does not fit.

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
    if scratch is not None and scratch.dtype == dtype and scratch.device == x.device and scratch.numel() >= x.numel():
        xc = torch.sub(x, mu, out=scratch[: x.numel()].view(x.shape))
    else:
        xc = x - mu
    n = x.shape[0]
    if out is not None and out.dtype == dtype and out.device == x.device and out.shape == (n, n):
        gram = torch.mm(xc, xc.T, out=out)
    else:
        gram = xc @ xc.T
    energy = gram.diagonal().sum() + n * (mu * mu).sum()
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


def kernel_stack(gram: Tensor, kernel: Kernel = "linear", sigma_frac: float = 1.0, out: Tensor | None = None) -> Tensor:
    """Kernel matrices (float64) from linear Grams of centred features (``out``: an
    optional float64 buffer of the same shape for the linear kernel)."""
    if kernel == "linear":
        return out.copy_(gram) if out is not None else gram.to(torch.float64)
    if kernel == "rbf":
        return rbf_gram(gram, sigma_frac)
    raise ValueError(f"kernel must be 'linear' or 'rbf', got {kernel!r}")


def center_gram(k: Tensor, out: Tensor | None = None) -> Tensor:
    """Double centring ``H K H`` with ``H = I − 11ᵀ/n`` (batched over leading dims).

    ``out`` (same shape, may be ``k`` itself, may be float64 for a float32 ``k``) receives
    the result; the means are taken in ``out``'s precision."""
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


def hsic_factor(n: int, unbiased: bool) -> float:
    """Normaliser of one batch's HSIC: ``1/(n(n−3))`` (HSIC₁) or ``1/(n−1)²`` (HSIC₀)."""
    if unbiased:
        if n < 4:
            raise ValueError(f"unbiased HSIC needs at least 4 samples, got n={n}")
        return 1.0 / (n * (n - 3))
    if n < 2:
        raise ValueError(f"HSIC needs at least 2 samples, got n={n}")
    return 1.0 / ((n - 1) ** 2)


def centered_flat(k: Tensor, unbiased: bool, out: Tensor | None = None) -> Tensor:
    """Centre (``H K H`` or U-centring) a float64 stack and flatten to ``(L, n²)``."""
    c = u_center_gram(k, out) if unbiased else center_gram(k, out)
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


# ===================================================================== deconfounded CKA
#
# Cui, Kumar, Marttinen, Kaski (2022), *Deconfounded representation similarity for
# comparison of neural networks*, NeurIPS. Every layer's centred Gram K is regressed on the
# confounder's centred Gram K⁰ (the inputs' by default); dCKA is the CKA of the residuals.

#: dCKA: a residual self-term ``HSIC(R, R)`` at or below this fraction of the layer's own
#: ``HSIC(K, K)`` means the confounder explains the layer entirely (the layer is the input up
#: to rotation and scale). float32 Grams of such a layer leave a residual near (1e-6)² of its
#: self-term, so anything below 1e-8 is rounding, never signal.
DCKA_RESIDUAL_RTOL = 1e-8

#: Information Imbalance: a squared distance at or below ``COINCIDENT_ULPS · eps · (‖xᵢ‖² +
#: ‖xⱼ‖²)``, with ``eps`` the machine epsilon of the Gram's dtype, counts as 0 (coincident
#: points). A Gram of two equal rows can miss exact equality by a few ulps of their norm;
#: distances that small are below the Gram's resolution, so their order would be noise.
#: For the float32 Grams of the engine the threshold is about 1e-6 of the squared norms.
COINCIDENT_ULPS = 8


def psd_project(k: Tensor) -> Tensor:
    """Nearest positive semi-definite matrix (Frobenius norm) of each symmetric matrix of a
    stack ``(..., n, n)``: negative eigenvalues set to 0 (one batched ``eigh``)."""
    k = (k + k.transpose(-2, -1)) / 2
    evals, evecs = torch.linalg.eigh(k)
    return (evecs * evals.clamp_min(0).unsqueeze(-2)) @ evecs.transpose(-2, -1)


def dcka_batch_terms(
    ka: Tensor,
    kb: Tensor,
    k0: Tensor,
    scale_a: Tensor,
    scale_b: Tensor,
    scale_0: Tensor,
    unbiased: bool = False,
    remove_negative_eig: bool = False,
    *,
    fa: Tensor | None = None,
    fb: Tensor | None = None,
    f0: Tensor | None = None,
    same: bool = False,
) -> dict[str, Tensor]:
    """One batch's HSIC terms for streaming dCKA (summed over batches by the caller).

    Parameters
    ----------
    ka, kb : Tensor ``(La, n, n)``, ``(Lb, n, n)``
        Linear Grams of column-centred features (float64 or float32).
    k0 : Tensor ``(n, n)``
        The confounder's centred Gram.
    scale_a, scale_b, scale_0 : Tensor
        ``‖X‖_F⁴`` per layer and for the confounder (:func:`kernel_scale`), before the HSIC
        normaliser; they decide whether a self-term is float noise.
    unbiased : bool
        HSIC₁ instead of HSIC₀.
    remove_negative_eig : bool
        Residuals of this batch (β from this batch) projected onto the PSD cone, and their
        HSIC terms returned as ``cross``, ``res_a``, ``res_b``.
    fa, fb, f0 : Tensor, optional
        The flattened centred stacks (:func:`centered_flat`) when the caller has them cached.
    same : bool
        ``kb`` is ``ka`` (a model against itself): its terms are reused.

    Returns
    -------
    dict
        ``cross`` ``(La, Lb)``: ``HSIC(K, L)``, or ``HSIC(R⁺_K, R⁺_L)`` with the PSD projection;
        ``self_a``/``self_b``: ``HSIC(K, K)``; ``conf_a``/``conf_b``: ``HSIC(K, K⁰)``;
        ``conf_self``: ``HSIC(K⁰, K⁰)``; ``scale_*``: the noise scales, normalised like HSIC;
        with the projection also ``res_a``/``res_b``: ``HSIC(R⁺, R⁺)``. Each term carries the
        batch's ``1/(n−1)²`` or ``1/(n(n−3))``, so every batch has equal weight in the sums.
    """
    n = k0.shape[-1]
    c = hsic_factor(n, unbiased)
    if fa is None:
        fa = centered_flat(ka.to(torch.float64), unbiased)
    if fb is None:
        fb = fa if same else centered_flat(kb.to(torch.float64), unbiased)
    if f0 is None:
        f0 = centered_flat(k0.to(torch.float64), unbiased)
    t: dict[str, Tensor] = {
        "self_a": (fa * fa).sum(-1) * c,
        "conf_a": (fa @ f0) * c,
        "conf_self": (f0 @ f0) * c,
        "scale_a": scale_a.to(torch.float64) * c,
        "scale_0": scale_0.to(torch.float64) * c,
    }
    if same:
        t["self_b"], t["conf_b"], t["scale_b"] = t["self_a"], t["conf_a"], t["scale_a"]
    else:
        t["self_b"] = (fb * fb).sum(-1) * c
        t["conf_b"] = (fb @ f0) * c
        t["scale_b"] = scale_b.to(torch.float64) * c
    if not remove_negative_eig:
        t["cross"] = (fa @ fb.T) * c
        return t
    # β of this batch in the same HSIC inner product (for HSIC₀ and centred Grams this is
    # exactly the least-squares slope of vec(K) on [1, vec(K⁰)] of simtorch 0.2.1)
    conf_ok = ~degenerate_mask(t["conf_self"], t["scale_0"])
    denom = torch.where(conf_ok, t["conf_self"], torch.ones_like(t["conf_self"]))
    k0 = k0.to(torch.float64)

    def residual_flat(k: Tensor, conf: Tensor) -> Tensor:
        beta = torch.where(conf_ok, conf / denom, torch.zeros_like(conf))
        r = psd_project(k.to(torch.float64) - beta[:, None, None] * k0)
        return centered_flat(r, unbiased)

    ra = residual_flat(ka, t["conf_a"])
    rb = ra if same else residual_flat(kb, t["conf_b"])
    t["cross"] = (ra @ rb.T) * c
    t["res_a"] = (ra * ra).sum(-1) * c
    t["res_b"] = t["res_a"] if same else (rb * rb).sum(-1) * c
    return t


def _confounder_terms(t: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """``conf_a``, ``conf_b``, ``conf_self`` with β forced to 0 where the confounder has no
    variance (nothing to regress on: the layer is its own residual)."""
    ok = ~degenerate_mask(t["conf_self"], t["scale_0"])
    s00 = torch.where(ok, t["conf_self"], torch.ones_like(t["conf_self"]))
    ca = torch.where(ok.unsqueeze(-1), t["conf_a"], torch.zeros_like(t["conf_a"]))
    cb = torch.where(ok.unsqueeze(-1), t["conf_b"], torch.zeros_like(t["conf_b"]))
    return ca, cb, s00


def dcka_residual_self(t: dict[str, Tensor], remove_negative_eig: bool = False) -> tuple[Tensor, Tensor]:
    """``HSIC(R, R)`` per layer of each side from summed terms: ``S_KK − S_K0²/S_00`` (the
    closed form), or the summed projected-residual terms with ``remove_negative_eig``."""
    if remove_negative_eig:
        return t["res_a"], t["res_b"]
    ca, cb, s00 = _confounder_terms(t)
    s00 = s00.unsqueeze(-1)
    return t["self_a"] - ca * ca / s00, t["self_b"] - cb * cb / s00


def dcka_masks(t: dict[str, Tensor], remove_negative_eig: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Layers whose dCKA is undefined: ``(constant_a, constant_b, explained_a, explained_b)``.

    *constant*: no variance of their own (as in CKA); *explained*: a residual self-term
    ``≤ DCKA_RESIDUAL_RTOL · HSIC(K, K)``, i.e. the confounder explains the layer entirely.
    """
    res_a, res_b = dcka_residual_self(t, remove_negative_eig)
    const_a = degenerate_mask(t["self_a"], t["scale_a"])
    const_b = degenerate_mask(t["self_b"], t["scale_b"])
    expl_a = ~const_a & ~(res_a > DCKA_RESIDUAL_RTOL * t["self_a"])
    expl_b = ~const_b & ~(res_b > DCKA_RESIDUAL_RTOL * t["self_b"])
    return const_a, const_b, expl_a, expl_b


def dcka_from_terms(t: dict[str, Tensor], remove_negative_eig: bool = False) -> Tensor:
    """dCKA for every layer pair from (summed) :func:`dcka_batch_terms`.

    Without the projection this is the partial correlation in the HSIC inner product
    (Cui et al. 2022, with β pooled over every batch), with ``S_AB = HSIC(A, B)`` and ``0``
    the confounder::

        dCKA = (S_KL − S_K0·S_L0/S_00) / sqrt((S_KK − S_K0²/S_00)(S_LL − S_L0²/S_00))

    which equals ``CKA(R_K, R_L)`` for the residuals ``R = K − β K⁰``,
    ``β = S_K0 / S_00``. With the projection, ``HSIC(R⁺_K, R⁺_L) / sqrt(…)`` of the summed
    per-batch projected residuals. Layers flagged by :func:`dcka_masks` give NaN rows or
    columns. Broadcasts over leading dimensions (the jackknife's groups).
    """
    const_a, const_b, expl_a, expl_b = dcka_masks(t, remove_negative_eig)
    res_a, res_b = dcka_residual_self(t, remove_negative_eig)
    res_a = res_a.masked_fill(const_a | expl_a, float("nan"))
    res_b = res_b.masked_fill(const_b | expl_b, float("nan"))
    if remove_negative_eig:
        num = t["cross"]
    else:
        ca, cb, s00 = _confounder_terms(t)
        num = t["cross"] - ca.unsqueeze(-1) * cb.unsqueeze(-2) / s00[..., None, None]
    return num / torch.sqrt(res_a.unsqueeze(-1) * res_b.unsqueeze(-2))


def dcka_pve(t: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Fraction of each layer's Gram variance explained by the confounder's Gram:
    ``pve = S_K0² / (S_KK · S_00)`` (the R² of the regression of K on K⁰; for HSIC₀ this is
    ``1 − ‖R‖²/‖K‖²``, simtorch 0.2.1's ``pve``). NaN for constant layers."""
    ca, cb, s00 = _confounder_terms(t)
    s00 = s00.unsqueeze(-1)
    sa = t["self_a"].masked_fill(degenerate_mask(t["self_a"], t["scale_a"]), float("nan"))
    sb = t["self_b"].masked_fill(degenerate_mask(t["self_b"], t["scale_b"]), float("nan"))
    return ca * ca / (sa * s00), cb * cb / (sb * s00)


def dcka(
    x: Tensor,
    y: Tensor,
    z: Tensor,
    unbiased: bool = False,
    remove_negative_eig: bool = False,
) -> Tensor:
    """Deconfounded CKA of two representations of the same ``n`` samples, confounder ``z``.

    Cui, Kumar, Marttinen, Kaski, *Deconfounded Representation Similarity for Comparison of
    Neural Networks*, NeurIPS 2022. With centred Grams ``K`` (of ``x``), ``L`` (of ``y``)
    and ``K⁰`` (of ``z``, usually the inputs), each Gram is regressed on ``K⁰``:
    ``R_K = K − β_K K⁰`` with ``β_K = HSIC(K, K⁰) / HSIC(K⁰, K⁰)`` (for HSIC₀ this is the
    least-squares slope of ``vec(K)`` on ``[1, vec(K⁰)]``; the intercept is 0 for centred
    Grams), and ``dCKA = CKA(R_K, R_L)``, i.e.
    ``(S_KL − S_K0 S_L0/S_00) / sqrt((S_KK − S_K0²/S_00)(S_LL − S_L0²/S_00))``.

    Parameters
    ----------
    x, y, z : Tensor ``(n, ...)``
        Two representations and the confounder; flattened to ``(n, d)``.
    unbiased : bool
        HSIC₁ (Song et al. 2012, ``n ≥ 4``; β is then taken in the HSIC₁ inner product too)
        instead of HSIC₀ (the paper's and simtorch 0.2.1's choice, the default).
    remove_negative_eig : bool
        Project each residual onto the PSD cone (negative eigenvalues set to 0) before CKA,
        as the paper's code and simtorch 0.2.1 offer.

    Returns
    -------
    Tensor ``()`` (float64). NaN, with a warning, when ``x`` or ``y`` is constant or
    entirely explained by ``z`` (e.g. ``x`` is ``z`` rotated or scaled).
    """
    n = x.shape[0]
    if y.shape[0] != n or z.shape[0] != n:
        raise ValueError(
            f"x, y and z must hold the same samples: got n={n}, {y.shape[0]} and {z.shape[0]}"
        )
    grams, scales = [], []
    for t in (x, y, z):
        g, e = linear_gram(t)
        grams.append(g.to(torch.float64))
        scales.append(kernel_scale(g, e, "linear"))
    terms = dcka_batch_terms(
        grams[0][None], grams[1][None], grams[2], scales[0][None], scales[1][None], scales[2],
        unbiased, remove_negative_eig,
    )
    const_a, const_b, expl_a, expl_b = dcka_masks(terms, remove_negative_eig)
    if bool(expl_a.any() | expl_b.any()):
        import warnings

        which = " and ".join(w for w, b in (("x", expl_a), ("y", expl_b)) if bool(b.any()))
        warnings.warn(
            f"dcka: {which} is entirely explained by the confounder z (its residual Gram is 0, e.g. it "
            "is z rotated or scaled); dCKA is undefined there and returned as NaN",
            UserWarning,
            stacklevel=2,
        )
    return dcka_from_terms(terms, remove_negative_eig)[0, 0]


# ================================================================= Information Imbalance
#
# Glielmo, Zeni, Cheng, Csányi, Laio (2022), *Ranking the information content of distance
# measures*, PNAS Nexus 1(2). Δ(A→B) = (2/n²) Σ_{i, j : r^A_ij = 1} r^B_ij.


def coincident_rtol(dtype: torch.dtype) -> float:
    """Relative threshold below which a squared distance computed from a Gram of ``dtype``
    counts as 0: ``COINCIDENT_ULPS · eps(dtype)`` (about 1e-6 for float32, 2e-15 for float64)."""
    return COINCIDENT_ULPS * torch.finfo(dtype if dtype.is_floating_point else torch.float32).eps


def ii_distances(gram: Tensor) -> Tensor:
    """Squared distances (float64) from a Gram (stack), with coincident points snapped to 0.

    ``D = diag(G) + diag(G)ᵀ − 2G``, clamped at 0, 0 on the diagonal, and 0 wherever
    ``D_ij ≤ coincident_rtol(G.dtype) · (G_ii + G_jj)``, so duplicated samples tie exactly.
    Other ties are exact equalities of the computed values: distances that are equal in
    exact arithmetic but computed with different rounding (e.g. through the column mean of
    the centring) are ordered by that rounding.
    """
    rtol = coincident_rtol(gram.dtype)
    g = gram.detach().to(torch.float64)
    diag = g.diagonal(dim1=-2, dim2=-1)
    norms = diag.unsqueeze(-1) + diag.unsqueeze(-2)
    d = norms - 2 * g
    d.masked_fill_(d <= rtol * norms, 0.0)  # in place: this runs on every batch
    d.diagonal(dim1=-2, dim2=-1).zero_()
    return d


def ii_distance_rows(xc: Tensor, sq_norms: Tensor, rows: Tensor) -> Tensor:
    """Squared distances (float64) from the points ``rows`` to all points of one
    representation, ``(m, N)``, as :func:`ii_distances` would give them from the full Gram.

    ``xc`` ``(N, d)`` are column-centred features, ``sq_norms`` ``(N,)`` their float64
    squared norms. The cross products use ``xc``'s dtype (float32 is enough for centred
    features, DESIGN §4), so memory is ``O(m · N)``, never ``O(N²)``.
    """
    g = (xc[rows] @ xc.T).to(torch.float64)
    norms = sq_norms[rows].unsqueeze(-1) + sq_norms.unsqueeze(-2)
    d = norms - 2 * g
    d.masked_fill_(d <= coincident_rtol(xc.dtype) * norms, 0.0)
    d[torch.arange(rows.shape[0], device=d.device), rows] = 0
    return d


def _self_mask(m: int, n: int, self_idx: Tensor | None, device: torch.device) -> Tensor:
    """Boolean ``(m, n)``: True at each query row's own column."""
    if self_idx is None:
        return torch.eye(m, n, dtype=torch.bool, device=device)
    mask = torch.zeros(m, n, dtype=torch.bool, device=device)
    mask[torch.arange(m, device=device), self_idx.to(device)] = True
    return mask


def nearest_neighbour_weights(d: Tensor, self_idx: Tensor | None = None) -> Tensor:
    """Weights of each point's nearest neighbours, self excluded; tied nearest neighbours
    share the weight equally (each row sums to 1).

    ``d`` is ``(..., m, n)``: distances from ``m`` query points to all ``n`` points;
    ``self_idx`` ``(m,)`` gives each query point's own column (default: the diagonal).
    """
    mask = _self_mask(d.shape[-2], d.shape[-1], self_idx, d.device)
    dd = d.masked_fill(mask, float("inf"))
    nn = dd == dd.amin(dim=-1, keepdim=True)
    w = nn.to(torch.float64)
    return w / w.sum(dim=-1, keepdim=True)


def average_ranks(d: Tensor, self_idx: Tensor | None = None) -> Tensor:
    """Neighbour ranks ``r_ij`` (nearest = 1, self excluded, ties get their average rank).

    Computed by counting, never from argsort, so the result does not depend on sort
    stability or the device: with ``less`` and ``leq`` the numbers of other points strictly
    closer / at most as close as ``j``, ``r_ij = (less + leq + 1) / 2``. ``d`` is
    ``(..., m, n)``; the self column gets rank 0. float64.
    """
    mask = _self_mask(d.shape[-2], d.shape[-1], self_idx, d.device)
    dd = d.masked_fill(mask, float("-inf")).contiguous()
    s = torch.sort(dd, dim=-1).values  # values only: identical whatever the sort's stability
    left = torch.searchsorted(s, dd, right=False)  # includes self (−inf) when j ≠ i
    right = torch.searchsorted(s, dd, right=True)
    r = (left + right - 1).to(torch.float64) / 2
    return r.masked_fill(mask, 0.0)


def _sorted_rows(d: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Rows with the self column at −inf, and their sorted values (values only: the same
    whatever the sort's stability). On the CPU numpy sorts these short rows about 10×
    faster than torch does; both give identical values."""
    dd = d.detach().masked_fill(mask, float("-inf")).contiguous()
    if dd.device.type == "cpu":
        import numpy as np

        return dd, torch.from_numpy(np.sort(dd.numpy(), axis=-1))
    return dd, torch.sort(dd, dim=-1).values


def _nearest_sparse(dd: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest neighbours from rows with the self column at −inf (``dd``) and their sorted
    values ``s`` (``s[..., 1]`` is the nearest distance): indices ``(L, m, k)`` and weights
    (ties share 1 equally; ``k`` is the largest tie count, padding entries weigh 0)."""
    tie = dd == s[..., 1:2]
    count = tie.sum(-1, keepdim=True)
    k = int(count.max())  # a host sync: this path is used on the CPU only
    if k == 1:
        idx = tie.to(torch.uint8).argmax(dim=-1, keepdim=True)
    else:  # every tied column has the top value 1, so all are among the k selected
        idx = torch.topk(tie.to(torch.float32), k, dim=-1).indices
    w = tie.gather(-1, idx).to(torch.float64) / count
    return idx, w


def _ranks_at(dd: Tensor, s: Tensor, idx: Tensor) -> Tensor:
    """Average ranks in each layer of ``dd`` ``(Lb, m, n)`` (self at −inf, ``s`` its sorted
    rows) of the columns ``idx`` ``(La, m, k)``: ``(Lb, m, La, k)``."""
    lb, m, _ = dd.shape
    la, _, k = idx.shape
    cols = idx.permute(1, 0, 2).reshape(1, m, la * k).expand(lb, m, la * k)
    v = dd.gather(-1, cols).contiguous()
    left = torch.searchsorted(s, v, right=False)  # counts self (−inf) too
    # v is in its row, so s[left] == v; unless the next sorted value equals v as well (a
    # tie, rare), the count of values ≤ v is left + 1 and the second search can be skipped
    n = s.shape[-1]
    nxt = s.gather(-1, (left + 1).clamp_max(n - 1))
    if bool(((nxt == v) & (left + 1 < n)).any()):  # a host sync: the sparse path is CPU-only
        right = torch.searchsorted(s, v, right=True)
    else:
        right = left + 1
    return ((left + right - 1).to(torch.float64) / 2).reshape(lb, m, la, k)


def imbalance_sums(
    da: Tensor, db: Tensor | None, self_idx: Tensor | None = None, method: str = "auto"
) -> tuple[Tensor, Tensor]:
    """``Σ_i Σ_{j ∈ NN_A(i)} w_ij r^B_ij`` for every layer pair, both directions.

    ``da`` ``(La, m, n)`` and ``db`` ``(Lb, m, n)`` are distances from the same ``m``
    query points (rows of the data) to all ``n`` points; ``db=None`` means ``db is da``.
    ``self_idx`` ``(m,)``: each query point's own column (default: the diagonal).
    Returns ``(forward (La, Lb), reverse (La, Lb))``: divide by ``n²/2`` (summed over every
    row block) for Δ(A→B) and Δ(B→A). No loop over layer pairs.

    ``method``: ``"sparse"`` ranks only the nearest-neighbour columns (sort the rows once,
    one gather and a binary search for every pair at once; one host sync for the largest
    tie count), ``"dense"`` builds full weight and rank matrices and takes two matrix
    products (no host sync, for accelerators). ``"auto"``: sparse on the CPU, dense
    elsewhere. Both give the same numbers.
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
    mask = _self_mask(da.shape[-2], da.shape[-1], self_idx, da.device)
    dda, sa = _sorted_rows(da, mask)
    ia, wa = _nearest_sparse(dda, sa)
    if db is None:
        fwd = torch.einsum("aik,biak->ab", wa, _ranks_at(dda, sa, ia))
        return fwd, fwd.T
    ddb, sb = _sorted_rows(db, mask)
    ib, wb = _nearest_sparse(ddb, sb)
    fwd = torch.einsum("aik,biak->ab", wa, _ranks_at(ddb, sb, ia))  # Δ(A_a → B_b)
    rev = torch.einsum("bik,aibk->ab", wb, _ranks_at(dda, sa, ib))  # Δ(B_b → A_a)
    return fwd, rev


#: row-block size target (elements of one float64 stack) for Information Imbalance
_II_BLOCK_ELEMENTS = 1 << 22


def ii_row_block(n_points: int, n_layers: int) -> int:
    """Rows per block so one float64 ``(n_layers, rows, n_points)`` stack stays near 2²²
    values (32 MiB; the ranking keeps a few such stacks alive)."""
    return max(1, min(n_points, _II_BLOCK_ELEMENTS // max(1, n_layers * n_points)))


def information_imbalance_distances(da: Tensor, db: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Δ(A_i→B_j) and Δ(B_j→A_i) for every pair of two squared-distance stacks
    ``(La, n, n)``, ``(Lb, n, n)`` of the same ``n`` points (``db=None``: the same stack).

    Returns two ``(La, Lb)`` float64 grids; ``rev[i, j] = Δ(B_j → A_i)``. Rows are processed
    in blocks (:func:`ii_row_block`) to bound the working memory.
    """
    n = da.shape[-1]
    if n < 2:
        raise ValueError(f"Information Imbalance needs at least 2 samples, got n={n}")
    block = ii_row_block(n, da.shape[0] + (0 if db is None else db.shape[0]))
    fwd = rev = None
    for start in range(0, n, block):
        rows = torch.arange(start, min(n, start + block), device=da.device)
        f, r = imbalance_sums(da[:, rows], None if db is None else db[:, rows], rows)
        fwd, rev = (f, r) if fwd is None else (fwd + f, rev + r)
    # one rounding (the sums are exact integers or halves when there are no ties): Δ(X, X) is
    # exactly the float nearest 2/n
    return fwd * 2.0 / (n * n), rev * 2.0 / (n * n)  # type: ignore[operator]


def information_imbalance_grams(grams_a: Tensor, grams_b: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """:func:`information_imbalance_distances` of the squared distances of two Gram stacks
    (``grams_b=None``: the same stack), via :func:`ii_distances`."""
    return information_imbalance_distances(
        ii_distances(grams_a), None if grams_b is None else ii_distances(grams_b)
    )


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
    float32, 2e-15 for float64) count as 0, and coincident samples give a warning.

    Returns
    -------
    (Δ(X→Y), Δ(Y→X)) : tuple of float64 Tensors ``()``
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same samples: got n={x.shape[0]} and n={y.shape[0]}")
    gx, _ = linear_gram(x)
    gy, _ = linear_gram(y)
    dx, dy = ii_distances(gx[None]), ii_distances(gy[None])
    n = x.shape[0]
    dup = [name for name, d in (("x", dx), ("y", dy)) if int((d == 0).sum()) > n]
    if dup:
        import warnings

        warnings.warn(
            f"information_imbalance: {' and '.join(dup)} have coincident samples (zero distances); tied nearest "
            "neighbours share the weight and tied distances get their average rank",
            UserWarning,
            stacklevel=2,
        )
    fwd, rev = information_imbalance_distances(dx, dy)
    return fwd[0, 0], rev[0, 0]
