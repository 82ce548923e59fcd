"""simtorch.functional against independent float64 numpy formulas (tests/reference.py)."""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import reference as ref  # noqa: E402

import simtorch.functional as F  # noqa: E402

KERNELS = ["linear", "rbf"]
ESTIMATORS = [False, True]  # unbiased


def _pair(n: int, shape=(12,), seed: int = 0, dtype=torch.float64):
    """Two related (not identical, not independent) representations of n samples."""
    g = np.random.default_rng(seed)
    d = int(np.prod(shape))
    X = g.standard_normal((n, d))
    W = g.standard_normal((d, 7))
    Y = np.tanh(X @ W) + 0.5 * g.standard_normal((n, 7))
    X = X.reshape((n,) + tuple(shape))
    return torch.tensor(X, dtype=dtype), torch.tensor(Y, dtype=dtype)


def _f(t) -> float:
    return float(t.item()) if hasattr(t, "item") else float(t)


# ---------------------------------------------------------------- reference self-checks


def test_reference_hsic1_is_unbiased_form_of_hsic0_for_large_n():
    """Sanity of the reference itself: hsic0 and hsic1 agree to O(1/n) on large n,
    and hsic0 equals the explicit double-sum form ‖HKH‖-style trace."""
    g = np.random.default_rng(1)
    X = g.standard_normal((300, 3))
    Y = X + 0.3 * g.standard_normal((300, 3))
    K, L = ref.linear_kernel(X), ref.linear_kernel(Y)
    h0, h1 = ref.hsic0(K, L), ref.hsic1(K, L)
    assert abs(h0 - h1) / abs(h0) < 0.05
    # explicit double-centring by loops on a small case
    K5, L5 = K[:5, :5], L[:5, :5]
    n = 5
    Kc = np.array([[K5[i, j] - K5[i].mean() - K5[:, j].mean() + K5.mean() for j in range(n)] for i in range(n)])
    assert ref.hsic0(K5, L5) == pytest.approx(np.sum(Kc * L5) / (n - 1) ** 2, rel=1e-12)


# ---------------------------------------------------------------- cka vs reference


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("unbiased", ESTIMATORS)
@pytest.mark.parametrize("n", [9, 10, 25, 40])
def test_cka_matches_reference_float64(kernel, unbiased, n):
    x, y = _pair(n, seed=n)
    got = F.cka(x, y, kernel=kernel, unbiased=unbiased)
    assert isinstance(got, torch.Tensor)
    assert got.dim() == 0
    assert got.dtype == torch.float64
    want = ref.cka(x, y, kernel, unbiased)
    np.testing.assert_allclose(_f(got), want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("unbiased", ESTIMATORS)
@pytest.mark.parametrize("n", [11, 16])
def test_cka_matches_reference_float32_multidim(kernel, unbiased, n):
    x, y = _pair(n, shape=(3, 4, 4), seed=100 + n, dtype=torch.float32)
    assert x.dim() == 4
    got = F.cka(x, y, kernel=kernel, unbiased=unbiased)
    assert got.dtype == torch.float64 and got.dim() == 0
    want = ref.cka(x.double(), y.double(), kernel, unbiased)  # same numbers, float64 math
    np.testing.assert_allclose(_f(got), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("unbiased", ESTIMATORS)
def test_cka_multidim_float64_is_flattened(kernel, unbiased):
    x, y = _pair(14, shape=(3, 4, 4), seed=7)
    got = F.cka(x, y, kernel=kernel, unbiased=unbiased)
    want = ref.cka(x.reshape(14, -1), y, kernel, unbiased)
    np.testing.assert_allclose(_f(got), want, rtol=1e-9, atol=1e-12)
    # a permutation of feature axes is a permutation of flattened features: same CKA
    got_perm = F.cka(x.permute(0, 2, 3, 1).contiguous(), y, kernel=kernel, unbiased=unbiased)
    np.testing.assert_allclose(_f(got_perm), want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("unbiased", ESTIMATORS)
@pytest.mark.parametrize("n", [10, 13])
@pytest.mark.parametrize("frac", [0.5, 2.0])
def test_cka_rbf_sigma_frac(unbiased, n, frac):
    x, y = _pair(n, seed=3 * n)
    got = F.cka(x, y, kernel="rbf", unbiased=unbiased, sigma_frac=frac)
    want = ref.cka(x, y, "rbf", unbiased, sigma_frac=frac)
    np.testing.assert_allclose(_f(got), want, rtol=1e-9, atol=1e-12)
    # and the bandwidth matters (the test could fail if sigma_frac were ignored)
    other = ref.cka(x, y, "rbf", unbiased, sigma_frac=1.0)
    assert abs(want - other) > 1e-4


def test_rbf_even_median_matters():
    """On even n, the lower-median bandwidth gives a different CKA: the test above can fail."""
    x, y = _pair(10, seed=30)

    def rbf_lower(X):
        D = ref.sq_dists(X)
        s = np.sort(D.ravel())
        return np.exp(-D / (2 * s[(s.size - 1) // 2]))

    want = ref.cka(x, y, "rbf", False)
    wrong = ref.cka(x, y, rbf_lower, False)
    assert abs(want - wrong) > 1e-6
    got = _f(F.cka(x, y, kernel="rbf", unbiased=False))
    assert abs(got - want) < 1e-10


def test_float32_large_offset_linear():
    """float32 features with a large common offset: the library centres before the Gram."""
    g = torch.Generator().manual_seed(5)
    n = 64
    x = (100.0 + torch.randn(n, 40, generator=g)).float()
    y = (torch.tanh(x - 100.0) @ torch.randn(40, 20, generator=g) + 50.0 + 0.5 * torch.randn(n, 20, generator=g)).float()
    for unbiased in ESTIMATORS:
        got = _f(F.cka(x, y, kernel="linear", unbiased=unbiased))
        want = ref.cka(x.double(), y.double(), "linear", unbiased)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- hsic, hsic_cross


@pytest.mark.parametrize("unbiased", ESTIMATORS)
@pytest.mark.parametrize("n", [6, 9])
def test_hsic_matches_reference(unbiased, n):
    x, y = _pair(n, seed=40 + n)
    for Kn, Ln in [
        (ref.linear_kernel(x), ref.linear_kernel(y)),
        (ref.rbf_kernel(x), ref.rbf_kernel(y)),
        # uncentred, non-trivial kernels: HSIC must do its own centring
        (_np(x) @ _np(x).T + 3.0, _np(y) @ _np(y).T),
    ]:
        got = _f(F.hsic(torch.tensor(Kn), torch.tensor(Ln), unbiased=unbiased))
        want = ref.hsic1(Kn, Ln) if unbiased else ref.hsic0(Kn, Ln)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_hsic_default_is_biased():
    x, y = _pair(8, seed=2)
    Kn, Ln = _np(x) @ _np(x).T, _np(y) @ _np(y).T
    got = _f(F.hsic(torch.tensor(Kn), torch.tensor(Ln)))
    np.testing.assert_allclose(got, ref.hsic0(Kn, Ln), rtol=1e-9)
    assert abs(ref.hsic0(Kn, Ln) - ref.hsic1(Kn, Ln)) > 1e-3 * abs(ref.hsic0(Kn, Ln))


def _np(t):
    return t.detach().double().numpy().reshape(t.shape[0], -1)


@pytest.mark.parametrize("unbiased", ESTIMATORS)
def test_hsic_cross_grid_equals_per_pair(unbiased):
    g = np.random.default_rng(11)
    n, La, Lb = 12, 3, 4
    base = g.standard_normal((n, 5))
    Ka = [ref.linear_kernel(base @ g.standard_normal((5, 6)) + 0.3 * g.standard_normal((n, 6))) for _ in range(La)]
    Kb = [ref.rbf_kernel(np.tanh(base @ g.standard_normal((5, 4))) + 0.2 * g.standard_normal((n, 4))) for _ in range(Lb)]
    Ka[1] = Ka[1] + 2.0  # one uncentred kernel
    got = F.hsic_cross(torch.tensor(np.stack(Ka)), torch.tensor(np.stack(Kb)), unbiased=unbiased)
    got = got.detach().double().numpy()
    assert got.shape == (La, Lb)
    h = ref.hsic1 if unbiased else ref.hsic0
    want = np.array([[h(Ka[i], Kb[j]) for j in range(Lb)] for i in range(La)])
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    # the grid is not constant along rows or columns (a wrong index would show)
    assert np.ptp(want, axis=0).min() > 1e-6 and np.ptp(want, axis=1).min() > 1e-6


def test_hsic_cross_default_is_unbiased():
    g = np.random.default_rng(12)
    X = g.standard_normal((8, 3))
    K = ref.linear_kernel(X)
    L = ref.linear_kernel(X + g.standard_normal((8, 3)))
    got = F.hsic_cross(torch.tensor(K)[None], torch.tensor(L)[None])
    np.testing.assert_allclose(float(got[0, 0]), ref.hsic1(K, L), rtol=1e-9)


# ---------------------------------------------------------------- median


@pytest.mark.parametrize("n", [5, 6, 7, 8])
def test_median_sq_distance_single(n):
    g = np.random.default_rng(n)
    D = ref.sq_dists(g.standard_normal((n, 3)))
    got = float(F.median_sq_distance(torch.tensor(D)))
    assert got == pytest.approx(float(np.median(D)), rel=1e-12, abs=0)
    if n % 2 == 0:  # the even case is a real mean of two different middle values
        s = np.sort(D.ravel())
        assert s[n * n // 2 - 1] < s[n * n // 2]
        assert got != pytest.approx(float(s[n * n // 2 - 1]), rel=1e-9)
    # arbitrary (non-symmetric) matrices too
    A = g.standard_normal((n, n))
    assert float(F.median_sq_distance(torch.tensor(A))) == pytest.approx(float(np.median(A)), rel=1e-12)


@pytest.mark.parametrize("n", [6, 7])
def test_median_sq_distance_stack(n):
    g = np.random.default_rng(20 + n)
    Ds = np.stack([ref.sq_dists(g.standard_normal((n, 4)) * (i + 1)) for i in range(3)])
    got = F.median_sq_distance(torch.tensor(Ds)).detach().double().numpy()
    assert got.shape == (3,)
    want = np.array([np.median(D) for D in Ds])
    np.testing.assert_allclose(got, want, rtol=1e-12)


# ---------------------------------------------------------------- invariances


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("unbiased", ESTIMATORS)
def test_self_cka_is_one(kernel, unbiased):
    x, _ = _pair(20, shape=(3, 2, 2), seed=8)
    np.testing.assert_allclose(_f(F.cka(x, x, kernel=kernel, unbiased=unbiased)), 1.0, atol=1e-12)
    x32 = x.float()
    np.testing.assert_allclose(_f(F.cka(x32, x32, kernel=kernel, unbiased=unbiased)), 1.0, atol=1e-6)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("unbiased", ESTIMATORS)
def test_orthogonal_and_isotropic_scaling_invariance(kernel, unbiased):
    x, y = _pair(30, shape=(12,), seed=9)
    g = np.random.default_rng(9)
    Q, _ = np.linalg.qr(g.standard_normal((12, 12)))
    base = _f(F.cka(x, y, kernel=kernel, unbiased=unbiased))
    assert abs(base - 1.0) > 1e-2  # not trivially 1
    xq = x @ torch.tensor(Q)
    assert not torch.allclose(xq, x)
    np.testing.assert_allclose(_f(F.cka(xq, y, kernel=kernel, unbiased=unbiased)), base, rtol=1e-9, atol=1e-12)
    for c in (0.01, 7.5):
        np.testing.assert_allclose(_f(F.cka(x * c, y, kernel=kernel, unbiased=unbiased)), base, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(_f(F.cka(x, y * c, kernel=kernel, unbiased=unbiased)), base, rtol=1e-9, atol=1e-12)
    # also the reference agrees with the library on the baseline
    np.testing.assert_allclose(base, ref.cka(x, y, kernel, unbiased), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("unbiased", ESTIMATORS)
def test_linear_cka_not_invariant_to_anisotropic_scaling(unbiased):
    x, y = _pair(30, shape=(12,), seed=10)
    s = torch.tensor(np.geomspace(0.1, 10.0, 12))
    base = _f(F.cka(x, y, kernel="linear", unbiased=unbiased))
    scaled = _f(F.cka(x * s, y, kernel="linear", unbiased=unbiased))
    assert abs(base - scaled) > 1e-3
    np.testing.assert_allclose(scaled, ref.cka(x * s, y, "linear", unbiased), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("unbiased", ESTIMATORS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constant_representation_is_nan(kernel, unbiased, dtype):
    n = 12
    c = torch.full((n, 5), 3.7, dtype=dtype)
    _, y = _pair(n, seed=4, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        v1 = _f(F.cka(c, y, kernel=kernel, unbiased=unbiased))
        v2 = _f(F.cka(y, c, kernel=kernel, unbiased=unbiased))
        v3 = _f(F.cka(c, c, kernel=kernel, unbiased=unbiased))
    assert np.isnan(v1) and np.isnan(v2) and np.isnan(v3)
