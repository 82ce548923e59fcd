"""Plain numpy float64 reference implementations of the estimators in DESIGN.md §4.

Written straight from the formulas (explicit centring matrix H, explicit traces and
loops) and deliberately independent of ``simtorch``: nothing here imports the library,
so the tests compare simtorch against these, never against itself.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import numpy as np

KernelArg = Union[str, Callable[[np.ndarray], np.ndarray]]


def _as_2d(X) -> np.ndarray:
    """Flatten ``(n, ...)`` to ``(n, d)`` in float64 (accepts numpy arrays or torch tensors)."""
    if hasattr(X, "detach"):  # a torch tensor
        X = X.detach().cpu().double().numpy()
    X = np.asarray(X, dtype=np.float64)
    return X.reshape(X.shape[0], -1)


def centering_matrix(n: int) -> np.ndarray:
    """H = I − 11ᵀ/n."""
    return np.eye(n) - np.ones((n, n)) / n


def hsic0(K: np.ndarray, L: np.ndarray) -> float:
    """Biased HSIC (Gretton et al. 2005): tr(K H L H) / (n−1)²."""
    K = np.asarray(K, dtype=np.float64)
    L = np.asarray(L, dtype=np.float64)
    n = K.shape[0]
    H = centering_matrix(n)
    return float(np.trace(K @ H @ L @ H) / (n - 1) ** 2)


def hsic1(K: np.ndarray, L: np.ndarray) -> float:
    """Unbiased HSIC (Song et al. 2012), n ≥ 4.

    [tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1)/((n−1)(n−2)) − (2/(n−2)) 1ᵀK̃L̃1] / (n(n−3)),
    with K̃, L̃ the kernels with zeroed diagonal.
    """
    K = np.array(K, dtype=np.float64)
    L = np.array(L, dtype=np.float64)
    n = K.shape[0]
    if n < 4:
        raise ValueError("hsic1 needs n >= 4")
    Kt = K.copy()
    Lt = L.copy()
    np.fill_diagonal(Kt, 0.0)
    np.fill_diagonal(Lt, 0.0)
    one = np.ones(n)
    term1 = np.trace(Kt @ Lt)
    term2 = (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
    term3 = (2.0 / (n - 2)) * (one @ Kt @ Lt @ one)
    return float((term1 + term2 - term3) / (n * (n - 3)))


def linear_kernel(X) -> np.ndarray:
    """Xc Xcᵀ with X flattened to (n, d) and column-centred."""
    X = _as_2d(X)
    Xc = X - X.mean(axis=0, keepdims=True)
    return Xc @ Xc.T


def sq_dists(X) -> np.ndarray:
    """Squared pairwise Euclidean distances, row by row from explicit differences."""
    X = _as_2d(X)
    n = X.shape[0]
    D = np.empty((n, n))
    for i in range(n):
        diff = X - X[i]
        D[i] = np.einsum("ij,ij->i", diff, diff)
    return D


def rbf_kernel(X, frac: float = 1.0) -> np.ndarray:
    """exp(−D / (2σ²)), σ² = frac² · median of all n² entries of D (diagonal included)."""
    D = sq_dists(X)
    sigma2 = frac**2 * np.median(D)  # numpy: mean of the two middle values for even count
    return np.exp(-D / (2.0 * sigma2))


def _kernel_fn(kernel: KernelArg, sigma_frac: float) -> Callable[[np.ndarray], np.ndarray]:
    if callable(kernel):
        return kernel
    if kernel == "linear":
        return linear_kernel
    if kernel == "rbf":
        return lambda X: rbf_kernel(X, sigma_frac)
    raise ValueError(kernel)


def hsic_terms(X, Y, kernel: KernelArg = "linear", unbiased: bool = False, sigma_frac: float = 1.0):
    """(HSIC(K,L), HSIC(K,K), HSIC(L,L)) of one batch."""
    k = _kernel_fn(kernel, sigma_frac)
    K = k(X)
    L = k(Y)
    h = hsic1 if unbiased else hsic0
    return h(K, L), h(K, K), h(L, L)


def cka(X, Y, kernel: KernelArg = "linear", unbiased: bool = False, sigma_frac: float = 1.0) -> float:
    """Full-data CKA = HSIC(K,L) / sqrt(HSIC(K,K) · HSIC(L,L))."""
    xy, xx, yy = hsic_terms(X, Y, kernel, unbiased, sigma_frac)
    return float(xy / np.sqrt(xx * yy))


def streaming_cka(
    batches_X: Sequence,
    batches_Y: Sequence,
    kernel: KernelArg = "linear",
    unbiased: bool = False,
    sigma_frac: float = 1.0,
) -> float:
    """Minibatch CKA (Nguyen et al. 2021): sum each HSIC over batches, ratio once.

    Each batch's HSIC carries its own 1/(n−1)² or 1/(n(n−3)) factor. Batches with n < 4
    (unbiased) or n < 2 (biased) are skipped. For rbf, σ is computed per batch.
    """
    min_n = 4 if unbiased else 2
    s_xy = s_xx = s_yy = 0.0
    used = 0
    for X, Y in zip(batches_X, batches_Y):
        X = _as_2d(X)
        Y = _as_2d(Y)
        assert X.shape[0] == Y.shape[0]
        if X.shape[0] < min_n:
            continue
        xy, xx, yy = hsic_terms(X, Y, kernel, unbiased, sigma_frac)
        s_xy += xy
        s_xx += xx
        s_yy += yy
        used += 1
    if used == 0:
        raise ValueError("no usable batch")
    return float(s_xy / np.sqrt(s_xx * s_yy))


def mean_of_batch_ckas(
    batches_X: Sequence,
    batches_Y: Sequence,
    kernel: KernelArg = "linear",
    unbiased: bool = False,
    sigma_frac: float = 1.0,
) -> float:
    """The WRONG estimator (average of per-batch CKAs), used only to show tests can fail."""
    min_n = 4 if unbiased else 2
    vals = [
        cka(X, Y, kernel, unbiased, sigma_frac)
        for X, Y in zip(batches_X, batches_Y)
        if _as_2d(X).shape[0] >= min_n
    ]
    return float(np.mean(vals))
