"""simtorch.compare: several metrics from one pass equal each metric run alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import simtorch
from models import CountForward, conv_net, image_mlp, loader, structured_pixels
from simtorch import CKA, DeltaCKA, InformationImbalance, SimilarityModel
from simtorch.metrics import CKAMetric

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: see conftest.py

LAYERS_A = ["conv1", "relu1", "conv2", "fc"]
LAYERS_B = ["fc1", "fc2", "fc3"]


def data_loader(n: int = 64, bs: int = 16, seed: int = 0):
    """Inputs with structure (a rank-4 signal plus noise), unshuffled."""
    return loader(structured_pixels(n, seed), bs)


def same(r1, r2) -> None:
    np.testing.assert_allclose(r1.matrix, r2.matrix, atol=1e-12, rtol=0, equal_nan=True)
    np.testing.assert_allclose(r1.stderr, r2.stderr, atol=1e-12, rtol=0, equal_nan=True)
    assert r1.layers_a == r2.layers_a and r1.layers_b == r2.layers_b and r1.metric == r2.metric
    assert r1.n_samples == r2.n_samples and r1.n_batches == r2.n_batches
    assert set(r1.extras) == set(r2.extras)
    for k in r1.extras:
        np.testing.assert_allclose(r1.extras[k], r2.extras[k], atol=1e-12, rtol=0, equal_nan=True)


def test_one_pass_equals_each_metric_alone():
    A, B = conv_net(0), image_mlp(1)
    a = SimilarityModel(A, "A", LAYERS_A, device="cpu")
    b = SimilarityModel(B, "B", LAYERS_B, device="cpu")
    dl = data_loader(70, 16)  # last batch of 6
    fa, fb = CountForward(A), CountForward(B)
    res = simtorch.compare(a, b, dl, progress=False)
    assert list(res) == ["cka", "dcka", "ii"]
    assert fa.calls == fb.calls == 5  # one forward per model per batch for all three metrics
    alone = {}
    for key, cls in (("cka", CKA), ("dcka", DeltaCKA), ("ii", InformationImbalance)):
        sim = cls(a, b, device="cpu", progress=False)
        sim.compute(dl)
        alone[key] = sim.result
        same(res[key], alone[key])
    assert res["cka"].settings["unbiased"] is True and res["dcka"].settings["unbiased"] is False
    # three different grids: a mix-up of metrics would be caught
    assert np.abs(res["cka"].matrix - res["dcka"].matrix).max() > 0.05
    assert np.abs(res["cka"].matrix - res["ii"].matrix).max() > 0.05
    assert "pve_a" in res["dcka"].extras and "reverse" in res["ii"].extras


def test_plain_modules_with_layer_lists_and_options():
    A, B = conv_net(2), image_mlp(3)
    dl = data_loader(48, 16, seed=1)
    res = simtorch.compare(
        A, B, dl, metrics=("cka", "dcka", "ii"), layers_a=["conv*", "fc"], layers_b=["fc?"],
        name_a="Conv", name_b="MLP", progress=False,
        cka_kwargs={"kernel": "rbf", "unbiased": False},
        dcka_kwargs={"unbiased": True, "remove_negative_eig": True},
        ii_kwargs={"subset_size": 24},
    )
    a = SimilarityModel(A, "Conv", ["conv1", "conv2", "fc"], device="cpu")
    b = SimilarityModel(B, "MLP", ["fc1", "fc2", "fc3"], device="cpu")
    runs = {
        "cka": CKA(a, b, device="cpu", kernel="rbf", unbiased=False, progress=False),
        "dcka": DeltaCKA(a, b, device="cpu", unbiased=True, remove_negative_eig=True, progress=False),
        "ii": InformationImbalance(a, b, device="cpu", subset_size=24, progress=False),
    }
    for key, sim in runs.items():
        sim.compute(dl)
        same(res[key], sim.result)
    assert res["cka"].model_a == "Conv" and res["ii"].layers_b == ["fc1", "fc2", "fc3"]
    assert res["ii"].n_batches == 2  # two pooled subsets of 24
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in list(A.modules()) + list(B.modules()))


def test_metric_instances_and_mapping_keys():
    A, B = conv_net(4), image_mlp(5)
    dl = data_loader(32, 16, seed=2)
    res = simtorch.compare(A, B, dl, metrics={"linear": "cka", "rbf": CKAMetric(kernel="rbf")},
                           layers_a=LAYERS_A, layers_b=LAYERS_B, progress=False)
    assert set(res) == {"linear", "rbf"}
    a = SimilarityModel(A, "A", LAYERS_A, device="cpu")
    b = SimilarityModel(B, "B", LAYERS_B, device="cpu")
    np.testing.assert_allclose(res["rbf"].matrix, CKA(a, b, kernel="rbf", progress=False).compute(dl), atol=1e-12)
    np.testing.assert_allclose(res["linear"].matrix, CKA(a, b, progress=False).compute(dl), atol=1e-12)


def test_model_against_itself_runs_one_forward_per_batch():
    A = conv_net(6)
    counter = CountForward(A)
    dl = data_loader(48, 16, seed=3)
    res = simtorch.compare(A, A, dl, layers_a=LAYERS_A, progress=False, metrics=("cka", "ii"))
    assert counter.calls == 3
    np.testing.assert_allclose(np.diag(res["cka"].matrix), 1.0, atol=1e-9)
    np.testing.assert_allclose(np.diag(res["ii"].matrix), 2 / 16, atol=1e-15)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"metrics": ("cka", "mutual_info")}, ValueError, "unknown metric"),
        ({"metrics": ()}, ValueError, "empty"),
        ({"layers_a": None}, ValueError, "layers_a"),
        ({"cka_kwargs": {"kernal": "rbf"}}, TypeError, "cka_kwargs"),
        ({"ii_kwargs": {"subset_size": 1}}, ValueError, "subset_size"),
    ],
)
def test_errors_name_the_bad_value(kwargs, exc, match):
    args = dict(layers_a=LAYERS_A, layers_b=LAYERS_B, progress=False)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        simtorch.compare(conv_net(0), image_mlp(1), data_loader(16, 8), **args)


def test_similarity_model_with_layers_is_ambiguous():
    a = SimilarityModel(conv_net(0), "A", LAYERS_A)
    with pytest.raises(ValueError, match="already a SimilarityModel"):
        simtorch.compare(a, image_mlp(1), data_loader(16, 8), layers_a=["fc"], layers_b=LAYERS_B, progress=False)
    with pytest.raises(TypeError, match="SimilarityModel or a torch.nn.Module"):
        simtorch.compare(a, "mlp", data_loader(16, 8), progress=False)


def test_torchvision_resnet_end_to_end():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    r18 = torchvision.models.resnet18(num_classes=10)
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    dl = loader(x, 8)
    layers = ["conv1", "layer?.*", "fc"]
    res = simtorch.compare(r18, r18, dl, layers_a=layers, progress=False)
    names = res["cka"].layers_a
    assert names[0] == "conv1" and names[-1] == "fc" and len(names) == 10
    for key in ("cka", "dcka", "ii"):
        assert res[key].matrix.shape == (10, 10) and np.isfinite(res[key].matrix).all()
    np.testing.assert_allclose(np.diag(res["dcka"].matrix), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.diag(res["ii"].matrix), 2 / 8, atol=1e-12)
    # the confounder explains the early layers more than the late ones
    pve = res["dcka"].extras["pve_a"]
    assert pve[0] > pve[-1]
