"""What an interrupted pass keeps (issue 13, cases 5 and 8): the partial result holds whole,
verified batches only, and says it is partial.

* Ctrl-C arriving while metrics add a batch to their sums waits until every metric has the
  whole batch;
* an exception inside a metric's own update leaves that metric out of the partial results;
* a NaN batch found late (the deferred check of an accelerator, forced here on the CPU)
  is rolled out of the sums before any partial result is built.
"""

from __future__ import annotations

import os
import signal
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from simtorch import CKA, SimilarityModel, compare
from simtorch.metrics import Computed, Metric
from simtorch.placement import FiniteGuard

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYERS = ["fc1", "act", "fc2"]


def net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(fc1=nn.Linear(5, 7), act=nn.ReLU(), fc2=nn.Linear(7, 3)))


def batches(k: int = 8, n: int = 8, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 5, generator=g) + 1.0 for _ in range(k)]


class TwoSums(Metric):
    """Adds each batch to two sums that must stay equal; at batch ``at`` something happens
    between the two additions (``what``: "sigint" sends Ctrl-C to this process, "raise"
    raises)."""

    key = "twosums"
    name = "TwoSums"

    def __init__(self, at: int, what: str) -> None:
        self.at, self.what, self.seen = at, what, 0

    def setup(self) -> None:
        self.add_state("x", (self.binding.layers_a, self.binding.layers_b))
        self.add_state("y", (self.binding.layers_a, self.binding.layers_b))

    def update(self, batch) -> None:
        self.state("x").add_(batch.n)
        if self.seen == self.at:
            if self.what == "sigint":
                os.kill(os.getpid(), signal.SIGINT)
            else:
                raise RuntimeError("bug inside update")
        self.state("y").add_(batch.n)
        self.count(batch.n)
        self.seen += 1

    def compute(self) -> Computed:
        return Computed(self.state("x") - self.state("y"))


def models():
    return SimilarityModel(net(0), "A", LAYERS), SimilarityModel(net(1), "B", LAYERS)


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="needs POSIX signals")
def test_ctrl_c_during_an_update_keeps_whole_batches():
    a, b = models()
    xs = batches()
    with pytest.raises(KeyboardInterrupt) as info:
        compare(a, b, xs, {"cka": "cka", "sums": TwoSums(at=3, what="sigint")}, progress=False)
    partial = info.value.simtorch_partial
    assert set(partial) == {"cka", "sums"}
    for r in partial.values():
        assert r.settings["partial"] is True and r.settings["stopped_by"] == "KeyboardInterrupt"
        assert (r.n_batches, r.n_samples) == (4, 32)  # batch 3 was completed by every metric
    np.testing.assert_array_equal(partial["sums"].matrix, 0)  # the two sums hold the same batches
    full = compare(a, b, xs[:4], ["cka"], progress=False)["cka"]
    np.testing.assert_allclose(partial["cka"].matrix, full.matrix, atol=1e-12)


def test_an_error_inside_an_update_leaves_that_metric_out():
    a, b = models()
    with pytest.raises(RuntimeError, match="bug inside update") as info:
        compare(a, b, batches(), {"cka": "cka", "sums": TwoSums(at=3, what="raise")}, progress=False)
    partial = info.value.simtorch_partial
    assert set(partial) == {"cka"}  # the torn sums make no result
    assert partial["cka"].n_batches == 4 and partial["cka"].settings["stopped_by"] == "RuntimeError"


def test_interrupted_compute_result_is_marked():
    a, b = models()

    def loader():
        yield from batches(5)
        raise KeyboardInterrupt

    sim = CKA(a, b, progress=False)
    with pytest.raises(KeyboardInterrupt):
        sim.compute(loader())
    r = sim.result
    assert r.settings["partial"] is True and r.settings["stopped_by"] == "KeyboardInterrupt"
    assert (r.n_batches, r.n_samples) == (5, 40)


# ---------------------------------------------------------------- a NaN found late


class Poison(nn.Module):
    """fc1 → act → fc2, with a NaN written into fc1's output at batch ``at``."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.inner = net(0)
        self.at, self.calls = at, 0

    def forward(self, x):
        self.calls += 1
        h = self.inner.fc1(x)
        if self.calls - 1 == self.at:
            h = h.clone()
            h[1, 2] = float("nan")
        return self.inner.fc2(self.inner.act(h))


@pytest.fixture
def deferred(monkeypatch):
    """The accelerator's deferred NaN check (every 64 batches there), every 4 here."""
    init = FiniteGuard.__init__

    def patched(self, device, *args, **kwargs):
        init(self, device, *args, **kwargs)
        self.sync_every = 4

    monkeypatch.setattr(FiniteGuard, "__init__", patched)


def poison_pair(at: int):
    model = Poison(at)
    a = SimilarityModel(model, "P", ["inner.fc1", "inner.fc2"])
    b = SimilarityModel(net(1), "B", LAYERS)
    return model, a, b


def clean_grid(n_batches: int) -> np.ndarray:
    a = SimilarityModel(net(0), "P", ["fc1", "fc2"])
    b = SimilarityModel(net(1), "B", LAYERS)
    return CKA(a, b, progress=False).compute(batches(n_batches))


def test_nan_found_late_is_rolled_out_of_the_partial_result(deferred):
    _, a, b = poison_pair(at=5)  # verified after batch 3; batch 5 is bad; found after batch 7
    sim = CKA(a, b, progress=False)
    with pytest.raises(FloatingPointError, match=r"batch 5 holds NaN or inf \(layers \['inner.fc2'\]\)"):
        sim.compute(batches(8))
    r = sim.result
    assert r is not None and r.settings["partial"] is True
    assert (r.n_batches, r.n_samples) == (4, 32)  # back to the last verified batch
    assert np.isfinite(r.matrix).all()
    np.testing.assert_allclose(r.matrix, clean_grid(4), atol=1e-12)


def test_nan_pending_when_interrupted_is_rolled_out_too(deferred):
    _, a, b = poison_pair(at=5)
    xs = batches(8)

    def loader():
        yield from xs[:7]
        raise KeyboardInterrupt  # before the check after batch 7 found batch 5

    with pytest.raises(KeyboardInterrupt) as info:
        compare(a, b, loader(), ["cka", "ii"], progress=False)
    partial = info.value.simtorch_partial
    assert set(partial) == {"cka", "ii"}
    for r in partial.values():
        assert r.n_batches == 4 and np.isfinite(r.matrix).all()
    assert "batch 5" in info.value.simtorch_nan
    np.testing.assert_allclose(partial["cka"].matrix, clean_grid(4), atol=1e-12)
