"""Linear Grams of column-centred features, as the engine's hooks make them.

A float Gram product errs by about ``eps · tr(X̃X̃ᵀ)`` for the rows ``X̃`` actually multiplied,
while its signal is ``tr(G_c)``, the trace of the Gram of the exactly centred features
(DESIGN §4; Kornblith et al. 2019 centre the features first for this reason). So the rows are
centred, or shifted close enough to their mean that ``tr(X̃X̃ᵀ) ≤ GRAM_KAPPA · tr(G_c)``,
before the product, and the small ``n × n`` product is double-centred afterwards:
``H X̃X̃ᵀ H`` is the centred Gram whatever the shift (``H 1 = 0``), so the shift decides the
precision only, never the value.

The work is split in two so that the per-layer part in the hook is as short as possible:

1. :func:`capture_product` (per layer, while the activation is alive): at most one pass to
   centre the rows, the GEMM into a slot of the engine's stack, no post-processing;
2. :func:`finish_grams_` (once per forward pass, over the whole ``(L, n, n)`` stack): the
   double centring and the energies ``‖X‖_F²``, a handful of batched operations instead of
   a handful per layer (which, on a network of many small layers, cost as much as the
   products).

:func:`centred_gram`, :func:`linear_gram` and :func:`quick_centred_gram` are the two steps on
one matrix.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .kernels import DATA_ULPS, GRAM_KAPPA, flatten_samples, gram_dtype, product_rows

__all__ = [
    "SHIFT_ROWS",
    "RAW_MIN_ELEMENTS",
    "HALVES_MAX_ELEMENTS",
    "gram_product",
    "large",
    "in_halves",
    "product_into",
    "head_shift",
    "double_center_",
    "Unchecked",
    "capture_product",
    "gram_stats",
    "accept_product",
    "finish_grams_",
    "centred_gram",
    "linear_gram",
    "quick_centred_gram",
]

#: rows of a batch whose statistics decide, for a large activation, whether it may be
#: multiplied as it is, and whose mean otherwise serves as its shift
SHIFT_ROWS = 8

#: activations of at least this many elements skip the mean pass (the estimate that decides
#: it and the check of the product cost a few small operations, more than a pass over a
#: smaller activation: measured on the W1 and W1-many layers, 128 × 1024 and up gain,
#: 128 × 512 does not)
RAW_MIN_ELEMENTS = 1 << 17

#: CPU products ``X Xᵀ`` with ``n ≥ 128`` rows, ``d ≥ 2048`` columns and at most this many
#: elements are taken in two row halves, three quarters of the multiply-adds (the lower-left
#: block is the upper-right one transposed). Measured with MKL on 2 cores (ReLU features,
#: min of 30 rounds): 5–10 % faster than one GEMM at n = 128, 10–15 % at n = 256; no gain
#: below d = 2048 (the call overhead) nor above about 16 MB of features, which no longer
#: stay in cache between the two halves' reads.
HALVES_MAX_ELEMENTS = 1 << 22


_EPS = {dt: torch.finfo(dt).eps for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


def _fits(buf: Tensor | None, dtype: torch.dtype, device: torch.device, shape: tuple[int, ...]) -> bool:
    return buf is not None and buf.dtype == dtype and buf.device == device and tuple(buf.shape) == shape


def gram_product(x: Tensor, shift: Tensor | None = None, scratch: Tensor | None = None,
                 out: Tensor | None = None) -> Tensor:
    """``G̃ = X̃ X̃ᵀ`` with ``X̃ = X − 1 sᵀ`` (``s = shift``, ``(d,)`` or ``(1, d)``), or
    ``X Xᵀ`` without a shift: one GEMM in ``x``'s dtype (two half-size ones for a mid-sized
    CPU product, :data:`HALVES_MAX_ELEMENTS`), and with a shift one fused subtraction into
    ``scratch`` (a 1-D buffer of at least ``n·d`` elements; reused by the
    engine so no activation-sized allocation is made per layer).

    No centring here: :func:`double_center_` makes ``H G̃ H``, which is the centred Gram
    whatever the shift (``H 1 = 0``). The shift only decides the precision: the product's
    rounding is of order ``eps · tr(G̃)`` (:data:`~simtorch.functional.GRAM_KAPPA`).
    """
    n = x.shape[0]
    if shift is not None:
        if scratch is not None and scratch.dtype == x.dtype and scratch.device == x.device and scratch.numel() >= x.numel():
            x = torch.sub(x, shift.reshape(1, -1), out=scratch[: x.numel()].view(x.shape))
        else:
            x = x - shift.reshape(1, -1)
    if x.requires_grad and torch.is_grad_enabled():
        return x @ x.T  # out= does not take part in autograd
    if not _fits(out, x.dtype, x.device, (n, n)):
        out = x.new_empty((n, n))
    return product_into(x, out, x.device.type == "cpu" and in_halves(n, x.shape[1]))


def large(n: int, d: int) -> bool:
    """Whether :func:`capture_product` multiplies ``n × d`` rows as they are or shifted by
    the mean of the first ones (:func:`head_shift`), not centred by their exact mean:
    :data:`RAW_MIN_ELEMENTS` or more, and more rows than :data:`SHIFT_ROWS`."""
    return n > SHIFT_ROWS and n * d >= RAW_MIN_ELEMENTS


def in_halves(n: int, d: int) -> bool:
    """Whether a CPU product of ``n × d`` rows is taken in row halves (:data:`HALVES_MAX_ELEMENTS`)."""
    return n >= 128 and d >= 2048 and n * d <= HALVES_MAX_ELEMENTS


def product_into(x: Tensor, out: Tensor, halves: bool) -> Tensor:
    """``X Xᵀ`` into ``out`` (``(n, n)``, ``x``'s dtype and device): one GEMM, or with ``halves``
    the top rows against every row, the bottom block, and the lower-left block mirrored from
    the upper-right: the same dot products as one GEMM, three quarters of them."""
    if not halves:
        return torch.mm(x, x.T, out=out)
    h = x.shape[0] // 2
    top = torch.mm(x[:h], x.T, out=out[:h])
    out[h:, h:] = x[h:] @ x[h:].T
    out[h:, :h] = top[:, h:].T
    return out


def head_shift(x: Tensor) -> tuple[Tensor | None, float]:
    """For a large ``(n, d)`` activation, ``n > SHIFT_ROWS``: None when its first
    :data:`SHIFT_ROWS` rows show ``κ = ‖X‖²/tr(G_c) ≤ ¾ GRAM_KAPPA`` (multiply it as it is),
    else the mean ``μ_k`` ``(d,)`` of those rows (a new tensor) to shift it by; and ``‖μ_k‖²``.

    ``κ ≈ 1 + ‖μ‖²/σ²``, estimated with ``‖μ_k‖² = ‖Σ xᵢ‖²/k²`` and
    ``σ² = (Σ ‖xᵢ‖² − ‖Σ xᵢ‖²/k)/(k − 1)`` over the first ``k`` rows; ¾ of the bound leaves
    room for the estimate's scatter, and the κ check (:func:`accept_product`) catches the
    rest. Read with as few operations as possible: inside a forward pass each one costs
    about as much as a pass over a small layer (the first rows' sum and two dot products
    take half the time of their ``k × k`` Gram).
    """
    k = SHIFT_ROWS
    head = x[:k]
    s = head.sum(dim=0)
    hv = head.reshape(-1)
    s_h, tr_h = torch.dot(s, s).item(), torch.dot(hv, hv).item()
    if s_h / k**2 <= (0.75 * GRAM_KAPPA - 1) * (tr_h - s_h / k) / (k - 1):
        return None, 0.0
    return s.div_(k), s_h / k**2


def gram_stats(g: Tensor) -> tuple[Tensor, Tensor]:
    """The trace and the row sums of the product (stack) ``g``: all that the κ check
    (:func:`accept_product`) and the double centring (:func:`double_center_`) read of it."""
    return g.diagonal(dim1=-2, dim2=-1).sum(-1), g.sum(-1)


def double_center_(g: Tensor, stats: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Double-centre the Gram (stack) ``g`` in place, ``g ← H g H`` with ``H = I − 11ᵀ/n``,
    in ``g``'s own dtype, and return ``(tr g before, mean of g before)`` as tensors.

    ``(HGH)_ij = G_ij − Ḡ_i· − Ḡ_·j + Ḡ_··`` (``g`` is symmetric, so the row means serve
    as column means): with ``u = r/n − Ḡ_··/2`` (``r`` the row sums) this is
    ``G − u1ᵀ − 1uᵀ``, two broadcast subtractions. For ``G̃ = X̃X̃ᵀ`` of shifted rows it is
    exactly the Gram of the column-centred features (any shift cancels), and
    ``tr(G_c) = tr(G̃) − n·Ḡ_··``. The rounding added is ``eps`` of the entries of ``G̃``,
    the order of the product's own (:data:`~simtorch.functional.GRAM_KAPPA`). ``stats`` are
    :func:`gram_stats` of ``g`` when the caller has them already (the row sums are used up).
    """
    n = g.shape[-1]
    trace, u = gram_stats(g) if stats is None else stats
    u = u.div_(n)  # row means
    total = u.mean(-1)
    u.sub_((total / 2).unsqueeze(-1))
    g.sub_(u.unsqueeze(-2))
    g.sub_(u.unsqueeze(-1))
    return trace, total


class Unchecked(NamedTuple):
    """A product :func:`capture_product` made without its κ check (``defer=True``): what
    :func:`accept_product` needs besides the product's trace and sum."""

    #: rows multiplied as they are (else minus the mean of the first rows)
    raw: bool
    #: ``‖μ_k‖²`` of that shift (0 for raw rows)
    mu_sq: float


def accept_product(tr: float, total: float, n: int, pending: Unchecked, eps: float) -> float | None:
    """The κ check of a product of raw or shifted rows (:func:`capture_product`) from its
    trace ``tr`` and the sum ``total`` of its entries: None when the product must be made
    again with the exact mean, else the ``extra`` that makes the energy
    ``‖X‖_F² = tr(G_c) + extra``.

    Accepted when the rows were centred well enough for the product's rounding,
    ``tr(G̃) ≤ GRAM_KAPPA · tr(G_c)`` with ``tr(G_c) = tr(G̃) − 1ᵀG̃1/n``, or are themselves
    within rounding of the shift (constant features: the exact mean would show nothing more,
    and the noise floor flags them anyway). For raw rows ``extra = 1ᵀG̃1/n = n‖μ‖²``; for
    shifted ones ``n‖μ‖²`` is estimated from ``E‖μ_k‖² = ‖μ‖² + tr(Σ)/k`` and
    ``tr(G_c) ≈ (n − 1) tr(Σ)``.
    """
    centred = tr - total / n
    if tr <= GRAM_KAPPA * centred or tr <= (DATA_ULPS * eps) ** 2 * (tr + n * pending.mu_sq):
        if pending.raw:
            return total / n
        return n * max(pending.mu_sq - centred / (SHIFT_ROWS * (n - 1)), 0.0)
    return None


def capture_product(x: Tensor, scratch: Tensor | None = None, out: Tensor | None = None,
                    exact: bool = False, defer: bool = False
                    ) -> tuple[Tensor, Tensor | float | Unchecked, Tensor | None]:
    """The product ``X̃X̃ᵀ`` a layer's Gram is made from, before its double centring.

    Returns ``(G̃, extra, μ)``: :func:`finish_grams_` turns ``G̃`` into the centred Gram
    ``G_c = H G̃ H`` and the energy into ``‖X‖_F² = tr(G_c) + extra`` (``extra`` a 0-d tensor,
    or a float when it was read off the device anyway); ``μ`` is the exact
    column mean ``(1, d)`` when the rows were centred by it, else None. ``x`` is read as
    :func:`~simtorch.functional.product_rows` (a ``channels_last`` activation without a
    copy), and ``μ``'s columns follow that order. The rows multiplied:

    - the rows minus their column mean (one pass for the mean, one fused subtraction), for
      an activation of fewer than :data:`RAW_MIN_ELEMENTS` or when ``exact``: ``κ ≈ 1``,
      ``extra = n‖μ‖²``;
    - for a larger one, ``X`` itself when the first :data:`SHIFT_ROWS` rows show
      ``κ = ‖X‖²/tr(G_c) ≤ ¾ GRAM_KAPPA`` (read off their tiny Gram: a mean small against
      the spread, e.g. a first convolution), else ``X`` minus the mean ``μ_k`` of those rows
      (within about ``σ/√k`` of the batch mean, so ``κ ≈ 1 + 1/k`` whatever the offset).
      The product is then checked, ``tr(G̃) ≤ GRAM_KAPPA · tr(G_c)`` from its own trace and
      sum (:func:`accept_product`), and a batch that fails (first rows unrepresentative) is
      redone with the exact mean. With ``defer`` the check is left to the caller, who has
      the activation no more but checks all layers' products at once after the forward
      pass: ``extra`` is then an :class:`Unchecked`, and a failed product must be made again.
      With the shift, ``‖μ‖² ≈ ‖μ_k‖² − tr(G_c)/(k(n−1))`` (unbiased, off by about
      ``2‖μ‖σ/√k`` per row), which is all the noise floor ``‖X‖²`` feeds needs.

    So no Gram is rounded worse than the bound :func:`~simtorch.functional.kernel_scale`
    relies on, and each is a function of its batch alone (the same batch gives the same bits
    whatever came before it; the engine departs from this only for a layer that failed a
    deferred check, :class:`~simtorch.capture.LayerCapture`). The check reads numbers from
    the device, so callers off the CPU, where the loop must not wait and passes over memory
    are cheap, pass ``exact=True``.
    """
    x = product_rows(x)
    x = x.to(gram_dtype(x.dtype))
    n, d = x.shape
    if exact or not large(n, d):
        mu = x.mean(dim=0, keepdim=True)
        return gram_product(x, mu, scratch, out), torch.dot(mu[0], mu[0]).mul_(n), mu
    shift, mu_sq = head_shift(x)
    g = gram_product(x, shift, scratch, out)
    pending = Unchecked(shift is None, mu_sq)
    if defer:
        return g, pending, None
    extra = accept_product(torch.trace(g).item(), g.sum().item(), n, pending, _EPS[g.dtype])
    if extra is not None:
        return g, extra, None
    return capture_product(x, scratch, out, exact=True)


def finish_grams_(g: Tensor, extra: Tensor | float, stats: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Double-centre the products of :func:`capture_product` in place and return the
    energies ``‖X‖_F² = tr(H G̃ H) + extra``.

    ``g`` is one product ``(n, n)`` or a stack ``(L, n, n)``, ``extra`` a scalar or ``(L,)``.
    A few batched operations over the whole stack (:func:`double_center_`), once per forward
    pass. Centring a centred Gram again changes nothing but rounding, and its energy stays.
    ``stats``: :func:`gram_stats` of ``g``, when the caller took them for the κ check.
    """
    trace, total = double_center_(g, stats)
    return trace - g.shape[-1] * total + (extra.to(trace.dtype) if isinstance(extra, Tensor) else extra)


def centred_gram(
    x: Tensor, dtype: torch.dtype | None = None, scratch: Tensor | None = None, out: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`linear_gram` that also returns the column mean ``μ`` ``(1, d)`` it centred by
    (the engine keeps it for the raw-product parts)."""
    x = flatten_samples(x)
    x = x.to(gram_dtype(x.dtype) if dtype is None else dtype)
    g, extra, mu = capture_product(x, scratch, out, exact=True)
    assert mu is not None
    return g, finish_grams_(g, extra), mu


def linear_gram(
    x: Tensor, dtype: torch.dtype | None = None, scratch: Tensor | None = None, out: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Gram matrix of column-centred features, and the raw energy of the features.

    ``G = X_c X_cᵀ`` with ``X_c = X − 1 μᵀ`` (the linear kernel of Kornblith et al. 2019;
    centring first is what keeps float32 Grams accurate, DESIGN §4). The product is taken
    of the rows minus their float column mean, then double-centred (:func:`double_center_`)
    so that the few-ulp error of that mean, which a large offset makes larger than the
    spread, leaves no rank-one residue: ``H G H = G`` to the Gram dtype's rounding.

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
        ``‖X‖_F² = tr(X_c X_cᵀ) + n‖μ‖²``: with ``tr(G)`` it sets the noise floor that
        decides whether the centred part is real signal or float noise
        (:func:`~simtorch.functional.kernel_scale`).
    """
    g, energy, _ = centred_gram(x, dtype, scratch, out)
    return g, energy


def quick_centred_gram(
    x: Tensor, scratch: Tensor | None = None, out: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """:func:`linear_gram` the way the engine's CPU hooks make it (:func:`capture_product`
    then :func:`finish_grams_`): the same ``(G_c, ‖X‖²)``, rounded at most
    :data:`~simtorch.functional.GRAM_KAPPA` times worse than a product of exactly centred
    rows, without the mean pass on a large activation; ``‖X‖²`` is estimated (a few percent)
    when the rows were shifted by the mean of the first ones."""
    g, extra, _ = capture_product(x, scratch, out)
    return g, finish_grams_(g, extra)
