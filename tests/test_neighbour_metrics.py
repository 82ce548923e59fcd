"""Mutual k-NN, CKNNA and RSA on the streaming engine (simtorch/metrics/neighbours.py, rsa.py)
against the pure functions of simtorch.functional (themselves checked against the numpy
references in tests/reference.py by tests/test_neighbours.py): one batch, several batches,
exact=True, one pass with CKA, declared invariances, refusals and warnings."""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import reference as ref
from models import CountForward
import simtorch
import simtorch.functional as F
from simtorch import CKA, CKNNA, RSA, MutualKNN, SimilarityModel, compare
from simtorch.metrics import CKNNAMetric, MutualKNNMetric, RSAMetric, metric_class

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYERS_A = ["fc1", "relu", "fc2"]
LAYERS_B = ["fc1", "tanh", "fc2"]


def net_a(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(fc1=nn.Linear(6, 16), relu=nn.ReLU(), fc2=nn.Linear(16, 8))).double()


def net_b(seed: int = 1) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(fc1=nn.Linear(6, 12), tanh=nn.Tanh(), fc2=nn.Linear(12, 5))).double()


def data(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    x[:, :2] += 1.5 * torch.randn(n, 1, generator=g, dtype=torch.float64)  # some shared structure
    return x


def loader(x: torch.Tensor, bs: int) -> DataLoader:
    return DataLoader(TensorDataset(x, torch.zeros(len(x))), batch_size=bs, shuffle=False)


def acts(model: nn.Module, x: torch.Tensor, names) -> list[torch.Tensor]:
    out, handles = {}, []
    mods = dict(model.named_modules())
    for name in names:
        handles.append(mods[name].register_forward_hook(lambda m, i, o, name=name: out.__setitem__(name, o.detach())))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return [out[n] for n in names]


def functional_grid(fn, A, B, x, **kw) -> np.ndarray:
    xa, xb = acts(A, x, LAYERS_A), acts(B, x, LAYERS_B)
    return np.array([[float(fn(a, b, **kw)) for b in xb] for a in xa])


def wrap(A, B):
    return SimilarityModel(A, "A", LAYERS_A, device="cpu"), SimilarityModel(B, "B", LAYERS_B, device="cpu")


def run(cls, A, B, dl, **kw):
    sim = cls(*wrap(A, B), device="cpu", progress=False, **kw)
    sim.compute(dl)
    return sim.result


# (class, functional, options): the defaults and each option that changes the math
CASES = [
    (MutualKNN, F.mutual_knn, {}),
    (MutualKNN, F.mutual_knn, {"k": 5, "neighbours": "linear"}),
    (MutualKNN, F.mutual_knn, {"k": 7, "neighbours": "euclidean"}),
    (CKNNA, F.cknna, {}),
    (CKNNA, F.cknna, {"k": 6, "unbiased": False}),
    (CKNNA, F.cknna, {"kernel": "linear"}),
    (RSA, F.rsa, {}),
    (RSA, F.rsa, {"rdm": "correlation"}),
    (RSA, F.rsa, {"compare": "pearson"}),
    (RSA, F.rsa, {"rdm": "correlation", "compare": "cosine"}),
]
IDS = [f"{c.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for c, _, kw in CASES]


# ---------------------------------------------------------------- values


@pytest.mark.parametrize("cls,fn,kw", CASES, ids=IDS)
def test_one_batch_of_all_n_equals_functional(cls, fn, kw):
    x = data(47)  # not a multiple of k
    A, B = net_a(), net_b()
    res = run(cls, A, B, loader(x, 47), **kw)
    want = functional_grid(fn, A, B, x, **kw)
    assert np.ptp(want) > 0.05  # the grid is not trivially constant
    np.testing.assert_allclose(res.matrix, want, atol=1e-12, rtol=0)
    assert res.n_batches == 1 and res.n_samples == 47 and np.isnan(res.stderr).all()
    assert res.metric == cls.metric_class.name
    for key, value in kw.items():
        assert res.settings[key] == value


@pytest.mark.parametrize("cls,fn,kw", CASES, ids=IDS)
def test_exact_over_several_batches_equals_functional_on_all_n(cls, fn, kw):
    x = data(70, 1)
    A, B = net_a(2), net_b(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one set: no batch-size warning, nothing skipped
        res = run(cls, A, B, loader(x, 16), exact=True, **kw)  # batches 16, 16, 16, 16, 6
    want = functional_grid(fn, A, B, x, **kw)
    np.testing.assert_allclose(res.matrix, want, atol=1e-12, rtol=0)
    assert res.n_batches == 1 and res.n_samples == 70 and res.settings["exact"] is True
    assert res.settings["buffer_bytes_per_sample"] == 8 * (16 + 16 + 8 + 12 + 12 + 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the last batch of 6 is too small for k = 10
        per_batch = run(cls, A, B, loader(x, 16), **kw).matrix
    assert np.abs(per_batch - want).max() > 1e-3  # the per-batch estimate is another number


@pytest.mark.parametrize("cls,fn,kw", [CASES[0], CASES[3], CASES[6]], ids=[IDS[0], IDS[3], IDS[6]])
def test_batches_are_averaged_by_size_with_standard_error(cls, fn, kw):
    x = data(52, 4)
    A, B = net_a(5), net_b(6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only the last batch differs: no warning
        res = run(cls, A, B, loader(x, 20), **kw)  # 20, 20, 12
    parts = [functional_grid(fn, A, B, x[s : s + 20], **kw) for s in (0, 20, 40)]
    w = np.array([20.0, 20.0, 12.0])
    mean = np.tensordot(w, np.stack(parts), 1) / w.sum()
    ss = np.tensordot(w**2, (np.stack(parts) - mean) ** 2, 1)
    se = np.sqrt(ss * 3 / 2) / w.sum()
    np.testing.assert_allclose(res.matrix, mean, atol=1e-12, rtol=0)
    np.testing.assert_allclose(res.stderr, se, atol=1e-12, rtol=0)
    assert res.n_batches == 3 and res.settings["subset_sizes"] == [12, 20] and (res.stderr > 0).all()


def test_float32_models_rank_float32_grams_close_to_float64():
    x = data(60, 7)
    A, B = net_a(8), net_b(9)
    for cls, fn, kw in (CASES[0], CASES[3], CASES[6], CASES[7]):
        got = run(cls, A.float(), B.float(), loader(x.float(), 60), **kw).matrix
        want = functional_grid(fn, A.double(), B.double(), x.float().double(), **kw)
        # near-ties may reorder at float32 resolution; everything else is the same number
        np.testing.assert_allclose(got, want, atol=2e-3, rtol=0, err_msg=cls.__name__)


def test_one_pass_with_cka_equals_each_measure_alone():
    x = data(64, 10)
    A, B = net_a(11), net_b(12)
    dl = loader(x, 16)
    calls = {"a": 0, "b": 0}
    ha = A.register_forward_pre_hook(lambda *_: calls.__setitem__("a", calls["a"] + 1))
    hb = B.register_forward_pre_hook(lambda *_: calls.__setitem__("b", calls["b"] + 1))
    try:
        res = compare(*wrap(A, B), dl, metrics=("cka", "mknn", "cknna", "rsa"), device="cpu", progress=False)
    finally:
        ha.remove()
        hb.remove()
    assert list(res) == ["cka", "mknn", "cknna", "rsa"] and calls == {"a": 4, "b": 4}
    for key, cls in (("cka", CKA), ("mknn", MutualKNN), ("cknna", CKNNA), ("rsa", RSA)):
        alone = run(cls, A, B, dl)
        np.testing.assert_allclose(res[key].matrix, alone.matrix, atol=1e-12, rtol=0, err_msg=key)
        np.testing.assert_allclose(res[key].stderr, alone.stderr, atol=1e-12, rtol=0, err_msg=key)
        assert res[key].n_samples == alone.n_samples == 64 and res[key].settings == alone.settings
    # four different grids: a mix-up of metrics would be caught
    grids = [res[k].matrix for k in res]
    assert min(np.abs(p - q).max() for i, p in enumerate(grids) for q in grids[i + 1 :]) > 0.01


def test_compare_options_and_shared_projection_with_ii():
    x = data(40, 13)
    A, B = net_a(14), net_b(15)
    # exact mknn and exact II with equal projection settings share one set of features
    res = compare(*wrap(A, B), loader(x, 16), metrics=("ii", "mknn"), device="cpu", progress=False,
                  ii_kwargs={"exact": True, "projection_dim": 4}, mknn_kwargs={"exact": True, "projection_dim": 4, "k": 5})
    alone = run(MutualKNN, A, B, loader(x, 16), exact=True, projection_dim=4, k=5)
    np.testing.assert_allclose(res["mknn"].matrix, alone.matrix, atol=1e-12, rtol=0)
    assert res["mknn"].settings["buffer_bytes_per_sample"] == 8 * 4 * 6  # six layers projected to 4
    with pytest.raises(ValueError, match="differently transformed"):
        compare(*wrap(A, B), loader(x, 16), metrics=("ii", "mknn"), device="cpu", progress=False,
                ii_kwargs={"exact": True}, mknn_kwargs={"exact": True, "projection_dim": 4})


# ---------------------------------------------------------------- properties


class Transforms(nn.Module):
    """``base`` and transformed copies of it: an orthogonal map, an isotropic scaling, a
    translation and a (non-orthogonal) invertible linear map, each its own module."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(20)
        self.base = nn.Sequential(nn.Linear(6, 10), nn.Tanh())
        q, _ = torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64))  # orthogonal to float64 precision
        self.orthogonal = Affine(q, torch.zeros(10, dtype=torch.float64))
        self.isotropic_scaling = Affine(torch.eye(10) * 3.7, torch.zeros(10))
        self.translation = Affine(torch.eye(10), 2.0 * torch.randn(10))
        self.invertible_linear = Affine(torch.eye(10) + 0.8 * torch.randn(10, 10), torch.zeros(10))

    def forward(self, x):
        h = self.base(x)
        return sum(getattr(self, t)(h).sum() for t in TRANSFORMS)


class Affine(nn.Module):
    def __init__(self, w: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("w", w)
        self.register_buffer("b", b)

    def forward(self, h):
        return h @ self.w.T + self.b


TRANSFORMS = ["orthogonal", "isotropic_scaling", "translation", "invertible_linear"]
# measures and the transformations they are NOT invariant to on this example (by a margin),
# so the declared sets are checked in both directions
MEASURES = [
    (MutualKNN, {}, {"translation", "invertible_linear"}),
    (MutualKNN, {"neighbours": "euclidean"}, {"invertible_linear"}),
    (CKNNA, {}, {"translation", "invertible_linear"}),
    # scaling changes the linear kernel's value only through the +1e-6 (not declared)
    (CKNNA, {"kernel": "linear"}, {"isotropic_scaling", "translation", "invertible_linear"}),
    (RSA, {}, {"invertible_linear"}),
    (RSA, {"rdm": "correlation"}, {"orthogonal", "translation", "invertible_linear"}),
]


@pytest.mark.parametrize("cls,kw,not_invariant", MEASURES,
                         ids=[f"{c.__name__}-{kw}" for c, kw, _ in MEASURES])
def test_declared_invariances_hold_through_the_class_api(cls, kw, not_invariant):
    model = Transforms().double()
    sm = SimilarityModel(model, "T", ["base", *TRANSFORMS], device="cpu")
    sim = cls(sm, sm, device="cpu", progress=False, k=8, **kw) if cls is not RSA else \
        cls(sm, sm, device="cpu", progress=False, **kw)
    grid = sim.compute(loader(data(60, 21), 60))
    declared = sim.metric.invariances
    assert declared <= {"orthogonal", "isotropic_scaling", "translation", "invertible_linear"}
    assert "invertible_linear" not in declared
    for j, t in enumerate(TRANSFORMS, 1):
        if t in declared:
            assert grid[0, j] == pytest.approx(grid[0, 0], abs=1e-9), t
            assert grid[j, 0] == pytest.approx(grid[0, 0], abs=1e-9), t
        else:
            assert t in not_invariant, f"{t} holds on this example but is not declared"
            if not (cls is CKNNA and kw.get("kernel") == "linear" and t == "isotropic_scaling"):
                assert abs(grid[0, j] - grid[0, 0]) > 1e-3, t


def test_self_similarity_on_the_diagonal():
    x = data(40, 22)
    A = net_a(23)
    sm = SimilarityModel(A, "A", LAYERS_A, device="cpu")
    mk = MutualKNN(sm, sm, device="cpu", progress=False).compute(loader(x, 40))
    np.testing.assert_array_equal(np.diag(mk), 1.0)
    rs = RSA(sm, sm, device="cpu", progress=False).compute(loader(x, 40))
    np.testing.assert_allclose(np.diag(rs), 1.0, atol=1e-12)
    np.testing.assert_allclose(rs, rs.T, atol=1e-12)
    ck = CKNNA(sm, sm, device="cpu", progress=False).compute(loader(x, 40))
    d = np.diag(ck)
    assert (d < 1).all() and (d > 1 - 1e-4).all()  # s/(s + 1e-6), the reference's epsilon
    want = [float(F.cknna(a, a)) for a in acts(A, x, LAYERS_A)]
    np.testing.assert_allclose(d, want, atol=1e-12, rtol=0)
    assert abs(ck[0, 2] - ck[2, 0]) > 1e-4  # CKNNA is asymmetric, cell [i, j] = cknna(A_i, A_j)
    assert not CKNNAMetric.symmetric and MutualKNNMetric.symmetric and RSAMetric.symmetric


def test_registry_and_declared_properties():
    for key, cls, rng in (("mknn", MutualKNNMetric, (0.0, 1.0)), ("cknna", CKNNAMetric, (-1.0, 1.0)),
                          ("rsa", RSAMetric, (-1.0, 1.0))):
        assert metric_class(key) is cls and cls.key == key and cls.value_range == rng
        assert cls.direction == "similarity"
    assert metric_class("mutual_knn") is MutualKNNMetric
    assert simtorch.similarity.MutualKNN is MutualKNN and simtorch.metrics.RSAMetric is RSAMetric
    assert MutualKNNMetric.invariances == {"orthogonal", "isotropic_scaling"}
    assert MutualKNNMetric(neighbours="euclidean").invariances == {"orthogonal", "isotropic_scaling", "translation"}
    assert RSAMetric.invariances == {"orthogonal", "isotropic_scaling", "translation"}
    assert RSAMetric(rdm="correlation").invariances == {"isotropic_scaling"}
    assert RSAMetric(compare="corr").compare == "pearson"  # rsatoolbox's name


# ---------------------------------------------------------------- refusals and warnings


@pytest.mark.parametrize("cls,kw,bs,match", [
    (MutualKNN, {"k": 10}, 10, r"k=10 must be smaller than the number of samples.*got 10 in the first batch"),
    (CKNNA, {"k": 10}, 8, r"k=10 must be smaller than .*got 8 in the first batch"),
    (CKNNA, {"k": 2}, 3, r"at least 4 samples; got 3"),
    (CKNNA, {"k": 9, "unbiased": False}, 8, r"k=9 must be at most .*got 8"),
    (RSA, {}, 2, r"at least 3 samples; got 2"),
])
def test_k_not_below_the_batch_size_is_refused_at_the_first_batch(cls, kw, bs, match):
    x = data(40, 24)
    A, B = net_a(), net_b()
    fa = CountForward(A)
    with pytest.raises(ValueError, match=match):
        run(cls, A, B, loader(x, bs), **kw)
    assert fa.calls == 1  # before the second forward pass
    assert not any(m._forward_hooks for m in A.modules() if m is not A)


def test_too_few_samples_in_all_is_refused_before_any_forward_pass():
    A, B = net_a(), net_b()
    fa = CountForward(A)
    with pytest.raises(ValueError, match=r"k=10 .*got 8 \(the loader holds 8 samples"):
        run(MutualKNN, A, B, loader(data(8), 4))
    with pytest.raises(ValueError, match=r"k=10 .*got 10 \(the loader holds 10 samples"):
        run(MutualKNN, A, B, loader(data(10), 4), exact=True)
    assert fa.calls == 0

    def gen():  # no dataset size: the buffered count is checked at the end
        yield (data(6, 1), None)
        yield (data(4, 2), None)

    with pytest.raises(ValueError, match=r"k=10 .*got 10 \(all the samples"):
        run(MutualKNN, A, B, gen(), exact=True)


def test_exact_memory_is_stated_and_refused_before_any_forward_pass():
    A, B = net_a(), net_b()
    fa = CountForward(A)
    for cls in (MutualKNN, CKNNA, RSA):
        with pytest.raises(ValueError, match=r"exact=True computes on all N=64 samples.*GiB.*memory_limit"):
            run(cls, A, B, loader(data(64), 16), exact=True, memory_limit=10_000)
    assert fa.calls == 0
    # features that do not fit name the projection
    with pytest.raises(ValueError, match="projection_dim=256"):
        run(MutualKNN, A, B, loader(data(64), 16), exact=True, k=3, memory_limit=40.0 * 64 * 64 + 8 * 2**22 + 100)


def test_irregular_batch_sizes_warn_and_a_short_last_batch_does_not():
    A, B = net_a(), net_b()
    x = data(52, 25)

    def batches(sizes):
        s = 0
        for n in sizes:
            yield (x[s : s + n], None)
            s += n

    with pytest.warns(UserWarning, match=r"mutual kNN: batches of different sizes \[12, 20\] were averaged"):
        run(MutualKNN, A, B, batches([20, 12, 20]))
    with pytest.warns(UserWarning, match=r"CKNNA: batches of different sizes"):
        run(CKNNA, A, B, batches([20, 12, 20]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(MutualKNN, A, B, batches([20, 20, 12]))  # only the last differs
        run(RSA, A, B, batches([20, 12, 20]))  # RSA does not depend on the set size that way
    # a last batch too small for k is skipped with a warning, the others are used
    with pytest.warns(UserWarning, match=r"mutual kNN: skipped 1 batch\(es\) holding 5 sample"):
        res = run(MutualKNN, A, B, batches([20, 20, 5]))
    assert res.n_batches == 2 and res.n_skipped == 1 and res.n_samples == 40


@pytest.mark.parametrize("cls,kw,match", [
    (MutualKNN, {"k": 0}, "k must be an int ≥ 1"),
    (MutualKNN, {"k": 2.5}, "k must be an int"),
    (MutualKNN, {"neighbours": "rbf"}, "neighbours must be one of"),
    (CKNNA, {"k": 1}, "k must be an int ≥ 2"),
    (CKNNA, {"kernel": "rbf"}, "kernel must be 'cosine' or 'linear'"),
    (RSA, {"rdm": "cityblock"}, "rdm must be"),
    (RSA, {"compare": "kendall"}, "compare must be one of"),
    (RSA, {"projection_dim": 8}, "only applies with exact=True"),
    (CKNNA, {"exact": True, "projection_dim": 0}, "projection_dim must be an int ≥ 1"),
    (MutualKNN, {"exact": True, "memory_limit": 0}, "memory_limit"),
])
def test_options_are_checked_when_the_object_is_built(cls, kw, match):
    with pytest.raises(ValueError, match=match):
        cls(*wrap(net_a(), net_b()), **kw)


def test_reference_agrees_with_functional_on_a_layer_pair():
    # the chain reference → functional → metric: one spot check of the whole chain here
    x = data(30, 26)
    xa, xb = acts(net_a(), x, LAYERS_A), acts(net_b(), x, LAYERS_B)
    got = run(MutualKNN, net_a(), net_b(), loader(x, 30), k=4).matrix[1, 2]
    assert got == pytest.approx(ref.mutual_knn(xa[1], xb[2], 4, "cosine"), abs=1e-12)
    got = run(RSA, net_a(), net_b(), loader(x, 30)).matrix[2, 0]
    assert got == pytest.approx(ref.rsa(xa[2], xb[0]), abs=1e-12)
    assert math.isfinite(got)
