"""Deconfounded CKA.

Cui, Kumar, Marttinen, Kaski (2022), *Deconfounded representation similarity for
comparison of neural networks*, NeurIPS. Every layer's centred Gram K is regressed on the
confounder's centred Gram K⁰ (the inputs' by default); dCKA is the CKA of the residuals.

Estimator defaults follow the package's rule (*unbiased unless the function is the
single-set formula of a paper that is biased*): dCKA is Cui et al.'s formula, built on the
biased HSIC₀, so :func:`dcka` and its per-batch terms :func:`dcka_batch_terms` default to
``unbiased=False``.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .hsic import hsic_factor
from .kernels import centered_flat, degenerate_mask, kernel_scale
from .linear_grams import linear_gram

__all__ = [
    "DCKA_RESIDUAL_RTOL",
    "psd_project",
    "dcka_batch_terms",
    "dcka_residual_self",
    "dcka_masks",
    "dcka_from_terms",
    "dcka_pve",
    "dcka",
]


#: dCKA: a residual self-term ``HSIC(R, R)`` at or below this fraction of the layer's own
#: ``HSIC(K, K)`` means the confounder explains the layer entirely (the layer is the input up
#: to rotation and scale). float32 Grams of such a layer leave a residual near (1e-6)² of its
#: self-term, so anything below 1e-8 is rounding, never signal.
DCKA_RESIDUAL_RTOL = 1e-8


def psd_project(k: Tensor) -> Tensor:
    """Nearest positive semi-definite matrix (Frobenius norm) of each symmetric matrix of a
    stack ``(..., n, n)``: negative eigenvalues set to 0 (one batched ``eigh``).

    ``R⁺ = V max(Λ, 0) Vᵀ`` for ``(R + Rᵀ)/2 = V Λ Vᵀ`` (Higham 1988), the optional
    projection of the dCKA residual in Cui et al. (2022)'s code and simtorch 0.2.1."""
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

    ``S_AB = HSIC(A, B)`` for ``A, B ∈ {K, L, K⁰}`` (Cui et al. 2022), each carrying the
    batch's HSIC normaliser, so :func:`dcka_from_terms` of their sums is the streaming dCKA
    (the minibatch rule of Nguyen et al. 2021). ``unbiased=False`` by default: these are the
    terms of Cui et al.'s dCKA, which uses the biased HSIC₀ (the package's defaults rule).

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
        "self_a": torch.linalg.vecdot(fa, fa) * c,
        "conf_a": (fa @ f0) * c,
        "conf_self": (f0 @ f0) * c,
        "scale_a": scale_a.to(torch.float64) * c,
        "scale_0": scale_0.to(torch.float64) * c,
    }
    if same:
        t["self_b"], t["conf_b"], t["scale_b"] = t["self_a"], t["conf_a"], t["scale_a"]
    else:
        t["self_b"] = torch.linalg.vecdot(fb, fb) * c
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
    t["res_a"] = torch.linalg.vecdot(ra, ra) * c
    t["res_b"] = t["res_a"] if same else torch.linalg.vecdot(rb, rb) * c
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
    closed form for ``R = K − β K⁰``, ``β = S_K0/S_00``, Cui et al. 2022), or the summed
    projected-residual terms with ``remove_negative_eig``."""
    if remove_negative_eig:
        return t["res_a"], t["res_b"]
    ca, cb, s00 = _confounder_terms(t)
    s00 = s00.unsqueeze(-1)
    return t["self_a"] - ca * ca / s00, t["self_b"] - cb * cb / s00


def dcka_masks(t: dict[str, Tensor], remove_negative_eig: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Layers whose dCKA is undefined: ``(constant_a, constant_b, explained_a, explained_b)``.

    *constant*: ``HSIC(K, K) ≤ DEGENERATE_RTOL · scale``, no variance of their own (as in
    CKA); *explained*: a residual self-term ``HSIC(R, R) ≤ DCKA_RESIDUAL_RTOL · HSIC(K, K)``
    (Cui et al. 2022's residual), i.e. the confounder explains the layer entirely.
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
    ``pve = S_K0² / (S_KK · S_00)`` (the R² of the regression of K on K⁰ of Cui et al.
    2022; for HSIC₀ this is ``1 − ‖R‖²/‖K‖²``, simtorch 0.2.1's ``pve``). NaN for constant
    layers."""
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
        instead of HSIC₀. ``False`` by default: this is the single-set formula of Cui et al.
        (2022), which uses the biased HSIC₀ (as simtorch 0.2.1 did), so by the package's rule
        it keeps the paper's estimator.
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
        which = " and ".join(w for w, b in (("x", expl_a), ("y", expl_b)) if bool(b.any()))
        warnings.warn(
            f"dcka: {which} is entirely explained by the confounder z (its residual Gram is 0, e.g. it "
            "is z rotated or scaled); dCKA is undefined there and returned as NaN",
            UserWarning,
            stacklevel=2,
        )
    return dcka_from_terms(terms, remove_negative_eig)[0, 0]
