"""torch.distributed: two CPU processes (gloo, loopback) each stream their DistributedSampler
shard; the all-reduced sums give every rank the single-process grid.

The streaming estimators are sums over batches with the ratio taken once at the end, so
a single process fed the same batches (rank 0's shard, then rank 1's) must give the same
numbers up to float64 summation order. One spawn serves every test (module fixture).
"""

from __future__ import annotations

import gc
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

from rendezvous import file_store
from simtorch import CKA, SimilarityModel, compare

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: see conftest.py

WORLD = 2
N, D, BATCH = 64, 10, 8
LAYERS_A = ["fc1", "act", "fc2"]
LAYERS_B = ["fc1", "bn", "fc2", "out"]


def model_a() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(fc1=nn.Linear(D, 16), act=nn.ReLU(), fc2=nn.Linear(16, 8)))


def model_b() -> nn.Module:
    torch.manual_seed(1)
    m = nn.Sequential(OrderedDict(fc1=nn.Linear(D, 12), bn=nn.BatchNorm1d(12), fc2=nn.Linear(12, 12),
                                  act=nn.Tanh(), out=nn.Linear(12, 4)))
    with torch.no_grad():  # non-trivial running statistics (eval mode uses them)
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
    return m


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    x[:, :3] += 2 * torch.randn(N, 1, generator=g)  # shared structure, so grids are not ~0
    return TensorDataset(x, torch.arange(N))


def shard_loader(rank: int) -> DataLoader:
    ds = dataset()
    sampler = DistributedSampler(ds, num_replicas=WORLD, rank=rank, shuffle=False)
    return DataLoader(ds, batch_size=BATCH, sampler=sampler)


def run_all(a: SimilarityModel, b: SimilarityModel, loader) -> dict:
    """Everything the tests compare, as plain numpy (picklable)."""
    out = {}
    sim = CKA(a, b, progress=False)  # unbiased by default
    out["CKA"] = (sim.compute(loader), sim.result.n_samples, sim.result.n_batches)
    res = compare(a, b, loader, ["cka", "dcka", "ii"], progress=False,
                  cka_kwargs={"unbiased": True}, dcka_kwargs={"unbiased": True})
    for key, r in res.items():
        out["compare." + key] = (r.matrix, r.n_samples, r.n_batches)
    out["compare.ii.reverse"] = (res["ii"].extras["reverse"], res["ii"].n_samples, res["ii"].n_batches)
    r = compare(a, b, loader, ["dcka"], progress=False, dcka_kwargs={"remove_negative_eig": True})["dcka"]
    out["dcka_biased_psd"] = (r.matrix, r.n_samples, r.n_batches)
    return out


def run_ddp(rank: int) -> dict:
    """DDP-wrapped models: names without 'module.', forward through the wrapper. A function
    of its own so the wrappers, whose reducers hold the process group, are gone before the
    group is destroyed: a ProcessGroupGloo that outlives destroy_process_group is torn down
    at interpreter exit with its threads still joinable ("terminate called without an
    active exception", SIGABRT; seen once in CI, 2026-12-03)."""
    out = {}
    ddp_a = nn.parallel.DistributedDataParallel(model_a())
    ddp_b = nn.parallel.DistributedDataParallel(model_b())
    wa = SimilarityModel(ddp_a, layers_to_include=LAYERS_A)
    wb = SimilarityModel(ddp_b, layers_to_include=["fc1", "bn", "fc2", "out"])
    out["ddp_names"] = (wa.layer_names, wb.layer_names, wa.available_layers())
    sim = CKA(wa, wb, progress=False)
    out["ddp.CKA"] = (sim.compute(shard_loader(rank)), sim.result.n_samples, sim.result.n_batches)
    out["ddp_bn_unchanged"] = bool(torch.equal(ddp_b.module.bn.running_mean, model_b().bn.running_mean))
    return out


def _worker(rank: int, store: str, outdir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=WORLD)
    try:
        a = SimilarityModel(model_a(), model_name="A", layers_to_include=LAYERS_A)
        b = SimilarityModel(model_b(), model_name="B", layers_to_include=LAYERS_B)
        out = run_all(a, b, shard_loader(rank))
        out.update(run_ddp(rank))
        with open(os.path.join(outdir, f"rank{rank}.pkl"), "wb") as f:
            pickle.dump(out, f)
        dist.barrier()  # neither rank tears its side down while the other still talks
    finally:
        gc.collect()  # nothing left that holds the group (DDP reducers, work objects)
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    outdir = str(tmp_path_factory.mktemp("dist"))
    mp.spawn(_worker, args=(file_store(outdir), outdir), nprocs=WORLD, join=True)
    results = []
    for r in range(WORLD):
        with open(os.path.join(outdir, f"rank{r}.pkl"), "rb") as f:
            results.append(pickle.load(f))
    return results


@pytest.fixture(scope="module")
def single():
    """One process fed the same batches: rank 0's shard, then rank 1's."""
    assert not (dist.is_available() and dist.is_initialized())
    batches = [b for r in range(WORLD) for b in shard_loader(r)]
    a = SimilarityModel(model_a(), model_name="A", layers_to_include=LAYERS_A)
    b = SimilarityModel(model_b(), model_name="B", layers_to_include=LAYERS_B)
    return run_all(a, b, batches)


KEYS = ["CKA", "compare.cka", "compare.dcka", "compare.ii", "compare.ii.reverse", "dcka_biased_psd"]


@pytest.mark.parametrize("key", KEYS)
def test_two_ranks_equal_single_process(ranks, single, key):
    want, n_want, b_want = single[key]
    assert n_want == N and b_want == N // BATCH
    assert np.isfinite(want).all() and np.abs(want).max() > 0.05  # a grid worth comparing
    for r, res in enumerate(ranks):
        got, n_got, b_got = res[key]
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0, err_msg=f"rank {r}, {key}")
        assert (n_got, b_got) == (N, N // BATCH), f"rank {r}, {key}: counts are not summed over ranks"


def test_one_shard_alone_differs(single):
    # guards the test itself: without the all-reduce a rank would hold its shard's grid
    a = SimilarityModel(model_a(), layers_to_include=LAYERS_A)
    b = SimilarityModel(model_b(), layers_to_include=LAYERS_B)
    shard = CKA(a, b, progress=False).compute(shard_loader(0))
    assert np.abs(shard - single["CKA"][0]).max() > 1e-3


def test_ddp_wrapped_models(ranks, single):
    for res in ranks:
        names_a, names_b, available = res["ddp_names"]
        assert names_a == LAYERS_A and names_b == LAYERS_B
        assert not any(n.startswith("module") for n in available)
        got, n_got, _ = res["ddp.CKA"]
        np.testing.assert_allclose(got, single["CKA"][0], atol=1e-6, rtol=0)
        assert n_got == N
        assert res["ddp_bn_unchanged"]
