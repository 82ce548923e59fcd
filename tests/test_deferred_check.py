"""The κ check of the Gram products, deferred to after the forward pass (issue 12).

On the CPU the hooks multiply large activations as they are, or minus the mean of their
first rows, and check the product's rounding bound ``tr(G̃) ≤ GRAM_KAPPA · tr(G_c)`` for
all layers at once after the pass. A batch with a failed product runs again through that
model with every product checked in its hook, and the failed layer is centred by its exact
mean from then on. These tests pin what that must not change: the values, the user's model
(no second pass in training mode), and how often the model runs.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

import simtorch.functional as F
from simtorch import CKA, SimilarityModel
from simtorch.engine import stream
from simtorch.functional import linear_grams
from simtorch.metrics import Computed, Metric

N, WIDTH = 256, 40  # a shift by the mean of k rows misses by κ − 1 ≤ n/k: n > 15·k can fail


class Keep(Metric):
    """Keeps each batch's Grams and energies (tests only)."""

    name = "keep"

    def __init__(self) -> None:
        self.grams: list[torch.Tensor] = []
        self.energy: list[torch.Tensor] = []

    def update(self, batch) -> None:
        self.grams.append(batch.grams_a.clone())
        self.energy.append(batch.energy_a.clone())

    def compute(self) -> Computed:
        return Computed(torch.zeros(self.binding.layers_a, self.binding.layers_b))


class FarHead(nn.Module):
    """The first rows of every batch far from the rest: their mean is a useless shift."""

    def __init__(self, far: bool = True) -> None:
        super().__init__()
        self.far = far

    def forward(self, x):
        y = x + 1e3
        return torch.cat([y[: linear_grams.SHIFT_ROWS] + 1e3, y[linear_grams.SHIFT_ROWS:]]) if self.far else y


class Counted(nn.Sequential):
    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return super().forward(x)


def net(far: bool = True, batchnorm: bool = False) -> Counted:
    torch.manual_seed(0)
    mods = OrderedDict(fc=nn.Linear(6, WIDTH), act=nn.ReLU())
    if batchnorm:
        mods["bn"] = nn.BatchNorm1d(WIDTH)
    mods["big"] = FarHead(far)
    mods["tail"] = nn.Linear(WIDTH, 3)
    return Counted(mods)


def batches(k: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(N, 6, generator=g) for _ in range(k)]


@pytest.fixture(autouse=True)
def every_layer_large(monkeypatch):
    """Every activation counts as large, so the small test layers take the raw and shifted
    paths whose check is deferred."""
    monkeypatch.setattr(linear_grams, "RAW_MIN_ELEMENTS", 0)


def centred_gram64(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    acts = SimilarityModel(model, "M", [name]).activations(x)
    f = acts[name].double().reshape(x.shape[0], -1)
    f = f - f.mean(0)
    return f @ f.T


def run(model: Counted, layers: list[str], xs, **kw) -> Keep:
    keep = Keep()
    sm = SimilarityModel(model, "M", layers, **kw)
    stream(sm, sm, xs, [keep], "cpu", progress=False)
    return keep


def test_a_failed_product_reruns_its_batch_once_and_its_layer_is_exact_after():
    model, xs = net(far=True), batches()
    keep = run(model, ["fc", "big"], xs)
    # one extra forward pass, for the first batch: "big" is centred exactly from then on
    assert model.calls == len(xs) + 1
    for k, x in enumerate(xs):
        for i, name in enumerate(["fc", "big"]):
            want = centred_gram64(model, name, x)
            err = float((keep.grams[k][i].double() - want).abs().max() / want.diagonal().mean())
            assert err < 1e-5, (k, name, err)
        e = float((SimilarityModel(model, "M", ["big"]).activations(x)["big"].double() ** 2).sum())
        assert float(keep.energy[k][1]) == pytest.approx(e, rel=1e-5)


def test_products_that_pass_run_each_batch_once():
    model, xs = net(far=False), batches()
    keep = run(model, ["fc", "big"], xs)
    assert model.calls == len(xs)
    for k, x in enumerate(xs):
        want = centred_gram64(model, "big", x)
        assert float((keep.grams[k][1].double() - want).abs().max() / want.diagonal().mean()) < 1e-5


def test_a_model_in_training_mode_is_never_run_twice():
    """BatchNorm in training mode: a second pass would update its running statistics again,
    so the check stays in the hook (the failed product is redone there, from the same
    activation)."""
    model, xs = net(far=True, batchnorm=True), batches()
    model.train()
    keep = run(model, ["fc", "big"], xs, eval_mode=False)
    assert model.calls == len(xs)
    assert int(model.bn.num_batches_tracked) == len(xs)
    assert model.training  # restored
    for k in range(len(xs)):
        assert torch.isfinite(keep.grams[k]).all()


def test_deferring_changes_no_value():
    """The same CKA grid, to the bit, whether the checks wait for the end of the pass
    (eval mode) or run in each hook (training mode of a model with no BatchNorm or
    dropout, so both modes compute the same function)."""
    xs = batches(6)
    grids = []
    for eval_mode in (True, False):
        a = SimilarityModel(net(far=True), "A", ["fc", "act", "big"], eval_mode=eval_mode)
        b = SimilarityModel(net(far=False), "B", ["fc", "big", "tail"], eval_mode=eval_mode)
        grids.append(CKA(a, b, progress=False).compute(xs))
    assert torch.equal(torch.as_tensor(grids[0]), torch.as_tensor(grids[1]))


@pytest.mark.parametrize("case", ["raw", "shifted", "far"])
def test_deferred_check_agrees_with_the_check_in_the_hook(case):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(256, 512, generator=g)
    x = {"raw": z + 0.1, "shifted": z + 100.0, "far": z.clone()}[case]
    if case == "far":
        x[: linear_grams.SHIFT_ROWS] = 50.0 + 1e-3 * z[: linear_grams.SHIFT_ROWS]
    g_now, extra_now, _ = F.capture_product(x)
    g_later, pending, _ = F.capture_product(x, defer=True)
    assert isinstance(pending, F.Unchecked) and pending.raw == (case == "raw")
    trace, rows = F.gram_stats(g_later)
    extra = F.accept_product(float(trace), float(rows.sum()), x.shape[0], pending, torch.finfo(x.dtype).eps)
    if case == "far":
        assert extra is None  # and the hook redid it with the exact mean
        assert F.capture_product(x, exact=True)[1] is not None
    else:
        assert torch.equal(g_now, g_later)
        assert extra == pytest.approx(float(extra_now), rel=1e-5)


# ------------------------------------------------------------ the lean path of the hooks


class Strided(nn.Module):
    """An output that is not contiguous (a transposed view)."""

    def forward(self, x):
        return x.t().contiguous().t()


def lean_calls(monkeypatch) -> list[int]:
    """The layer indices LayerCapture._lean is called for, in order (it still captures)."""
    from simtorch import capture

    calls: list[int] = []
    lean = capture.LayerCapture._lean

    def spy(self, i, output, plan):
        calls.append(i)
        return lean(self, i, output, plan)

    monkeypatch.setattr(capture.LayerCapture, "_lean", spy)
    return calls


def test_lean_path_is_taken_and_gives_the_general_paths_bits(monkeypatch):
    """After the first batch a plain float32 output is captured by the lean path
    (LayerCapture._lean); with the plans disabled every batch takes the general path: the
    same Grams and energies to the bit, batch sizes changing included."""
    from simtorch import capture

    xs = batches(3) + [torch.randn(N - 40, 6), torch.randn(N, 6)]  # a smaller batch between
    calls = lean_calls(monkeypatch)
    runs = {}
    for kind in ("lean", "general"):
        if kind == "general":
            monkeypatch.setattr(capture.LayerCapture, "_plan", lambda self, i, output, t, plain: None)
        calls.clear()
        runs[kind] = run(net(far=False), ["fc", "act", "big", "tail"], xs)
        if kind == "lean":
            # batches 2 and 3, every layer; the smaller batch 4 and batch 5 each find a plan
            # made for another size and take the general path (making a new plan)
            assert calls == [0, 1, 2, 3] * 2
        else:
            assert calls == []
    for a, b in zip(runs["lean"].grams, runs["general"].grams):
        assert torch.equal(a, b)
    for a, b in zip(runs["lean"].energy, runs["general"].energy):
        assert torch.equal(a, b)


def test_outputs_the_lean_path_cannot_take_go_the_general_way(monkeypatch):
    """Not contiguous, or float64: the general path, every batch, with exact Grams."""
    calls = lean_calls(monkeypatch)
    torch.manual_seed(0)
    model = Counted(OrderedDict(fc=nn.Linear(6, WIDTH), strided=Strided(), tail=nn.Linear(WIDTH, 3)))
    keep = run(model, ["fc", "strided"], batches(3))
    assert calls == [0, 0]  # fc only, batches 2 and 3; never the strided layer
    for k, x in enumerate(batches(3)):
        want = centred_gram64(model, "strided", x)
        assert float((keep.grams[k][1].double() - want).abs().max() / want.diagonal().mean()) < 1e-5
    calls.clear()
    run(net(far=False).double(), ["fc", "big"], [x.double() for x in batches(3)])
    assert calls == []


def test_wide_layers_take_the_lean_path_when_ii_asks_for_narrow_features(monkeypatch):
    """Per-batch II asks for the float64 features of layers at most II_EXACT_DIM wide; a
    wider layer's are empty whatever its values, so it still takes the lean path, and the
    narrow one the general path (its features made from the output). Both grids are the
    ones every batch's general path gives, to the bit."""
    from simtorch import capture, compare
    from simtorch.metrics import ii

    assert WIDTH > F.II_EXACT_DIM >= 3
    calls = lean_calls(monkeypatch)
    widths: list[list[int]] = []
    rows = ii.batch_rows
    monkeypatch.setattr(ii, "batch_rows", lambda g, feats, e=None: widths.append([f.shape[1] for f in feats])
                        or rows(g, feats, e))
    runs = {}
    for kind in ("lean", "general"):
        if kind == "general":
            monkeypatch.setattr(capture.LayerCapture, "_plan", lambda self, i, output, t, plain: None)
        calls.clear()
        widths.clear()
        sm = SimilarityModel(net(far=False), "M", ["fc", "act", "tail"])
        res = compare(sm, sm, batches(3), metrics=("cka", "ii"), progress=False)
        runs[kind] = {k: torch.as_tensor(v.matrix) for k, v in res.items()}
        assert calls == ([0, 1] * 2 if kind == "lean" else [])
        assert widths == [[0, 0, 3]] * 3  # the narrow layer's features reached II, every batch
    for k in ("cka", "ii"):
        assert torch.equal(runs["lean"][k], runs["general"][k]), k
