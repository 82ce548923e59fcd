"""compare(..., loaders={...}): several loaders in one pass. Each loader's results equal a
pass over that loader alone, the pooled ones a pass over their concatenation; the models
run once per batch; partial results and resumable passes keep the per-loader shape."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import simtorch
from models import CountForward, conv_net, image_mlp, loader, structured_pixels
from simtorch import SimilarityModel
from simtorch import functional as F
from simtorch.metrics import CKAMetric

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: see conftest.py

LAYERS_A = ["conv1", "relu1", "conv2", "fc"]
LAYERS_B = ["fc1", "fc2", "fc3"]


class Concat:
    """The batches of several loaders, one after the other (the pooled reference)."""

    def __init__(self, *loaders) -> None:
        self.loaders = loaders

    def __iter__(self):
        for dl in self.loaders:
            yield from dl

    def __len__(self) -> int:
        return sum(len(dl) for dl in self.loaders)


class Failing:
    """A loader that raises at batch ``at`` (same length and dataset as ``inner``)."""

    def __init__(self, inner, at: int, exc: type[BaseException] = RuntimeError) -> None:
        self.inner, self.at, self.exc = inner, at, exc
        self.dataset = inner.dataset

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        for i, batch in enumerate(self.inner):
            if i == self.at:
                raise self.exc("the disk went away")
            yield batch


def models(seed_a: int = 0, seed_b: int = 1):
    a = SimilarityModel(conv_net(seed_a), "A", LAYERS_A, device="cpu")
    b = SimilarityModel(image_mlp(seed_b), "B", LAYERS_B, device="cpu")
    return a, b


def split_loaders():
    """Two loaders with different data (another seed, shifted) and ragged last batches:
    cats 16+16+8, dogs 16+16+2 (the last too small for unbiased CKA: skipped and counted)."""
    cats = loader(structured_pixels(40, seed=0), 16)
    dogs = loader(2.0 * structured_pixels(34, seed=5) + 0.5, 16)
    return cats, dogs


def same(r1, r2, tol: float = 1e-12) -> None:
    np.testing.assert_allclose(r1.matrix, r2.matrix, atol=tol, rtol=0, equal_nan=True)
    np.testing.assert_allclose(r1.stderr, r2.stderr, atol=tol, rtol=0, equal_nan=True)
    assert r1.layers_a == r2.layers_a and r1.layers_b == r2.layers_b and r1.metric == r2.metric
    assert (r1.n_samples, r1.n_batches, r1.n_skipped, r1.skipped_samples) == \
           (r2.n_samples, r2.n_batches, r2.n_skipped, r2.skipped_samples)
    assert set(r1.extras) == set(r2.extras)
    for k in r1.extras:
        np.testing.assert_allclose(r1.extras[k], r2.extras[k], atol=tol, rtol=0, equal_nan=True)


def quiet_compare(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return simtorch.compare(*args, **kwargs)


# ---------------------------------------------------------------- exactness


def test_each_loader_and_pooled_equal_separate_passes_with_one_forward_per_batch():
    a, b = models()
    cats, dogs = split_loaders()
    fa, fb = CountForward(a.model), CountForward(b.model)
    res = quiet_compare(a, b, loaders={"cats": cats, "dogs": dogs}, progress=False)
    assert list(res) == ["cats", "dogs", "pooled"]
    assert all(list(r) == ["cka", "dcka", "ii"] for r in res.values())
    assert fa.calls == fb.calls == len(cats) + len(dogs) == 6  # the models ran once per batch
    refs = {"cats": quiet_compare(a, b, cats, progress=False),
            "dogs": quiet_compare(a, b, dogs, progress=False),
            "pooled": quiet_compare(a, b, Concat(cats, dogs), progress=False)}
    for tag, ref in refs.items():
        for key in ("cka", "dcka", "ii"):
            same(res[tag][key], ref[key])
            assert res[tag][key].settings["loader"] == tag
    assert res["pooled"]["cka"].settings["loaders"] == ["cats", "dogs"]
    # the unbiased estimator skipped the 2-sample batch of dogs only, and the pooled count has it
    assert res["dogs"]["cka"].n_skipped == 1 and res["cats"]["cka"].n_skipped == 0
    assert res["pooled"]["cka"].n_skipped == 1
    assert res["pooled"]["cka"].n_samples == res["cats"]["cka"].n_samples + res["dogs"]["cka"].n_samples
    # the loaders really differ: a mix-up of routes would be caught
    assert np.nanmax(np.abs(res["cats"]["cka"].matrix - res["dogs"]["cka"].matrix)) > 1e-3


def test_buffered_and_instance_metrics_and_options_per_loader():
    """Information Imbalance over pooled subsets (buffered features, flushed per loader at
    the end), RBF CKA from a Metric instance, dict batches with input_key."""
    a, b = models(2, 3)
    xa, xb = structured_pixels(48, seed=1), structured_pixels(40, seed=2)

    def dicts(x, bs):
        return [{"pixels": x[i:i + bs], "label": torch.zeros(len(x[i:i + bs]))} for i in range(0, len(x), bs)]

    cats, dogs = dicts(xa, 16), dicts(xb, 12)
    metrics = {"rbf": CKAMetric(kernel="rbf", unbiased=False), "ii": "ii"}
    opts = dict(progress=False, input_key="pixels", ii_kwargs={"subset_size": 20})
    res = quiet_compare(a, b, metrics=metrics, loaders={"cats": cats, "dogs": dogs}, **opts)
    for tag, dl in (("cats", cats), ("dogs", dogs), ("pooled", cats + dogs)):
        ref = quiet_compare(a, b, dl, metrics={"rbf": CKAMetric(kernel="rbf", unbiased=False), "ii": "ii"}, **opts)
        same(res[tag]["rbf"], ref["rbf"])
        same(res[tag]["ii"], ref["ii"])
    assert res["cats"]["ii"].n_batches == 3  # subsets 20, 20 and the flushed remainder 8
    assert res["pooled"]["rbf"].settings["kernel"] == "rbf"


def test_model_against_itself_with_loaders():
    A = conv_net(6)
    counter = CountForward(A)
    cats, dogs = split_loaders()
    res = quiet_compare(A, A, loaders={"cats": cats, "dogs": dogs}, layers_a=LAYERS_A, metrics=("cka",),
                        progress=False)
    assert counter.calls == 6
    ref = quiet_compare(A, A, dogs, layers_a=LAYERS_A, metrics=("cka",), progress=False)
    same(res["dogs"]["cka"], ref["cka"])
    np.testing.assert_allclose(np.diag(res["pooled"]["cka"].matrix), 1.0, atol=1e-9)


# ---------------------------------------------------------------- pooled is not the mean


def test_pooled_cka_sums_the_hsic_terms_and_is_not_the_mean_of_the_loaders():
    a, b = models(4, 5)
    cats, dogs = split_loaders()
    res = quiet_compare(a, b, loaders={"cats": cats, "dogs": dogs}, metrics=("cka", "ii"), progress=False)
    c, d, p = (res[t]["cka"] for t in ("cats", "dogs", "pooled"))
    # the pooled sums are the sums of the loaders' ...
    for term in ("cross", "self_a", "self_b", "scale_a", "scale_b"):
        key = f"hsic_{term}"
        np.testing.assert_allclose(p.extras[key], c.extras[key] + d.extras[key], rtol=1e-12, atol=0)
    # ... the pooled grid is their ratio ...
    e = p.extras
    ratio = F.cka_from_hsic(*(torch.from_numpy(e[f"hsic_{t}"]) for t in ("cross", "self_a", "self_b",
                                                                           "scale_a", "scale_b")))
    np.testing.assert_allclose(p.matrix, ratio.numpy(), atol=1e-12, rtol=0)
    # ... which is not the mean of the loaders' ratios (sum-then-ratio)
    mean = (c.matrix + d.matrix) / 2
    assert np.nanmax(np.abs(p.matrix - mean)) > 1e-3
    # per-batch II: the mean over batches weighted by size, so the pooled grid is the
    # loaders' mean weighted by their sample counts (and not their plain mean)
    ic, idg, ip = (res[t]["ii"] for t in ("cats", "dogs", "pooled"))
    weighted = (ic.n_samples * ic.matrix + idg.n_samples * idg.matrix) / (ic.n_samples + idg.n_samples)
    np.testing.assert_allclose(ip.matrix, weighted, atol=1e-12, rtol=0)
    np.testing.assert_allclose(ip.extras["reverse"], (ic.n_samples * ic.extras["reverse"] + idg.n_samples
                                                      * idg.extras["reverse"]) / (ic.n_samples + idg.n_samples),
                               atol=1e-12, rtol=0)


# ---------------------------------------------------------------- interruption, resuming


def test_interrupted_pass_keeps_the_per_loader_shape():
    a, b = models()
    cats, dogs = split_loaders()
    with pytest.raises(RuntimeError, match="disk went away") as info:
        quiet_compare(a, b, loaders={"cats": cats, "dogs": Failing(dogs, at=1)}, metrics=("cka",), progress=False)
    part = info.value.simtorch_partial
    assert list(part) == ["cats", "dogs", "pooled"]
    ref_cats = quiet_compare(a, b, cats, metrics=("cka",), progress=False)["cka"]
    np.testing.assert_allclose(part["cats"]["cka"].matrix, ref_cats.matrix, atol=1e-12, rtol=0)
    assert part["cats"]["cka"].n_batches == 3 and part["dogs"]["cka"].n_batches == 1
    assert part["pooled"]["cka"].n_batches == 4
    assert part["dogs"]["cka"].settings["partial"] is True and part["dogs"]["cka"].settings["loader"] == "dogs"
    # interrupted inside the first loader: the second is not in the partial results
    with pytest.raises(RuntimeError) as info:
        quiet_compare(a, b, loaders={"cats": Failing(cats, at=2), "dogs": dogs}, metrics=("cka",), progress=False)
    assert list(info.value.simtorch_partial) == ["cats", "pooled"]


def test_resumed_pass_equals_an_uninterrupted_one(tmp_path):
    a, b = models(7, 8)
    cats, dogs = split_loaders()
    state = tmp_path / "run.npz"
    metrics = ("cka", "dcka", "ii")
    whole = quiet_compare(a, b, loaders={"cats": cats, "dogs": dogs}, metrics=metrics, progress=False)
    with pytest.raises(KeyboardInterrupt):
        quiet_compare(a, b, loaders={"cats": cats, "dogs": Failing(dogs, at=2, exc=KeyboardInterrupt)},
                      metrics=metrics, progress=False, state_path=state, save_every=1)
    assert state.exists()
    fa = CountForward(a.model)
    res = quiet_compare(a, b, loaders={"cats": cats, "dogs": dogs}, metrics=metrics, progress=False,
                        state_path=state)
    assert fa.calls == 1  # only the batch the interrupted run never reached
    for tag in whole:
        for key in metrics:
            same(res[tag][key], whole[tag][key])
            assert res[tag][key].settings["resumed_batches"] == 5
    # another set of loaders is another run: refused, not mixed in
    with pytest.raises(ValueError, match="another run"):
        quiet_compare(a, b, loaders={"dogs": dogs, "cats": cats}, metrics=metrics, progress=False, state_path=state)


def test_state_path_with_buffered_features_is_refused_clearly(tmp_path):
    a, b = models()
    cats, dogs = split_loaders()
    with pytest.raises(ValueError, match=r"state_path: InformationImbalanceMetric buffers features.*\['cats', "
                                         r"'dogs'\]"):
        quiet_compare(a, b, loaders={"cats": cats, "dogs": dogs}, metrics=("ii",), ii_kwargs={"subset_size": 20},
                      progress=False, state_path=tmp_path / "s.npz")


def test_warnings_name_the_loader():
    a, b = models()
    cats, dogs = split_loaders()
    with pytest.warns(UserWarning, match=r"loaders\['dogs'\]: CKA: skipped 1 batch"):
        simtorch.compare(a, b, loaders={"cats": cats, "dogs": dogs}, metrics=("cka",), progress=False)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"loader": "dl", "loaders": {"x": "dl"}}, TypeError, "both loader and loaders"),
        ({}, TypeError, "needs the data"),
        ({"loader": {"cats": "dl"}}, TypeError, "loaders="),
        ({"loaders": ["dl"]}, TypeError, "must be a dict"),
        ({"loaders": {}}, ValueError, "empty"),
        ({"loaders": {"pooled": "dl"}}, ValueError, "'pooled' is taken"),
        ({"loaders": {"x": 3}}, TypeError, r"loaders\['x'\] is a int"),
        ({"loaders": {1: "dl"}}, TypeError, "non-empty str"),
    ],
)
def test_loader_arguments_are_checked(kwargs, exc, match):
    dl = loader(structured_pixels(16), 8)
    kwargs = {k: ({n: dl if v == "dl" else v for n, v in val.items()} if isinstance(val, dict)
                  else [dl] if isinstance(val, list) else dl if val == "dl" else val) for k, val in kwargs.items()}
    with pytest.raises(exc, match=match):
        simtorch.compare(conv_net(0), image_mlp(1), layers_a=LAYERS_A, layers_b=LAYERS_B, progress=False, **kwargs)


def test_an_empty_loader_is_named():
    a, b = models()
    cats, _ = split_loaders()
    with pytest.raises(ValueError, match=r"loaders \['dogs'\] yielded no batches"):
        quiet_compare(a, b, loaders={"cats": cats, "dogs": []}, metrics=("cka",), progress=False)


# ---------------------------------------------------------------- torch.distributed


def _dist_data(seed: int, n: int = 32):
    from torch.utils.data import TensorDataset

    return TensorDataset(structured_pixels(n, seed=seed), torch.zeros(n))


def _shard(seed: int, rank: int, world: int = 2):
    from torch.utils.data import DataLoader, DistributedSampler

    ds = _dist_data(seed)
    return DataLoader(ds, batch_size=8, sampler=DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=False))


def _plain(res) -> dict:
    return {(tag, key): (r.matrix, r.n_samples, r.n_batches) for tag, rs in res.items() for key, r in rs.items()}


def _dist_worker(rank: int, store: str, outdir: str) -> None:
    import os
    import pickle

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=2)
    try:
        a, b = models()
        res = quiet_compare(a, b, loaders={"cats": _shard(0, rank), "dogs": _shard(3, rank)},
                            metrics=("cka", "ii"), progress=False)
        with open(os.path.join(outdir, f"rank{rank}.pkl"), "wb") as f:
            pickle.dump(_plain(res), f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_all_reduce_every_loader(tmp_path):
    import os
    import pickle

    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    from rendezvous import file_store

    mp.spawn(_dist_worker, args=(file_store(tmp_path), str(tmp_path)), nprocs=2, join=True)
    a, b = models()
    cats = [x for r in range(2) for x in _shard(0, r)]  # rank 0's shard, then rank 1's
    dogs = [x for r in range(2) for x in _shard(3, r)]
    want = _plain({"cats": quiet_compare(a, b, cats, metrics=("cka", "ii"), progress=False),
                   "dogs": quiet_compare(a, b, dogs, metrics=("cka", "ii"), progress=False),
                   "pooled": quiet_compare(a, b, cats + dogs, metrics=("cka", "ii"), progress=False)})
    for r in range(2):
        with open(os.path.join(tmp_path, f"rank{r}.pkl"), "rb") as f:
            got = pickle.load(f)
        assert set(got) == set(want)
        for k, (m, n, nb) in want.items():
            np.testing.assert_allclose(got[k][0], m, atol=1e-9, rtol=0, err_msg=f"rank {r}, {k}")
            assert got[k][1:] == (n, nb), f"rank {r}, {k}: counts are not summed over ranks"
    assert want[("pooled", "cka")][1] == 64
