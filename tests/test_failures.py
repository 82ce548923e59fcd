"""Issue 6's failure matrix: every bad input gets a clear error or a warning, never a wrong
number. One test per row (checkpoint rows live with simtorch/checkpoints.py's tests)."""

from __future__ import annotations

import gc
import os
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import reference as ref
from models import batches, data, hook_counts, mlp, ref_grid
from simtorch import CKA, SimilarityModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: see conftest.py


def acts(model: nn.Sequential, xb: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        f1 = model.fc1(xb)
        return {"fc1": f1, "act": model.act(f1), "fc2": model.fc2(model.act(f1))}


def pair_grid(ma, mb, xs, la, lb, unbiased=True):
    """Reference grid of two mlps fed the batches ``xs``."""
    return ref_grid([acts(ma, xb) for xb in xs], [acts(mb, xb) for xb in xs], la, lb, unbiased=unbiased)


def pair(layers_a=("fc1", "fc2"), layers_b=("fc1", "act", "fc2")):
    ma, mb = mlp(0), mlp(1)
    return ma, mb, SimilarityModel(ma, layers_to_include=list(layers_a)), SimilarityModel(mb, layers_to_include=list(layers_b))


# ---------------------------------------------------------------- layers


def test_pattern_matching_nothing_lists_close_names():
    with pytest.raises(ValueError, match=r"'fc3' matches no module.*fc1"):
        SimilarityModel(mlp(), layers_to_include=["fc3"])


def test_layer_that_never_fires_is_named():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(6, 4)
            self.spare = nn.Linear(6, 4)  # defined, never called

        def forward(self, x):
            return self.used(x)

    model = Unused()
    sm = SimilarityModel(model, layers_to_include=["used", "spare"])
    with pytest.raises(RuntimeError, match=r"'spare' never ran"):
        CKA(sm, sm, progress=False).compute(batches(data(), 8))
    assert hook_counts(model) == 0


def test_module_firing_twice_names_it_and_the_fix():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.blk = nn.Linear(6, 6)

        def forward(self, x):
            return self.blk(self.blk(x))

    sm = SimilarityModel(Twice(), layers_to_include=["blk"])
    with pytest.raises(RuntimeError, match=r"'blk' ran more than once.*call_index"):
        CKA(sm, sm, progress=False).compute(batches(data(), 8))


def test_non_tensor_output_without_output_fn():
    class Info(nn.Module):
        def forward(self, x):
            return {"count": int(x.shape[0]), "note": "no tensor here"}

    class Host(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 4)
            self.info = Info()

        def forward(self, x):
            self.info(x)
            return self.fc(x)

    sm = SimilarityModel(Host(), layers_to_include=["fc", "info"])
    with pytest.raises(TypeError, match=r"'info' returned dict holding no tensor.*output_fn"):
        CKA(sm, sm, progress=False).compute(batches(data(), 8))
    fixed = SimilarityModel(Host(), layers_to_include=["info"],
                            output_fn=lambda out: torch.full((out["count"], 1), 1.0))
    with pytest.warns(UserWarning, match="info"):  # constant: NaN, see below
        g = CKA(fixed, fixed, progress=False).compute(batches(data(), 8))
    assert np.isnan(g).all()


# ---------------------------------------------------------------- batches


def test_small_batches_are_skipped_counted_and_warned():
    ma, mb, a, b = pair()
    x = data(27)
    loader = batches(x, 8)  # 8, 8, 8, 3
    sim = CKA(a, b, progress=False)
    with pytest.warns(UserWarning, match=r"skipped 1 batch\(es\) holding 3 sample"):
        g = sim.compute(loader)
    r = sim.result
    assert (r.n_samples, r.n_batches, r.n_skipped, r.skipped_samples) == (24, 3, 1, 3)
    np.testing.assert_allclose(g, pair_grid(ma, mb, loader[:3], a.layer_names, b.layer_names), atol=1e-6)
    # the biased estimator keeps a 3-sample batch (it needs n ≥ 2) and says nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g0 = CKA(a, b, progress=False, unbiased=False).compute(loader)
    np.testing.assert_allclose(g0, pair_grid(ma, mb, loader, a.layer_names, b.layer_names, unbiased=False), atol=1e-6)


def test_only_small_batches_is_an_error():
    _, _, a, b = pair()
    with pytest.warns(UserWarning, match="skipped 4"), pytest.raises(ValueError, match="no batch had at least 4"):
        CKA(a, b, progress=False).compute(batches(data(12), 3))


def test_empty_loader_is_an_error():
    ma, mb, a, b = pair()
    sim = CKA(a, b, progress=False)
    with pytest.raises(ValueError, match="no batches"):
        sim.compute([])
    assert sim.result is None and hook_counts(ma) == 0 and hook_counts(mb) == 0


class Weird:
    pass


@pytest.mark.parametrize("bad", [Weird(), 3.5, "text"])
def test_unsupported_batch_type_is_named(bad):
    _, _, a, b = pair()
    with pytest.raises(TypeError, match=type(bad).__name__ + ".*input_fn"):
        CKA(a, b, progress=False).compute([bad])


def test_models_returning_different_batch_sizes():
    class DropsOne(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 4)

        def forward(self, x):
            return self.fc(x[:-1])

    _, _, a, _ = pair()
    b = SimilarityModel(DropsOne(), layers_to_include=["fc"])
    with pytest.raises(ValueError, match=r"'fc' produced shape \(7, 4\) but the batch has 8 samples"):
        CKA(a, b, progress=False).compute(batches(data(), 8))


def test_output_with_batch_dim_not_first():
    class SeqFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 4)

        def forward(self, x):  # (t=5, b, d): sequence-first, as nn.Transformer without batch_first
            return self.fc(x).unsqueeze(0).expand(5, -1, -1)

    _, _, a, _ = pair()

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = SeqFirst()

        def forward(self, x):
            return self.inner(x)

    w = SimilarityModel(Wrap(), layers_to_include=["inner"])
    with pytest.raises(ValueError, match=r"'inner' produced shape \(5, 8, 4\).*batch dimension first.*transpose"):
        CKA(a, w, progress=False).compute(batches(data(), 8))
    fixed = SimilarityModel(Wrap(), layers_to_include=["inner"], output_fn=lambda out: out.transpose(0, 1))
    assert np.isfinite(CKA(a, fixed, progress=False).compute(batches(data(), 8))).all()


# ---------------------------------------------------------------- values


class Poison(nn.Module):
    """fc → (NaN or inf injected into batch `at`) → out."""

    def __init__(self, value: float, at: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)
        self.value, self.at, self.calls = value, at, 0

    def forward(self, x):
        self.calls += 1
        h = self.fc(x)
        if self.calls - 1 == self.at:
            h = h.clone()
            h[2, 1] = self.value
        return self.out(torch.nan_to_num(h, nan=0.0, posinf=0.0, neginf=0.0)), h


class PoisonHost(nn.Module):
    def __init__(self, value: float, at: int) -> None:
        super().__init__()
        self.p = Poison(value, at)
        self.tap = nn.Identity()  # sees the poisoned tensor
        self.clean = nn.Identity()  # sees the cleaned output

    def forward(self, x):
        out, h = self.p(x)
        self.tap(h)
        return self.clean(out)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_inf_activation_names_layer_and_batch(value):
    model = PoisonHost(value, at=2)
    sm = SimilarityModel(model, model_name="P", layers_to_include=["tap", "clean"])
    other = SimilarityModel(mlp(1), layers_to_include=["fc1"])
    sim = CKA(sm, other, progress=False)
    with pytest.raises(FloatingPointError, match=r"P: an activation in batch 2 holds NaN or inf \(layers \['tap'\]\)"):
        sim.compute(batches(data(), 8))
    # the batches before it survive as a finite partial result
    assert sim.result.n_samples == 16 and np.isfinite(sim.result.matrix).all()
    assert hook_counts(model) == 0


def test_constant_activations_give_nan_and_name_the_layer():
    class Const(nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def forward(self, x):
            # every sample the same; columns differ (so float32 centring leaves a residue)
            return (self.value * (1 + torch.linspace(0, 1, 10))).expand(x.shape[0], 10) + 0 * x[:, :1]

    class Jitter(nn.Module):
        def forward(self, x):  # 1e4 + 1e-3·x in float32: constant but for rounding (ulp ≈ 1e-3)
            return 1e4 + 1e-3 * x

    class Host(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc = nn.Linear(6, 5)
            self.zero = Const(0.0)
            self.big = Const(12345.678)
            self.jitter = Jitter()  # variance of float noise only: judged relative to scale, NaN

        def forward(self, x):
            self.zero(x)
            self.big(x)
            self.jitter(x)
            return self.fc(x)

    model = Host()
    sm = SimilarityModel(model, model_name="H", layers_to_include=["fc", "zero", "big", "jitter"])
    ma, _, a, _ = pair()
    for unbiased in (True, False):
        with pytest.warns(UserWarning, match=r"H layers \['zero', 'big', 'jitter'\] have no usable variance") as rec:
            g = CKA(a, sm, progress=False, unbiased=unbiased).compute(batches(data(), 12))
        assert "NaN" in str(rec[0].message)
        assert np.isnan(g[:, 1:]).all()  # never 0 or 1 made up
        assert np.isfinite(g[:, 0]).all()
        want = [ref.streaming_cka([acts(ma, xb)[la] for xb in batches(data(), 12)],
                                  [model.fc(xb).detach() for xb in batches(data(), 12)], unbiased=unbiased)
                for la in a.layer_names]
        np.testing.assert_allclose(g[:, 0], want, atol=1e-6)


def test_unbiased_self_hsic_zero_gives_nan_with_warning():
    # One-hot rows, one per sample: the centred Gram is H = I − 11ᵀ/n, whose off-diagonal is
    # constant, so its U-centred version vanishes and HSIC₁(K, K) = 0 exactly (the biased
    # HSIC₀(K, K) = (n−1)/(n−1)² > 0). Unbiased CKA with that layer is 0/0.
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(onehot=nn.Identity(), fc=nn.Linear(8, 5)))
    loader = [torch.eye(8) for _ in range(3)]
    sm = SimilarityModel(model, model_name="E", layers_to_include=["onehot", "fc"])
    other = SimilarityModel(mlp(1, d_in=8), layers_to_include=["fc1"])
    with pytest.warns(UserWarning, match=r"E layers \['onehot'\].*unbiased self-HSIC ≤ 0"):
        g = CKA(sm, other, progress=False).compute(loader)
    assert np.isnan(g[0]).all() and np.isfinite(g[1]).all()
    assert ref.hsic1(ref.linear_kernel(torch.eye(8)), ref.linear_kernel(torch.eye(8))) == pytest.approx(0, abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g0 = CKA(sm, other, progress=False, unbiased=False).compute(loader)
    assert np.isfinite(g0).all()


# ---------------------------------------------------------------- interruption


def interrupted(xs, at, exc):
    for i, xb in enumerate(xs):
        if i == at:
            raise exc
        yield xb


@pytest.mark.parametrize("exc", [RuntimeError("disk gone"), KeyboardInterrupt()])
def test_interruption_keeps_partial_result_and_restores_model(exc):
    ma, mb, a, b = pair()
    ma.train()
    ma.act.eval()
    mb.fc1.weight.requires_grad_(False)
    modes = [m.training for m in ma.modules()] + [m.training for m in mb.modules()]
    grads = [p.requires_grad for p in ma.parameters()] + [p.requires_grad for p in mb.parameters()]
    xs = batches(data(), 8)
    sim = CKA(a, b, progress=False)
    with pytest.raises(type(exc)):
        sim.compute(interrupted(xs, 3, exc))
    assert hook_counts(ma) == 0 and hook_counts(mb) == 0
    assert [m.training for m in ma.modules()] + [m.training for m in mb.modules()] == modes
    assert [p.requires_grad for p in ma.parameters()] + [p.requires_grad for p in mb.parameters()] == grads
    r = sim.result
    assert r is not None and r.n_samples == 24 and r.n_batches == 3
    assert np.isfinite(r.matrix).all() and sim.sim_matrix is r.matrix
    np.testing.assert_allclose(r.matrix, pair_grid(ma, mb, xs[:3], a.layer_names, b.layer_names), atol=1e-6)


def test_interruption_before_any_batch_leaves_no_result():
    _, _, a, b = pair()
    sim = CKA(a, b, progress=False)
    with pytest.raises(KeyboardInterrupt):
        sim.compute(interrupted(batches(data(), 8), 0, KeyboardInterrupt()))
    assert sim.result is None


# ---------------------------------------------------------------- memory


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc (Linux)")
def test_memory_flat_over_2000_batches():
    torch.manual_seed(0)
    ma = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 32))
    mb = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32))
    a = SimilarityModel(ma, layers_to_include=["0", "2", "4"])
    b = SimilarityModel(mb, layers_to_include=["0", "2"])
    x = torch.randn(16, 64)
    samples: list[int] = []

    def loader(n):
        for i in range(n):
            if i % 100 == 0:
                samples.append(_rss_kib())
            yield x + i * 1e-3  # a fresh tensor each batch, as a DataLoader gives

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: threads only add contention on a loaded machine
    try:
        CKA(a, b, progress=False).compute(loader(300))  # warm-up: allocator, caches
        gc.collect()
        base = _rss_kib()
        samples.clear()
        sim = CKA(a, b, progress=False)
        sim.compute(loader(2000))
        gc.collect()
        samples.append(_rss_kib())
    finally:
        torch.set_num_threads(threads)
    assert sim.result.n_batches == 2000
    # keeping each batch's 5 Grams (5 KiB) would add 10 MiB, each batch's activations more
    growth = max(samples) - base
    assert growth < 3 * 1024, f"RSS grew by {growth} KiB over 2000 batches"
    assert all(p.grad is None for p in ma.parameters())


# ---------------------------------------------------------------- devices


def test_model_parameters_stay_where_they_were():
    ma, mb, a, b = pair()
    before = [(p.device, p.data_ptr()) for p in ma.parameters()] + [(p.device, p.data_ptr()) for p in mb.parameters()]
    CKA(a, b, device="cpu", progress=False).compute(batches(data(), 8))
    after = [(p.device, p.data_ptr()) for p in ma.parameters()] + [(p.device, p.data_ptr()) for p in mb.parameters()]
    assert after == before


def test_meta_model_is_refused_clearly():
    with torch.device("meta"):
        meta = mlp()
    _, _, a, _ = pair()
    sm = SimilarityModel(meta, model_name="M", layers_to_include=["fc1"])
    with pytest.raises(ValueError, match=r"M has its parameters on the 'meta' device.*to_empty"):
        CKA(a, sm, device="cpu", progress=False).compute(batches(data(), 8))
    assert all(p.device.type == "meta" for p in meta.parameters())


class Spread(nn.Module):
    """Parameters on the CPU and a (never used) buffer on another device: 'spread out'."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(6, 4)
        self.register_buffer("elsewhere", torch.empty(3, device="meta"))

    def forward(self, x):
        return self.fc(x)


def test_model_spread_over_devices_is_refused_unless_placed_by_the_user():
    _, _, a, _ = pair()
    model = Spread()
    sm = SimilarityModel(model, model_name="S", layers_to_include=["fc"])
    with pytest.raises(ValueError, match=r"S is spread over several devices \['cpu', 'meta'\].*device="):
        CKA(a, sm, device="cpu", progress=False).compute(batches(data(), 8))
    # with an explicit device the user owns placement: simtorch leaves the model as it is
    placed = SimilarityModel(model, model_name="S", layers_to_include=["fc"], device="cpu")
    g = CKA(a, placed, device="cpu", progress=False).compute(batches(data(), 8))
    assert np.isfinite(g).all()
    assert model.fc.weight.device.type == "cpu" and model.elsewhere.device.type == "meta"
