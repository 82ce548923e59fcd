"""Plain numpy float64 reference implementations of the estimators in DESIGN.md §4.

Written straight from the formulas (explicit centring matrix H, explicit traces and
loops) and deliberately independent of ``simtorch``: nothing here imports the library,
so the tests compare simtorch against these, never against itself.

- HSIC₀ / HSIC₁ and (streaming) CKA: Gretton et al. 2005, Song et al. 2012, Kornblith et
  al. 2019, Nguyen et al. 2021.
- dCKA (Cui et al., NeurIPS 2022): from the paper's recipe (explicit least squares of
  vec(K) on [1, vec(K⁰)], explicit centring matrix, numpy eigh for the PSD projection).
- Information Imbalance (Glielmo et al., PNAS Nexus 2022): distances from explicit
  differences, ranks by sorting each row in a Python loop (O(n² log n)), with the
  documented tie rules written out: tied nearest neighbours share the weight, tied
  distances get the average rank.
- Mutual k-NN and CKNNA (Huh et al., ICML 2024; platonic-rep's ``metrics.py``) and RSA
  (Kriegeskorte et al. 2008; rsatoolbox): explicit per-row sorts with the key
  (−score, index), platonic-rep's HSIC formulas with explicit traces, RDMs one row at a
  time, ranks by an explicit loop over runs of equal values.
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
    """Squared pairwise Euclidean distances ‖xᵢ − xⱼ‖², row by row from explicit
    differences (not from a Gram)."""
    X = _as_2d(X)
    n = X.shape[0]
    D = np.empty((n, n))
    for i in range(n):
        diff = X - X[i]
        D[i] = (diff * diff).sum(-1)
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


def hsic(K: np.ndarray, L: np.ndarray, unbiased: bool = False) -> float:
    """HSIC₁ (``unbiased``) or HSIC₀ of two kernel matrices."""
    return hsic1(K, L) if unbiased else hsic0(K, L)


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


# ---------------------------------------------------------------- deconfounded CKA


def dcka_residual(K: np.ndarray, K0: np.ndarray, unbiased: bool = False) -> np.ndarray:
    """Residual of the regression of a Gram K on the confounder's Gram K⁰.

    HSIC₀: the paper's least squares of vec(K) on [1, vec(K⁰)] over all n² entries.
    HSIC₁: the regression in the HSIC₁ inner product (simtorch's documented choice),
    R = K − HSIC₁(K, K⁰)/HSIC₁(K⁰, K⁰) · K⁰.
    """
    if unbiased:
        return K - hsic1(K, K0) / hsic1(K0, K0) * K0
    design = np.stack([np.ones(K.size), K0.ravel()], axis=1)
    coef, *_ = np.linalg.lstsq(design, K.ravel(), rcond=None)
    return (K.ravel() - design @ coef).reshape(K.shape)


def psd_project(R: np.ndarray) -> np.ndarray:
    """Nearest PSD matrix: eigenvalues of (R + Rᵀ)/2 clipped at 0 (numpy eigh)."""
    w, v = np.linalg.eigh((R + R.T) / 2)
    return (v * np.clip(w, 0, None)) @ v.T


def dcka_batches(xs, ys, zs, unbiased: bool = False, remove_negative_eig: bool = False) -> float:
    """dCKA over batches: per-batch HSIC of residuals, summed, ratio at the end. Without the
    projection β is pooled over all batches (the regression of the stacked batches in the
    HSIC inner product); with it, β and the projection are per batch."""
    ks = [linear_kernel(x) for x in xs]
    ls = [linear_kernel(y) for y in ys]
    k0s = [linear_kernel(z) for z in zs]
    if remove_negative_eig:
        rk = [psd_project(dcka_residual(k, k0, unbiased)) for k, k0 in zip(ks, k0s)]
        rl = [psd_project(dcka_residual(l, k0, unbiased)) for l, k0 in zip(ls, k0s)]
    else:
        s00 = sum(hsic(k0, k0, unbiased) for k0 in k0s)
        bk = sum(hsic(k, k0, unbiased) for k, k0 in zip(ks, k0s)) / s00
        bl = sum(hsic(l, k0, unbiased) for l, k0 in zip(ls, k0s)) / s00
        rk = [k - bk * k0 for k, k0 in zip(ks, k0s)]
        rl = [l - bl * k0 for l, k0 in zip(ls, k0s)]
    kl = sum(hsic(a, b, unbiased) for a, b in zip(rk, rl))
    kk = sum(hsic(a, a, unbiased) for a in rk)
    ll = sum(hsic(b, b, unbiased) for b in rl)
    return kl / np.sqrt(kk * ll)


# ---------------------------------------------------------------- Information Imbalance


def neighbour_ranks(d: np.ndarray) -> np.ndarray:
    """r[i, j]: position of j among i's neighbours by distance (self excluded, nearest = 1),
    tied distances sharing the average of the positions they span."""
    n = len(d)
    r = np.zeros((n, n))
    for i in range(n):
        others = sorted((d[i, j], j) for j in range(n) if j != i)
        p = 0
        while p < len(others):
            q = p
            while q + 1 < len(others) and others[q + 1][0] == others[p][0]:
                q += 1
            for t in range(p, q + 1):
                r[i, others[t][1]] = (p + 1 + q + 1) / 2
            p = q + 1
    return r


def information_imbalance(X, Y) -> float:
    """Δ(X→Y) = (2/n²) Σ_i mean_{j ∈ NN_X(i)} r^Y_ij."""
    dx, dy = sq_dists(X), sq_dists(Y)
    ry = neighbour_ranks(dy)
    n = len(dx)
    total = 0.0
    for i in range(n):
        nearest = min(dx[i, j] for j in range(n) if j != i)
        nn_ = [j for j in range(n) if j != i and dx[i, j] == nearest]
        total += np.mean([ry[i, j] for j in nn_])
    return 2 * total / n**2


# ---------------------------------------------------------------- mutual k-NN, CKNNA, RSA
# Written from the definitions (platonic-rep's ``metrics.py``: compute_nearest_neighbors,
# mutual_knn, cknna, hsic_unbiased, hsic_biased; rsatoolbox for RSA) with explicit loops,
# sorts with an explicit key and literal matrix formulas (centring matrix H, traces).
# Neighbour ties on the k-th score go to the lower column index.


def knn_scores(x, neighbours: str) -> np.ndarray:
    """n×n similarity (higher = closer), one row at a time."""
    x = _as_2d(x)
    n = x.shape[0]
    if neighbours == "cosine":
        norms = np.array([max(np.sqrt(np.sum(r * r)), 1e-12) for r in x])
        x = x / norms[:, None]
    s = np.empty((n, n))
    for i in range(n):
        if neighbours == "euclidean":
            s[i] = -np.sum((x - x[i]) ** 2, axis=1)
        else:
            s[i] = x @ x[i]
    return s


def knn_sets(s: np.ndarray, k: int, exclude_self: bool = True) -> list[set[int]]:
    """For each row, the k columns of highest score; equal scores: lower index first."""
    n = s.shape[0]
    out = []
    for i in range(n):
        cand = [j for j in range(n) if not (exclude_self and j == i)]
        cand.sort(key=lambda j: (-s[i, j], j))
        out.append(set(cand[:k]))
    return out


def knn_mask(s: np.ndarray, k: int, exclude_self: bool = True) -> np.ndarray:
    n = s.shape[0]
    m = np.zeros((n, n))
    for i, nb in enumerate(knn_sets(s, k, exclude_self)):
        for j in nb:
            m[i, j] = 1.0
    return m


def mutual_knn(x, y, k: int, neighbours: str = "cosine") -> float:
    """(1/n) Σ_i |N_x(i) ∩ N_y(i)| / k."""
    nx = knn_sets(knn_scores(x, neighbours), k)
    ny = knn_sets(knn_scores(y, neighbours), k)
    return float(np.mean([len(a & b) / k for a, b in zip(nx, ny)]))


def platonic_hsic_unbiased(K: np.ndarray, L: np.ndarray) -> float:
    """platonic-rep's hsic_unbiased, literally: tr(K̃ L̃) + ... − 2 1ᵀK̃L̃1/(n−2)."""
    n = K.shape[0]
    Kt = K.copy()
    Lt = L.copy()
    np.fill_diagonal(Kt, 0.0)
    np.fill_diagonal(Lt, 0.0)
    one = np.ones(n)
    val = np.trace(Kt @ Lt) + Kt.sum() * Lt.sum() / ((n - 1) * (n - 2)) - 2.0 * (one @ Kt @ Lt @ one) / (n - 2)
    return float(val / (n * (n - 3)))


def platonic_hsic_biased(K: np.ndarray, L: np.ndarray) -> float:
    """platonic-rep's hsic_biased: tr(K H L H), no 1/(n−1)² factor."""
    n = K.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(K @ H @ L @ H))


def cknna(x, y, k: int, kernel: str = "cosine", unbiased: bool = True) -> float:
    """platonic-rep's cknna on kernel matrices of (normalised) features."""
    K = knn_scores(x, kernel)
    L = knn_scores(y, kernel)
    hsic = platonic_hsic_unbiased if unbiased else platonic_hsic_biased

    def similarity(A, B):
        mask = knn_mask(A, k, exclude_self=unbiased) * knn_mask(B, k, exclude_self=unbiased)
        return hsic(mask * A, mask * B)

    kl, kk, ll = similarity(K, L), similarity(K, K), similarity(L, L)
    return kl / (np.sqrt(kk * ll) + 1e-6)


def rdm_upper(x, method: str = "euclidean") -> np.ndarray:
    """Upper-triangle (i < j, row-major) RDM entries, one row i at a time."""
    x = _as_2d(x)
    n, d = x.shape
    if method == "correlation":
        x = x - x.mean(axis=1, keepdims=True)
        x = x / np.sqrt(np.sum(x * x, axis=1, keepdims=True))
    out = []
    for i in range(n - 1):
        rest = x[i + 1 :]
        if method == "euclidean":
            out.append(np.sum((rest - x[i]) ** 2, axis=1) / d)
        else:
            out.append(1.0 - rest @ x[i])
    return np.concatenate(out)


def rankdata_average(v: np.ndarray) -> np.ndarray:
    """1-based ranks; each run of equal values gets the mean of the ranks it spans."""
    v = np.asarray(v, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    start = 0
    while start < len(v):
        end = start
        while end + 1 < len(v) and v[order[end + 1]] == v[order[start]]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def rdm_compare(u: np.ndarray, w: np.ndarray, method: str = "spearman") -> float:
    u = np.asarray(u, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    if method == "spearman":
        u, w = rankdata_average(u), rankdata_average(w)
    if method in ("spearman", "pearson", "corr"):
        u, w = u - u.mean(), w - w.mean()
    return float(np.dot(u, w) / np.sqrt(np.dot(u, u) * np.dot(w, w)))


def rsa(x, y, rdm_method: str = "euclidean", compare_method: str = "spearman") -> float:
    return rdm_compare(rdm_upper(x, rdm_method), rdm_upper(y, rdm_method), compare_method)


# ---------------------------------------------------------------- Procrustes, SVCCA, PWCCA
#
# Float64 numpy references for Procrustes, SVCCA and PWCCA (tests/test_shape_cca.py).
#
# Written from the definitions and from the steps of the authors' code (netrep
# ``LinearMetric`` + ``whiten``; anatome ``svcca_distance``/``pwcca_distance``; the google/svcca
# tutorial), by routes deliberately different from simtorch's: explicit zero padding and
# eigendecompositions of ``XᵀX``, the aligned residual instead of the nuclear norm, CCA
# through QR + triangular solves (anatome's ``cca_by_qr``) or through covariance inverse
# square roots (google's ``cca_core``). Nothing here imports simtorch.


def as2d(x) -> np.ndarray:
    """``(n, ...)`` → float64 ``(n, d)``; accepts numpy arrays or torch tensors."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(x.shape[0], -1)


# ----------------------------------------------------------------------------- Procrustes


def netrep_whiten(xc: np.ndarray, alpha: float, tol: float = 1e-7) -> np.ndarray:
    """netrep ``whiten(X, alpha, preserve_variance=True, eigval_tol=1e-7)``, returns ``X Z``."""
    if alpha > 1 - tol:
        return xc
    lam, v = np.linalg.eigh(xc.T @ xc)
    lam = np.maximum(lam, tol)
    d = alpha + (1 - alpha) * lam ** -0.5
    new_var = np.sum(alpha**2 * lam + 2 * alpha * (1 - alpha) * lam**0.5 + (1 - alpha) ** 2)
    d = d * np.sqrt(lam.sum() / new_var)
    return xc @ ((v * d[None, :]) @ v.T)


def procrustes(x, y, score: str = "angular", alpha: float = 1.0) -> float:
    """netrep ``LinearMetric(alpha, center_columns=True, zero_pad=True).fit_score``."""
    x, y = as2d(x), as2d(y)
    width = max(x.shape[1], y.shape[1])
    x = np.pad(x, ((0, 0), (0, width - x.shape[1])))
    y = np.pad(y, ((0, 0), (0, width - y.shape[1])))
    xw = netrep_whiten(x - x.mean(0), alpha)
    yw = netrep_whiten(y - y.mean(0), alpha)
    u, _, vt = np.linalg.svd(xw.T @ yw)
    tx, ty = xw @ u, yw @ vt.T
    if score == "euclidean":
        return float(np.linalg.norm(tx - ty))
    cos = float(np.dot(tx.ravel(), ty.ravel()) / (np.linalg.norm(tx) * np.linalg.norm(ty)))
    cos = min(max(cos, -1.0), 1.0)
    return cos if score == "cosine" else float(np.arccos(cos))


def anatome_opd(x, y) -> float:
    """anatome ``orthogonal_procrustes_distance``: ``1 − ‖x̂ᵀŷ‖_*`` of unit-norm centred features."""
    x, y = as2d(x), as2d(y)
    x = x - x.mean(0)
    y = y - y.mean(0)
    x, y = x / np.linalg.norm(x), y / np.linalg.norm(y)
    return float(1 - np.linalg.norm(x.T @ y, ord="nuc"))


# ------------------------------------------------------------------------------------ CCA


def cca_qr(x: np.ndarray, y: np.ndarray):
    """anatome ``cca(x, y, backend="qr")``: centre, QR each side, SVD of ``Q_xᵀQ_y``;
    coefficients by solves with the triangular R. Returns ``(a, b, rho)``."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    qx, rx = np.linalg.qr(x)
    qy, ry = np.linalg.qr(y)
    u, rho, vt = np.linalg.svd(qx.T @ qy, full_matrices=False)
    a = np.linalg.solve(rx, u)
    b = np.linalg.solve(ry, vt.T)
    return a, b, rho


def cca_cov(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Canonical correlations from covariances (google ``cca_core.compute_ccas`` without
    the epsilon): ``svd(Σxx^{-1/2} Σxy Σyy^{-1/2})``."""
    c = np.cov(x.T, y.T)
    dx = x.shape[1]
    sxx, sxy, syy = c[:dx, :dx], c[:dx, dx:], c[dx:, dx:]

    def inv_sqrt(s):
        w, v = np.linalg.eigh(s)
        return (v / np.sqrt(w)[None, :]) @ v.T

    return np.linalg.svd(inv_sqrt(sxx) @ sxy @ inv_sqrt(syy), compute_uv=False)


def mean_cca(x, y) -> float:
    return float(np.mean(cca_cov(as2d(x), as2d(y))))


# ---------------------------------------------------------------------------------- SVCCA


def svcca_anatome(x, y, keep: float = 0.99) -> float:
    """``1 − anatome.svcca_distance(x, y, keep, "qr")``."""

    def reduce(a):
        _, s, vt = np.linalg.svd(a, full_matrices=False)
        ratio = np.cumsum(np.abs(s)) / np.abs(s).sum()
        num = int(np.sum(ratio < keep))
        return a @ vt.T[:, :num]

    px, py = reduce(as2d(x)), reduce(as2d(y))
    _, _, rho = cca_qr(px, py)
    return float(rho.sum() / min(px.shape[1], py.shape[1]))


def svcca_google(x, y, keep: float = 0.99) -> float:
    """google/svcca tutorial: centre, SVD, keep the fewest directions with ``keep`` of the
    variance (``sum_threshold`` on s²), mean canonical correlation via covariances."""

    def reduce(a):
        a = a - a.mean(0)
        u, s, _ = np.linalg.svd(a, full_matrices=False)
        var = s**2
        k = next(i for i in range(1, len(s) + 1) if var[:i].sum() / var.sum() >= keep)
        return u[:, :k] * s[:k]

    return float(np.mean(cca_cov(reduce(as2d(x)), reduce(as2d(y)))))


# ---------------------------------------------------------------------------------- PWCCA


def pwcca_anatome(x, y) -> float:
    """``1 − anatome.pwcca_distance(x, y, "qr")``: weights from the uncentred x."""
    x, y = as2d(x), as2d(y)
    a, _, rho = cca_qr(x, y)
    q, _ = np.linalg.qr(a)
    alpha = np.abs(x @ q).sum(axis=0)
    alpha = alpha / alpha.sum()
    return float(alpha @ rho)
