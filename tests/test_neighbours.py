"""Mutual k-NN, CKNNA and RSA (simtorch/functional/neighbours.py, rsa.py) against the numpy
float64 references in tests/reference.py, plus invariances, the tie rule and the
stacked (grid / from-Gram) forms the engine calls."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import reference as ref

from simtorch.functional.neighbours import (  # noqa: E402
    cknna,
    cknna_grid,
    cosine_gram,
    knn_indices,
    knn_mask,
    mutual_knn,
    mutual_knn_grid,
    neighbour_scores,
    raw_gram,
)
from simtorch.functional.rsa import average_ranks, rdm_from_gram, rdm_stack, rdm_vector, rsa, rsa_grid  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(kind: str, n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A pair (x, y) of related but different representations of the same n samples."""
    g = torch.Generator().manual_seed(seed)
    if kind == "lowrank":
        x = torch.randn(n, 3, generator=g, dtype=torch.float64) @ torch.randn(3, d, generator=g, dtype=torch.float64)
    else:
        x = torch.randn(n, d, generator=g, dtype=torch.float64)
    if kind == "tanh":
        x = torch.tanh(x @ torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d))
    w = torch.randn(d, d + 5, generator=g, dtype=torch.float64) / math.sqrt(d)
    y = torch.tanh(x @ w) + 0.3 * torch.randn(n, d + 5, generator=g, dtype=torch.float64)
    return x, y


# (kind, n, d): n > d, n < d, n not a multiple of k = 10, low rank, nonlinear.
DATASETS = [("gauss", 60, 8), ("gauss", 40, 100), ("tanh", 47, 20), ("lowrank", 53, 30)]
DTYPES = [torch.float32, torch.float64]


def _cast(x, y, dtype):
    return x.to(dtype), y.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("neighbours", ["cosine", "linear", "euclidean"])
@pytest.mark.parametrize("kind,n,d", DATASETS)
def test_mutual_knn_matches_reference(kind, n, d, neighbours, dtype):
    x, y = _cast(*_data(kind, n, d), dtype)
    got = mutual_knn(x, y, k=10, neighbours=neighbours)
    assert got.dtype == torch.float64 and got.dim() == 0
    want = ref.mutual_knn(x, y, 10, neighbours)
    assert 0.0 < want < 1.0  # the data must not make the check trivial
    assert float(got) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("kernel", ["cosine", "linear"])
@pytest.mark.parametrize("kind,n,d", DATASETS)
def test_cknna_matches_reference(kind, n, d, kernel, unbiased, dtype):
    x, y = _cast(*_data(kind, n, d), dtype)
    got = cknna(x, y, k=10, kernel=kernel, unbiased=unbiased)
    assert got.dtype == torch.float64 and got.dim() == 0
    want = ref.cknna(x, y, 10, kernel, unbiased)
    assert abs(want) > 1e-3
    assert float(got) == pytest.approx(want, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rdm", ["euclidean", "correlation"])
@pytest.mark.parametrize("kind,n,d", DATASETS)
def test_rsa_matches_reference(kind, n, d, rdm, dtype):
    x, y = _cast(*_data(kind, n, d), dtype)
    rx, ry = ref.rdm_upper(x, rdm), ref.rdm_upper(y, rdm)
    for compare in ("spearman", "pearson", "cosine"):
        got = rsa(x, y, rdm=rdm, compare=compare)
        assert got.dtype == torch.float64 and got.dim() == 0
        want = ref.rdm_compare(rx, ry, compare)
        assert abs(want) < 0.9999
        assert float(got) == pytest.approx(want, abs=1e-10)


def test_rdm_vector_matches_reference_and_flattens():
    x, _ = _data("gauss", 12, 24)
    x4 = x.reshape(12, 2, 3, 4)
    for method in ("euclidean", "correlation"):
        np.testing.assert_allclose(rdm_vector(x4, method).numpy(), ref.rdm_upper(x, method), rtol=1e-10, atol=1e-12)


def test_rsa_correlation_is_pearson_alias():
    x, y = _data("tanh", 30, 10)
    assert float(rsa(x, y, compare="corr")) == float(rsa(x, y, compare="pearson"))


# --- invariances and self-similarity -------------------------------------------------


def _orthogonal(d: int, seed: int = 3) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


@pytest.mark.parametrize("kind,n,d", DATASETS)
def test_mutual_knn_cosine_invariances_and_self(kind, n, d):
    x, y = _data(kind, n, d)
    base = float(mutual_knn(x, y))
    assert 0.0 < base < 1.0
    assert float(mutual_knn(3.7 * x @ _orthogonal(d), y)) == base
    assert float(mutual_knn(x, y * 0.01)) == base
    assert float(mutual_knn(x, x)) == 1.0
    # A translation changes cosines: the invariance test is able to fail.
    assert float(mutual_knn(x + 2.0, y)) != base


@pytest.mark.parametrize("kind,n,d", DATASETS)
def test_rsa_invariances_and_self(kind, n, d):
    x, y = _data(kind, n, d)
    shift = 5.0 * torch.randn(1, d, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    moved = x @ _orthogonal(d) + shift
    for compare in ("spearman", "pearson", "cosine"):
        want = float(rsa(x, y, "euclidean", compare))
        assert float(rsa(moved, y, "euclidean", compare)) == pytest.approx(want, abs=1e-9)
        assert float(rsa(x, x, "euclidean", compare)) == pytest.approx(1.0, abs=1e-12)
        assert float(rsa(x, x, "correlation", compare)) == pytest.approx(1.0, abs=1e-12)
    # Correlation distance ignores each sample's scale and offset across its features.
    g = torch.Generator().manual_seed(8)
    scale = torch.rand(n, 1, generator=g, dtype=torch.float64) + 0.5
    shifted = 4.0 * scale * x + torch.randn(n, 1, generator=g, dtype=torch.float64)
    for compare in ("spearman", "pearson"):
        want = float(rsa(x, y, "correlation", compare))
        assert float(rsa(shifted, y, "correlation", compare)) == pytest.approx(want, abs=1e-9)
        euclid = float(rsa(x, y, "euclidean", compare))
        assert float(rsa(shifted, y, "euclidean", compare)) != pytest.approx(euclid, abs=1e-6)


def test_cknna_self_just_below_one_and_asymmetric():
    x, y = _data("tanh", 47, 20)
    for kernel in ("cosine", "linear"):
        s = float(cknna(x, x, k=10, kernel=kernel))
        assert 0.0 < 1.0 - s < 1e-4
        assert s == pytest.approx(ref.cknna(x, x, 10, kernel), rel=1e-12)
    xy, yx = float(cknna(x, y)), float(cknna(y, x))
    assert abs(xy - yx) > 1e-6, "unbiased CKNNA should not be symmetric on this example"
    assert yx == pytest.approx(ref.cknna(y, x, 10), rel=1e-9)
    # The biased variant is symmetric (cyclic trace).
    assert float(cknna(x, y, unbiased=False)) == pytest.approx(float(cknna(y, x, unbiased=False)), rel=1e-12)


def test_cknna_sim_kk_uses_own_mask():
    # The self-terms use each side's own mask: replacing M_K by the joint mask in the
    # denominator gives a different number, so this catches that mistake.
    x, y = _data("gauss", 40, 12)
    got = float(cknna(x, y, k=6))
    K, L = ref.knn_scores(x, "cosine"), ref.knn_scores(y, "cosine")
    m = ref.knn_mask(K, 6) * ref.knn_mask(L, 6)
    joint = ref.platonic_hsic_unbiased(m * K, m * L) / (
        np.sqrt(ref.platonic_hsic_unbiased(m * K, m * K) * ref.platonic_hsic_unbiased(m * L, m * L)) + 1e-6
    )
    assert got == pytest.approx(ref.cknna(x, y, 6), rel=1e-9)
    assert abs(got - joint) > 1e-3


# --- tie rule and argument checks ----------------------------------------------------


def test_tie_rule_lower_index_wins():
    # Unit vectors on the axes: exact cosines 0, ±1. Row 4 duplicates row 1.
    x = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 1, 0], [-1, 0, 0]], dtype=torch.float64)
    s = neighbour_scores(x @ x.T, "linear", v=torch.zeros(6), mu_sq=0.0)
    idx = knn_indices(s, 1)[:, 0].tolist()
    # Row 0 ties (score 0) with 1, 2, 3, 4: index 1 wins. Row 1's duplicate 4 is its neighbour.
    assert idx == [1, 4, 0, 0, 1, 1]
    assert knn_indices(s, 3)[0].tolist() == [1, 2, 3]
    # Self is excluded by index even when it is the only best score.
    assert not knn_mask(s, 5).diagonal().any()
    # Without exclusion, self competes: row 1 ties with its duplicate 4 and wins on index.
    assert knn_indices(s, 1, exclude_self=False)[:, 0].tolist() == [0, 1, 2, 3, 1, 5]
    # All scores equal: the lowest indices other than self.
    flat = knn_indices(torch.zeros(1, 7, 7), 3)[0]
    assert flat.tolist() == [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2], [0, 1, 2], [0, 1, 2], [0, 1, 2]]


@pytest.mark.parametrize("exclude_self", [True, False])
def test_knn_mask_on_heavy_ties_matches_reference(exclude_self):
    g = torch.Generator().manual_seed(5)
    scores = torch.randint(0, 3, (4, 23, 23), generator=g).double()
    for k in (1, 4, 10, 22):
        got = knn_mask(scores, k, exclude_self)
        assert (got.sum(-1) == k).all()
        for layer in range(4):
            want = ref.knn_mask(scores[layer].numpy(), k, exclude_self)
            np.testing.assert_array_equal(got[layer].numpy(), want.astype(bool))
    idx = knn_indices(scores, 4, exclude_self)
    assert (idx.diff(dim=-1) > 0).all()
    assert torch.equal(torch.zeros_like(got).scatter_(-1, idx, True), knn_mask(scores, 4, exclude_self))


def test_argument_checks():
    x, y = _data("gauss", 12, 5)
    for bad in (12, 13, 0):
        with pytest.raises(ValueError, match="k="):
            mutual_knn(x, y, k=bad)
    with pytest.raises(ValueError, match="k=1"):
        cknna(x, y, k=1)
    with pytest.raises(ValueError, match="k=12"):
        cknna(x, y, k=12)
    assert torch.isfinite(cknna(x, y, k=12, unbiased=False))
    with pytest.raises(ValueError, match="same samples"):
        mutual_knn(x, y[:11], k=3)
    with pytest.raises(ValueError, match="neighbours="):
        mutual_knn(x, y, k=3, neighbours="manhattan")
    with pytest.raises(ValueError, match="kernel="):
        cknna(x, y, k=3, kernel="rbf")
    with pytest.raises(TypeError):
        mutual_knn(x.long(), y, k=3)
    with pytest.raises(ValueError, match="rdm="):
        rsa(x, y, rdm="cityblock")
    with pytest.raises(ValueError, match="compare="):
        rsa(x, y, compare="kendall")
    with pytest.raises(ValueError, match="row_sums"):
        rdm_from_gram(x @ x.T, 5, "correlation")


def test_constant_rdm_is_nan_with_warning():
    x = torch.ones(6, 4)
    y = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    with pytest.warns(UserWarning, match="constant"):
        assert math.isnan(float(rsa(x, y)))


# --- stacked forms --------------------------------------------------------------------


def _layers(n: int = 31, seed: int = 11):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 9, generator=g, dtype=torch.float64)
    feats, d = [], 9
    for layer in range(4):
        w = torch.randn(d, 6 + 3 * layer, generator=g, dtype=torch.float64) / math.sqrt(d)
        base = torch.tanh(base @ w) + 0.2 * torch.randn(n, w.shape[1], generator=g, dtype=torch.float64) + 0.5
        feats.append(base)
        d = w.shape[1]
    return feats


def _centred_stats(f: torch.Tensor, dtype=torch.float64):
    """What the engine keeps per layer: G = X_c X_cᵀ (in ``dtype``), v = X_c μ, ‖μ‖², s = X 1."""
    mu = f.mean(dim=0)
    xc = (f - mu).to(dtype)
    return xc @ xc.T, (f - mu) @ mu, (mu * mu).sum(), f.sum(dim=1)


def _engine_stack(feats):
    """Stacked (G, v, ‖μ‖²) of several layers, float64 Grams."""
    stats = [_centred_stats(f) for f in feats]
    return tuple(torch.stack([s[i] for s in stats]) for i in range(3))


@pytest.mark.parametrize("neighbours", ["cosine", "linear", "euclidean"])
def test_mutual_knn_grid_from_engine_grams_equals_per_pair(neighbours):
    fa, fb = _layers(seed=11), _layers(seed=12)[:3]
    k = 5
    g, v, mu = _engine_stack(fa)
    sa = neighbour_scores(g, neighbours, v=v, mu_sq=mu)
    g, v, mu = _engine_stack(fb)
    sb = neighbour_scores(g, neighbours, v=v, mu_sq=mu)
    grid = mutual_knn_grid(knn_mask(sa, k), knn_mask(sb, k))
    want = torch.tensor([[float(mutual_knn(a, b, k, neighbours)) for b in fb] for a in fa], dtype=torch.float64)
    assert grid.shape == (4, 3) and grid.dtype == torch.float64
    assert torch.allclose(grid, want, rtol=0, atol=1e-12)
    assert want.std() > 0.01
    # Index form and mixed forms give the same counts.
    assert torch.equal(mutual_knn_grid(knn_indices(sa, k), knn_indices(sb, k)), grid)
    assert torch.equal(mutual_knn_grid(knn_indices(sa, k), knn_mask(sb, k)), grid)


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("kernel", ["cosine", "linear"])
def test_cknna_grid_equals_per_pair(kernel, unbiased):
    fa, fb = _layers(seed=21), _layers(seed=22)[1:]
    k = 6

    def kernels(feats):
        r = raw_gram(*_engine_stack(feats))
        return cosine_gram(r) if kernel == "cosine" else r

    ka, kb = kernels(fa), kernels(fb)
    want = torch.tensor([[float(cknna(a, b, k, kernel, unbiased)) for b in fb] for a in fa], dtype=torch.float64)
    assert want.std() > 0.01
    for max_elements in (2**23, 100):  # one chunk, and one a-layer per chunk
        grid = cknna_grid(ka, kb, k, unbiased, max_elements=max_elements)
        assert grid.shape == (4, 3)
        assert torch.allclose(grid, want, rtol=1e-10, atol=1e-12)
    # Same stack on both sides: the diagonal is the self-CKNNA, just below 1.
    diag = cknna_grid(ka, ka, k, unbiased).diagonal()
    self_want = torch.tensor([float(cknna(f, f, k, kernel, unbiased)) for f in fa], dtype=torch.float64)
    assert torch.allclose(diag, self_want, rtol=1e-10)
    assert ((diag < 1) & (diag > 1 - 1e-3)).all()


def test_raw_gram_and_cosine_gram_equal_direct():
    feats = _layers()[:2]
    r = raw_gram(*_engine_stack(feats))
    for layer, f in enumerate(feats):
        assert torch.allclose(r[layer], f @ f.T, rtol=1e-12, atol=1e-12)
        fn = torch.nn.functional.normalize(f, dim=1)
        assert torch.allclose(cosine_gram(r[layer]), fn @ fn.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gram_dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("method", ["euclidean", "correlation"])
def test_rdm_from_gram_equals_direct(method, gram_dtype, tol):
    feats = _layers()[:3] + [_layers()[3] + 20.0]  # a large common offset, as after a ReLU
    for f in feats:
        want = rdm_vector(f, method)
        g, v, mu, s = _centred_stats(f, gram_dtype)
        gram = g if method == "euclidean" else raw_gram(g, v, mu)
        got = rdm_from_gram(gram, f.shape[1], method, row_sums=s)
        assert got.dtype == torch.float64
        assert torch.allclose(got, want, rtol=0, atol=tol * float(want.abs().max()))
    # Batched over layers of the same width, d as a tensor.
    same = [f[:, :6] for f in feats]
    st = [_centred_stats(f) for f in same]
    grams = torch.stack([raw_gram(*s[:3]) for s in st])
    batched = rdm_from_gram(grams, torch.tensor([6] * 4), method, torch.stack([s[3] for s in st]))
    assert torch.allclose(batched, rdm_stack(same, method), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("compare", ["spearman", "pearson", "cosine"])
@pytest.mark.parametrize("method", ["euclidean", "correlation"])
def test_rsa_grid_equals_per_pair(method, compare):
    fa, fb = _layers(seed=31), _layers(seed=32)
    grid = rsa_grid(rdm_stack(fa, method), rdm_stack(fb, method), compare)
    want = torch.tensor([[float(rsa(a, b, method, compare)) for b in fb] for a in fa], dtype=torch.float64)
    assert grid.shape == (4, 4) and want.std() > 1e-3
    assert torch.allclose(grid, want, rtol=0, atol=1e-12)
    same_width = torch.stack([f[:, :6] for f in fa])
    assert torch.allclose(rdm_stack(same_width, method), rdm_stack(list(same_width), method))


def test_spearman_average_ranks_on_ties():
    g = torch.Generator().manual_seed(4)
    v = torch.randint(0, 5, (3, 40), generator=g).double()
    for row in v:
        np.testing.assert_array_equal(average_ranks(row).numpy(), ref.rankdata_average(row.numpy()))
    w = torch.randint(0, 7, (2, 40), generator=g).double()
    grid = rsa_grid(v, w, "spearman")
    for i in range(3):
        for j in range(2):
            assert float(grid[i, j]) == pytest.approx(ref.rdm_compare(v[i].numpy(), w[j].numpy(), "spearman"), abs=1e-12)


# --- rsatoolbox cross-check -------------------------------------------------------------


def test_rsa_matches_rsatoolbox():
    rsatoolbox = pytest.importorskip("rsatoolbox")
    from rsatoolbox.data import Dataset
    from rsatoolbox.rdm import calc_rdm, compare as rt_compare

    x, y = _data("tanh", 25, 12)
    ours_rt = {"spearman": "spearman", "pearson": "corr", "cosine": "cosine"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for method in ("euclidean", "correlation"):
            rx = calc_rdm(Dataset(x.numpy()), method=method)
            ry = calc_rdm(Dataset(y.numpy()), method=method)
            np.testing.assert_allclose(rdm_vector(x, method).numpy(), rx.get_vectors()[0], rtol=1e-9, atol=1e-12)
            for ours, theirs in ours_rt.items():
                want = float(rt_compare(rx, ry, method=theirs)[0, 0])
                assert float(rsa(x, y, method, ours)) == pytest.approx(want, abs=1e-10)
    assert rsatoolbox is not None
