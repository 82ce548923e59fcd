"""The streaming engine: needs checked before the first forward pass, what a batch hands a
metric (Grams, raw products, features), run options, and cleanup on error."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from simtorch import CKA, SimilarityModel, compare
from simtorch.engine import RunOptions, stream
from simtorch.metrics import Computed, Metric, Needs

LAYERS = ["fc1", "act", "fc2"]


def net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(fc1=nn.Linear(5, 7), act=nn.ReLU(), fc2=nn.Linear(7, 3)))


def batches(k: int = 3, n: int = 8, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 5, generator=g) + 3.0 for _ in range(k)]


class Recorder(Metric):
    """Keeps what the engine hands over (tests only)."""

    name = "recorder"

    def __init__(self, needs: Needs | None = None) -> None:
        self._needs = needs or Needs()
        self.seen: list = []

    def needs(self) -> Needs:
        return self._needs

    def update(self, batch) -> None:
        self.seen.append(batch)
        self.count(batch.n)

    def compute(self) -> Computed:
        return Computed(torch.zeros(self.binding.layers_a, self.binding.layers_b))


def counting(model: nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_needs_are_checked_before_the_first_forward_pass():
    model = net(0)
    calls = counting(model)
    dict_batches = [{"x": x} for x in batches()]
    a = SimilarityModel(model, "A", LAYERS)
    with pytest.raises(TypeError, match="confounder_fn") as info:
        compare(a, a, dict_batches, ["cka", "dcka"], progress=False, input_fn=lambda b: {"input": b["x"]})
    assert calls == [0]  # refused before any model ran: no other metric's work was lost
    assert "dict" in str(info.value)


def test_raw_products_rebuild_uncentred_inner_products_exactly():
    x = batches(1, 9)[0].double()
    model = net(1).double()
    rec = Recorder(Needs(raw_products=True))
    a = SimilarityModel(model, "A", LAYERS)
    stream(a, a, [x], [rec], "cpu", progress=False)
    batch = rec.seen[0]
    v, mu_sq, row_sums, d = batch.raw("a")
    feats = a.activations(x)
    for i, name in enumerate(LAYERS):
        f = feats[name].reshape(9, -1).double()
        g = batch.grams("a")[i].double()
        rebuilt = g + v[i][:, None] + v[i][None, :] + mu_sq[i]
        np.testing.assert_allclose(rebuilt.numpy(), (f @ f.T).numpy(), rtol=1e-10, atol=1e-10)
        assert float(mu_sq[i]) > 0.1  # an offset worth rebuilding (inputs are shifted by 3)
        np.testing.assert_allclose(row_sums[i].numpy(), f.sum(1).numpy(), rtol=1e-12)
        assert int(d[i]) == f.shape[1]


def test_features_are_handed_over_through_the_declared_transform():
    x = batches(2, 6)
    rec = Recorder(Needs(features=lambda f: f[:, :2] * 2))
    a = SimilarityModel(net(0), "A", LAYERS)
    stream(a, a, x, [rec], "cpu", progress=False)
    feats = a.activations(x[1])
    for i, name in enumerate(LAYERS):
        np.testing.assert_allclose(rec.seen[1].features("a")[i].numpy(), feats[name][:, :2].numpy() * 2, rtol=1e-6)


def test_two_different_feature_transforms_in_one_pass_are_refused():
    a = SimilarityModel(net(0), "A", LAYERS)
    r1, r2 = Recorder(Needs(features=lambda f: f)), Recorder(Needs(features=lambda f: f * 2))
    with pytest.raises(ValueError, match="differently transformed features"):
        stream(a, a, batches(), [r1, r2], "cpu", progress=False)


def test_run_options_are_validated_once_with_a_clear_message():
    with pytest.raises(ValueError, match="autocast"):
        RunOptions(autocast=torch.float64)
    with pytest.raises(TypeError, match="input_fn"):
        RunOptions(input_fn="x")
    a = SimilarityModel(net(0), "A", LAYERS)
    with pytest.raises(TypeError, match="run options are"):
        CKA(a, a, kernal="rbf")  # a typo names the metric's options and the run options
    with pytest.raises(TypeError, match="unexpected keyword argument 'progres'"):
        compare(a, a, batches(), ["cka"], progres=False)
    with pytest.raises(ValueError, match="unknown metric 'ckaa'.*cka"):
        compare(a, a, batches(), ["ckaa"], progress=False)


def test_error_mid_pass_restores_the_model_and_keeps_a_partial_result():
    model = net(0)
    model.train()
    model.act.eval()  # a mixed state that must come back as it was

    def loader():
        yield from batches(2)
        raise RuntimeError("disk went away")

    a = SimilarityModel(model, "A", LAYERS)
    sim = CKA(a, a, progress=False)
    with pytest.raises(RuntimeError, match="disk went away"):
        sim.compute(loader())
    assert model.training and not model.act.training and model.fc1.training
    assert all(not m._forward_hooks for m in model.modules())
    assert sim.result is not None and sim.result.settings["partial"] is True
    assert sim.result.n_batches == 2
    np.testing.assert_allclose(sim.result.matrix, CKA(a, a, progress=False).compute(batches(2)), atol=1e-12)


def test_compare_attaches_partial_results_to_the_exception():
    def loader():
        yield from batches(3)
        raise KeyboardInterrupt

    a, b = SimilarityModel(net(0), "A", LAYERS), SimilarityModel(net(1), "B", LAYERS)
    with pytest.raises(KeyboardInterrupt) as info:
        compare(a, b, loader(), ["cka", "ii"], progress=False)
    partial = info.value.simtorch_partial
    assert set(partial) == {"cka", "ii"}
    assert all(r.settings["partial"] and r.n_batches == 3 for r in partial.values())
    full = compare(a, b, batches(3), ["cka"], progress=False)["cka"]
    np.testing.assert_allclose(partial["cka"].matrix, full.matrix, atol=1e-12)


def test_engine_returns_the_number_of_batches_and_refuses_an_empty_loader():
    a = SimilarityModel(net(0), "A", LAYERS)
    assert stream(a, a, batches(4), [Recorder()], "cpu", progress=False) == 4
    with pytest.raises(ValueError, match="no batches"):
        stream(a, a, [], [Recorder()], "cpu", progress=False)


# ----------------------------------------------------------------------------- workspace


def test_workspace_buffers_outside_the_heap_keep_their_memory() -> None:
    """Large CPU buffers sit in memory maps of their own (page-aligned) that the tensor keeps
    alive: written, collected garbage, read back; a larger request gives a new buffer, a
    smaller one a view of the same memory."""
    import gc

    from simtorch.capture import MAPPED_BYTES, Workspace

    ws = Workspace()
    n = MAPPED_BYTES // 4 * 3
    big = ws.get(("k",), (3, n // 3), torch.float32, torch.device("cpu"))
    assert big.data_ptr() % 4096 == 0
    big.copy_(torch.arange(n, dtype=torch.float32).view(3, -1))
    gc.collect()
    again = ws.get(("k",), (n,), torch.float32, torch.device("cpu"))
    assert again.data_ptr() == big.data_ptr()
    assert torch.equal(again, torch.arange(n, dtype=torch.float32))
    torch.mul(again, 2.0, out=again)  # an out= op on the mapped storage
    assert again[-1].item() == 2.0 * (n - 1)
    small = ws.get(("s",), (4,), torch.float64, torch.device("cpu"))
    small.fill_(1.0)
    assert small.sum().item() == 4.0
    grown = ws.get(("k",), (2 * n,), torch.float32, torch.device("cpu"))
    assert grown.numel() == 2 * n and grown.data_ptr() != big.data_ptr()
