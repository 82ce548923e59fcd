"""Deconfounded CKA (Cui et al., NeurIPS 2022) against independent float64 numpy formulas.

The references (tests/reference.py) are written from the paper's recipe (explicit least
squares of vec(K) on [1, vec(K⁰)], explicit centring matrix, numpy eigh for the PSD
projection) and never call simtorch's helpers.
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
from reference import cka as ref_cka  # noqa: E402
from reference import dcka_batches as ref_dcka_batches  # noqa: E402
from reference import dcka_residual as residual  # noqa: E402
from reference import hsic0  # noqa: E402
from reference import linear_kernel as gram  # noqa: E402

import simtorch.functional as F  # noqa: E402
from simtorch import CKA, DeltaCKA, SimilarityModel  # noqa: E402

ESTIMATORS = [False, True]  # unbiased
VARIANTS = [False, True]  # remove_negative_eig


# ---------------------------------------------------------------- data and models


def confounded(n: int, seed: int = 0):
    """Low-rank inputs Z and two representations that both depend on Z and share a
    component of their own, so CKA and dCKA differ clearly."""
    g = np.random.default_rng(seed)
    z = g.standard_normal((n, 3)) @ g.standard_normal((3, 10)) + 0.3 * g.standard_normal((n, 10))
    shared = g.standard_normal((n, 4))
    x = (np.tanh(0.5 * z @ g.standard_normal((10, 8))) + 0.5 * shared @ g.standard_normal((4, 8))
         + 0.3 * g.standard_normal((n, 8)))
    y = z @ g.standard_normal((10, 6)) + shared @ g.standard_normal((4, 6)) + 0.5 * g.standard_normal((n, 6))
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    return t(x), t(y), t(z)


def random_orthogonal(d: int, seed: int) -> torch.Tensor:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return torch.tensor(q)


def net_a(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(
        flat=nn.Flatten(), fc1=nn.Linear(48, 24), relu1=nn.ReLU(), fc2=nn.Linear(24, 12), tanh=nn.Tanh(),
        fc3=nn.Linear(12, 6),
    ))


def net_b(seed: int = 1) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(3, 4, 3, padding=1), relu=nn.ReLU(), flat=nn.Flatten(), fc=nn.Linear(64, 10),
    ))


LAYERS_A = ["fc1", "relu1", "fc2", "fc3"]
LAYERS_B = ["conv", "relu", "fc"]


def structured_inputs(n: int, seed: int = 0) -> torch.Tensor:
    """Inputs with a low-rank structure, so the input Gram explains part of every layer."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 3, generator=g) @ torch.randn(3, 48, generator=g)
    return (base + 0.5 * torch.randn(n, 48, generator=g)).reshape(n, 3, 4, 4)


def acts(model: nn.Module, x: torch.Tensor, names) -> dict[str, np.ndarray]:
    """float64 activations of named children, by running a float64 copy child by child."""
    m = copy.deepcopy(model).double().eval()
    h, out = x.double(), {}
    with torch.no_grad():
        for name, mod in m.named_children():
            h = mod(h)
            if name in names:
                out[name] = h.reshape(len(h), -1).numpy().copy()
    return out


def loader(x: torch.Tensor, bs: int) -> DataLoader:
    return DataLoader(TensorDataset(x, torch.zeros(len(x))), batch_size=bs, shuffle=False)


def ref_grid(model_a, names_a, model_b, names_b, x, bs, unbiased, rne) -> np.ndarray:
    batches = list(x.split(bs))
    aa = [acts(model_a, b, names_a) for b in batches]
    bb = [acts(model_b, b, names_b) for b in batches]
    zs = [b.reshape(len(b), -1).double().numpy() for b in batches]
    return np.array([
        [ref_dcka_batches([a[i] for a in aa], [b[j] for b in bb], zs, unbiased, rne) for j in names_b]
        for i in names_a
    ])


def run(model_a, names_a, model_b, names_b, data, **kw):
    a = SimilarityModel(model_a, "A", names_a, device="cpu")
    b = a if model_b is None else SimilarityModel(model_b, "B", names_b, device="cpu")
    sim = DeltaCKA(a, b, device="cpu", progress=False, **kw)
    return sim, sim.compute(data)


# ---------------------------------------------------------------- functional


def test_reference_closed_form_identity():
    """The reference itself: with HSIC₀ the least-squares residual's CKA equals the partial
    correlation formula of the issue."""
    x, y, z = (t.numpy() for t in confounded(30, seed=5))
    k, l, k0 = gram(x), gram(y), gram(z)
    s = lambda a, b: hsic0(a, b)  # noqa: E731
    closed = (s(k, l) - s(k, k0) * s(l, k0) / s(k0, k0)) / np.sqrt(
        (s(k, k) - s(k, k0) ** 2 / s(k0, k0)) * (s(l, l) - s(l, k0) ** 2 / s(k0, k0)))
    assert ref_dcka_batches([x], [y], [z]) == pytest.approx(closed, rel=1e-10)


@pytest.mark.parametrize("unbiased", ESTIMATORS)
@pytest.mark.parametrize("rne", VARIANTS)
def test_functional_dcka_matches_reference(unbiased, rne):
    x, y, z = confounded(40, seed=1)
    got = float(F.dcka(x, y, z, unbiased=unbiased, remove_negative_eig=rne))
    want = ref_dcka_batches([x.numpy()], [y.numpy()], [z.numpy()], unbiased, rne)
    assert got == pytest.approx(want, abs=1e-10)
    # deconfounding changes the value: this test could not pass by returning CKA
    assert abs(want - ref_cka(x.numpy(), y.numpy())) > 0.05


@pytest.mark.parametrize("rne", VARIANTS)
def test_invariant_to_orthogonal_maps_and_isotropic_scaling(rne):
    x, y, z = confounded(36, seed=2)
    base = float(F.dcka(x, y, z, remove_negative_eig=rne))
    qx, qy, qz = random_orthogonal(8, 1), random_orthogonal(6, 2), random_orthogonal(10, 3)
    for xx, yy, zz in [
        (x @ qx * 3.0, y, z),
        (x, y @ qy * 0.01, z),
        (x, y, z @ qz * 25.0),
        (x @ qx * 0.5, y @ qy * 7.0, z @ qz * 0.2),
        (x + 4.0, y - 2.0, z + 1.0),  # translations: the Grams are of centred features
    ]:
        assert float(F.dcka(xx, yy, zz, remove_negative_eig=rne)) == pytest.approx(base, abs=1e-9)


@pytest.mark.parametrize("unbiased", ESTIMATORS)
@pytest.mark.parametrize("rne", VARIANTS)
def test_dcka_of_a_representation_with_itself_is_one(unbiased, rne):
    x, _, z = confounded(30, seed=3)
    assert float(F.dcka(x, x, z, unbiased=unbiased, remove_negative_eig=rne)) == pytest.approx(1.0, abs=1e-12)


def test_functional_input_as_layer_is_nan_with_warning():
    x, y, z = confounded(30, seed=4)
    with pytest.warns(UserWarning, match="explained by the confounder"):
        v = F.dcka(z @ random_orthogonal(10, 0) * 2.0, y, z)
    assert np.isnan(float(v))


# ---------------------------------------------------------------- streaming


@pytest.mark.parametrize("unbiased", ESTIMATORS)
@pytest.mark.parametrize("rne", VARIANTS)
@pytest.mark.parametrize("bs", [60, 16])  # one batch; several with a last batch of 12
def test_streaming_grid_matches_reference(unbiased, rne, bs):
    N = 60
    x = structured_inputs(N, seed=1)
    A, B = net_a(0), net_b(1)
    sim, m = run(A, LAYERS_A, B, LAYERS_B, loader(x, bs), unbiased=unbiased, remove_negative_eig=rne)
    want = ref_grid(A, LAYERS_A, B, LAYERS_B, x, bs, unbiased, rne)
    assert m.shape == (4, 3)
    np.testing.assert_allclose(m, want, atol=2e-5, rtol=0)
    res = sim.result
    assert res.metric == "dCKA" and res.n_samples == N and res.n_batches == -(-N // bs)
    assert res.settings["unbiased"] == unbiased and res.settings["remove_negative_eig"] == rne
    if bs < N:
        assert np.all(np.isfinite(res.stderr)) and np.all(res.stderr > 0)


def test_several_batches_differ_from_mean_of_batches_and_from_cka():
    """Pooled β (sum-then-ratio) is not the mean of per-batch dCKA (simtorch 0.2.1's
    averaging), and dCKA is not CKA: the test can tell them apart."""
    N, bs = 60, 20
    x = structured_inputs(N, seed=2)
    A, B = net_a(3), net_b(4)
    _, m = run(A, ["fc2"], B, ["fc"], loader(x, bs))
    want = ref_grid(A, ["fc2"], B, ["fc"], x, bs, False, False)[0, 0]
    per_batch = [ref_grid(A, ["fc2"], B, ["fc"], xb, bs, False, False)[0, 0] for xb in x.split(bs)]
    assert m[0, 0] == pytest.approx(want, abs=2e-5)
    assert abs(np.mean(per_batch) - want) > 1e-3
    a_act, b_act = acts(A, x, ["fc2"])["fc2"], acts(B, x, ["fc"])["fc"]
    assert abs(ref_cka(a_act, b_act) - want) > 0.05


def test_grid_equals_per_pair_functional_values():
    N = 50
    x = structured_inputs(N, seed=3)
    A, B = net_a(5), net_b(6)
    _, m = run(A, LAYERS_A, B, LAYERS_B, loader(x, N))
    aa, bb = acts(A, x, LAYERS_A), acts(B, x, LAYERS_B)
    z = x.reshape(N, -1).double()
    for i, la in enumerate(LAYERS_A):
        for j, lb in enumerate(LAYERS_B):
            v = float(F.dcka(torch.tensor(aa[la]), torch.tensor(bb[lb]), z))
            assert m[i, j] == pytest.approx(v, abs=2e-5), (la, lb)


@pytest.mark.parametrize("unbiased", ESTIMATORS)
def test_self_grid_has_unit_diagonal(unbiased):
    x = structured_inputs(48, seed=4)
    A = net_a(7)
    _, m = run(A, LAYERS_A, None, None, loader(x, 16), unbiased=unbiased)
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-9)
    np.testing.assert_allclose(m, m.T, atol=1e-9)
    assert np.abs(m - 1).max() > 1e-2


def test_layer_equal_to_input_is_nan_with_warning_naming_it():
    x = structured_inputs(40, seed=5)
    A, B = net_a(8), net_b(9)
    with pytest.warns(UserWarning, match=r"A layers \['flat'\].*explained by the confounder"):
        sim, m = run(A, ["flat", "fc1"], B, ["fc"], loader(x, 20))
    assert np.all(np.isnan(m[0])) and np.all(np.isfinite(m[1]))
    assert sim.result.extras["pve_a"][0] == pytest.approx(1.0, abs=1e-6)


def test_linear_function_of_input_has_dcka_far_below_cka():
    """Two different random linear maps of the same inputs: their CKA is substantial only
    because both are the input seen through a linear map; with the input's similarity
    structure removed almost nothing is left (two independent random maps)."""
    torch.manual_seed(0)
    A = nn.Sequential(OrderedDict(flat=nn.Flatten(), lin=nn.Linear(48, 20)))
    B = nn.Sequential(OrderedDict(flat=nn.Flatten(), lin=nn.Linear(48, 30)))
    x = torch.randn(120, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    a = SimilarityModel(A, "A", ["lin"], device="cpu")
    b = SimilarityModel(B, "B", ["lin"], device="cpu")
    c = float(CKA(a, b, device="cpu", unbiased=False, progress=False).compute(loader(x, 60))[0, 0])
    sim = DeltaCKA(a, b, device="cpu", progress=False)
    d = float(sim.compute(loader(x, 60))[0, 0])
    assert c > 0.35
    assert abs(d) < 0.15
    assert d < c - 0.3
    assert sim.result.extras["pve_a"][0] > 0.3


def test_pve_matches_least_squares_r2():
    N = 40
    x = structured_inputs(N, seed=7)
    A, B = net_a(10), net_b(11)
    sim, _ = run(A, LAYERS_A, B, LAYERS_B, loader(x, N))
    aa = acts(A, x, LAYERS_A)
    k0 = gram(x.reshape(N, -1).double().numpy())
    for i, name in enumerate(LAYERS_A):
        k = gram(aa[name])
        r = residual(k, k0, False)
        r2 = 1 - np.sum(r ** 2) / np.sum((k - k.mean()) ** 2)
        assert sim.result.extras["pve_a"][i] == pytest.approx(r2, abs=1e-5)
    assert sim.result.extras["pve_b"].shape == (3,)


def test_confounder_fn_and_dict_inputs():
    N = 32
    x = structured_inputs(N, seed=8)
    A, B = net_a(12), net_b(13)
    a = SimilarityModel(A, "A", ["fc2"], device="cpu")
    b = SimilarityModel(B, "B", ["fc"], device="cpu")

    class DictSet(torch.utils.data.Dataset):
        def __len__(self):
            return N

        def __getitem__(self, i):
            return {"input": x[i]}

    dl = DataLoader(DictSet(), batch_size=16)  # the dict is passed whole: model(input=...)
    with pytest.raises(TypeError, match="confounder_fn"):
        DeltaCKA(a, b, device="cpu", progress=False).compute(dl)
    # an explicit confounder: a fixed random projection of the input
    proj = torch.randn(48, 5, generator=torch.Generator().manual_seed(0))
    fn = lambda inp: inp["input"].reshape(len(inp["input"]), -1) @ proj  # noqa: E731
    got = DeltaCKA(a, b, device="cpu", progress=False, confounder_fn=fn).compute(dl)
    aa, bb = acts(A, x, ["fc2"])["fc2"], acts(B, x, ["fc"])["fc"]
    zs = [(xb.reshape(len(xb), -1) @ proj).double().numpy() for xb in x.split(16)]
    want = ref_dcka_batches([aa[:16], aa[16:]], [bb[:16], bb[16:]], zs)
    assert got[0, 0] == pytest.approx(want, abs=2e-5)
    with pytest.raises(ValueError, match="one row per sample"):
        DeltaCKA(a, b, device="cpu", progress=False,
                 confounder_fn=lambda inp: inp["input"][:3]).compute(dl)


def test_constant_confounder_falls_back_to_cka_with_warning():
    N = 30
    x = structured_inputs(N, seed=9)
    A, B = net_a(14), net_b(15)
    a = SimilarityModel(A, "A", ["fc2"], device="cpu")
    b = SimilarityModel(B, "B", ["fc"], device="cpu")
    with pytest.warns(UserWarning, match="confounder has no variance"):
        d = DeltaCKA(a, b, device="cpu", progress=False,
                     confounder_fn=lambda inp: torch.ones(len(inp), 3)).compute(loader(x, N))
    c = CKA(a, b, device="cpu", unbiased=False, progress=False).compute(loader(x, N))
    assert d[0, 0] == pytest.approx(c[0, 0], abs=1e-9)


def test_simtorch_021_constructor_and_import_path():
    from simtorch.similarity import DeltaCKA as D1
    from simtorch.similarity.delta_cka import DeltaCKA as D2

    assert D1 is D2 is DeltaCKA
    A, B = net_a(0), net_b(1)
    a = SimilarityModel(A, "A", ["fc2"], device="cpu")
    b = SimilarityModel(B, "B", ["fc"], device="cpu")
    sim = D2(a, b, "cpu", True, progress=False)  # positional (sim_model1, sim_model2, device, remove_negative_eig)
    assert sim.remove_negative_eig is True and sim.unbiased is False
    with pytest.raises(TypeError, match="confounder_fn"):
        DeltaCKA(a, b, confounder_fn="inputs")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = sim.compute(loader(structured_inputs(24, 0), 12))
    assert m.shape == (1, 1) and np.isfinite(m).all()
