"""The streaming CKA estimator through SimilarityModel + CKA, against float64 references.

Reference activations are computed here by running a float64 copy of each model's
children step by step (independent of simtorch's hooks), then fed to tests/reference.py.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import reference as ref
from models import conv_net, image_mlp, loader, pixels
from simtorch import CKA, SimilarityModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: see conftest.py

KERNELS = ["linear", "rbf"]
ESTIMATORS = [False, True]  # unbiased

CONV_LAYERS = ["conv1", "relu1", "conv2", "fc"]
MLP_LAYERS = ["fc1", "fc2", "fc3"]


# ---------------------------------------------------------------- models and references


class Take(nn.Module):
    """Keeps input features [a, b): two models reading disjoint halves of independent
    noise produce independent representations."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x):
        return x[:, self.a : self.b]


def half_net(seed: int, a: int, b: int, h: int = 32) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(take=Take(a, b), fc1=nn.Linear(b - a, h), relu1=nn.ReLU(), fc2=nn.Linear(h, h))
    )


def ref_acts(model: nn.Module, x: torch.Tensor, names) -> dict[str, np.ndarray]:
    """float64 activations of the named children, by running the children one by one."""
    m64 = copy.deepcopy(model).double().eval()
    h = x.double()
    out = {}
    with torch.no_grad():
        for name, mod in m64.named_children():
            h = mod(h)
            if name in names:
                out[name] = h.numpy().reshape(h.shape[0], -1).copy()
    missing = set(names) - set(out)
    assert not missing, missing
    return out


def ref_grid(model_a, names_a, model_b, names_b, x, batch_size, kernel, unbiased, estimator=ref.streaming_cka):
    batches = list(x.split(batch_size))
    acts_a = [ref_acts(model_a, b, names_a) for b in batches]
    acts_b = [ref_acts(model_b, b, names_b) for b in batches]
    grid = np.empty((len(names_a), len(names_b)))
    for i, na in enumerate(names_a):
        for j, nb in enumerate(names_b):
            grid[i, j] = estimator([a[na] for a in acts_a], [b[nb] for b in acts_b], kernel, unbiased)
    return grid


def run_cka(model_a, names_a, model_b, names_b, data, kernel, unbiased, same=False):
    a = SimilarityModel(model_a, model_name="A", layers_to_include=names_a, device="cpu")
    b = a if same else SimilarityModel(model_b, model_name="B", layers_to_include=names_b, device="cpu")
    sim = CKA(a, b, device="cpu", kernel=kernel, unbiased=unbiased, sigma_frac=1.0, progress=False)
    m = sim.compute(data)
    return a, b, sim, m


# ---------------------------------------------------------------- single batch = full data


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("unbiased", ESTIMATORS)
def test_single_batch_equals_full_data_cka(kernel, unbiased):
    N = 60
    x = pixels(N, seed=1)
    A, B = conv_net(0), image_mlp(1)
    _, _, sim, m = run_cka(A, CONV_LAYERS, B, MLP_LAYERS, loader(x, N), kernel, unbiased)
    acts_a = ref_acts(A, x, CONV_LAYERS)
    acts_b = ref_acts(B, x, MLP_LAYERS)
    want = np.array([[ref.cka(acts_a[i], acts_b[j], kernel, unbiased) for j in MLP_LAYERS] for i in CONV_LAYERS])
    assert m.shape == (4, 3)
    np.testing.assert_allclose(m, want, atol=1e-5, rtol=0)
    assert sim.result.n_samples == N
    assert sim.result.n_batches == 1


# ---------------------------------------------------------------- several batches


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("unbiased", ESTIMATORS)
@pytest.mark.parametrize("batch_size", [32, 30])  # last batch 4, last batch 10
def test_several_batches_equal_sum_then_ratio(kernel, unbiased, batch_size):
    N = 100
    x = pixels(N, seed=2)
    A, B = conv_net(0), image_mlp(1)
    _, _, sim, m = run_cka(A, CONV_LAYERS, B, MLP_LAYERS, loader(x, batch_size), kernel, unbiased)
    want = ref_grid(A, CONV_LAYERS, B, MLP_LAYERS, x, batch_size, kernel, unbiased)
    wrong = ref_grid(A, CONV_LAYERS, B, MLP_LAYERS, x, batch_size, kernel, unbiased, ref.mean_of_batch_ckas)
    # the averaged-per-batch estimator is measurably different here, so this test can fail
    assert np.abs(want - wrong).max() > 1e-3
    np.testing.assert_allclose(m, want, atol=1e-5, rtol=0)
    assert sim.result.n_batches == math.ceil(N / batch_size)
    assert sim.result.n_samples == N
    assert sim.result.n_skipped == 0


@pytest.mark.parametrize("unbiased", ESTIMATORS)
def test_plain_tensor_batches(unbiased):
    """Loader batches that are bare tensors (not tuples)."""
    N, bs = 50, 20
    x = pixels(N, seed=3)
    A, B = conv_net(4), image_mlp(5)
    batches = list(x.split(bs))
    _, _, _, m = run_cka(A, CONV_LAYERS, B, MLP_LAYERS, batches, "linear", unbiased)
    want = ref_grid(A, CONV_LAYERS, B, MLP_LAYERS, x, bs, "linear", unbiased)
    np.testing.assert_allclose(m, want, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- batch-size (in)dependence


@pytest.mark.parametrize("kernel", KERNELS)
def test_unbiased_stable_biased_drifts_on_independent_data(kernel):
    N, d = 512, 16
    x = torch.randn(N, 2 * d, generator=torch.Generator().manual_seed(0))
    A = half_net(101, 0, d)  # reads features [0, d)
    B = half_net(202, d, 2 * d)  # reads features [d, 2d): independent of A's input
    vals = {}
    for bs in (16, 256):
        for unbiased in ESTIMATORS:
            _, _, _, m = run_cka(A, ["fc2"], B, ["fc2"], loader(x, bs), kernel, unbiased)
            assert m.shape == (1, 1)
            vals[(bs, unbiased)] = float(m[0, 0])
            want = ref_grid(A, ["fc2"], B, ["fc2"], x, bs, kernel, unbiased)[0, 0]
            assert vals[(bs, unbiased)] == pytest.approx(want, abs=1e-5)
    # biased: large at batch 16, much smaller at batch 256
    assert vals[(16, False)] > 0.25
    assert vals[(16, False)] > vals[(256, False)] + 0.2
    assert vals[(16, False)] > 3 * vals[(256, False)]
    # unbiased: near 0 at both batch sizes
    assert abs(vals[(16, True)]) < 0.08
    assert abs(vals[(256, True)]) < 0.08


# ---------------------------------------------------------------- small batches


@pytest.mark.parametrize("kernel", KERNELS)
def test_unbiased_skips_batches_below_4_with_warning(kernel):
    N, bs = 34, 8  # last batch has 2 samples
    x = pixels(N, seed=6)
    A, B = conv_net(0), image_mlp(1)
    with pytest.warns(UserWarning):
        _, _, sim, m = run_cka(A, CONV_LAYERS, B, MLP_LAYERS, loader(x, bs), kernel, True)
    assert sim.result.n_skipped == 1
    want = ref_grid(A, CONV_LAYERS, B, MLP_LAYERS, x, bs, kernel, True)  # skips n < 4
    np.testing.assert_allclose(m, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kernel", KERNELS)
def test_biased_keeps_batches_of_2(kernel):
    N, bs = 34, 8  # last batch has 2 samples: kept by the biased estimator
    x = pixels(N, seed=6)
    A, B = conv_net(0), image_mlp(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing is skipped: no skip warning
        _, _, sim, m = run_cka(A, CONV_LAYERS, B, MLP_LAYERS, loader(x, bs), kernel, False)
    assert sim.result.n_skipped == 0
    want = ref_grid(A, CONV_LAYERS, B, MLP_LAYERS, x, bs, kernel, False)
    without_last = ref_grid(A, CONV_LAYERS, B, MLP_LAYERS, x[:32], bs, kernel, False)
    assert np.abs(want - without_last).max() > 1e-4  # keeping the batch matters
    np.testing.assert_allclose(m, want, atol=1e-5, rtol=0)


def test_biased_ignores_single_sample_batch():
    N, bs = 33, 8  # last batch has 1 sample: HSIC is undefined there
    x = pixels(N, seed=7)
    A, B = conv_net(0), image_mlp(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, _, _, m = run_cka(A, CONV_LAYERS, B, MLP_LAYERS, loader(x, bs), "linear", False)
    want = ref_grid(A, CONV_LAYERS, B, MLP_LAYERS, x, bs, "linear", False)
    assert np.all(np.isfinite(m))
    np.testing.assert_allclose(m, want, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- grids


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("unbiased", ESTIMATORS)
def test_self_grid_unit_diagonal_and_symmetric(kernel, unbiased):
    N, bs = 64, 16
    x = pixels(N, seed=8)
    A = conv_net(3)
    a, b, sim, m = run_cka(A, CONV_LAYERS, None, None, loader(x, bs), kernel, unbiased, same=True)
    assert b is a
    assert m.shape == (4, 4)
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-6)
    np.testing.assert_allclose(m, m.T, atol=1e-8)
    want = ref_grid(A, CONV_LAYERS, A, CONV_LAYERS, x, bs, kernel, unbiased)
    assert np.abs(want - 1.0).max() > 1e-2  # off-diagonals are not trivially 1
    np.testing.assert_allclose(m, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kernel", KERNELS)
def test_two_models_every_cell_matches_reference(kernel):
    """Catches a library that compares model A with itself, or transposes/misindexes the grid."""
    N, bs = 48, 16
    x = pixels(N, seed=9)
    A, B = conv_net(10), image_mlp(11)
    a, b, sim, m = run_cka(A, CONV_LAYERS, B, MLP_LAYERS, loader(x, bs), kernel, True)
    want = ref_grid(A, CONV_LAYERS, B, MLP_LAYERS, x, bs, kernel, True)
    self_a = ref_grid(A, CONV_LAYERS, A, CONV_LAYERS, x, bs, kernel, True)
    assert np.abs(want[:, :3] - self_a[:, :3]).max() > 1e-2  # A-vs-A would be detected
    np.testing.assert_allclose(m, want, atol=1e-5, rtol=0)
    # and with the sides swapped the grid is the transpose
    _, _, _, m2 = run_cka(B, MLP_LAYERS, A, CONV_LAYERS, loader(x, bs), kernel, True)
    np.testing.assert_allclose(m2, want.T, atol=1e-5, rtol=0)


def test_result_fields_and_layer_order():
    N, bs = 40, 20
    x = pixels(N, seed=12)
    A, B = conv_net(0), image_mlp(1)
    # requested out of model order: rows/columns follow the model's order
    a, b, sim, m = run_cka(A, ["fc", "conv1", "conv2"], B, ["fc3", "fc1"], loader(x, bs), "linear", True)
    assert a.layer_names == ["conv1", "conv2", "fc"]
    assert b.layer_names == ["fc1", "fc3"]
    assert isinstance(m, np.ndarray)
    assert m.shape == (3, 2)
    assert np.issubdtype(m.dtype, np.floating)
    np.testing.assert_array_equal(m, sim.sim_matrix)
    res = sim.result
    np.testing.assert_array_equal(np.asarray(res.matrix), m)
    assert list(res.layers_a) == a.layer_names
    assert list(res.layers_b) == b.layer_names
    assert res.n_samples == N and res.n_batches == 2 and res.n_skipped == 0
    want = ref_grid(A, a.layer_names, B, b.layer_names, x, bs, "linear", True)
    np.testing.assert_allclose(m, want, atol=1e-5, rtol=0)
