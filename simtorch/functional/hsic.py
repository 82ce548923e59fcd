"""HSIC and CKA.

Estimator defaults follow one rule (the package docstring): *unbiased unless the function
is the single-set formula of a paper that is biased*. :func:`hsic_cross` is the layer-grid
estimator and defaults to HSIC₁; :func:`hsic` (Gretton et al. 2005) and :func:`cka`
(Kornblith et al. 2019) are the papers' single-set formulas, which use HSIC₀, and default
to it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .kernels import Kernel, centered_flat, degenerate_mask, kernel_scale, kernel_stack
from .linear_grams import linear_gram

__all__ = ["hsic_factor", "hsic_cross", "hsic", "cka_from_hsic", "cka"]


def hsic_factor(n: int, unbiased: bool) -> float:
    """Normaliser of one batch's HSIC: ``1/(n(n−3))`` (HSIC₁) or ``1/(n−1)²`` (HSIC₀).

    ``HSIC₀ = ⟨HKH, HLH⟩_F / (n−1)²`` (Gretton et al. 2005), ``HSIC₁ = ⟨U(K), U(L)⟩_F /
    (n(n−3))`` (Song et al. 2012, ``n ≥ 4``). No default: every caller states its estimator.
    """
    if unbiased:
        if n < 4:
            raise ValueError(f"unbiased HSIC needs at least 4 samples, got n={n}")
        return 1.0 / (n * (n - 3))
    if n < 2:
        raise ValueError(f"HSIC needs at least 2 samples, got n={n}")
    return 1.0 / ((n - 1) ** 2)


def hsic_cross(ka: Tensor, kb: Tensor, unbiased: bool = True) -> Tensor:
    """HSIC between every pair of two kernel stacks: ``(La, n, n) × (Lb, n, n) → (La, Lb)``.

    ``HSIC[i, j] = ⟨C(K_i), C(L_j)⟩_F · c``, with ``C`` the U-centring and
    ``c = 1/(n(n−3))`` (HSIC₁, Song et al. 2012) or ``C = H·H`` and ``c = 1/(n−1)²``
    (HSIC₀, Gretton et al. 2005). One matrix product of the flattened centred stacks, in
    float64; never a loop over pairs.

    ``unbiased=True`` by default: this is the grid estimator, not a paper's single-set
    formula, so by the package's rule it is unbiased (HSIC₁ does not drift with the batch
    size when summed over batches, Nguyen et al. 2021). ``False`` gives HSIC₀.
    """
    n = ka.shape[-1]
    fa = centered_flat(ka.to(torch.float64), unbiased)
    fb = fa if kb is ka else centered_flat(kb.to(torch.float64), unbiased)
    return (fa @ fb.T) * hsic_factor(n, unbiased)


def hsic(k: Tensor, l: Tensor, unbiased: bool = False) -> Tensor:
    """HSIC of two ``(n, n)`` kernel matrices.

    HSIC₀ (``unbiased=False``, Gretton et al. 2005): ``tr(K H L H) / (n−1)²``.
    HSIC₁ (``unbiased=True``, Song et al. 2012, ``n ≥ 4``):
    ``[tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n−1)(n−2)) − 2/(n−2)·1ᵀK̃L̃1] / (n(n−3))``.

    ``unbiased=False`` by default: this is the single-set formula of Gretton et al. (2005),
    which is biased, so by the package's rule it keeps the paper's estimator (contrast
    :func:`hsic_cross`, the grid estimator, unbiased by default).
    """
    return hsic_cross(k.unsqueeze(0), l.unsqueeze(0), unbiased)[0, 0]


def cka_from_hsic(
    cross: Tensor,
    self_a: Tensor,
    self_b: Tensor,
    scale_a: Tensor | None = None,
    scale_b: Tensor | None = None,
) -> Tensor:
    """``CKA = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))`` for every pair (Kornblith et al.
    2019; with HSIC terms summed over batches this is minibatch CKA, Nguyen et al. 2021).

    ``cross`` is ``(..., La, Lb)``, ``self_a``/``self_b`` are ``(..., La)``/``(..., Lb)``.
    With scales given, a self-term ``≤ DEGENERATE_RTOL · scale`` (constant features, or a
    non-positive unbiased estimate) becomes NaN, so its row/column is NaN rather than a
    number made of float noise. No clamping: the unbiased estimator can be slightly
    negative or above 1 on finite samples. The estimator is whichever made the terms.
    """
    if scale_a is not None:
        self_a = self_a.masked_fill(degenerate_mask(self_a, scale_a), float("nan"))
    if scale_b is not None:
        self_b = self_b.masked_fill(degenerate_mask(self_b, scale_b), float("nan"))
    return cross / torch.sqrt(self_a.unsqueeze(-1) * self_b.unsqueeze(-2))


def cka(
    x: Tensor,
    y: Tensor,
    kernel: Kernel = "linear",
    unbiased: bool = False,
    sigma_frac: float = 1.0,
) -> Tensor:
    """Centered Kernel Alignment of two representations of the same ``n`` samples.

    ``CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))`` (Kornblith et al., ICML
    2019), with HSIC₀ (``unbiased=False``) or HSIC₁ (Song et al. 2012). Features are
    column-centred before the Gram; the HSIC terms are in float64.

    ``unbiased=False`` by default: this is the single-set formula of Kornblith et al.
    (2019), whose CKA uses the biased HSIC₀, so by the package's rule it keeps the paper's
    estimator (the streaming :class:`~simtorch.CKA` class, a grid estimator, defaults to
    unbiased).

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
