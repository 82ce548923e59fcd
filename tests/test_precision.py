"""Precision: the noise test knows the rounding of the computation actually done, Grams made
without the mean pass stay as precise as exactly centred ones, and Information Imbalance
resolves the distances of narrow layers whatever the input dtype (issue 12, items 2-4).

Tolerances, measured on these data (torch 2.14, CPU) and asserted with margin:

- float64 features with a common offset of 1e2-1e4 × their spread: every value within
  1e-9 of the offset-free one (measured ≤ 3e-14); self-similarity is 1.
- float32 features at those offsets: the computation on the same float32 values agrees with
  float64 math to ≤ 1e-6 (measured ≤ 5e-9). The float32 values themselves are the
  offset-free data rounded to ε·offset (1.2e-3 of the spread at 1e4 ×), which moves CKA and
  dCKA by ≲ (ε·offset / σ)²-ish: asserted ≤ 1e-4 against the offset-free values (measured
  ≤ 1.4e-5).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
import reference as ref  # noqa: E402

import simtorch.functional as F  # noqa: E402
from simtorch import CKA, DeltaCKA, InformationImbalance, SimilarityModel  # noqa: E402
from simtorch.engine import stream  # noqa: E402
from simtorch.metrics import Computed, Metric  # noqa: E402

OFFSETS = [1e2, 1e3, 1e4]
F64_TOL = 1e-9
F32_SAME_DATA_TOL = 1e-6
F32_OFFSET_FREE_TOL = 1e-4


def _pair(n: int = 64, d: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.tanh(z @ torch.randn(d, 12, generator=g, dtype=torch.float64))
    c = torch.randn(n, 8, generator=g, dtype=torch.float64) + z[:, :8]
    return z, y, c


def _f(t) -> float:
    return float(t)


# ---------------------------------------------------------------- the reproducer


def test_reproducer_large_offset_float64_is_finite_and_self_similarity_is_one():
    torch.manual_seed(0)
    z = torch.randn(64, 16, dtype=torch.float64)
    x = z + 300
    w = torch.randn(16, 16, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        v = _f(F.cka(x, x @ w))
        assert np.isfinite(v)
        assert v == pytest.approx(_f(F.cka(z, z @ w)), abs=F64_TOL)
        assert v == pytest.approx(ref.cka(x.numpy(), (x @ w).numpy()), abs=F64_TOL)
        assert _f(F.cka(x, x)) == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------- functional API


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_functional_cka_with_offsets(offset, kernel, unbiased):
    z, y, _ = _pair()
    base = _f(F.cka(z, y, kernel=kernel, unbiased=unbiased))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # float64: the offset changes nothing
        v64 = _f(F.cka(z + offset, y - 3 * offset, kernel=kernel, unbiased=unbiased))
        assert abs(v64 - base) <= F64_TOL
        # float32: finite, as float64 math on the same values, close to the offset-free value
        x32, y32 = (z + offset).float(), (y - 3 * offset).float()
        v32 = _f(F.cka(x32, y32, kernel=kernel, unbiased=unbiased))
        same = _f(F.cka(x32.double(), y32.double(), kernel=kernel, unbiased=unbiased))
        assert np.isfinite(v32)
        assert abs(v32 - same) <= F32_SAME_DATA_TOL
        assert abs(v32 - base) <= F32_OFFSET_FREE_TOL
        assert _f(F.cka(x32, x32, kernel=kernel, unbiased=unbiased)) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("unbiased", [False, True])
def test_functional_dcka_with_offsets(offset, unbiased):
    z, y, c = _pair(seed=1)
    base = _f(F.dcka(z, y, c, unbiased=unbiased))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        v64 = _f(F.dcka(z + offset, y + offset, c - offset, unbiased=unbiased))
        assert abs(v64 - base) <= F64_TOL
        x32, y32, c32 = (z + offset).float(), (y + offset).float(), (c - offset).float()
        v32 = _f(F.dcka(x32, y32, c32, unbiased=unbiased))
        same = _f(F.dcka(x32.double(), y32.double(), c32.double(), unbiased=unbiased))
        assert np.isfinite(v32)
        assert abs(v32 - same) <= F32_SAME_DATA_TOL
        assert abs(v32 - base) <= F32_OFFSET_FREE_TOL


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_truly_constant_features_are_still_nan(dtype, kernel, unbiased):
    z, y, _ = _pair()
    g = torch.Generator().manual_seed(3)
    row = 1e4 * (1 + torch.linspace(0, 1, 10, dtype=torch.float64))
    const = row.expand(64, 10).to(dtype)  # every row equal, columns differ
    # a constant plus 1e-12 noise: equal to the constant in float32, ulp jitter in float64
    tiny = (row + 1e-12 * torch.randn(64, 10, generator=g, dtype=torch.float64)).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for c in (const, tiny):
            assert np.isnan(_f(F.cka(c, y.to(dtype), kernel=kernel, unbiased=unbiased)))
            assert np.isnan(_f(F.cka(c, c, kernel=kernel, unbiased=unbiased)))
        assert np.isnan(_f(F.dcka(const, y.to(dtype), z.to(dtype), unbiased=unbiased)))


def test_noise_floor_follows_the_dtype_and_the_centred_energy():
    """The floor is relative to the centred energy (not the raw one) and scales with eps."""
    z, _, _ = _pair()
    for dtype in (torch.float32, torch.float64):
        eps = torch.finfo(dtype).eps
        g0, e0 = F.linear_gram(z.to(dtype))
        g1, e1 = F.linear_gram((z + 1e4).to(dtype))
        t0 = float(g0.diagonal().sum())
        nu0 = float(F.kernel_scale(g0, e0, "linear")) ** 0.5
        nu1 = float(F.kernel_scale(g1, e1, "linear")) ** 0.5
        # offset-free: about GRAM_ULPS·eps of the centred energy
        assert nu0 <= 2 * F.GRAM_ULPS * eps * F.GRAM_KAPPA * t0
        # a large offset raises the floor only through the data-rounding term (ε² ‖X‖²)
        assert nu1 <= 2 * F.GRAM_ULPS * eps * F.GRAM_KAPPA * t0 + 2 * (F.DATA_ULPS * eps) ** 2 * float(e1)
        assert nu1 < 1e-3 * t0  # far below the signal: real features are never called noise


# ---------------------------------------------------------------- streaming classes


class AddBias(nn.Module):
    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = offset

    def forward(self, x):
        return x + self.offset


def biased_net(seed: int, offset: float) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(fc1=nn.Linear(6, 16), act=nn.Tanh(), fc2=nn.Linear(16, 12),
                                     shift=AddBias(offset)))


def _batches(n_batches: int = 4, n: int = 32, dtype=torch.float64, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 6, generator=g, dtype=torch.float64).to(dtype) for _ in range(n_batches)]


def _grid(ma, mb, layers, xs, cls=CKA, **kw) -> np.ndarray:
    a = SimilarityModel(ma, "A", layers)
    b = SimilarityModel(mb, "B", layers)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return cls(a, b, progress=False, **kw).compute(xs)


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("unbiased", [True, False])
def test_streaming_cka_of_a_layer_with_a_large_bias(offset, unbiased):
    layers = ["fc1", "fc2", "shift"]
    xs = _batches()
    # float64 models: the biased layer equals fc2, offset or not
    a64, b64 = biased_net(0, offset).double(), biased_net(1, -offset).double()
    g64 = _grid(a64, b64, layers, xs, unbiased=unbiased)
    assert np.isfinite(g64).all()
    np.testing.assert_allclose(g64[:, 2], g64[:, 1], atol=F64_TOL, rtol=0)
    np.testing.assert_allclose(g64[2, :], g64[1, :], atol=F64_TOL, rtol=0)
    assert g64[2, 2] == pytest.approx(g64[1, 1], abs=F64_TOL)
    # against the independent float64 reference of the same activations
    with torch.no_grad():
        want = ref.streaming_cka([a64(x) for x in xs], [b64(x) for x in xs], unbiased=unbiased)
    assert g64[2, 2] == pytest.approx(want, abs=F64_TOL)
    # float32 models: finite, and the biased layer agrees with fc2 to float32 quantisation
    a32, b32 = biased_net(0, offset), biased_net(1, -offset)
    g32 = _grid(a32, b32, layers, [x.float() for x in xs], unbiased=unbiased)
    assert np.isfinite(g32).all()
    np.testing.assert_allclose(g32[:2, :2], g64[:2, :2], atol=F32_SAME_DATA_TOL, rtol=0)
    np.testing.assert_allclose(g32[:, 2], g64[:, 1], atol=F32_OFFSET_FREE_TOL, rtol=0)
    np.testing.assert_allclose(g32[2, :], g64[1, :], atol=F32_OFFSET_FREE_TOL, rtol=0)
    # and the CKA of the same float32 activations in float64 math
    with torch.no_grad():
        sa = [a32(x.float()).double() for x in xs]
        sb = [b32(x.float()).double() for x in xs]
    assert g32[2, 2] == pytest.approx(ref.streaming_cka(sa, sb, unbiased=unbiased), abs=F32_SAME_DATA_TOL)


@pytest.mark.parametrize("offset", OFFSETS)
def test_streaming_dcka_and_self_similarity_with_a_large_bias(offset):
    layers = ["fc2", "shift"]
    xs = _batches()
    a, b = biased_net(0, offset).double(), biased_net(1, -offset).double()
    # the confounder has an offset as well
    g = _grid(a, b, layers, xs, cls=DeltaCKA, confounder_fn=lambda x: x + offset)
    g0 = _grid(a, b, layers, xs, cls=DeltaCKA)
    np.testing.assert_allclose(g, g0, atol=F64_TOL, rtol=0)
    assert np.isfinite(g).all()
    np.testing.assert_allclose(g[:, 1], g[:, 0], atol=F64_TOL, rtol=0)
    sm = SimilarityModel(biased_net(2, offset), "S", layers)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        self32 = CKA(sm, sm, progress=False).compute([x.float() for x in xs])
    np.testing.assert_allclose(np.diag(self32), 1.0, atol=1e-9)


def test_streaming_constant_layer_is_nan_with_a_warning_naming_it():
    class Host(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc = nn.Linear(6, 5)
            self.flat = AddBias(0.0)
            self.big = AddBias(0.0)

        def forward(self, x):
            self.flat(1e4 + 0 * x + 1e-12 * x)  # constant + noise far below its float32 ulp
            self.big(torch.full_like(x, 3e4) + 1e-3 * torch.arange(6.0))  # rows equal, columns differ
            return self.fc(x)

    sm = SimilarityModel(Host(), "H", ["fc", "flat", "big"])
    other = SimilarityModel(biased_net(1, 1e3), "B", ["fc1", "shift"])
    for unbiased in (True, False):
        with pytest.warns(UserWarning, match=r"H layers \['flat', 'big'\] have no usable variance"):
            g = CKA(sm, other, progress=False, unbiased=unbiased).compute([x.float() for x in _batches()])
        assert np.isnan(g[1:]).all() and np.isfinite(g[0]).all()


# ---------------------------------------------------------------- Grams without the mean pass


class Keep(Metric):
    """Keeps each batch's Grams (tests only)."""

    name = "keep"

    def __init__(self) -> None:
        self.grams: list[torch.Tensor] = []

    def update(self, batch) -> None:
        self.grams.append(batch.grams_a.clone())

    def compute(self) -> Computed:
        return Computed(torch.zeros(self.binding.layers_a, self.binding.layers_b))


def test_streamed_grams_equal_exactly_centred_grams(raw_min):
    """Every batch's Gram, whether the layer is centred by its exact mean (small layers),
    multiplied as it is (small mean) or shifted by the mean of its first rows (large offset,
    first rows far from the rest), equals the float64 Gram of the column-centred
    activations to float32 precision, and depends on that batch alone."""

    class Outlier(nn.Module):  # the first rows are far from the others
        def forward(self, x):
            y = x + 1e3
            return torch.cat([y[:8] + 1e3, y[8:]])

    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(fc=nn.Linear(6, 300), act=nn.ReLU(), far=AddBias(1e3), odd=Outlier()))
    layers = ["fc", "act", "far", "odd"]
    sm = SimilarityModel(model, "M", layers)
    xs = [x.float() for x in _batches(4, 48)]
    runs = []
    for order in (xs, xs[::-1]):
        keep = Keep()
        stream(sm, sm, order, [keep], "cpu", progress=False)
        runs.append(keep.grams)
    for k, x in enumerate(xs):
        # the same batch gives the same bits whatever came before it
        assert torch.equal(runs[0][k], runs[1][len(xs) - 1 - k])
        with torch.no_grad():
            acts = sm.activations(x)
        for i, name in enumerate(layers):
            f = acts[name].double().reshape(48, -1)
            f = f - f.mean(0)
            want = f @ f.T
            err = (runs[0][k][i].double() - want).abs().max() / want.diagonal().mean()
            assert err < 1e-5, (k, name, float(err))


@pytest.fixture(params=["default", "every layer large"])
def raw_min(request, monkeypatch):
    """Run a test with the engine's size rule as it is and with every activation counted as
    large (RAW_MIN_ELEMENTS = 0), so the raw, shifted and redone products are all exercised
    on small test tensors."""
    from simtorch.functional import linear_grams

    if request.param != "default":
        monkeypatch.setattr(linear_grams, "RAW_MIN_ELEMENTS", 0)
    return request.param


@pytest.mark.parametrize("offset", [0.0, 1.0, 1e2, 1e4, -3e4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_quick_centred_gram_equals_the_exact_one(offset, dtype, raw_min):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(32, 200, generator=g, dtype=torch.float64) + offset).to(dtype)
    got, energy = F.quick_centred_gram(x)
    exact, e_exact = F.linear_gram(x)
    x64 = x.double() - x.double().mean(0)
    want = x64 @ x64.T
    # float64: the reference's own mean is rounded at ε·|offset|, so the bound grows with it
    tol = 1e-5 if dtype == torch.float32 else 1e-13 * (1 + abs(offset))
    assert float((got.double() - want).abs().max() / want.diagonal().mean()) < tol
    assert float((exact.double() - want).abs().max() / want.diagonal().mean()) < tol
    # ‖X‖² is exact without a shift and estimated with one (a few percent, quick_centred_gram)
    assert float(energy) == pytest.approx(float((x.double() ** 2).sum()), rel=0.1)
    # the noise floor sees the same features either way
    assert float(F.kernel_scale(got, energy, "linear")) == pytest.approx(
        float(F.kernel_scale(exact, e_exact, "linear")), rel=0.25)


def test_capture_product_takes_each_path_and_finish_centres_the_stack(monkeypatch):
    """A large activation with a small mean is multiplied as it is, one with a large offset
    minus the mean of its first rows, one whose first rows are far from the rest is redone
    with the exact mean, a small one is centred exactly; finishing the whole stack at once
    gives each layer's exactly centred Gram and its energy ‖X‖²."""
    from simtorch.functional import linear_grams

    shifts: list[str] = []
    product = linear_grams.gram_product

    def spy(x, shift=None, scratch=None, out=None):
        shifts.append("none" if shift is None else "shift")
        return product(x, shift, scratch, out)

    monkeypatch.setattr(linear_grams, "gram_product", spy)
    g = torch.Generator().manual_seed(0)
    # a shift by the mean of k first rows can miss by at most κ − 1 ≤ n/k (Cauchy–Schwarz),
    # so only n > (GRAM_KAPPA − 1)·k can fail the check: first rows all at one value do
    n, d = 256, linear_grams.RAW_MIN_ELEMENTS // 256
    z = torch.randn(n, d, generator=g)
    far = z.clone()
    far[: linear_grams.SHIFT_ROWS] = 50.0 + 1e-3 * z[: linear_grams.SHIFT_ROWS]
    cases = {"raw": (z + 0.1, ["none"]), "shifted": (z + 100.0, ["shift"]),
             "redone": (far, ["shift", "shift"]), "small": (z[:, :100] + 100.0, ["shift"])}
    stack = torch.empty(len(cases), n, n)
    extras = []
    for i, (name, (x, path)) in enumerate(cases.items()):
        shifts.clear()
        gi, extra, _ = F.capture_product(x, out=stack[i])
        assert shifts == path, name
        assert gi.data_ptr() == stack[i].data_ptr()
        extras.append(torch.as_tensor(extra, dtype=torch.float32))
    energy = F.finish_grams_(stack, torch.stack(extras))
    for i, (name, (x, _)) in enumerate(cases.items()):
        x64 = x.double() - x.double().mean(0)
        want = x64 @ x64.T
        err = float((stack[i].double() - want).abs().max() / want.diagonal().mean())
        assert err < 1e-5, (name, err)
        e = float((x.double() ** 2).sum())
        # exact with no shift or the exact mean; estimated from the first rows' mean otherwise
        assert float(energy[i]) == pytest.approx(e, rel=1e-5 if name in ("raw", "small", "redone") else 0.1), name



@pytest.mark.parametrize("n", [128, 129])
def test_product_in_row_halves_is_the_full_symmetric_product(monkeypatch, n):
    """A mid-sized CPU product is taken in two row halves (the lower-left block mirrored):
    the same Gram as one GEMM to float32 rounding, exactly symmetric, written into ``out``,
    and still differentiable when the features need a gradient (``out=`` is not)."""
    from simtorch.functional import linear_grams

    d = 2048
    assert n * d <= linear_grams.HALVES_MAX_ELEMENTS
    g = torch.Generator().manual_seed(1)
    x = torch.relu(torch.randn(n, d, generator=g)) + 0.5
    calls: list[tuple[int, int]] = []
    mm = torch.mm

    def spy(a, b, *args, **kwargs):
        calls.append((a.shape[0], b.shape[1]))
        return mm(a, b, *args, **kwargs)

    monkeypatch.setattr(torch, "mm", spy)
    out = torch.full((n, n), float("nan"))
    got = F.gram_product(x, out=out)
    monkeypatch.setattr(torch, "mm", mm)
    h = n // 2
    assert calls == [(h, n)]  # the top rows against all; the bottom block by one matmul
    assert got.data_ptr() == out.data_ptr()
    assert torch.equal(got, got.T)
    want = x.double() @ x.double().T
    assert float((got.double() - want).abs().max() / want.abs().max()) < 1e-6
    monkeypatch.setattr(linear_grams, "HALVES_MAX_ELEMENTS", 0)
    one = F.gram_product(x)
    assert float((got - one).abs().max() / one.abs().max()) < 1e-6

    xg = x[:, :64].clone().requires_grad_(True)
    F.gram_product(xg).sum().backward()
    assert xg.grad is not None and torch.allclose(xg.grad, 2 * n * xg.detach().mean(0).expand(n, -1))


# ---------------------------------------------------------------- Information Imbalance, low dimensions


def _low_dim(n: int = 500, seed: int = 0, offset: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g) + offset
    y = torch.stack([x[:, 0] ** 3, torch.sin(3 * x[:, 1])], 1) + 0.1 * torch.randn(n, 2, generator=g)
    return x, y


@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize("offset", [0.0, 10.0])
def test_functional_ii_low_dim_float32_equals_float64_without_false_duplicates(d, offset):
    x, y = _low_dim(offset=offset)
    x, y = x[:, :d], y[:, :d]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coincident samples" warning: the points are distinct
        a = F.information_imbalance(x, y)
        b = F.information_imbalance(x.double(), y.double())
    assert float(a[0]) == float(b[0]) and float(a[1]) == float(b[1])
    assert float(a[0]) == pytest.approx(ref.information_imbalance(x.double().numpy(), y.double().numpy()), abs=1e-12)
    # what the float32 Gram alone resolves: distinct points snapped together
    gx, _ = F.linear_gram(x)
    assert d > 1 or offset == 0.0 or int((F.ii_distances(gx) == 0).sum()) > x.shape[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_functional_ii_true_duplicates_still_warn(dtype):
    x, y = _low_dim()
    x, y = x[:, :1].to(dtype).clone(), y.to(dtype)
    x[10] = x[3]
    with pytest.warns(UserWarning, match="coincident"):
        F.information_imbalance(x, y)


class Take(nn.Module):
    def __init__(self, a: int, b: int) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x):
        return x[:, self.a : self.b]


def ii_net() -> nn.Module:
    class A(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.one, self.two, self.wide = Take(0, 1), Take(0, 2), nn.Linear(4, 64)

        def forward(self, x):
            self.one(x)
            self.two(x)
            return self.wide(x)

    return A()


def ii_target() -> nn.Module:
    class T(nn.Module):
        def __init__(self):
            super().__init__()
            self.cube = Take(2, 3)
            self.wave = Take(2, 4)

        def forward(self, x):
            self.cube(x)
            return self.wave(x)

    return T()


def ii_inputs(n: int, g: torch.Generator) -> torch.Tensor:
    """Columns 0-1 random (offset 10), 2-3 functions of them plus noise, made in float64
    and rounded once to float32: the Take layers see the same values in both dtypes."""
    x = torch.randn(n, 2, generator=g, dtype=torch.float64) + 10.0
    y = torch.stack([(x[:, 0] - 10) ** 3, torch.sin(3 * x[:, 1])], 1) + 0.1 * torch.randn(n, 2, generator=g,
                                                                                           dtype=torch.float64)
    return torch.cat([x, y], 1).float()


def _ii(xs, dtype, **kw):
    a = SimilarityModel(ii_net().to(dtype), "A", ["one", "two", "wide"])
    b = SimilarityModel(ii_target(), "B", ["cube", "wave"])
    sim = InformationImbalance(a, b, progress=False, **kw)
    return sim.compute([x.to(dtype) for x in xs]), sim


@pytest.mark.parametrize("kw", [{}, {"subset_size": 500}], ids=["per-batch", "subset"])
def test_streaming_ii_low_dim_float32_equals_float64(kw):
    g = torch.Generator().manual_seed(1)
    xs = [ii_inputs(500, g) for _ in range(2)] if not kw else [ii_inputs(100, g) for _ in range(10)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m32, s32 = _ii(xs, torch.float32, **kw)
        m64, s64 = _ii(xs, torch.float64, **kw)
    # the narrow layers (1-D, 2-D and the targets) agree exactly; the 64-wide Linear layer
    # comes from float32 vs float64 weights, so only closely
    np.testing.assert_array_equal(m32[:2], m64[:2])
    np.testing.assert_array_equal(s32.result.extras["reverse"][:2], s64.result.extras["reverse"][:2])
    np.testing.assert_allclose(m32[2], m64[2], atol=5e-3)


def test_streaming_ii_true_duplicates_warn_naming_the_layers():
    g = torch.Generator().manual_seed(2)
    x = ii_inputs(500, g)
    x[10] = x[3]
    with pytest.warns(UserWarning) as rec:
        _ii([x], torch.float32)
    text = " ".join(str(r.message) for r in rec)
    assert "A layers ['one', 'two', 'wide'] have coincident samples" in text
    assert "B layers ['cube', 'wave'] have coincident samples" in text


def test_sparse_ranking_with_float32_keys_equals_dense_float64_ranking():
    """Float32 sort keys merge distances closer than a float32 ulp; ties and such
    collisions are settled on the float64 rows, so the sparse path equals the dense one."""
    g = torch.Generator().manual_seed(1)
    for trial in range(12):
        n = 40
        base = torch.randint(0, 6, (3, n, n), generator=g).double() + 1.0  # many exact ties
        pert = (torch.rand(3, n, n, generator=g, dtype=torch.float64) - 0.5) * 1e-9 * (trial % 3)
        d = base + pert  # and distances closer than float32 can tell apart
        d = (d + d.transpose(-1, -2)) / 2
        d.diagonal(dim1=-2, dim2=-1).zero_()
        db = d[[2, 0, 1]].clone()
        for other in (db, None):
            dense = F.imbalance_sums(d, other, method="dense")
            sparse = F.imbalance_sums(d, other, method="sparse")
            for u, v in zip(dense, sparse):
                torch.testing.assert_close(u, v, rtol=0, atol=1e-9)
