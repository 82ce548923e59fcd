"""Procrustes, SVCCA, PWCCA (simtorch.functional.{procrustes,cca,moments}) against the
independent float64 references in tests/reference.py, plus their invariances,
grid and moment forms, and failure handling."""

from __future__ import annotations

import math
import os
import sys
import warnings

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import reference as ref  # noqa: E402

from simtorch.functional.cca import (  # noqa: E402
    PWCCA_TIE_ATOL,
    canonical_correlations,
    pwcca,
    pwcca_grid,
    svcca,
    svcca_grid,
    svcca_keep_count,
)
from simtorch.functional.moment_grids import (  # noqa: E402
    GridMoments,
    procrustes_grid_from_moments,
    svcca_grid_from_moments,
)
from simtorch.functional.moments import (  # noqa: E402
    PairMoments,
    cca_from_moments,
    procrustes_from_moments,
    svcca_from_moments,
)
from simtorch.functional.procrustes import pair_blocks, procrustes, procrustes_grid  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCORES = ["angular", "euclidean", "cosine"]


def _orth(g: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(g.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def _data(kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of related, non-identical representations of the same samples."""
    g = np.random.default_rng(seed)
    if kind == "gauss":  # n > d, linear relation plus noise, different widths
        x = g.standard_normal((150, 10))
        y = x @ g.standard_normal((10, 7)) + g.standard_normal((150, 7))
    elif kind == "nonlinear":  # decaying spectrum and an offset, tanh relation
        x = g.standard_normal((200, 14)) @ np.diag(0.75 ** np.arange(14)) @ _orth(g, 14) + 0.5
        y = np.tanh(x @ g.standard_normal((14, 9))) + 0.3 * g.standard_normal((200, 9))
    elif kind == "lowrank":  # x of rank 4 in 12 columns, y nearly so
        z = g.standard_normal((120, 4))
        x = z @ g.standard_normal((4, 12))
        y = np.maximum(z @ g.standard_normal((4, 8)), 0) + 0.05 * g.standard_normal((120, 8))
    elif kind == "n~d":  # n barely above the widths
        x = g.standard_normal((24, 20))
        y = np.sin(x @ g.standard_normal((20, 21))) + 0.1 * g.standard_normal((24, 21))
    else:
        raise KeyError(kind)
    return x, y


def _t(a: np.ndarray, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(a, dtype=dtype)


def _assert_close(got, want, rtol=1e-7, atol=1e-7, equal_nan=False):
    """numpy's check (torch.testing's first call costs seconds of imports)."""
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64),
                               rtol=rtol, atol=atol, equal_nan=equal_nan)


def _close(a, b, tol):
    assert abs(float(a) - float(b)) <= tol, (float(a), float(b))


# ------------------------------------------------------------------------------ Procrustes


@pytest.mark.parametrize("kind", ["gauss", "nonlinear", "lowrank", "n~d"])
@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_procrustes_matches_netrep_reference(kind, score, dtype):
    x, y = _data(kind)
    x = _t(x, dtype).double().numpy()  # the reference sees exactly the values simtorch sees
    y = _t(y, dtype).double().numpy()
    # netrep's whitening amplifies the float noise of null directions; compare alpha < 1
    # only where the centred features have full column rank
    alphas = [1.0] if kind in ("lowrank", "n~d") else [1.0, 0.5, 0.0]
    for alpha in alphas:
        got = procrustes(_t(x, dtype), _t(y, dtype), score=score, alpha=alpha)
        assert got.dtype == torch.float64 and got.dim() == 0
        want = ref.procrustes(x, y, score, alpha)
        _close(got, want, 1e-9 * max(1.0, abs(want)))


def test_procrustes_scores_are_consistent_and_match_anatome():
    x, y = map(_t, _data("nonlinear"))
    ang, cos = procrustes(x, y), procrustes(x, y, "cosine")
    _close(cos, math.cos(float(ang)), 1e-14)
    assert 0 < float(ang) < math.pi / 2
    _close(1 - cos, ref.anatome_opd(x, y), 1e-12)
    xc, yc = x - x.mean(0), y - y.mean(0)
    nx, ny = xc.norm() ** 2, yc.norm() ** 2
    nuc = torch.linalg.matrix_norm(xc.T @ yc, "nuc")
    _close(procrustes(x, y, "euclidean"), (nx + ny - 2 * nuc).sqrt(), 1e-10)


def test_procrustes_alpha_zero_is_mean_cca():
    x, y = map(_t, _data("gauss"))
    rho = ref.cca_cov(x.numpy(), y.numpy())
    # different widths: cos = Σρ / √(d_x d_y)
    _close(procrustes(x, y, "cosine", alpha=0.0), rho.sum() / math.sqrt(10 * 7), 1e-9)
    y2 = y @ torch.randn(7, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y2 = torch.tanh(y2) + 0.1 * x
    _close(procrustes(x, y2, "cosine", alpha=0.0), ref.mean_cca(x, y2), 1e-9)
    # alpha = 1 is plain Procrustes: the nuclear norm of the raw cross-covariance
    xc, yc = x - x.mean(0), y - y.mean(0)
    plain = torch.linalg.matrix_norm(xc.T @ yc, "nuc") / (xc.norm() * yc.norm())
    _close(procrustes(x, y, "cosine", alpha=1.0), plain, 1e-13)
    # the whitened family is continuous at both ends (netrep skips whitening above 1 − 1e-7)
    _close(procrustes(x, y, "cosine", alpha=1 - 1e-6), plain, 1e-6)
    _close(procrustes(x, y, "cosine", alpha=1e-9), rho.sum() / math.sqrt(70), 1e-7)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_procrustes_invariances(alpha):
    g = np.random.default_rng(3)
    x, y = _data("nonlinear", seed=3)
    qx, qy = _orth(g, x.shape[1]), _orth(g, y.shape[1])
    shift = 5 * g.standard_normal(x.shape[1])
    for score in SCORES:
        base = float(procrustes(_t(x), _t(y), score, alpha))
        _close(procrustes(_t(x @ qx + shift), _t(y @ qy - 2.0), score, alpha), base, 1e-9 * max(1, base))
        if score != "euclidean" and alpha == 1.0:
            _close(procrustes(_t(3.7 * x), _t(0.2 * y), score, alpha), base, 1e-12)
    # euclidean is homogeneous of degree one under a common isotropic scaling
    _close(procrustes(_t(3 * x), _t(3 * y), "euclidean"), 3 * float(procrustes(_t(x), _t(y), "euclidean")), 1e-9)
    # and not invariant to a general invertible map (not a rotation)
    a = g.standard_normal((x.shape[1], x.shape[1]))
    assert abs(float(procrustes(_t(x @ a), _t(y), alpha=alpha)) - float(procrustes(_t(x), _t(y), alpha=alpha))) > 1e-3


def test_procrustes_identity_and_zero_padding():
    x, _ = map(_t, _data("nonlinear"))
    assert float(procrustes(x, x)) < 1e-6
    _close(procrustes(x, x, "cosine"), 1.0, 1e-12)
    assert float(procrustes(x, x, "euclidean")) < 1e-6 * float(x.norm())
    # zero-padded copy (netrep pads the narrower side): still distance 0
    assert float(procrustes(x, torch.cat([x, torch.zeros(x.shape[0], 3, dtype=x.dtype)], 1))) < 1e-6


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_procrustes_angular_triangle_inequality(alpha):
    g = np.random.default_rng(7)
    worst = -1.0
    for t in range(12):
        n = 60
        widths = g.integers(3, 9, size=3)
        if t % 3 == 0:  # near-collinear chain a → b → c, where 1 − cos would fail
            a = g.standard_normal((n, 5))
            noise = g.standard_normal((n, 5))
            mats = [a, a + 0.3 * noise, a + 0.6 * noise]
        else:
            base = g.standard_normal((n, 4))
            mats = [np.tanh(base @ g.standard_normal((4, w))) + 0.5 * g.standard_normal((n, w)) for w in widths]
        ts = [_t(m) for m in mats]
        dab = float(procrustes(ts[0], ts[1], alpha=alpha))
        dbc = float(procrustes(ts[1], ts[2], alpha=alpha))
        dac = float(procrustes(ts[0], ts[2], alpha=alpha))
        worst = max(worst, dac - dab - dbc)
        # the score that is not a metric violates it on the chain (so the test can fail)
        if t == 0 and alpha == 1.0:
            c = [1 - float(procrustes(ts[i], ts[j], "cosine")) for i, j in ((0, 1), (1, 2), (0, 2))]
            assert c[2] > c[0] + c[1]
    assert worst <= 1e-12


# ---------------------------------------------------------------------------------- SVCCA


def test_svcca_keep_count_rules():
    s = torch.tensor([5.0, 3.0, 1.0, 1.0], dtype=torch.float64)  # cumsum/Σ: .5 .8 .9 1
    assert svcca_keep_count(s, 0.9, "anatome") == 2  # strict <: 0.9 itself is not kept
    assert svcca_keep_count(s, 0.95, "anatome") == 3
    assert svcca_keep_count(s, 0.5, "anatome") == 0
    # variances 25 9 1 1 → cumsum/Σ .694 .944 .972 1: the fewest reaching keep
    assert svcca_keep_count(s, 0.9, "google") == 2
    assert svcca_keep_count(s, 0.95, "google") == 3
    assert svcca_keep_count(s, 1.0, "google") == 4
    assert svcca_keep_count(torch.zeros(3, dtype=torch.float64), 0.99) == 0


@pytest.mark.parametrize("kind", ["gauss", "nonlinear", "lowrank", "n~d"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_svcca_matches_references(kind, dtype):
    x, y = _data(kind)
    xt, yt = _t(x, dtype), _t(y, dtype)
    xn, yn = xt.double().numpy(), yt.double().numpy()
    for keep in (0.99, 0.9, 0.6):
        got = svcca(xt, yt, keep=keep)
        assert got.dtype == torch.float64 and got.dim() == 0
        _close(got, ref.svcca_anatome(xn, yn, keep), 1e-9)
        if kind != "lowrank":  # google's covariance route needs full-rank projections
            _close(svcca(xt, yt, keep=keep, variant="google"), ref.svcca_google(xn, yn, keep), 1e-9)
        _close(svcca(xt, yt, keep=keep, return_distance=True), 1 - float(got), 1e-15)


@pytest.mark.parametrize("variant", ["anatome", "google"])
def test_svcca_invariances(variant):
    g = np.random.default_rng(5)
    x, y = _data("nonlinear", seed=5)
    base = float(svcca(_t(x), _t(y), variant=variant))
    q = _orth(g, x.shape[1])
    _close(svcca(_t(x @ q), _t(y @ _orth(g, y.shape[1])), variant=variant), base, 1e-10)
    _close(svcca(_t(4.0 * x), _t(0.3 * y), variant=variant), base, 1e-10)
    _close(svcca(_t(x), _t(x), variant=variant), 1.0, 1e-10)
    shifted = float(svcca(_t(x + 3.0 * g.standard_normal(x.shape[1])), _t(y), variant=variant))
    if variant == "google":  # centred before the SVD
        _close(shifted, base, 1e-10)
    else:  # the uncentred truncated SVD sees the offset as a direction
        assert abs(shifted - base) > 1e-3
    # a general invertible map reshapes the spectrum, so the kept subspace changes
    a = g.standard_normal((x.shape[1], x.shape[1]))
    assert abs(float(svcca(_t(x @ a), _t(y), variant=variant)) - base) > 1e-3


def test_svcca_without_truncation_is_mean_cca():
    x, y = map(_t, _data("gauss"))
    _close(svcca(x, y, keep=1.0, variant="google"), ref.mean_cca(x, y), 1e-10)


# ---------------------------------------------------------------------------------- PWCCA


@pytest.mark.parametrize("kind", ["gauss", "nonlinear", "n~d"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pwcca_matches_anatome_reference(kind, dtype):
    x, y = _data(kind)
    if kind == "n~d":  # r_x + r_y must stay below n − 1, or CCA forces tied ρ = 1 (see below)
        y = y[:, :2]
    xt, yt = _t(x, dtype), _t(y, dtype)
    xn, yn = xt.double().numpy(), yt.double().numpy()
    got = pwcca(xt, yt)
    assert got.dtype == torch.float64 and got.dim() == 0
    _close(got, ref.pwcca_anatome(xn, yn), 1e-9)
    _close(pwcca(yt, xt), ref.pwcca_anatome(yn, xn), 1e-9)
    _close(pwcca(xt, yt, return_distance=True), 1 - float(got), 1e-15)


def test_pwcca_invariances_and_asymmetry():
    g = np.random.default_rng(11)
    x, y = _data("nonlinear", seed=11)
    base = float(pwcca(_t(x), _t(y)))
    _close(pwcca(_t(x @ _orth(g, x.shape[1])), _t(y)), base, 1e-10)
    _close(pwcca(_t(2.5 * x), _t(y)), base, 1e-10)
    m = g.standard_normal((y.shape[1], y.shape[1]))
    _close(pwcca(_t(x), _t(y @ m + 4.0)), base, 1e-9)
    # the weights use the raw x: a translation of x changes them
    assert abs(float(pwcca(_t(x + 3.0), _t(y))) - base) > 1e-3
    assert abs(float(pwcca(_t(y), _t(x))) - base) > 1e-2
    _close(pwcca(_t(x), _t(x)), 1.0, 1e-10)
    _close(pwcca(_t(x), _t(x @ g.standard_normal((x.shape[1], x.shape[1])))), 1.0, 1e-10)


def test_pwcca_needs_n_at_least_d():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(10, 12, generator=g), torch.randn(10, 5, generator=g)
    with pytest.raises(ValueError, match=r"x has n=10 < d=12"):
        pwcca(x, y)
    with pytest.raises(ValueError, match=r"y has n=10 < d=12"):
        pwcca(y, x)
    with pytest.raises(ValueError, match=r"xs_b\[1\] has n=10 < d=12"):
        pwcca_grid([y], [y, x])


def test_pwcca_tied_correlations_are_nan_with_mask():
    g = np.random.default_rng(2)
    x = g.standard_normal((100, 8))
    y = np.concatenate([x[:, :3], g.standard_normal((100, 4))], 1)  # ρ = 1, 1, 1, then < 1
    with pytest.warns(UserWarning, match="tied"):
        v = pwcca(_t(x), _t(y))
    assert math.isnan(float(v))
    grid = pwcca_grid([_t(x)], [_t(y), _t(y[:, 3:])])
    assert grid.invalid.tolist() == [[True, False]]
    assert not grid.bad_a.any() and not grid.bad_b.any()
    assert math.isnan(float(grid.values[0, 0])) and math.isnan(float(grid.reverse[0, 0]))
    assert 0 < float(grid.values[0, 1]) < 1
    rho = canonical_correlations(_t(x), _t(y))
    assert float(rho[2] - rho[3]) > PWCCA_TIE_ATOL and float(rho[0] - rho[2]) < PWCCA_TIE_ATOL
    # n ≈ d: column spaces of ranks 20 and 21 in n − 1 = 23 dimensions share ≥ 18 directions,
    # so ρ = 1 is forced 18 times and the weights are arbitrary
    xs, ys = map(_t, _data("n~d"))
    with pytest.warns(UserWarning, match="tied"):
        assert math.isnan(float(pwcca(xs, ys)))
    assert int((canonical_correlations(xs, ys) > 1 - 1e-12).sum()) >= 18


def test_pwcca_dead_units_are_dropped():
    x, y = _data("nonlinear", seed=4)
    x_dead = np.concatenate([x, np.full((x.shape[0], 2), 0.7)], 1)  # two constant units
    _close(pwcca(_t(x_dead), _t(y)), ref.pwcca_anatome(x, y), 1e-9)
    _close(pwcca(_t(y), _t(x_dead)), ref.pwcca_anatome(y, x), 1e-9)


# ------------------------------------------------------------------------- degenerate data


def test_constant_features_give_nan_with_warning_but_offsets_do_not():
    x, y = map(_t, _data("nonlinear"))
    const = torch.full((x.shape[0], 4), 3.0, dtype=torch.float64)
    for fn in (lambda a, b: procrustes(a, b), lambda a, b: svcca(a, b), lambda a, b: pwcca(a, b),
               lambda a, b: svcca(a, b, variant="google")):
        with pytest.warns(UserWarning, match="constant|no direction"):
            assert math.isnan(float(fn(const, y)))
    assert math.isfinite(float(procrustes(const, y, "euclidean")))
    _close(procrustes(const, y, "euclidean"), (y - y.mean(0)).norm(), 1e-9)
    # a large common offset on healthy features is not "constant" (DESIGN §7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _close(procrustes(x + 1e6, y), procrustes(x, y), 1e-7)
        _close(pwcca(x + 1e6, y), ref.pwcca_anatome((x + 1e6).numpy(), y.numpy()), 1e-6)
        _close(svcca(x, y + 1e6, variant="google"), svcca(x, y, variant="google"), 1e-7)


def test_input_validation():
    x = torch.randn(20, 3)
    with pytest.raises(ValueError, match="same samples"):
        procrustes(x, torch.randn(21, 3))
    with pytest.raises(ValueError, match="score"):
        procrustes(x, x, score="l2")
    with pytest.raises(ValueError, match="alpha"):
        procrustes(x, x, alpha=1.5)
    with pytest.raises(ValueError, match="keep"):
        svcca(x, x, keep=0.0)
    with pytest.raises(ValueError, match="variant"):
        svcca(x, x, variant="numpy")
    with pytest.raises(TypeError):
        pwcca(x.numpy(), x)
    # (n, c, h, w) is flattened per sample
    a, b = torch.randn(40, 2, 3, 2), torch.randn(40, 5)
    _close(svcca(a, b), svcca(a.reshape(40, -1), b), 0)


def test_low_precision_inputs_are_taken_as_exact():
    # a rank tolerance scaled by bfloat16's epsilon (7.8e-3 · n > 1) would call every layer
    # constant; the values as given are exact in float64
    x, y = _data("nonlinear")
    xb, yb = _t(x, torch.bfloat16), _t(y, torch.bfloat16)
    xd, yd = xb.double(), yb.double()
    for fn in (procrustes, svcca, pwcca, lambda a, b: svcca(a, b, variant="google")):
        got = fn(xb, yb)
        assert got.dtype == torch.float64 and math.isfinite(float(got))
        _close(got, fn(xd, yd), 1e-12)
    _close(pwcca(xb, yb), ref.pwcca_anatome(xd.numpy(), yd.numpy()), 1e-9)


# ----------------------------------------------------------------------------- grid forms


def _layers(seed: int = 0):
    g = np.random.default_rng(seed)
    n = 60
    z = g.standard_normal((n, 6))
    la = [z @ g.standard_normal((6, 8)) + 0.1 * g.standard_normal((n, 8)),
          np.tanh(z @ g.standard_normal((6, 8))),  # same width as layer 0: batched together
          np.maximum(z @ g.standard_normal((6, 13)), 0) + 0.2,
          g.standard_normal((n, 70))]  # d > n
    lb = [np.sin(z @ g.standard_normal((6, 5))) + 0.1 * g.standard_normal((n, 5)),
          z @ g.standard_normal((6, 13)),
          z @ g.standard_normal((6, 8)) + 0.3 * g.standard_normal((n, 8))]
    return [_t(a) for a in la], [_t(b) for b in lb]


@pytest.mark.parametrize("alpha", [1.0, 0.3])
@pytest.mark.parametrize("score", SCORES)
def test_procrustes_grid_equals_pairs(score, alpha):
    la, lb = _layers()
    la.append(torch.ones(60, 4, dtype=torch.float64))
    grid = procrustes_grid(la, lb, score=score, alpha=alpha)
    assert grid.values.shape == (5, 3) and grid.values.dtype == torch.float64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = torch.stack([torch.stack([procrustes(a, b, score, alpha) for b in lb]) for a in la])
    _assert_close(grid.values, want, rtol=1e-10, atol=1e-12, equal_nan=True)
    assert grid.bad_a.tolist() == [False] * 4 + [True]
    assert grid.invalid[4].all() == (score != "euclidean") and not grid.invalid[:4].any()


@pytest.mark.parametrize("variant", ["anatome", "google"])
def test_svcca_grid_equals_pairs(variant):
    la, lb = _layers(1)
    grid = svcca_grid(la, lb, keep=0.95, variant=variant)
    want = torch.stack([torch.stack([svcca(a, b, keep=0.95, variant=variant) for b in lb]) for a in la])
    _assert_close(grid.values, want, rtol=1e-12, atol=1e-12)
    assert not grid.invalid.any()
    dist = svcca_grid(la, lb, keep=0.95, variant=variant, return_distance=True)
    _assert_close(dist.values, 1 - want, rtol=0, atol=1e-15)


def test_pwcca_grid_equals_pairs_both_directions():
    la, lb = _layers(2)
    la = la[:3]  # pwcca needs n ≥ d
    grid = pwcca_grid(la, lb)
    fwd = torch.stack([torch.stack([pwcca(a, b) for b in lb]) for a in la])
    rev = torch.stack([torch.stack([pwcca(b, a) for b in lb]) for a in la])
    _assert_close(grid.values, fwd, rtol=1e-12, atol=1e-12)
    _assert_close(grid.reverse, rev, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(fwd, rev, atol=1e-3)
    ln = [a.numpy() for a in la]
    _close(grid.values[2, 2], ref.pwcca_anatome(ln[2], lb[2].numpy()), 1e-9)
    _close(grid.reverse[2, 2], ref.pwcca_anatome(lb[2].numpy(), ln[2]), 1e-9)


def test_pair_blocks_chunks_cover_every_pair():
    g = torch.Generator().manual_seed(0)
    fa = [torch.randn(9, k, generator=g, dtype=torch.float64) for k in (3, 3, 4, 3, 0)]
    fb = [torch.randn(9, k, generator=g, dtype=torch.float64) for k in (2, 4, 2)]
    seen = set()
    for ia, ib, m in pair_blocks(fa, fb, max_elems=10):
        assert m.shape[:2] == (len(ia), len(ib))
        for p, i in enumerate(ia):
            for q, j in enumerate(ib):
                _assert_close(m[p, q], fa[i].T @ fb[j])
                seen.add((i, j))
    assert seen == {(i, j) for i in range(4) for j in range(3)}


# ---------------------------------------------------------------------------- moment forms


def _moments(x: torch.Tensor, y: torch.Tensor, batch: int = 37) -> PairMoments:
    m = None
    for s in range(0, x.shape[0], batch):
        b = PairMoments.of(x[s:s + batch], y[s:s + batch])
        m = b if m is None else m + b
    return m


@pytest.mark.parametrize("kind", ["gauss", "nonlinear", "n~d"])
def test_moment_forms_equal_functional(kind):
    x, y = map(_t, _data(kind))
    m = _moments(x, y)
    full = PairMoments.of(x, y)
    _assert_close(m.sxy, full.sxy, rtol=1e-13, atol=1e-12)
    alphas = [1.0] if kind == "n~d" else [1.0, 0.5, 0.0]
    for score in SCORES:
        for alpha in alphas:
            want = float(procrustes(x, y, score, alpha))
            _close(procrustes_from_moments(m, score, alpha), want, 1e-10 * max(1.0, abs(want)))
    if kind != "n~d":  # covariance routes square the condition number
        _assert_close(cca_from_moments(m), canonical_correlations(x, y), rtol=0, atol=1e-10)
        for variant in ("anatome", "google"):
            for keep in (0.99, 0.8):
                _close(svcca_from_moments(m, keep, variant=variant), svcca(x, y, keep, variant=variant), 1e-10)
        _close(svcca_from_moments(m, return_distance=True), 1 - float(svcca(x, y)), 1e-10)


def test_moment_forms_constant_side_is_nan():
    x, _ = map(_t, _data("gauss"))
    m = _moments(x, torch.full((x.shape[0], 3), 2.0, dtype=torch.float64))
    with pytest.warns(UserWarning):
        assert math.isnan(float(procrustes_from_moments(m)))
    with pytest.warns(UserWarning):
        assert math.isnan(float(svcca_from_moments(m)))
    assert math.isfinite(float(procrustes_from_moments(m, "euclidean")))


def _grid_layers() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Layers of two widths per side (two of equal width, for the batched blocks), with an
    offset, a rank-deficient one and a nonlinear relation."""
    g = torch.Generator().manual_seed(4)
    z = torch.randn(260, 5, generator=g, dtype=torch.float64)
    noise = lambda d: 0.3 * torch.randn(260, d, generator=g, dtype=torch.float64)  # noqa: E731
    xa = [z @ torch.randn(5, d, generator=g, dtype=torch.float64) + noise(d) + 1.0 for d in (7, 7, 12)]
    xa.append(z[:, :3] @ torch.randn(3, 9, generator=g, dtype=torch.float64))  # rank 3 in 9 columns
    xb = [torch.tanh(z @ torch.randn(5, d, generator=g, dtype=torch.float64)) + noise(d) for d in (4, 12, 9)]
    return xa, xb


def _grid_moments(xa, xb, diagonal: bool, batch: int = 41) -> GridMoments:
    m = None
    for s in range(0, xa[0].shape[0], batch):
        b = GridMoments.of([x[s:s + batch] for x in xa], [x[s:s + batch] for x in xb], diagonal=diagonal)
        m = b if m is None else m + b
    return m


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.0])
def test_procrustes_grid_from_moments_equals_pairs_and_features(score, alpha):
    xa, xb = _grid_layers()
    gm = _grid_moments(xa, xb, diagonal=alpha == 1.0)
    got = procrustes_grid_from_moments(gm, score, alpha)
    full = _grid_moments(xa, xb, diagonal=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is constant here
        pairs = [[float(procrustes_from_moments(full.pair(i, j), score, alpha)) for j in range(3)] for i in range(4)]
    scale = max(1.0, float(got.values.abs().max())) if score == "euclidean" else 1.0
    _assert_close(got.values, pairs, rtol=0, atol=1e-10 * scale)
    if alpha == 1.0:  # the rank-deficient layer separates the routes for alpha < 1 (netrep's floor)
        _assert_close(got.values, procrustes_grid(xa, xb, score, alpha).values, rtol=0, atol=1e-10 * scale)
    assert not got.invalid.any()


@pytest.mark.parametrize("variant", ["anatome", "google"])
@pytest.mark.parametrize("keep", [0.99, 0.7])
def test_svcca_grid_from_moments_equals_pairs_and_features(variant, keep):
    xa, xb = _grid_layers()
    gm = _grid_moments(xa, xb, diagonal=False)
    got = svcca_grid_from_moments(gm, keep, variant=variant)
    pairs = [[float(svcca_from_moments(gm.pair(i, j), keep, variant=variant)) for j in range(3)] for i in range(4)]
    _assert_close(got.values, pairs, rtol=0, atol=1e-10)
    _assert_close(got.values, svcca_grid(xa, xb, keep, variant=variant).values, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="full within-layer moments"):
        svcca_grid_from_moments(_grid_moments(xa, xb, diagonal=True))


def test_grid_moments_of_one_stack_and_constant_layers():
    xa, _ = _grid_layers()
    xa = xa + [torch.full((260, 3), 2.0, dtype=torch.float64)]  # a constant layer
    cat = torch.cat(xa, dim=1)
    gm = GridMoments.from_self(260, tuple(x.shape[1] for x in xa), cat.sum(0), cat.T @ cat)
    assert GridMoments.floats(gm.widths_a, gm.widths_b, same=True) == cat.shape[1] ** 2 + cat.shape[1]
    for grid, want in ((procrustes_grid_from_moments(gm), procrustes_grid(xa, xa)),
                       (svcca_grid_from_moments(gm), svcca_grid(xa, xa))):
        assert grid.bad_a.tolist() == [False] * 4 + [True] and grid.invalid[-1].all() and grid.invalid[:, -1].all()
        _assert_close(grid.values[:4, :4], want.values[:4, :4], rtol=0, atol=1e-7, equal_nan=True)
    assert torch.isfinite(procrustes_grid_from_moments(gm, "euclidean").values).all()
