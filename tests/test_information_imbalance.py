"""Information Imbalance (Glielmo et al., PNAS Nexus 2022) against a naive float64 reference.

The reference (tests/reference.py) computes distances from explicit differences and ranks by
sorting each row in a Python loop (O(n² log n)), with the documented tie rules written out:
tied nearest neighbours share the weight, tied distances get the average rank. It never
calls simtorch.
"""

from __future__ import annotations

import copy
import os
import sys
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(__file__))
from reference import information_imbalance as ref_ii  # noqa: E402
from reference import sq_dists  # noqa: E402

import simtorch.functional as F  # noqa: E402
from simtorch import InformationImbalance, SimilarityModel  # noqa: E402

# ---------------------------------------------------------------- models and data


class Take(nn.Module):
    def __init__(self, a: int, b: int) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x):
        return x[:, self.a : self.b]


def net_a(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(
        fc1=nn.Linear(6, 16), relu1=nn.ReLU(), fc2=nn.Linear(16, 8), tanh=nn.Tanh(), fc3=nn.Linear(8, 3),
    )).double()


def net_b(seed: int = 1) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(fc1=nn.Linear(6, 10), relu=nn.ReLU(), fc2=nn.Linear(10, 4))).double()


LAYERS_A = ["fc1", "relu1", "fc2", "fc3"]
LAYERS_B = ["fc1", "relu", "fc2"]


def data(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def acts(model: nn.Module, x: torch.Tensor, names) -> dict[str, np.ndarray]:
    m = copy.deepcopy(model).eval()
    h, out = x, {}
    with torch.no_grad():
        for name, mod in m.named_children():
            h = mod(h)
            if name in names:
                out[name] = h.numpy().copy()
    return out


def loader(x: torch.Tensor, bs: int) -> DataLoader:
    return DataLoader(TensorDataset(x, torch.zeros(len(x))), batch_size=bs, shuffle=False)


def run(model_a, names_a, model_b, names_b, dl, **kw):
    a = SimilarityModel(model_a, "A", names_a, device="cpu")
    b = a if model_b is None else SimilarityModel(model_b, "B", names_b, device="cpu")
    sim = InformationImbalance(a, b, device="cpu", progress=False, **kw)
    return sim, sim.compute(dl)


def ref_grids(model_a, names_a, model_b, names_b, x):
    aa, bb = acts(model_a, x, names_a), acts(model_b, x, names_b)
    fwd = np.array([[ref_ii(aa[i], bb[j]) for j in names_b] for i in names_a])
    rev = np.array([[ref_ii(bb[j], aa[i]) for j in names_b] for i in names_a])
    return fwd, rev


# ---------------------------------------------------------------- functional


def test_functional_matches_naive_double_loop():
    g = np.random.default_rng(0)
    x = g.standard_normal((45, 5))
    y = np.tanh(x @ g.standard_normal((5, 3))) + 0.3 * g.standard_normal((45, 3))
    fwd, rev = F.information_imbalance(torch.tensor(x), torch.tensor(y))
    assert float(fwd) == pytest.approx(ref_ii(x, y), abs=1e-12)
    assert float(rev) == pytest.approx(ref_ii(y, x), abs=1e-12)
    assert abs(float(fwd) - float(rev)) > 0.01  # asymmetric: a swapped direction would fail


@pytest.mark.parametrize("n", [2, 7, 50, 64])
def test_self_imbalance_is_exactly_2_over_n(n):
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    fwd, rev = F.information_imbalance(x, x)
    assert float(fwd) == 2 / n and float(rev) == 2 / n


def test_non_injective_noisy_function_is_less_informative():
    """f(x) = ‖x‖² + noise keeps little of x: X predicts f(X) better than f(X) predicts X."""
    g = np.random.default_rng(1)
    x = g.uniform(-1, 1, (200, 2))
    fx = (x**2).sum(1, keepdims=True) + 0.02 * g.standard_normal((200, 1))
    fwd, rev = F.information_imbalance(torch.tensor(x), torch.tensor(fx))
    assert float(fwd) < float(rev) - 0.2
    assert float(fwd) == pytest.approx(ref_ii(x, fx), abs=1e-12)
    assert float(rev) == pytest.approx(ref_ii(fx, x), abs=1e-12)


def test_ties_and_duplicates_give_the_documented_value():
    """1-D X = [0, 1, 2, 4]: point 1 has two nearest neighbours (0 and 2), which share its
    weight. Y = [0, 0, 5, 6]: points 0 and 1 coincide, and from 2 and 3 the points 0 and 1
    are tied (average rank 2.5). By hand:
    Δ(X→Y) = (2/16)·[r01 + (r10 + r12)/2 + r21 + r32] = (1/8)·[1 + 1.5 + 2.5 + 1] = 0.75,
    Δ(Y→X) = (1/8)·[r01 + r10 + r23 + r32] = (1/8)·[1 + 1.5 + 2.5 + 1] = 0.75."""
    x = torch.tensor([[0.0], [1.0], [2.0], [4.0]], dtype=torch.float64)
    y = torch.tensor([[0.0], [0.0], [5.0], [6.0]], dtype=torch.float64)
    with pytest.warns(UserWarning, match="coincident"):
        fwd, rev = F.information_imbalance(x, y)
    assert float(fwd) == 0.75 and float(rev) == 0.75
    assert ref_ii(x.numpy(), y.numpy()) == 0.75 and ref_ii(y.numpy(), x.numpy()) == 0.75
    # A tie-blind implementation (first neighbour by argsort) gives another value
    assert float(fwd) != (2 / 16) * (1 + 1 + 2.5 + 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_many_ties_match_reference_dense_and_sparse(seed):
    """Integer grid points: many exact ties in both representations. (n = 32 keeps the
    column means, hence the centred Grams, exact: ties are equalities of computed values.)"""
    g = np.random.default_rng(seed)
    x = g.integers(0, 3, (32, 2)).astype(np.float64)
    y = g.integers(0, 4, (32, 1)).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fwd, rev = F.information_imbalance(torch.tensor(x), torch.tensor(y))
    assert float(fwd) == pytest.approx(ref_ii(x, y), abs=1e-12)
    assert float(rev) == pytest.approx(ref_ii(y, x), abs=1e-12)
    dx, dy = torch.tensor(sq_dists(x))[None], torch.tensor(sq_dists(y))[None]
    dense = F.imbalance_sums(dx, dy, method="dense")
    sparse = F.imbalance_sums(dx, dy, method="sparse")
    for a, b in zip(dense, sparse):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


def test_result_does_not_depend_on_sample_order():
    """Ties are resolved by counting, not by sort order: permuting the samples leaves Δ."""
    g = np.random.default_rng(3)
    x = g.integers(0, 3, (32, 2)).astype(np.float64)
    y = g.integers(0, 3, (32, 2)).astype(np.float64)
    perm = g.permutation(32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = F.information_imbalance(torch.tensor(x), torch.tensor(y))
        b = F.information_imbalance(torch.tensor(x[perm]), torch.tensor(y[perm]))
    assert float(a[0]) == pytest.approx(float(b[0]), abs=1e-12)
    assert float(a[1]) == pytest.approx(float(b[1]), abs=1e-12)


# ---------------------------------------------------------------- streaming


def test_single_batch_grid_matches_naive_every_pair_both_directions():
    N = 40
    x = data(N, 0)
    A, B = net_a(0), net_b(1)
    sim, m = run(A, LAYERS_A, B, LAYERS_B, loader(x, N))
    fwd, rev = ref_grids(A, LAYERS_A, B, LAYERS_B, x)
    np.testing.assert_allclose(m, fwd, atol=1e-12, rtol=0)
    np.testing.assert_allclose(sim.result.extras["reverse"], rev, atol=1e-12, rtol=0)
    assert np.abs(fwd - rev).max() > 0.02  # the directions differ, so swapping them fails
    assert sim.result.metric == "II" and sim.result.n_samples == N and sim.result.n_batches == 1


def test_batches_weighted_by_size_with_stderr_over_batches():
    N, bs = 50, 20  # batches of 20, 20, 10
    x = data(N, 1)
    A, B = net_a(2), net_b(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a smaller last batch is expected: no warning
        sim, m = run(A, LAYERS_A, B, LAYERS_B, loader(x, bs))
    parts = [ref_grids(A, LAYERS_A, B, LAYERS_B, xb) for xb in x.split(bs)]
    w = np.array([20, 20, 10], dtype=float)
    for k, key in enumerate(("matrix", "reverse")):
        vals = np.stack([p[k] for p in parts])
        mean = np.tensordot(w, vals, 1) / w.sum()
        se = np.sqrt(3 / 2 * np.tensordot(w**2, (vals - mean) ** 2, 1)) / w.sum()
        got = m if key == "matrix" else sim.result.extras["reverse"]
        got_se = sim.result.stderr if key == "matrix" else sim.result.extras["reverse_stderr"]
        np.testing.assert_allclose(got, mean, atol=1e-12, rtol=0)
        np.testing.assert_allclose(got_se, se, atol=1e-12, rtol=0)
        assert np.abs(mean - vals.mean(0)).max() > 1e-3  # unweighted mean would fail
    assert sim.result.n_batches == 3


def test_irregular_batch_sizes_warn_and_single_sample_batches_are_skipped():
    x = data(51, 2)
    A, B = net_a(4), net_b(5)
    batches = [x[:20], x[20:30], x[30:50], x[50:]]  # 20, 10, 20, then a single sample
    with pytest.warns(UserWarning) as rec:
        sim, _ = run(A, ["fc2"], B, ["fc2"], batches)
    text = " ".join(str(r.message) for r in rec)
    assert "different sizes" in text and "skipped 1 batch" in text
    assert sim.result.n_skipped == 1 and sim.result.n_samples == 50


def test_self_grid_diagonal_is_2_over_n():
    N, bs = 48, 16
    x = data(N, 3)
    A = net_a(6)
    sim, m = run(A, LAYERS_A, None, None, loader(x, bs))
    np.testing.assert_allclose(np.diag(m), 2 / bs, atol=1e-15, rtol=0)
    np.testing.assert_allclose(sim.result.extras["reverse"], m.T, atol=1e-15)
    assert np.abs(m - 2 / bs).max() > 0.02


def test_independent_representations_within_a_few_stderr_of_one():
    N, bs, d = 1024, 64, 6
    x = torch.randn(N, 2 * d, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    A = nn.Sequential(OrderedDict(take=Take(0, d)))
    B = nn.Sequential(OrderedDict(take=Take(d, 2 * d)))
    sim, m = run(A, ["take"], B, ["take"], loader(x, bs))
    se = sim.result.stderr[0, 0]
    assert 0 < se < 0.05
    assert abs(m[0, 0] - 1) < 4 * se
    assert abs(sim.result.extras["reverse"][0, 0] - 1) < 4 * sim.result.extras["reverse_stderr"][0, 0]


def test_duplicate_samples_warn_naming_the_layer():
    x = data(30, 5)
    x[10] = x[3]  # one duplicated input: every layer has coincident points
    A, B = net_a(7), net_b(8)
    with pytest.warns(UserWarning) as rec:
        sim, m = run(A, ["fc1", "fc2"], B, ["fc2"], loader(x, 30))
    text = " ".join(str(r.message) for r in rec)
    assert "A layers ['fc1', 'fc2'] have coincident samples" in text
    assert "B layers ['fc2'] have coincident samples" in text
    fwd, rev = ref_grids(A, ["fc1", "fc2"], B, ["fc2"], x)
    np.testing.assert_allclose(m, fwd, atol=1e-12, rtol=0)
    np.testing.assert_allclose(sim.result.extras["reverse"], rev, atol=1e-12, rtol=0)


def test_duplicates_in_float32_grams_still_tie():
    """With float32 models the Gram of two equal rows is not exactly consistent; the
    coincidence threshold makes them tie exactly, as in the float64 reference."""
    x = data(40, 11)
    x[7] = x[21]
    x[30] = x[21]
    A, B = net_a(7).float(), net_b(8).float()
    with pytest.warns(UserWarning, match="coincident"):
        sim, m = run(A, LAYERS_A, B, LAYERS_B, loader(x.float(), 40))
    fwd, rev = ref_grids(A.double(), LAYERS_A, B.double(), LAYERS_B, x.float().double())
    np.testing.assert_allclose(m, fwd, atol=1e-12, rtol=0)
    np.testing.assert_allclose(sim.result.extras["reverse"], rev, atol=1e-12, rtol=0)


# ---------------------------------------------------------------- buffered subsets


def test_exact_equals_full_data_definition():
    N, bs = 90, 32  # batches 32, 32, 26
    x = data(N, 6)
    A, B = net_a(9), net_b(10)
    sim, m = run(A, LAYERS_A, B, LAYERS_B, loader(x, bs), exact=True)
    fwd, rev = ref_grids(A, LAYERS_A, B, LAYERS_B, x)
    np.testing.assert_allclose(m, fwd, atol=1e-12, rtol=0)
    np.testing.assert_allclose(sim.result.extras["reverse"], rev, atol=1e-12, rtol=0)
    res = sim.result
    assert res.n_samples == N and res.n_batches == 1 and np.all(np.isnan(res.stderr))
    per_batch = run(A, LAYERS_A, B, LAYERS_B, loader(x, bs))[1]
    assert np.abs(per_batch - fwd).max() > 0.01  # the per-batch estimate is different


def test_subset_size_pools_consecutive_batches():
    N, bs, k = 100, 16, 40  # subsets of 40, 40, 20 across batch boundaries
    x = data(N, 7)
    A, B = net_a(11), net_b(12)
    sim, m = run(A, ["relu1", "fc3"], B, ["fc2"], loader(x, bs), subset_size=k)
    parts = [ref_grids(A, ["relu1", "fc3"], B, ["fc2"], x[s : s + k]) for s in range(0, N, k)]
    w = np.array([40, 40, 20], dtype=float)
    want = np.tensordot(w, np.stack([p[0] for p in parts]), 1) / w.sum()
    want_rev = np.tensordot(w, np.stack([p[1] for p in parts]), 1) / w.sum()
    np.testing.assert_allclose(m, want, atol=1e-12, rtol=0)
    np.testing.assert_allclose(sim.result.extras["reverse"], want_rev, atol=1e-12, rtol=0)
    assert sim.result.n_batches == 3 and sim.result.settings["subset_sizes"] == [20, 40]


def test_projection_and_memory_limit():
    N = 60
    x = data(N, 8)
    A, B = net_a(13), net_b(14)
    exact = run(A, LAYERS_A, B, LAYERS_B, loader(x, 20), exact=True)[1]
    # no layer is wider than 16: a projection to 64 dimensions keeps the features as they are
    same = run(A, LAYERS_A, B, LAYERS_B, loader(x, 20), exact=True, projection_dim=64)[1]
    np.testing.assert_array_equal(same, exact)
    sim, proj = run(A, ["fc1"], B, ["fc1"], loader(x, 20), exact=True, projection_dim=4)
    assert sim.result.settings["buffer_bytes_per_sample"] == 2 * 4 * 8  # two layers of 4 float64
    assert np.isfinite(proj).all()
    a = SimilarityModel(A, "A", LAYERS_A, device="cpu")
    b = SimilarityModel(B, "B", LAYERS_B, device="cpu")
    with pytest.raises(ValueError, match="projection_dim"):
        InformationImbalance(a, b, device="cpu", progress=False, exact=True, memory_limit=1000).compute(loader(x, 20))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in A.modules())


def test_feature_hooks_removed_after_success_and_error():
    x = data(40, 9)
    A, B = net_a(15), net_b(16)

    def failing():
        yield (x[:20], None)
        raise RuntimeError("loader broke")

    with pytest.raises(RuntimeError, match="loader broke"):
        run(A, LAYERS_A, B, LAYERS_B, failing(), subset_size=10)
    run(A, LAYERS_A, B, LAYERS_B, loader(x, 20), subset_size=30)
    for model in (A, B):
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"subset_size": 1}, "subset_size"),
        ({"exact": True, "subset_size": 10}, "cannot be combined"),
        ({"projection_dim": 8}, "only applies"),
        ({"exact": True, "projection_dim": 0}, "projection_dim"),
    ],
)
def test_invalid_options(kwargs, match):
    a = SimilarityModel(net_a(0), "A", ["fc1"], device="cpu")
    with pytest.raises(ValueError, match=match):
        InformationImbalance(a, a, **kwargs)


def test_plots(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    x = data(30, 10)
    sim, _ = run(net_a(0), LAYERS_A, net_b(1), LAYERS_B, loader(x, 15))
    ax = sim.plot_plane(pairs=[("fc1", "fc1"), (3, 2)], save_path=tmp_path / "plane.png")
    assert (tmp_path / "plane.png").exists() and len(ax.collections) == 1
    ax = sim.plot_similarity(direction="reverse")
    assert "reverse" in ax.get_title()
    assert sim.result.metric == "II"  # the forward result is kept
