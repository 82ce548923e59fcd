"""The metric contract proven by a measure written against it in ~40 lines.

``MeanBatchCKA`` (the mean over batches of per-batch linear CKA, a test-only plug-in and a
known-wrong estimator of full-data CKA) declares two sum states and nothing else. It must
run through ``compare`` next to CKA in the same pass, equal an independent reference, and
be all-reduced by the engine under gloo without knowing anything about processes.
"""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import reference as ref
from rendezvous import file_store
from simtorch import CKA, SimilarityModel, compare
from simtorch.metrics import Computed, Metric


class MeanBatchCKA(Metric):
    """Mean of per-batch linear CKA (biased HSIC), with the standard error over batches."""

    name = "mean batch CKA"

    def setup(self) -> None:
        b = self.binding
        self.add_state("total", (b.layers_a, b.layers_b))
        self.add_state("total_sq", (b.layers_a, b.layers_b))

    def update(self, batch) -> None:
        if batch.n < 2:
            self.skip(batch.n)
            return
        fa = batch.centered("a", "linear", 1.0, False)
        fb = batch.centered("b", "linear", 1.0, False)
        cka = (fa @ fb.T) / torch.sqrt((fa * fa).sum(-1)[:, None] * (fb * fb).sum(-1)[None, :])
        self.state("total").add_(cka)
        self.state("total_sq").add_(cka * cka)
        self.count(batch.n)

    def compute(self) -> Computed:
        b = self.n_used
        mean = self.state("total") / b
        var = (self.state("total_sq") / b - mean * mean).clamp_min(0) * b / max(b - 1, 1)
        return Computed(mean, torch.sqrt(var / b) if b > 1 else torch.full_like(mean, float("nan")))


N, D, BATCH = 48, 6, 8
LAYERS = ["fc1", "act", "fc2"]


def net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(fc1=nn.Linear(D, 10), act=nn.Tanh(), fc2=nn.Linear(10, 5)))


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N, D, generator=g)
    x[:, :2] += 2 * torch.randn(N, 1, generator=g)
    return TensorDataset(x)


def acts(model: nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    out, handles = {}, []
    for name in LAYERS:
        handles.append(dict(model.named_modules())[name].register_forward_hook(
            lambda m, i, o, name=name: out.__setitem__(name, o.detach().double().numpy())))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return out


def reference_grid(batches: list[torch.Tensor]) -> np.ndarray:
    ma, mb = net(0), net(1)
    per = [(acts(ma, x), acts(mb, x)) for x in batches]
    return np.array([[ref.mean_of_batch_ckas([p[0][i] for p in per], [p[1][j] for p in per])
                      for j in LAYERS] for i in LAYERS])


def test_toy_plugin_runs_with_cka_in_one_pass_and_matches_reference():
    ma, mb = net(0), net(1)
    calls = {"a": 0, "b": 0}
    ha = ma.register_forward_hook(lambda *_: calls.__setitem__("a", calls["a"] + 1))
    hb = mb.register_forward_hook(lambda *_: calls.__setitem__("b", calls["b"] + 1))
    loader = DataLoader(dataset(), batch_size=BATCH)
    a = SimilarityModel(ma, "A", LAYERS)
    b = SimilarityModel(mb, "B", LAYERS)
    try:
        res = compare(a, b, loader, {"cka": "cka", "toy": MeanBatchCKA()}, progress=False)
    finally:
        ha.remove()
        hb.remove()
    assert calls == {"a": N // BATCH, "b": N // BATCH}  # one forward pass per batch per model
    want = reference_grid([x for (x,) in loader])
    assert np.abs(want).max() > 0.1 and np.ptp(want) > 0.05
    np.testing.assert_allclose(res["toy"].matrix, want, atol=1e-6, rtol=0)
    assert res["toy"].metric == "mean batch CKA" and res["toy"].layers_a == LAYERS
    assert res["toy"].n_batches == N // BATCH and res["toy"].n_samples == N
    assert np.isfinite(res["toy"].stderr).all() and (res["toy"].stderr > 0).all()
    # the other metric of the pass is untouched by the plug-in
    alone = CKA(SimilarityModel(net(0), "A", LAYERS), SimilarityModel(net(1), "B", LAYERS),
                progress=False).compute(loader)
    np.testing.assert_allclose(res["cka"].matrix, alone, atol=1e-12, rtol=0)
    # and the toy measure really is another estimator (so the comparison above can fail)
    assert np.abs(res["toy"].matrix - res["cka"].matrix).max() > 1e-3


def test_state_dict_round_trip_restores_every_declared_state():
    loader = DataLoader(dataset(), batch_size=BATCH)
    a, b = SimilarityModel(net(0), "A", LAYERS), SimilarityModel(net(1), "B", LAYERS)
    m = MeanBatchCKA()
    compare(a, b, loader, {"toy": m}, progress=False)
    sd = m.state_dict()
    assert set(sd) >= {"state.total", "state.total_sq", "counter.n_used", "counter.n_samples"}
    fresh = MeanBatchCKA()
    fresh.bind(m.binding)
    fresh.load_state_dict(sd)
    np.testing.assert_array_equal(fresh.compute().matrix.numpy(), m.compute().matrix.numpy())
    assert fresh.n_used == m.n_used == N // BATCH


WORLD = 2


def _worker(rank: int, store: str, outdir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=WORLD)
    try:
        ds = dataset()
        loader = DataLoader(ds, batch_size=BATCH,
                            sampler=DistributedSampler(ds, num_replicas=WORLD, rank=rank, shuffle=False))
        res = compare(SimilarityModel(net(0), "A", LAYERS), SimilarityModel(net(1), "B", LAYERS), loader,
                      {"cka": "cka", "toy": MeanBatchCKA()}, progress=False)
        with open(os.path.join(outdir, f"rank{rank}.pkl"), "wb") as f:
            pickle.dump({k: (r.matrix, r.n_batches, r.n_samples) for k, r in res.items()}, f)
    finally:
        dist.destroy_process_group()


def test_toy_plugin_is_all_reduced_under_gloo(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    mp.spawn(_worker, args=(file_store(tmp_path), str(tmp_path)), nprocs=WORLD, join=True)
    ds = dataset()
    batches = [x for r in range(WORLD) for (x,) in DataLoader(
        ds, batch_size=BATCH, sampler=DistributedSampler(ds, num_replicas=WORLD, rank=r, shuffle=False))]
    want = reference_grid(batches)
    for r in range(WORLD):
        with open(tmp_path / f"rank{r}.pkl", "rb") as f:
            got = pickle.load(f)
        matrix, n_batches, n_samples = got["toy"]
        assert (n_batches, n_samples) == (N // BATCH, N), f"rank {r}: counters not summed over ranks"
        np.testing.assert_allclose(matrix, want, atol=1e-6, rtol=0, err_msg=f"rank {r}")
