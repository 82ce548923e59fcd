"""Grids from features you already have (issue 14): ``simtorch.functional.cka_grid`` & co.
and ``simtorch.features.grid`` for every registered measure, from dicts, lists or stacks of
``(n, d)`` tensors, or streamed from per-batch dicts. The value for features equals the
value over a model that produces them, and the float64 reference."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import reference as ref
import simtorch
from simtorch import SimilarityModel
from simtorch.features import compare_features, grid
from simtorch.functional import cka_grid, dcka_grid, ii_grid
from simtorch.metrics import canonical_names

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYERS = ["fc1", "relu", "fc2"]
N, BATCH = 64, 16


def net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(fc1=nn.Linear(10, 8), relu=nn.ReLU(), fc2=nn.Linear(8, 6))).eval()


def inputs() -> torch.Tensor:
    return torch.randn(N, 10, generator=torch.Generator().manual_seed(1))


def features(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        h1 = model.fc1(x)
        h2 = model.relu(h1)
        return {"fc1": h1, "relu": h2, "fc2": model.fc2(h2)}


def loader(x: torch.Tensor) -> DataLoader:
    return DataLoader(TensorDataset(x), batch_size=BATCH, shuffle=False)


@pytest.fixture(scope="module")
def setup():
    x = inputs()
    a, b = net(0), net(1)
    return x, a, b, features(a, x), features(b, x)


def close(got, want, atol=1e-6):
    np.testing.assert_allclose(got, want, rtol=0, atol=atol, equal_nan=True)


def test_cka_grid_equals_cka_over_the_model(setup):
    x, a, b, fa, fb = setup
    cka = simtorch.CKA(SimilarityModel(a, "A", LAYERS), SimilarityModel(b, "B", LAYERS))
    cka.compute(loader(x))
    want = cka.result
    got = cka_grid(fa, fb, batch_size=BATCH)
    assert got.layers_a == LAYERS and got.layers_b == LAYERS and got.model_a == "A" and got.model_b == "B"
    assert got.metric == "CKA" and got.settings == want.settings
    assert (got.n_samples, got.n_batches) == (want.n_samples, want.n_batches) == (N, N // BATCH)
    close(got.matrix, want.matrix)
    close(got.stderr, want.stderr)
    # streamed from per-batch dicts: the same sums
    batches_a = ({k: v[i:i + BATCH] for k, v in fa.items()} for i in range(0, N, BATCH))
    batches_b = ({k: v[i:i + BATCH] for k, v in fb.items()} for i in range(0, N, BATCH))
    streamed = cka_grid(batches_a, batches_b)
    close(streamed.matrix, want.matrix)
    close(streamed.stderr, want.stderr)


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_cka_grid_equals_the_float64_reference(setup, unbiased, kernel):
    _, _, _, fa, fb = setup
    fa64 = {k: v.double() for k, v in fa.items()}
    fb64 = {k: v.double() for k, v in fb.items()}
    got = cka_grid(fa64, fb64, unbiased=unbiased, kernel=kernel)  # all samples as one batch: the full-data CKA
    want = np.array([[ref.cka(u.numpy(), v.numpy(), kernel=kernel, unbiased=unbiased) for v in fb64.values()]
                     for u in fa64.values()])
    close(got.matrix, want, atol=1e-9)
    assert np.all(np.isnan(got.stderr))  # one batch: no jackknife (and no warning about it)


def test_input_forms_and_names(setup):
    _, _, _, fa, fb = setup
    want = cka_grid(fa, fb).matrix
    as_list = cka_grid(list(fa.values()), list(fb.values()))
    assert as_list.layers_a == ["0", "1", "2"]
    close(as_list.matrix, want, atol=1e-12)
    stacked = cka_grid(torch.stack([fa["fc1"], fa["relu"]]), fb)
    close(stacked.matrix, want[:2], atol=1e-12)
    named = cka_grid(list(fa.values()), names_a=["x", "y", "z"], model_a="net")
    assert named.layers_a == named.layers_b == ["x", "y", "z"] and named.model_a == named.model_b == "net"
    np.testing.assert_allclose(np.diag(named.matrix), 1.0, atol=1e-6)  # a set against itself
    # (n, c, h, w) features are flattened per sample
    img = torch.randn(N, 2, 3, 3, generator=torch.Generator().manual_seed(2))
    close(cka_grid({"img": img}, {"flat": img.reshape(N, -1)}).matrix, [[1.0]], atol=1e-6)


def test_dcka_and_ii_grids_equal_the_classes(setup):
    x, a, b, fa, fb = setup
    sa, sb = SimilarityModel(a, "A", LAYERS), SimilarityModel(b, "B", LAYERS)
    d = simtorch.DeltaCKA(sa, sb)
    d.compute(loader(x))
    got = dcka_grid(fa, fb, z=x, batch_size=BATCH)
    close(got.matrix, d.result.matrix)
    close(got.stderr, d.result.stderr)
    ii = simtorch.InformationImbalance(sa, sb)
    ii.compute(loader(x))
    got_ii = ii_grid(fa, fb, batch_size=BATCH)
    close(got_ii.matrix, ii.result.matrix)
    close(got_ii.extras["reverse"], ii.result.extras["reverse"])
    with pytest.raises(ValueError, match="pass z="):
        dcka_grid(fa, fb, z=None)
    with pytest.raises(ValueError, match="z has shape"):
        dcka_grid(fa, fb, z=x[:10])


@pytest.mark.parametrize("key", canonical_names())
def test_every_registered_measure_equals_compare_over_the_model(setup, key):
    x, a, b, fa, fb = setup
    want = simtorch.compare(a, b, loader(x), metrics=[key], layers_a=LAYERS, layers_b=LAYERS, name_a="A",
                            name_b="B", progress=False)[key]
    got = grid(key, fa, fb, z=x, batch_size=BATCH)
    assert got.metric == want.metric and got.layers_a == want.layers_a and got.settings == want.settings
    close(got.matrix, want.matrix, atol=1e-5)
    close(got.stderr, want.stderr, atol=1e-5)
    several = compare_features(fa, fb, metrics={"cka": "cka", "other": key}, z=x, batch_size=BATCH)
    close(several["other"].matrix, got.matrix, atol=1e-12)


def test_errors_name_the_problem(setup):
    _, _, _, fa, fb = setup
    with pytest.raises(ValueError, match="same samples"):
        cka_grid({"a": torch.randn(8, 3), "b": torch.randn(9, 3)})
    with pytest.raises(ValueError, match="features_a has 8 samples, features_b 10"):
        cka_grid({"a": torch.randn(8, 3)}, {"b": torch.randn(10, 3)})
    with pytest.raises(TypeError, match="not a tensor"):
        cka_grid({"a": np.zeros((8, 3))})
    with pytest.raises(ValueError, match="NaN or inf"):
        cka_grid({"a": torch.full((8, 3), float("nan"))})
    with pytest.raises(ValueError, match="unknown metric"):
        grid("pearson", fa)
    with pytest.raises(ValueError, match="no batches"):
        cka_grid(iter([]))
    with pytest.raises(ValueError, match="features_b ran out"):
        cka_grid([fa, fa], iter([fb]))


def test_interrupted_stream_keeps_the_completed_batches(setup):
    _, _, _, fa, fb = setup

    def batches():
        for i in range(0, N, BATCH):
            if i == 2 * BATCH:
                raise KeyboardInterrupt
            yield {k: v[i:i + BATCH] for k, v in fa.items()}

    with pytest.raises(KeyboardInterrupt) as info:
        cka_grid(batches())
    partial = info.value.simtorch_partial["cka"]
    assert partial.settings["partial"] is True and partial.n_batches == 2 and partial.n_samples == 2 * BATCH
