"""Permutation null from the same pass (issue 14, "Statistics researchers ask for"):
``permutations=K`` on CKA and dCKA, ``result.pvalue``, the greyed-out figure, the CLI flag."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import reference as ref
import simtorch
from simtorch import SimilarityModel, SimilarityResult
from simtorch.features import grid
from simtorch.functional import batch_permutations, permutation_pvalue, permuted_conf, permuted_cross

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N, BATCH = 64, 16


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def dependent_sets(seed: int = 0) -> tuple[dict, dict, torch.Tensor]:
    """Two sets of float64 features of the same inputs (so related), and the inputs."""
    x = torch.randn(N, 6, generator=gen(seed), dtype=torch.float64)
    wa = [torch.randn(6, d, generator=gen(seed + 10 + i), dtype=torch.float64) for i, d in enumerate((5, 4))]
    wb = [torch.randn(6, d, generator=gen(seed + 20 + i), dtype=torch.float64) for i, d in enumerate((3, 7, 2))]
    fa = {"a0": x @ wa[0], "a1": torch.tanh(x @ wa[1])}
    fb = {"b0": x @ wb[0], "b1": torch.relu(x @ wb[1]), "b2": (x @ wb[2]) ** 2}
    return fa, fb, x


def batches(t: torch.Tensor) -> list[np.ndarray]:
    return [t[i:i + BATCH].numpy() for i in range(0, t.shape[0], BATCH)]


def permuted_batches(t: torch.Tensor, k: int, perms_k: int, seed: int) -> list[np.ndarray]:
    out = []
    for index, b in enumerate(batches(t)):
        p = batch_permutations(perms_k, b.shape[0], seed, index)[k].numpy()
        out.append(b[p])
    return out


# ------------------------------------------------------------------------------ pure helpers
def test_permuted_cross_is_the_permuted_gram_product():
    n = 7
    fa = torch.randn(2, n * n, generator=gen(1), dtype=torch.float64)
    fb = torch.randn(3, n * n, generator=gen(2), dtype=torch.float64)
    f0 = torch.randn(n * n, generator=gen(3), dtype=torch.float64)
    perms = batch_permutations(5, n, 0, 0)
    want = torch.stack([fa @ fb.view(3, n, n)[:, p][:, :, p].reshape(3, -1).T for p in perms])
    torch.testing.assert_close(permuted_cross(fa, fb, perms), want, rtol=0, atol=1e-12)
    torch.testing.assert_close(permuted_cross(fb, fa, perms),  # the gathered side is the other one here
                               torch.stack([fb @ fa.view(2, n, n)[:, p][:, :, p].reshape(2, -1).T for p in perms]),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(permuted_cross(fa, fb, perms, chunk_bytes=1), want, rtol=0, atol=1e-12)
    conf = torch.stack([fb.view(3, n, n)[:, p][:, :, p].reshape(3, -1) @ f0 for p in perms])
    torch.testing.assert_close(permuted_conf(fb, f0, perms), conf, rtol=0, atol=1e-12)


def test_permutations_are_deterministic_and_seeded():
    a = batch_permutations(4, 10, seed=3, index=2)
    assert torch.equal(a, batch_permutations(4, 10, seed=3, index=2))
    assert not torch.equal(a, batch_permutations(4, 10, seed=4, index=2))
    assert not torch.equal(a, batch_permutations(4, 10, seed=3, index=3))
    assert all(sorted(p.tolist()) == list(range(10)) for p in a)


def test_pvalue_convention():
    obs = torch.tensor([[0.5, float("nan")], [0.1, 0.9]], dtype=torch.float64)
    null = torch.tensor([[[0.6, 0.0], [0.2, 0.1]], [[0.5, 0.0], [0.0, 0.1]], [[0.1, 0.0], [0.3, 0.1]]],
                        dtype=torch.float64)
    p = permutation_pvalue(obs, null)
    np.testing.assert_allclose(p.numpy(), [[3 / 4, np.nan], [3 / 4, 1 / 4]])


# ------------------------------------------------------------------------------ the null itself
@pytest.mark.parametrize("unbiased", [True, False])
def test_cka_null_equals_brute_force_reference(unbiased):
    fa, fb, _ = dependent_sets()
    k, seed = 3, 5
    res = grid("cka", fa, fb, batch_size=BATCH, unbiased=unbiased, permutations=k, seed=seed)
    null = res.extras["null"]
    assert null.shape == (k, 2, 3)
    for kk in range(k):
        for i, xa in enumerate(fa.values()):
            for j, yb in enumerate(fb.values()):
                want = ref.streaming_cka(batches(xa), permuted_batches(yb, kk, k, seed), unbiased=unbiased)
                assert abs(null[kk, i, j] - want) <= 1e-9
    np.testing.assert_allclose(res.pvalue, permutation_pvalue(torch.from_numpy(res.matrix),
                                                              torch.from_numpy(null)).numpy())
    assert res.settings["permutations"] == k and res.settings["seed"] == seed


def test_rbf_null_equals_brute_force_reference():
    fa, fb, _ = dependent_sets(1)
    res = grid("cka", fa, fb, batch_size=BATCH, kernel="rbf", permutations=2, seed=1)
    for kk in range(2):
        want = ref.streaming_cka(batches(fa["a1"]), permuted_batches(fb["b2"], kk, 2, 1), kernel="rbf",
                                 unbiased=True)
        assert abs(res.extras["null"][kk, 1, 2] - want) <= 1e-9


def test_dcka_null_equals_brute_force_reference():
    fa, fb, x = dependent_sets(2)
    k, seed = 2, 7
    res = grid("dcka", fa, fb, z=x, batch_size=BATCH, permutations=k, seed=seed)
    zs = batches(x)
    for kk in range(k):
        for i, xa in enumerate(fa.values()):
            for j, yb in enumerate(fb.values()):
                # B's samples (and only B's) are permuted: the confounder stays with A's order
                want = ref.dcka_batches(batches(xa), permuted_batches(yb, kk, k, seed), zs)
                assert abs(res.extras["null"][kk, i, j] - want) <= 1e-9
    with pytest.raises(ValueError, match="remove_negative_eig"):
        grid("dcka", fa, fb, z=x, batch_size=BATCH, permutations=2, remove_negative_eig=True)


def test_no_permutations_leaves_the_result_unchanged():
    fa, fb, x = dependent_sets()
    for metric, kw in (("cka", {}), ("dcka", {"z": x})):
        plain = grid(metric, fa, fb, batch_size=BATCH, **kw)
        zero = grid(metric, fa, fb, batch_size=BATCH, permutations=0, seed=3, **kw)
        with_null = grid(metric, fa, fb, batch_size=BATCH, permutations=4, **kw)
        for other in (zero, with_null):
            assert np.array_equal(plain.matrix, other.matrix) and np.array_equal(plain.stderr, other.stderr)
        assert zero.settings == plain.settings and set(zero.extras) == set(plain.extras)
        assert plain.pvalue is None and with_null.pvalue.shape == plain.matrix.shape


def test_dependent_data_gives_the_smallest_pvalue():
    fa, fb, x = dependent_sets(3)
    k = 19
    # dCKA with a confounder that explains little of the shared signal (an unrelated one)
    for metric, kw in (("cka", {}), ("dcka", {"z": torch.randn(N, 6, generator=gen(9), dtype=torch.float64)})):
        res = grid(metric, fa, fb, batch_size=BATCH, permutations=k, **kw)
        # a model's representation against a function of the same inputs: far above every shuffle
        assert res.pvalue[0, 0] == pytest.approx(1 / (k + 1)), metric
    same = grid("cka", fa, batch_size=BATCH, permutations=k)
    np.testing.assert_allclose(np.diag(same.pvalue), 1 / (k + 1))


def test_independent_data_gives_uniform_pvalues():
    """A sees x, B an independent y: the p-values of many cells and seeds are uniform on
    the grid {1/(K+1), …, 1} (a KS test at a loose level, after breaking ties uniformly)."""
    k, pvals = 49, []
    rng = np.random.default_rng(0)
    for rep in range(12):
        x = torch.randn(N, 5, generator=gen(100 + rep), dtype=torch.float64)
        y = torch.randn(N, 5, generator=gen(200 + rep), dtype=torch.float64)
        fa = [x, torch.tanh(x @ torch.randn(5, 4, generator=gen(300 + rep), dtype=torch.float64))]
        fb = [y, y ** 2, torch.relu(y @ torch.randn(5, 3, generator=gen(400 + rep), dtype=torch.float64))]
        res = grid("cka", fa, fb, batch_size=BATCH, permutations=k, seed=rep)
        # one cell per pair of independent representations: cells of one grid share samples
        pvals.append(res.pvalue.ravel()[rep % res.pvalue.size])
    p = np.asarray(pvals)
    assert ((p > 0) & (p <= 1)).all()
    # a discrete p on {m/(K+1)}: jitter within its bin gives a continuous uniform under H0
    u = p - rng.uniform(0, 1 / (k + 1), size=p.shape)
    assert stats.kstest(u, "uniform").pvalue > 0.001


def test_independent_data_many_cells_uniform():
    """More power for the uniformity check, cheaply: many seeds of one small grid."""
    k, pvals = 39, []
    rng = np.random.default_rng(1)
    for rep in range(40):
        x = torch.randn(32, 3, generator=gen(1000 + rep), dtype=torch.float64)
        y = torch.randn(32, 3, generator=gen(2000 + rep), dtype=torch.float64)
        res = grid("cka", [x], [y], batch_size=8, permutations=k, seed=rep, unbiased=False)
        pvals.append(float(res.pvalue[0, 0]))
    u = np.asarray(pvals) - rng.uniform(0, 1 / (k + 1), size=len(pvals))
    assert stats.kstest(u, "uniform").pvalue > 0.001


# ------------------------------------------------------------------------------ API surface
def net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(fc1=nn.Linear(10, 8), relu=nn.ReLU(), fc2=nn.Linear(8, 6))).eval()


def test_classes_compare_and_save_load(tmp_path):
    x = torch.randn(N, 10, generator=gen(5))
    loader = DataLoader(TensorDataset(x), batch_size=BATCH)
    sa = SimilarityModel(net(0), layers_to_include=["fc1", "fc2"])
    sb = SimilarityModel(net(1), layers_to_include=["fc1", "relu", "fc2"])
    sim = simtorch.CKA(sa, sb, permutations=9, seed=1)
    sim.compute(loader)
    res = sim.result
    assert res.pvalue.shape == (2, 3) and res.settings["permutations"] == 9
    res.save(tmp_path / "r.npz")
    back = SimilarityResult.load(tmp_path / "r.npz")
    np.testing.assert_array_equal(back.pvalue, res.pvalue)
    np.testing.assert_array_equal(back.extras["null"], res.extras["null"])
    out = simtorch.compare(sa, sb, loader, metrics=("cka", "dcka"), cka_kwargs={"permutations": 9, "seed": 1},
                           dcka_kwargs={"permutations": 4})
    np.testing.assert_array_equal(out["cka"].pvalue, res.pvalue)  # the same draws in a shared pass
    assert out["dcka"].pvalue.shape == (2, 3)
    dsim = simtorch.DeltaCKA(sa, sb, permutations=4)
    dsim.compute(loader)
    dres = dsim.result
    np.testing.assert_array_equal(dres.pvalue, out["dcka"].pvalue)
    with pytest.raises(ValueError, match="permutations"):
        simtorch.CKA(sa, sb, permutations=-1)


def test_plot_greys_out_non_significant_cells(tmp_path):
    pytest.importorskip("matplotlib")
    fa, fb, _ = dependent_sets()
    res = grid("cka", fa, fb, batch_size=BATCH, permutations=9)
    ax = res.plot(significance=0.05, save_path=tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0
    assert "p > 0.05" in ax.get_xlabel()
    with pytest.raises(ValueError, match="permutation"):
        grid("cka", fa, fb, batch_size=BATCH).plot(significance=0.05)


def test_cli_permutations_flag():
    from simtorch.cli.options import metric_options
    from simtorch.cli.parser import build_parser

    args = build_parser().parse_args(["compare", "resnet18", "resnet18", "--permutations", "20", "--seed", "3"])
    assert metric_options("cka", args) == {"permutations": 20, "seed": 3}
    assert metric_options("dcka", args) == {"permutations": 20, "seed": 3}
    args = build_parser().parse_args(["compare", "resnet18", "resnet18", "--permutations", "5",
                                      "--permutation-seed", "8"])
    assert metric_options("cka", args) == {"permutations": 5, "seed": 8}
    assert metric_options("cka", build_parser().parse_args(["compare", "resnet18", "resnet18"])) == {}
